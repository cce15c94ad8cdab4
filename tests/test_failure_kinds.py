"""Failures as values (issue 25): the kind comes from what happened, not from an exit code read back.

A program may exit 255 on its own, which is what OpenSSH exits with when a connection dies;
the launcher must not take it for a lost host (a restart with ``cluster.min_hosts`` would
leave a healthy host out). Both are real here: a program on a namespace host that exits
255, and a process whose SSH connection is cut under it.
"""
from __future__ import annotations

import os
import signal
import sys

import pytest

from cluster.errors import JobFailed
from cluster.failure import FailureKind
from cluster.hosts import HostSpec
from cluster.ssh import SSHHost, SSHOptions
from cluster.supervise import Supervisor
from launcher.run.launch import failed_host
from testing.processes import pids_running
from tests.helpers import wait_until


def supervised_failure(host: SSHHost, code: str, tmp_path, *, while_running=None) -> JobFailed:
    """Run ``python -c CODE`` on the host as worker 0 and return the failure it ends the group with."""
    with pytest.raises(JobFailed) as failed:
        with Supervisor(echo=lambda line: None) as group:
            member = group.start("worker 0", host, [sys.executable, "-c", code], env={},
                                 log_path=str(tmp_path / "worker-0.log"), primary=True)
            if while_running is not None:
                # the group's log pump reads the process's output: its tail shows what it said
                wait_until(lambda: "up" in tuple(member.tail), what="the program to be up", timeout_s=30)
                while_running()
            group.wait()
    return failed.value


@pytest.mark.timeout(60)
def test_a_program_that_exits_255_on_its_own_has_not_lost_its_host(hosts3, tmp_path):
    host = SSHHost(HostSpec(hosts3.hosts[0].address), SSHOptions(ssh_config=hosts3.ssh_config))
    failure = supervised_failure(host, "import sys; sys.exit(255)", tmp_path)
    assert failure.failure.kind is FailureKind.EXITED and failure.failure.exit_code == 255
    assert failure.failure.host == host.label and failure.failure.process == "worker 0"
    assert failed_host(failure) is None and failure.host is None
    assert failure.failure.to_record() == {"kind": "exited", "host": host.label, "process": "worker 0",
                                           "exit_code": 255, "log": str(tmp_path / "worker-0.log"),
                                           "time": round(failure.failure.time, 3)}


@pytest.mark.timeout(60)
def test_a_process_whose_connection_is_cut_has_lost_its_host(hosts3, tmp_path):
    target = hosts3.hosts[1]
    host = SSHHost(HostSpec(target.address), SSHOptions(ssh_config=hosts3.ssh_config))

    def cut_the_connection() -> None:  # the host's sshd session processes (not its listener) die: the link is gone
        for pid in pids_running(target, b"sshd: root", start=True):
            os.kill(pid, signal.SIGKILL)

    program = "import time; print('up', flush=True); time.sleep(60)  # cut-test"
    try:
        failure = supervised_failure(host, program, tmp_path, while_running=cut_the_connection)
    finally:  # without its session the program lives on (no tty): it must not outlast this test
        for pid in pids_running(target, b"cut-test"):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pids_running(target, b"cut-test"), what="the cut-off program to end", timeout_s=10)
    assert failure.failure.kind is FailureKind.CONNECTION_LOST, failure
    assert failed_host(failure) == host.label == failure.host


def test_a_signal_and_an_exit_code_are_told_apart():
    from cluster.failure import of_exit
    assert (of_exit(-15).kind, of_exit(-15).signal) == (FailureKind.SIGNALLED, 15)
    assert (of_exit(143).kind, of_exit(143).signal) == (FailureKind.SIGNALLED, 15)  # a shell's 128 + 15
    assert (of_exit(3).kind, of_exit(3).exit_code, of_exit(3).lost_host) == (FailureKind.EXITED, 3, None)
