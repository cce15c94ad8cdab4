"""The relay on namespace hosts (issue 26): a ``--sync-dir`` folder every host needs goes through the launcher's
link twice (two chains), not once per host; a relay host killed mid-transfer is routed around, its files are sent
from the launcher, and the run starts on every host: a ps-lite program across three hosts, each worker in its synced
copy with its role's environment."""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import signal
import threading

import pytest

from tests.helpers import PROGRAM_DIR, check_argv, hosts_file, no_processes_left, run_launch, ssh_args
from testing.processes import RELAY_PROGRAM, pids_running, run_id_from

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BIG = 64 << 20   # with 3 hosts the relay saves one copy of it: the least it is used for (RELAY_FROM_BYTES)


def _kill_relay_when_it_holds(host, size: int, killed: list, stop: threading.Event) -> None:
    """Kill ``host``'s relay program once a file it is receiving holds ``size`` bytes (mid-transfer)."""
    while not stop.wait(0.02):
        growing = [path for path in glob.glob(os.path.join(host.work_dir, ".incoming.*", "*"))
                   if os.path.getsize(path) >= size]
        programs = pids_running(host, RELAY_PROGRAM) if growing else []
        if programs:
            killed.append(os.path.getsize(growing[0]))
            os.kill(programs[0], signal.SIGKILL)
            return


def test_a_folder_for_every_host_goes_by_relay_and_a_relay_host_killed_midway_is_routed_around(hosts3, tmp_path):
    from testing import netns
    job = tmp_path / "job"
    job.mkdir()
    shutil.copy(os.path.join(PROGRAM_DIR, "pslite_check.py"), job)
    (job / "big.bin").write_bytes(os.urandom(BIG))
    digest = hashlib.sha256((job / "big.bin").read_bytes()).hexdigest()
    args = ssh_args(hosts3, hosts_file(hosts3, tmp_path)) + [
        "-n", "3", "-s", "2", "--sync-dir", "/srv/mxft-host/job", "--env-worker", "MXFT_CHECK=w",
        "--run-root", str(tmp_path / "runs")]
    planned = run_launch(args + ["--dry-run", "--", "python", "pslite_check.py"], cwd=str(job), timeout_s=60)
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr
    assert re.search(r"  relay      \d+ files \(\d+ code, 2 run\) that 3 hosts get at the same path: through the relay",
                     planned.stdout), planned.stdout
    head, killed, stop = hosts3.hosts[0], [], threading.Event()
    killer = threading.Thread(target=_kill_relay_when_it_holds, args=(head, BIG // 4, killed, stop), daemon=True)
    netns.limit_links(hosts3, 320)  # 40 MB/s a link: the copy takes seconds, and the kill falls inside it
    try:
        killer.start()
        done = run_launch(args + ["--", *check_argv("--rounds", "1", "--expect-env", "MXFT_CHECK=w")], cwd=str(job),
                          timeout_s=240)
    finally:
        stop.set()
        netns.limit_links(hosts3, None)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert killed and killed[0] < BIG, killed           # h1's program died with part of the file
    relay = next(line for line in done.stdout.splitlines() if "[stage] relay:" in line)
    stream, from_here = map(int, re.search(r"relay: (\d+) bytes to 3 hosts, (\d+) of them", relay).groups())
    second = hosts3.hosts[1]
    assert stream > BIG and f"{second.address} fed by the launcher ({head.address} ended)" in relay, relay
    assert from_here < 3 * stream, relay                # a star sends it 3 times; h2's rest came from here
    assert f"[stage] {head.address}: not served by the relay" in done.stdout
    lines = done.stdout.splitlines()
    assert sum("all 1 rounds of push/pull correct (sum 6 per round)" in line for line in lines) == 3, lines[-20:]
    for i, host in enumerate(hosts3.hosts):  # the run started on every host: worker i on host i, in its synced copy
        assert any(line.startswith(f"[worker {i}] rank ") and line.endswith("cwd /srv/mxft-host/job")
                   for line in lines), lines
    for host in hosts3.hosts:
        path = os.path.join(host.work_dir, "job", "big.bin")
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest, host.name
        left = glob.glob(os.path.join(host.work_dir, ".incoming.*"))  # the killed program's, removed in an hour
        assert len(left) == (host == head), (host.name, left)
    assert no_processes_left(hosts3, run_id_from(done.stdout)) == {}
