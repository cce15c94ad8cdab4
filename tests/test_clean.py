"""``mxft-launch clean`` (issue 15): the decision as pure logic with literal listings, the cleanup script
as a real process on a work folder here, the console lines, and the command on a namespace host."""
from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from cluster.failure import Failure, FailureKind
from cluster.fanout import HostFailed, HostResults
from launcher.remote.cleanup import RECENT_S, choose_removals
from launcher.run.clean import CLEANUP_SCRIPT, HostCleanup, NotCleaned, Removal, cleanup_lines, parse_report

DAY = 86400.0
NOW = 100 * DAY


def run(name, age_s, *, running=False, data=(), size=1000):
    return {"name": name, "mtime": NOW - age_s, "bytes": size, "running": running, "data": list(data)}


def entry(name, age_s, size=1000):
    return {"name": name, "mtime": NOW - age_s, "bytes": size}


def listing(runs=(), data=(), code=(), incoming=(), staging=False):
    return {"runs": list(runs), "data": list(data), "code": list(code), "incoming": list(incoming),
            "staging": staging}


def chosen(work, older_than_days=0.0):
    return [(r["kind"], r["name"]) for r in choose_removals(work, NOW, older_than_days * DAY)]


# --------------------------------------------------------------------------- the decision

@pytest.mark.timeout(10)
def test_finished_runs_and_the_data_only_they_used_go_a_running_run_and_its_data_stay():
    work = listing(runs=[run("old", 3 * DAY, data=["k-old", "k-both"]),
                         run("live", 30 * DAY, running=True, data=["k-live", "k-both"])],
                   data=[entry("k-old", 9 * DAY), entry("k-both", 9 * DAY), entry("k-live", 40 * DAY),
                         entry("k-none", 2 * DAY)],
                   code=[entry("c1", 9 * DAY)])
    assert chosen(work) == [("run", "old"), ("data", "k-old"), ("data", "k-none")]
    assert [r["why"] for r in choose_removals(work, NOW, 0)] == [
        "finished, unchanged for 3.0 days", "used by no run kept, unchanged for 9.0 days",
        "used by no run kept, unchanged for 2.0 days"]


@pytest.mark.timeout(10)
def test_older_than_keeps_recent_runs_and_what_they_use():
    work = listing(runs=[run("week-ago", 7 * DAY, data=["k1"]), run("month-ago", 31 * DAY, data=["k2"])],
                   data=[entry("k1", 40 * DAY), entry("k2", 40 * DAY), entry("k3", 5 * DAY)],
                   code=[entry("new", 1 * DAY), entry("old", 60 * DAY)])
    assert chosen(work, older_than_days=30) == [("run", "month-ago"), ("data", "k2"), ("code", "old")]
    assert chosen(work, older_than_days=0) == [("run", "week-ago"), ("run", "month-ago"), ("data", "k1"),
                                               ("data", "k2"), ("data", "k3"), ("code", "new"), ("code", "old")]


@pytest.mark.timeout(10)
def test_nothing_changed_within_the_hour_goes_whatever_older_than_says():
    work = listing(runs=[run("starting", RECENT_S - 60, data=["k1"])],
                   data=[entry("k1", 5 * DAY), entry("just-landed", 60)], code=[entry("c", 120)])
    assert chosen(work) == []


@pytest.mark.timeout(10)
def test_code_stays_while_any_run_runs_there():
    work = listing(runs=[run("live", 5 * DAY, running=True)], code=[entry("c1", 9 * DAY), entry("c2", 9 * DAY)])
    assert chosen(work) == []
    assert chosen(listing(runs=[run("done", 5 * DAY)], code=[entry("c1", 9 * DAY)])) == [("run", "done"),
                                                                                            ("code", "c1")]


