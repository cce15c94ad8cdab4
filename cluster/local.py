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
from collections.abc import Mapping, Sequence
from typing import IO

import psutil

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
    """A running local process with its stdout (stderr merged) as text lines."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def stdout(self) -> IO[str]:
        return self._popen.stdout

    def poll(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return self._popen.poll()

    def stop(self, *, grace_s: float) -> None:
        """SIGTERM the process group and every descendant, SIGKILL what is left after ``grace_s``.

        The process itself is waited for through its Popen only: had psutil reaped it,
        Popen could no longer read its status and would report exit code 0 for a process
        that was killed. Its descendants are not our children, so psutil waits for them.
        """
        try:
            descendants = psutil.Process(self._popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self._popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            self._popen.send_signal(sig)  # (a no-op once it has been waited for)
            for proc in descendants:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            deadline = time.monotonic() + wait_s
            _, descendants = psutil.wait_procs(descendants, timeout=wait_s)
            if self._exited_by(deadline) and not descendants:
                break

    def _exited_by(self, deadline: float) -> bool:
        try:
            self._popen.wait(timeout=max(deadline - time.monotonic(), 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False


class LocalTransport:
    """Starts processes on this machine; the same interface the SSH transport offers."""

    label = "localhost"

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> LocalProcess:
        full_env = dict(os.environ)
        full_env.update(env)
        popen = subprocess.Popen(
            list(argv), env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
            start_new_session=True, preexec_fn=die_with_parent)
        return LocalProcess(popen)
