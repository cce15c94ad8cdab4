"""A hostile worker-0 host answering the launcher's fetch (issue 24): it sends what it likes, and nothing outside the
fetch's own folder changes.

The host is a real namespace host reached over SSH. Its "python" is a wrapper that
answers the launcher's fetch program with crafted bytes (a tar stream built to write
through a link, absurd sizes, names nobody asked for, a digest that does not match,
silence, an endless header) and runs the real Python for everything else, as a
compromised host could. The victim file, the launcher's files and the fetch folder must
come out as they went in; the fetch fails, naming the host.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile

import psutil
import pytest

from cluster.errors import JobFailed
from cluster.failure import FailureKind
from cluster.hosts import HostSpec
from cluster.ssh import SSHHost, SSHOptions
from launcher.plan import Transfer
from launcher.run.fetch import FetchRefused, fetch_files
from launcher.run.preflight import probe_all
from launcher.run.stage import stage_host
from testing.processes import pids_running
from tests.helpers import REPO, demo_job, hosts_file, run_launch, ssh_args, wait_until, write_job

pytestmark = pytest.mark.integration

NAMES = ["demo-symbol.json", "demo-0001.params", "checkpoint-0001.json"]

_WRAPPER = '''#!{real}
import hashlib, json, os, struct, sys, time
REAL, MODE, VICTIM, EVIL_TAR = {real!r}, {mode!r}, {victim!r}, {evil_tar!r}


def until_the_session_ends():  # silence, until the launcher gives up and the SSH session that started this ends
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.2)


if len(sys.argv) > 3 and sys.argv[1] == "-c" and "def open_regular(" in sys.argv[2]:  # the launcher's fetch
    out, names = sys.stdout.buffer, sys.argv[4:]

    def frame(header):
        body = json.dumps(header).encode()
        out.write(struct.pack(">I", len(body)) + body)

    def honest(name, data):
        frame({{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}})
        out.write(data)

    if MODE == "tar":
        out.write(open(EVIL_TAR, "rb").read())
    elif MODE == "absurd-size":
        frame({{"name": names[0], "size": 10 ** 15, "sha256": "0" * 64}})
        out.write(b"x" * 65536)
    elif MODE == "other-name":
        honest("../" * 8 + VICTIM.lstrip("/"), b"pwned")
    elif MODE == "extra-name":
        for name in names:
            honest(name, b"fine")
        honest("authorized_keys", b"ssh-ed25519 AAAA attacker")
        frame({{"end": len(names) + 1}})
    elif MODE == "wrong-digest":
        frame({{"name": names[0], "size": 5, "sha256": "0" * 64}})
        out.write(b"pwned")
    elif MODE == "endless-header":
        out.write(struct.pack(">I", 4000))
        out.write(b"[" * 4000)
    elif MODE == "silent":
        out.flush()
        until_the_session_ends()
    out.flush()
    sys.exit(0)
if MODE == "flood" and len(sys.argv) > 2 and sys.argv[1] == "-c" and "def file_id(" in sys.argv[2]:
    try:  # preflight's probe: answered with 200 MiB on one line, until the launcher stops reading
        for _ in range(3200):
            sys.stdout.buffer.write(b"x" * 65536)
    except (BrokenPipeError, OSError):
        pass
    sys.exit(0)
if MODE == "silent-offer" and len(sys.argv) > 2 and sys.argv[1] == "-c" and "def land(" in sys.argv[2]:
    until_the_session_ends()  # the staging receiver: never answers the offer
    sys.exit(1)
os.execv(REAL, [REAL] + sys.argv[1:])
'''


def evil_tar(path, victim: str) -> str:
    """A tar whose first member is a link named like the checkpoint, pointing at the victim, and whose second is
    that name again as a file: unpacked without a filter, it writes the victim."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        link = tarfile.TarInfo(NAMES[1])
        link.type, link.linkname = tarfile.SYMTYPE, victim
        tar.addfile(link)
        data = b"pwned"
        member = tarfile.TarInfo(NAMES[1])
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return str(path)


def hostile_python(tmp_path, mode: str, victim: str) -> str:
    """A "python" for the hosts file that answers fetches as ``mode`` says (on the shared filesystem)."""
    path = tmp_path / f"python-{mode}"
    path.write_text(_WRAPPER.format(real=sys.executable, mode=mode, victim=victim,
                                    evil_tar=evil_tar(tmp_path / "evil.tar", victim)))
    path.chmod(0o755)
    return str(path)


