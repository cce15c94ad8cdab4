"""The suite's own machinery on a machine that an earlier run left in any state, and tests that leave the process
as they found it (issue 23).

A run killed halfway (CI's time limit, a person's Ctrl-C, an OOM kill) leaves daemons,
configuration and folders behind; a new machine has none of them, not even /run/munge.
Each fixture must come up from either, whatever the umask of the process that brings it
up. ``tests/fresh_machine.sh`` rehearses the new machine as a whole.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import psutil
import pytest

from launcher import cli
from testing import slurm
from tests.helpers import REPO

# Brings Slurm up on the hosts given as JSON, says so, and holds it until it is killed.
_HOLD_SLURM = """
import json, sys, time
from testing import netns, slurm
given = json.loads(sys.argv[1])
hosts = tuple(netns.NetnsHost(**host) for host in given.pop("hosts"))
slurm.up(netns.NetnsCluster(hosts, **given))
print("up", flush=True)
time.sleep(600)
"""


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def test_the_cli_keeps_its_umask_and_signal_handlers_to_its_own_call(monkeypatch):
    """An in-process call of ``main`` (a test, a script) runs with the launcher's settings and gives the caller's
    back: the 0077 umask once leaked from here to every later test, and munged then refused /run/munge."""
    seen = {}

    def launch_probe(argv, *, command_mode):
        seen.update(umask=_umask(), term=signal.getsignal(signal.SIGTERM), usr1=signal.getsignal(signal.SIGUSR1))
        return 0

    monkeypatch.setattr(cli, "_launch", launch_probe)
    before = (_umask(), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1))
    assert cli.main(["jobs/demo.yaml"]) == 0
    assert seen == {"umask": 0o077, "term": cli._raise_interrupted, "usr1": cli._raise_interrupted}
    assert (_umask(), signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before


def test_the_state_check_fails_the_test_that_changes_the_process(pytester, monkeypatch):
    """The autouse check in tests/conftest.py names each change and puts it back for the next test."""
    monkeypatch.setenv("PYTHONPATH", REPO)
    with open(os.path.join(REPO, "tests", "conftest.py"), encoding="utf-8") as handle:
        pytester.makeconftest(handle.read())
    pytester.makepyfile(test_leaks="""
import os, signal

def test_umask():
    os.umask(0o077)

def test_signal():
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)

def test_environment():
    os.environ["MXFT_LEAKED"] = "1"

def test_after_them():
    umask = os.umask(0o022)
    os.umask(umask)
    assert umask != 0o077 and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL and "MXFT_LEAKED" not in os.environ
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=4, errors=3)
    result.stdout.fnmatch_lines(["*umask: '0o22' -> '0o77'*",
                                 "*SIGUSR1 <Handlers.SIG_DFL: 0> -> <Handlers.SIG_IGN: 1>*",
                                 "*environment: MXFT_LEAKED None -> '1'*"])


def _kill_munged() -> None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "munged":
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_slurm_comes_up_after_the_process_holding_it_was_killed_and_run_was_emptied(hosts3):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_SLURM, json.dumps(dataclasses.asdict(hosts3))], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
    finally:
        holder.kill()
        holder.wait(timeout=10)
    # The worst of what is left: Slurm's configuration with no controller to answer it (as after a reboot or a crash
    # of slurmctld), and a /run without munge's folder (as on a new machine), brought up by a process whose umask
    # is 0077 (as an in-process CLI call once left it).
    for proc in slurm._our_daemons():
        if proc.name() == "slurmctld":
            proc.kill()
    assert os.path.exists(slurm.CONF)
    _kill_munged()
    shutil.rmtree("/run/munge")
    umask = os.umask(0o077)
    try:
        cluster = slurm.up(hosts3)
    finally:
        os.umask(umask)
    try:
        assert stat.S_IMODE(os.stat("/run/munge").st_mode) == 0o755
        ran = subprocess.run(["srun", "-N3", "-n3", "hostname"], env=cluster.env, capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert sorted(ran.stdout.split()) == ["h1", "h2", "h3"]
    finally:
        slurm.down()
    assert not slurm._our_daemons() and not os.path.exists(slurm.STATE)