@pytest.mark.timeout(10)
def test_while_a_stage_runs_data_and_code_stay_and_old_incoming_folders_go():
    old_runs = [run("done", 5 * DAY)]
    unused = dict(data=[entry("k1", 9 * DAY)], code=[entry("c1", 9 * DAY)])
    assert chosen(listing(old_runs, staging=True, **unused)) == [("run", "done")]  # a stage holds the lock
    staging_now = [entry(".incoming.abc", 30), entry(".incoming.old", 2 * RECENT_S)]
    assert chosen(listing(old_runs, incoming=staging_now, **unused)) == [("run", "done"),
                                                                          ("incoming", ".incoming.old")]
    assert chosen(listing(old_runs, incoming=[entry(".incoming.old", 2 * RECENT_S)], **unused)) == [
        ("run", "done"), ("data", "k1"), ("code", "c1"), ("incoming", ".incoming.old")]


# --------------------------------------------------------------------------- the script, on a folder here

def make_run(root, run_id, *, data_keys=(), pid=None, host_root=None):
    """A run folder as a launch leaves it; its worker config names ``data_keys`` under ``host_root``
    (where the host sees ``root``; the same folder by default)."""
    folder, named = root / "runs" / run_id, host_root or str(root)
    (folder / "pids").mkdir(parents=True)
    (folder / "config").mkdir()
    config = {"index": 0, "train_rec": f"{named}/data/{data_keys[0]}/t.rec" if data_keys else "/elsewhere/t.rec",
              "val_rec": f"{named}/data/{data_keys[-1]}/v.rec" if data_keys else "/elsewhere/v.rec",
              "job": {"data": {"train": f"{named}/data/not-a-reference/x.rec"}}}
    (folder / "config" / "worker-0.json").write_text(json.dumps(config))
    (folder / "pids" / "worker-0.pid").write_text(f"{pid if pid is not None else 2 ** 22 + 1}\n")  # beyond pid_max
    (folder / "workers").mkdir()
    (folder / "workers" / "out.params").write_bytes(b"p" * 10000)
    return folder


def make_folder(path, size=5000):
    path.mkdir(parents=True)
    (path / "f.bin").write_bytes(b"d" * size)
    return path


def age(path, seconds):
    """Set the mtime of ``path`` and everything in it ``seconds`` into the past."""
    then = time.time() - seconds
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(folder, name), (then, then), follow_symlinks=False)
    os.utime(path, (then, then))


def cleanup(root, mode, older_than_days=0.0):
    done = subprocess.run([sys.executable, "-c", CLEANUP_SCRIPT, str(root), str(older_than_days * DAY), mode],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return parse_report("here", done.stdout)


@pytest.mark.timeout(60)
def test_the_cleanup_script_removes_what_it_lists_and_never_a_running_run(tmp_path):
    root = tmp_path / "work"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env=dict(os.environ, MXFT_RUN_ID="live"))
    try:
        folders = {"done": make_run(root, "done", data_keys=["k-done"]),
                   "live": make_run(root, "live", data_keys=["k-live"], pid=live.pid),
                   "reused": make_run(root, "reused", pid=os.getpid()),  # a live pid of another run: not its own
                   "k-done": make_folder(root / "data" / "k-done"), "k-live": make_folder(root / "data" / "k-live"),
                   "code": make_folder(root / "code" / "h1"), "incoming": make_folder(root / ".incoming.x1")}
        (root / "data" / "k-link").symlink_to(root / "data" / "k-live")  # a link is never followed nor removed
        for folder in folders.values():
            age(folder, 3 * DAY)
        dry = cleanup(root, "dry-run")
        assert [(r.kind, r.name) for r in dry.removals] == [("run", "done"), ("run", "reused"), ("data", "k-done"),
                                                            ("incoming", ".incoming.x1")]
        assert dry.running == ("live",) and dry.freed_bytes == 0 and dry.unremoved == ""
        assert all(folder.exists() for folder in folders.values())
        done = cleanup(root, "remove")
        assert done.removals == dry.removals and done.freed_bytes == sum(r.size_bytes for r in dry.removals) > 25000
        assert sorted(os.listdir(root / "runs")) == ["live"]
        assert sorted(os.listdir(root / "data")) == ["k-link", "k-live"]
        assert os.listdir(root / "code") == ["h1"] and not (root / ".incoming.x1").exists()
    finally:
        live.kill()
        live.wait()
    after = cleanup(root, "remove")  # the run ended: it goes, with its data and the code
    assert [(r.kind, r.name) for r in after.removals] == [("run", "live"), ("data", "k-live"), ("code", "h1")]
    assert os.listdir(root / "data") == ["k-link"]