def tree(root) -> dict[str, str]:
    """Every path under ``root``: a link's target, a file's sha256, or 'dir'."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[path] = (f"link {os.readlink(path)}" if os.path.islink(path) else
                           hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else "dir")
    return found


REMOTE = "/srv/mxft-host/hostile"  # the launches' work folder on each host, removed after each test


def wrappers_left(cluster) -> list[str]:
    """The hostile wrappers (``python-MODE``) still running on any host (each must end with its SSH session)."""
    return [f"{host.name}: pid {pid}" for host in cluster.hosts for pid in pids_running(host, b"python-")]


@pytest.fixture(autouse=True)
def leaves_the_hosts_clean(hosts3):
    yield
    wait_until(lambda: not wrappers_left(hosts3), what="the hostile wrappers to end with their sessions",
               timeout_s=30)
    for host in hosts3.hosts:
        shutil.rmtree(os.path.join(host.work_dir, os.path.relpath(REMOTE, "/srv/mxft-host")), ignore_errors=True)


@pytest.fixture()
def victim(tmp_path):
    path = tmp_path / "victim" / "precious-0001.params"
    path.parent.mkdir()
    path.write_bytes(b"precious")
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode, says", [
    ("tar", "a header of"), ("absurd-size", "has 1000000000000000 bytes, at most"),
    ("other-name", "where 'demo-symbol.json' was asked for"), ("extra-name", "no end frame after 3 files"),
    ("wrong-digest", "does not match its sha256"), ("endless-header", "a header that is not JSON"),
    ("silent", "sent nothing for 3 s")])
def test_a_hostile_answer_is_refused_and_changes_nothing(hosts3, tmp_path, victim, mode, says):
    host = SSHHost(HostSpec(hosts3.hosts[0].address), SSHOptions(ssh_config=hosts3.ssh_config))
    local = tmp_path / "fetched"
    local.mkdir()
    before = tree(tmp_path)
    with pytest.raises(FetchRefused) as refused:
        fetch_files(host, f"{REMOTE}/out", dict.fromkeys(NAMES, 1 << 20), str(local),
                    python=hostile_python(tmp_path, mode, str(victim)), stall_s=3)
    assert str(refused.value).startswith(f"{host.label}: ") and says in str(refused.value), str(refused.value)
    assert refused.value.failure.kind is (FailureKind.HOST_SILENT if mode == "silent" else FailureKind.BAD_RESULT)
    assert refused.value.failure.host == host.label
    assert victim.read_bytes() == b"precious"
    after = tree(tmp_path)
    assert {path: what for path, what in after.items() if not path.startswith(str(tmp_path / "python-"))
            and path != str(tmp_path / "evil.tar")} == before  # not a byte more: no partial file, no .fetch- folder


@pytest.mark.timeout(120)
def test_links_and_folders_on_the_host_are_not_followed_and_an_honest_fetch_lands_whole(hosts3, tmp_path, victim):
    host = SSHHost(HostSpec(hosts3.hosts[0].address), SSHOptions(ssh_config=hosts3.ssh_config))
    out = os.path.join(hosts3.hosts[0].work_dir, "hostile", "out-links")  # REMOTE/out-links on h1
    os.makedirs(out)
    for name in NAMES:
        with open(os.path.join(out, name), "wb") as handle:
            handle.write(name.encode() * 1000)
    local = tmp_path / "fetched"
    paths = fetch_files(host, f"{REMOTE}/out-links", dict.fromkeys(NAMES, 1 << 20), str(local),
                        python=sys.executable)
    assert [open(path, "rb").read() for path in paths] == [name.encode() * 1000 for name in NAMES]
    assert sorted(os.listdir(local)) == sorted(NAMES)
    os.remove(os.path.join(out, NAMES[1]))
    os.symlink(str(victim), os.path.join(out, NAMES[1]))
    for refused_name, expected in ((NAMES[1], "Too many levels of symbolic links"), (NAMES[2], "at most 10 are")):
        with pytest.raises(FetchRefused, match=expected):
            fetch_files(host, f"{REMOTE}/out-links", {NAMES[0]: 1 << 20, refused_name: 10},
                        str(tmp_path / "again"), python=sys.executable)
        assert not os.listdir(tmp_path / "again")
    assert victim.read_bytes() == b"precious"


@pytest.mark.timeout(300)
def test_a_launch_whose_worker_0_host_answers_with_a_link_tar_keeps_every_file_outside_the_run(hosts3, tmp_path,
                                                                                                demo_assets, victim):
    """The whole launch across hosts: worker 0's host answers every fetch with the tar. No checkpoint is kept, the
    result is refused, the job fails naming the host, and the victim and the launcher's files are untouched."""
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 2},
                                                    cluster={"workers": 2, "servers": 1}))
    wrapper = hostile_python(tmp_path, "tar", str(victim))  # on every host: worker 0's is hostile wherever it is
    hosts = hosts_file(hosts3, tmp_path, extra={host.name: f"python={wrapper}" for host in hosts3.hosts})
    watched = {"victim": tree(victim.parent), "code": tree(os.path.join(REPO, "trainer"))}
    done = run_launch(ssh_args(hosts3, hosts, remote_dir=REMOTE) + [job, "--run-root", str(tmp_path / "runs")],
                      cwd=str(tmp_path), timeout_s=280)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr
    first_line = done.stderr.strip().splitlines()[0]
    assert first_line.startswith("mxft-launch: job failed: 10.231.77.") and "a header of" in first_line, done.stderr
    assert "keeping the checkpoint of epoch 1 failed (FetchRefused: " in done.stdout, done.stdout[-3000:]
    assert victim.read_bytes() == b"precious"
    assert {"victim": tree(victim.parent), "code": tree(os.path.join(REPO, "trainer"))} == watched
    (run_dir,) = (tmp_path / "runs").iterdir()
    checkpoints = run_dir / "checkpoints"
    assert not checkpoints.exists() or not [n for n in os.listdir(checkpoints) if not n.startswith(".")], \
        os.listdir(checkpoints)
    assert not [path for path in tree(run_dir) if ".fetch-" in path or ".incoming-" in path]


