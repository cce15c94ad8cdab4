"""Processes on this machine: the transport of single-node mode.

Each process starts in its own session (so its whole process group can be signalled
at once) and with ``PR_SET_PDEATHSIG``: if the launcher dies, even by SIGKILL, the
kernel kills its children, so nothing of a run outlives the launcher.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence

import psutil

from cluster.lines import bounded_lines

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # not Linux: the launcher's own teardown still applies
        pass


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` different free TCP ports, ascending (all held open until all are chosen)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return sorted(sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


class LocalProcess:
    """A running local process with its stdout (stderr merged) as text lines, each at most ``MAX_LINE`` long
    (``cluster.lines``: whatever the process writes, the launcher holds one line of it at a time)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout: Iterator[str] = bounded_lines(popen.stdout.read)  # an unbuffered pipe: read(n) <= n bytes

    def poll(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return self._popen.poll()

    def stop(self, *, grace_s: float) -> None:
        """SIGTERM the process group and every descendant, SIGKILL what is left after ``grace_s``.

        The process is reaped only after its group was signalled for the last time (through its
        Popen, which keeps its exit status): until then its pid, the group's id, cannot be another
        process's, so no signal reaches a stranger that took the number over. A process reaped
        before ``stop`` is not signalled at all. Its descendants are not our children: psutil
        signals and waits for them (it checks each one is still the process it found).
        """
        try:
            descendants = psutil.Process(self._popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        reaped = self._popen.returncode is not None
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if not reaped:
                for signal_it in (os.killpg, os.kill):  # the leader too, should it have left its group
                    try:
                        signal_it(self._popen.pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
            for proc in descendants:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            deadline = time.monotonic() + wait_s
            _, descendants = psutil.wait_procs(descendants, timeout=wait_s)
            if (reaped or self._exited_by(deadline)) and not descendants:
                break
        if not reaped and exited_unreaped(self._popen.pid):
            self._popen.wait()

    def _exited_by(self, deadline: float) -> bool:
        while not exited_unreaped(self._popen.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True


def exited_unreaped(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (a child reaped already counts as exited)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


class LocalTransport:
    """Starts processes on this machine; the same interface the SSH transport offers."""

    label = "localhost"
    starts_in_pool = False          # PR_SET_PDEATHSIG: the child dies with the thread that started it
    watched_by_keepalive = False

    def run(self, argv: Sequence[str], *, timeout_s: float = 60.0) -> tuple[int, str, str]:
        """Run a command to completion here, as ``SSHHost.run`` does there: (exit code, stdout, stderr)."""
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s, errors="replace")
        return done.returncode, done.stdout, done.stderr

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> LocalProcess:
        full_env = dict(os.environ)
        full_env.update(env)
        popen = subprocess.Popen(
            list(argv), env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, bufsize=0, start_new_session=True, preexec_fn=die_with_parent)
        return LocalProcess(popen)
