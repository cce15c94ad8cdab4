"""The supervisor with real child processes: success, first failure wins, nothing left behind."""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from cluster.errors import JobFailed
from cluster.local import LocalTransport
from cluster.supervise import Supervisor, describe_exit

PY = sys.executable


def script(code: str) -> tuple[str, ...]:
    return (PY, "-c", code)


def start(group, name, code, tmp_path, *, primary=True):
    return group.start(name, LocalTransport(), script(code), env={"MXFT_TEST": "1"},
                       log_path=str(tmp_path / f"{name}.log"), primary=primary)


def test_success_streams_prefixed_lines_and_stops_lingering_support(tmp_path):
    lines = []
    with Supervisor(echo=lines.append) as group:
        start(group, "worker 0", "print('hello'); print('bye')", tmp_path)
        server = start(group, "server 0", "import time; time.sleep(60)", tmp_path, primary=False)
        group.wait(support_grace_s=0.5)
    assert "[worker 0] hello" in lines and "[worker 0] bye" in lines
    assert (tmp_path / "worker 0.log").read_text() == "hello\nbye\n"
    assert not psutil.pid_exists(server.process.pid) or psutil.Process(server.process.pid).status() == "zombie"


def test_first_failure_is_the_root_cause_and_everyone_is_stopped(tmp_path):
    with pytest.raises(JobFailed) as info:
        with Supervisor(echo=lambda line: None) as group:
            sleeper = start(group, "worker 0", "import time; time.sleep(60)", tmp_path)
            start(group, "worker 1", "import sys; print('boom'); sys.exit(3)", tmp_path)
            group.wait()
    message = str(info.value)
    assert message.startswith("worker 1 on localhost (pid ")
    assert "exited with code 3" in message and "    boom" in message
    assert sleeper.process.poll() is not None


def wait_for_line(tmp_path, *names: str) -> None:
    """Until each named process has printed its first line (the test's timeout bounds the wait)."""
    logs = [tmp_path / f"{name}.log" for name in names]
    while not all(log.exists() and log.read_text().startswith("up") for log in logs):
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_stopped_processes_are_recorded_with_the_signal_that_ended_them(tmp_path):
    """Not exit code 0: psutil must not reap our own child before its Popen reads the status."""
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); " \
                  "time.sleep(60)"
    with pytest.raises(JobFailed):
        with Supervisor(echo=lambda line: None, stop_grace_s=0.5) as group:
            stubborn = start(group, "worker 0", ignore_term, tmp_path)
            polite = start(group, "worker 1", "import time; print('up', flush=True); time.sleep(60)", tmp_path)
            wait_for_line(tmp_path, "worker 0", "worker 1")  # SIGTERM is ignored from here on
            start(group, "worker 2", "import sys; sys.exit(3)", tmp_path)
            group.wait()
    assert [(o.name, o.returncode) for o in group.outcomes()] == [("worker 0", -9), ("worker 1", -15), ("worker 2", 3)]
    assert stubborn.process.poll() == -9 and polite.process.poll() == -15


@pytest.mark.timeout(60)
def test_a_process_killed_from_outside_is_recorded_as_killed(tmp_path):
    with pytest.raises(JobFailed, match="worker 0 on localhost .* was killed by SIGKILL"):
        with Supervisor(echo=lambda line: None) as group:
            member = start(group, "worker 0", "import time; print('up', flush=True); time.sleep(60)", tmp_path)
            wait_for_line(tmp_path, "worker 0")
            os.kill(member.process.pid, signal.SIGKILL)
            group.wait()
    assert group.outcomes()[0].returncode == -9


def test_support_leaving_early_fails_the_group(tmp_path):
    with pytest.raises(JobFailed, match="scheduler on localhost .* exited before the workers finished"):
        with Supervisor(echo=lambda line: None) as group:
            start(group, "worker 0", "import time; time.sleep(60)", tmp_path)
            start(group, "scheduler", "pass", tmp_path, primary=False)
            group.wait(support_grace_s=1.0)
    worker, scheduler = group.outcomes()
    assert scheduler.returncode == 0
    assert worker.returncode in (None, -signal.SIGTERM, -signal.SIGKILL), worker  # stopped, not waited for


def test_grandchildren_are_stopped_too(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('ready', flush=True); time.sleep(60)")
    with Supervisor(echo=lambda line: None) as group:
        start(group, "worker 0", code, tmp_path)
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"


@pytest.mark.parametrize("code, text", [(-9, "was killed by SIGKILL"), (137, "was killed by SIGKILL"),
                                        (3, "exited with code 3"), (-15, "was killed by SIGTERM"),
                                        (255, "exited with code 255 (what ssh reports when the connection is lost)")])
def test_describe_exit(code, text):
    assert describe_exit(code) == text


def test_remote_command_quotes_once():
    from cluster.ssh import remote_command
    assert remote_command(["echo", "a b", "$HOME"], env={"X": "1 2"}, cwd="/t d") == \
        "cd '/t d' && exec env -- 'X=1 2' echo 'a b' '$HOME'"
    assert remote_command(["true"]) == "exec true"


def test_a_failing_line_handler_is_survived(tmp_path):
    """A bug in on_line must not kill the log pump (the process would block on a full pipe)."""
    lines = []

    def handler(member, line):
        if line == "bad":
            raise ValueError("boom")
        return False

    with Supervisor(echo=lines.append, on_line=handler) as group:
        start(group, "worker 0", "print('bad'); print('x' * 70000); print('after')", tmp_path)
        group.wait()
    assert "[mxft] could not handle a line of worker 0 (ValueError: boom); continuing" in lines
    assert lines[-1] == "[worker 0] after"