@pytest.mark.timeout(60)
def test_while_a_receiver_holds_the_work_folder_data_and_code_stay(tmp_path):
    root = tmp_path / "work"
    make_run(root, "done", data_keys=["k1"])
    make_folder(root / "data" / "k1")
    make_folder(root / "code" / "h1")
    age(root, 3 * DAY)
    held = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_SH)  # what launcher.run.stage's receiver holds while it runs
        report = cleanup(root, "remove")
    finally:
        os.close(held)
    assert [(r.kind, r.name) for r in report.removals] == [("run", "done")] and report.staging
    assert os.listdir(root / "data") == ["k1"] and os.listdir(root / "code") == ["h1"]


@pytest.mark.timeout(30)
def test_an_absent_work_folder_is_nothing_to_clean(tmp_path):
    report = cleanup(tmp_path / "never-used", "remove")
    assert report == HostCleanup("here", str(tmp_path / "never-used"))


# --------------------------------------------------------------------------- what the user sees

@pytest.mark.timeout(10)
def test_cleanup_lines_per_host_then_the_total():
    h1 = HostCleanup("h1", "/root/.mxft", (Removal("run", "demo-1", 2_500_000, "finished, unchanged for 3.0 days"),
                                           Removal("data", "k1", 1_000_000_000, "used by no run kept, unchanged "
                                                                               "for 3.0 days")),
                     1_002_500_000, running=("demo-2",))
    reports = HostResults(("h1", "h2", "h3"), {"h1": h1, "h2": HostCleanup("h2", "/root/.mxft", staging=True)},
                          {"h3": HostFailed("h3", "unreachable over SSH: timed out",
                                            Failure(FailureKind.HOST_REFUSED, host="h3"))})
    assert cleanup_lines(reports, dry_run=False) == [
        "host h1 (/root/.mxft): removed 1 run, 1 data folder, freed 1.0 GB; 1 running run kept",
        "  run      demo-1                                          2.5 MB  finished, unchanged for 3.0 days",
        "  data     k1                                              1.0 GB  used by no run kept, unchanged for 3.0 days",
        "host h2 (/root/.mxft): nothing to remove; a stage is running there: data and code kept",
        "host h3: not cleaned: unreachable over SSH: timed out",
        "total: freed 1.0 GB on 2 of 3 hosts"]
    assert cleanup_lines(HostResults(("h1",), {"h1": h1}, {}), dry_run=True)[0] == \
        "host h1 (/root/.mxft): would remove 1 run, 1 data folder, would free 1.0 GB; 1 running run kept"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("answer", ["", "not json", '{"root": "/w"}', json.dumps(
    {"root": "/w", "removals": [{"kind": "etc", "name": "x", "bytes": 1, "why": ""}], "freed_bytes": 0,
     "errors": [], "running": [], "staging": False}), json.dumps(
    {"root": "/w", "removals": [], "freed_bytes": -1, "errors": [], "running": [], "staging": False})])
