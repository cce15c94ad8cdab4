"""The supervisor with real child processes: success, first failure wins, nothing left behind."""
from __future__ import annotations

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


def test_support_leaving_early_fails_the_group(tmp_path):
    started = time.monotonic()
    with pytest.raises(JobFailed, match="scheduler on localhost .* exited before the workers finished"):
        with Supervisor(echo=lambda line: None) as group:
            start(group, "worker 0", "import time; time.sleep(60)", tmp_path)
            start(group, "scheduler", "pass", tmp_path, primary=False)
            group.wait(support_grace_s=1.0)
    assert time.monotonic() - started < 10


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
        "cd '/t d' && exec env 'X=1 2' echo 'a b' '$HOME'"
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
