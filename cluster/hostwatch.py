"""Notice a host that stops answering (power, kernel panic, a cut link): it leaves no process to exit.

A process on a vanished host never reports an exit; its SSH session just goes quiet, and
TCP notices only after minutes. ``HostWatch`` keeps a connection of its own to the host and
sends an SSH keepalive request (``keepalive@openssh.com``, which sshd answers at once)
every ``interval_s``; a request with no answer for ``silent_s`` marks the host lost: its
``unreachable`` event is set (``SSHProcess.stop`` then does not wait for that host) and
``lost`` says why. A host is named within ``interval_s + silent_s`` (25 s by default).
"""
from __future__ import annotations

import threading
import time


class HostWatch:
    """Keepalive requests to one host on a connection of their own; ``lost`` once one goes unanswered."""

    def __init__(self, host, *, interval_s: float = 5.0, silent_s: float = 20.0) -> None:
        self.host, self.interval_s, self.silent_s = host, interval_s, silent_s
        self.lost: str | None = None
        self._stopped = threading.Event()
        self._connection = host.connect()
        self._thread = threading.Thread(target=self._run, name=f"watch {host.label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            if not self._answered():
                self.lost = f"no reply for {self.silent_s:.0f} s"
                self.host.unreachable.set()
                return

    def _answered(self) -> bool:
        """One keepalive request: answered within ``silent_s`` on a live connection."""
        transport = self._connection.transport
        done = threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)  # sshd answers "unsupported" at once
            except Exception:  # noqa: BLE001 - a broken transport is an unanswered request
                return
            done.set()

        started = time.monotonic()
        threading.Thread(target=ask, name=f"keepalive {self.host.label}", daemon=True).start()
        done.wait(self.silent_s)
        return done.is_set() and transport.is_active() and time.monotonic() - started < self.silent_s

    def close(self) -> None:
        """Stop watching; the watch's connection is closed in the background (a lost host never answers)."""
        self._stopped.set()
        threading.Thread(target=self._connection.close, name=f"close {self.host.label}", daemon=True).start()


def first_lost(watches) -> HostWatch | None:
    """The first watched host found lost, if any."""
    return next((watch for watch in watches if watch.lost is not None), None)