@pytest.mark.timeout(120)
def test_a_host_that_never_answers_the_staging_offer_fails_the_copy_named(hosts3, tmp_path, victim):
    host = SSHHost(HostSpec(hosts3.hosts[0].address), SSHOptions(ssh_config=hosts3.ssh_config))
    source = tmp_path / "a.rec"
    source.write_bytes(b"records")
    with pytest.raises(JobFailed, match=r"^the host stopped answering while its files were copied "
                                        r"\(nothing for 3 s; cluster.host_silence_s\)") as failed:
        stage_host(host, [Transfer(host.label, str(source), f"{REMOTE}/data/k/a.rec", "data")],
                   root=REMOTE, python=hostile_python(tmp_path, "silent-offer", str(victim)),
                   progress=lambda *report: None, silence_s=3)
    assert not os.path.exists(os.path.join(hosts3.hosts[0].work_dir, "hostile", "data", "k"))
    assert failed.value.failure.kind is FailureKind.HOST_SILENT and failed.value.host == host.label


@pytest.mark.timeout(300)
def test_a_launch_whose_worker_0_host_goes_silent_at_the_end_fails_within_its_deadline_named(hosts3, tmp_path,
                                                                                             demo_assets, victim):
    """Worker 0's host accepts every fetch and sends nothing: each checkpoint fetch and the result's end at
    cluster.host_silence_s; the launch ends, exit 1, naming the host (it once waited forever)."""
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 2},
                                                    cluster={"workers": 2, "servers": 1, "host_silence_s": 3}))
    wrapper = hostile_python(tmp_path, "silent", str(victim))
    hosts = hosts_file(hosts3, tmp_path, extra={host.name: f"python={wrapper}" for host in hosts3.hosts})
    done = run_launch(ssh_args(hosts3, hosts, remote_dir=REMOTE) + [job, "--run-root", str(tmp_path / "runs")],
                      cwd=str(tmp_path), timeout_s=280)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr
    first_line = done.stderr.strip().splitlines()[0]
    assert first_line.startswith("mxft-launch: job failed: 10.231.77.") and "sent nothing for 3 s" in first_line, \
        done.stderr
    assert "keeping the checkpoint of epoch 1 failed (FetchRefused: " in done.stdout, done.stdout[-3000:]


@pytest.mark.timeout(120)
def test_a_host_that_answers_the_probe_without_end_is_refused_and_what_it_sent_stays_bounded(hosts3, tmp_path,
                                                                                              victim):
    """A command's answer is read up to 4 MiB (``cluster.lines.BoundedOutput``): fabric's run kept all of it, so a
    host answering preflight with 200 MiB cost the launcher that much memory, or more."""
    python = hostile_python(tmp_path, "flood", str(victim))
    spec = HostSpec(hosts3.hosts[0].address, python=python)
    host = SSHHost(spec, SSHOptions(ssh_config=hosts3.ssh_config))
    before = psutil.Process().memory_info().rss
    probed = probe_all([(spec, host)], REMOTE)
    failed = probed.failed[host.label]
    assert failed.failure.kind is FailureKind.HOST_REFUSED, failed
    assert failed.reason == f"'{python}' answered with more than 4 MiB; not read further", failed.reason
    assert psutil.Process().memory_info().rss - before < 64 << 20