def test_an_unexpected_answer_is_the_hosts_error(answer):
    with pytest.raises(NotCleaned, match="^unexpected answer from the cleanup there"):
        parse_report("h1", answer)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args, message", [
    (["--hosts", "{tmp}/absent.txt"], "absent.txt: hosts file not found"),
    (["--hosts", "{tmp}/local.txt"], "local.txt:1: 'localhost' is this machine; clean works on remote hosts' work "
                                     "folders (this machine's runs are in --run-root, its cache in --cache-dir)"),
    (["--hosts", "{tmp}/local.txt", "--older-than", "-1"], "--older-than must be a number of days from 0"),
    (["--hosts", "{tmp}/local.txt", "--older-than", "nan"], "--older-than must be a number of days from 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    from launcher import cli
    (tmp_path / "local.txt").write_text("localhost\n")
    try:
        code = cli.main(["clean"] + [arg.format(tmp=tmp_path) for arg in args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].endswith(message), err


# --------------------------------------------------------------------------- on a namespace host

@pytest.mark.integration
@pytest.mark.timeout(300)
def test_clean_on_a_host_keeps_the_running_run_and_frees_the_rest(hosts3, tmp_path):
    """On h1, in a work folder of its own: a run with a live process (started over SSH under trainer.remote,
    so its pid is h1's) stays with its data until the process ends; the rest goes; the dry run removes nothing."""
    from cluster.hosts import HostSpec
    from cluster.ssh import SSHHost, SSHOptions
    from tests.helpers import REPO, run_launch
    from tests.helpers import python_field
    h1, remote = hosts3.hosts[0], "/srv/mxft-host/clean-test"
    root = pathlib.Path(h1.work_dir) / "clean-test"  # the same folder, seen from here
    make_run(root, "done", data_keys=["k-done"], host_root=remote)
    make_folder(root / "data" / "k-done")
    make_folder(root / "data" / "k-live")
    make_folder(root / ".incoming.stale")
    live_run = make_run(root, "live", data_keys=["k-live"], host_root=remote)
    os.remove(live_run / "pids" / "worker-0.pid")
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"{h1.address} {python_field()}\n")
    args = ["clean", "--hosts", str(hosts), "--ssh-config", hosts3.ssh_config, "--remote-dir", remote]
    ssh = SSHHost(HostSpec(h1.address), SSHOptions(ssh_config=hosts3.ssh_config))
    process = ssh.start([sys.executable, "-m", "trainer.remote", "--pid-file", f"{remote}/runs/live/pids/worker-0.pid",
                         "--", sys.executable, "-c", "import time; time.sleep(240)"],
                        env={"MXFT_RUN_ID": "live", "PYTHONPATH": REPO}, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not (live_run / "pids" / "worker-0.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for folder in (root / "runs" / "done", root / "runs" / "live", root / "data" / "k-done",
                       root / "data" / "k-live", root / ".incoming.stale"):
            age(folder, 3 * DAY)
        dry = run_launch(args + ["--dry-run"], cwd=str(tmp_path), timeout_s=120)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert dry.stdout.splitlines()[0].startswith(
            f"host {h1.address} ({remote}): would remove 1 run, 1 data folder, 1 interrupted copy, would free ")
        assert sorted(os.listdir(root / "runs")) == ["done", "live"]
        done = run_launch(args, cwd=str(tmp_path), timeout_s=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "; 1 running run kept" in done.stdout.splitlines()[0]
        assert sorted(os.listdir(root / "runs")) == ["live"] and os.listdir(root / "data") == ["k-live"]
        assert not (root / ".incoming.stale").exists()
    finally:
        process.stop(grace_s=2)
    after = run_launch(args, cwd=str(tmp_path), timeout_s=120)
    assert after.returncode == 0, after.stdout + after.stderr
    assert os.listdir(root / "runs") == [] and os.listdir(root / "data") == []
    unreachable = tmp_path / "bad-hosts.txt"
    unreachable.write_text(f"{h1.address}:2222 {python_field()}\n")  # nothing listens on port 2222
    failed = run_launch(["clean", "--hosts", str(unreachable), "--ssh-config", hosts3.ssh_config], cwd=str(tmp_path))
    assert failed.returncode == 1 and failed.stdout.startswith(f"host {h1.address}:2222: not cleaned: unreachable")
