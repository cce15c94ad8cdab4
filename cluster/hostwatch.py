"""Notice a host that stops answering (power, kernel panic, a cut link): it leaves no process to exit.

A process on a vanished host never reports an exit; its SSH session just goes quiet, and
TCP notices only after minutes. ``HostWatch`` holds one of the host's shared connections (the one
its processes are sessions of, ``cluster.ssh_sessions``), has paramiko send an SSH keepalive on
it whenever it was idle for ``KEEPALIVE_S``, and asks the kernel (``TCP_INFO``) how long the
connection has gone without an acknowledgement while it retransmits or probes: ``SILENT_S`` marks
the host lost. ``check`` (called with each poll of the run) then says why and sets the host's
``unreachable`` event (``SSHProcess.stop`` then does not wait for that host). A host is named
within ``KEEPALIVE_S + SILENT_S`` (25 s).

The connection itself is left alone, so the sessions' close reaches the host once it is back,
and its processes end then. Watching costs no connection and no thread of its own (issue 26:
a watch cost a connection and two threads a host; 573 threads at 128 hosts). A host reached
through a jump host or a command has no socket of its own to ask, and neither has a kernel without
``TCP_INFO``: such a host is watched as before, by keepalive requests on a connection of its own,
answered within ``SILENT_S`` (``_AskingWatch``).
"""
from __future__ import annotations

import socket
import struct
import threading
import time

KEEPALIVE_S = 5
SILENT_S = 20
_TCP_INFO_SIZE = 104      # struct tcp_info up to the fields read here and beyond, in every Linux since 2.6
_RETRANSMITS, _PROBES, _BACKOFF = 2, 3, 4   # bytes: timeouts not yet recovered, zero-window probes, backoff
_UNACKED, _LAST_ACK_RECV = 24, 56           # u32s: segments sent and not acknowledged; ms since the last ACK


def tcp_info(sock: socket.socket) -> bytes | None:
    """The kernel's ``struct tcp_info`` of ``sock``, or None where there is none to read (not Linux, too short)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    return info if len(info) >= _LAST_ACK_RECV + 4 else None


def unanswered_s(info: bytes) -> float:
    """How long the connection has waited for an acknowledgement, counted only once the kernel retransmits or
    probes (a packet just sent after an idle spell has waited for nothing yet); 0 when nothing waits.

    >>> def info(retransmits=0, probes=0, unacked=0, last_ack_ms=0):
    ...     return struct.pack("5B19xI28xI44x", 0, 0, retransmits, probes, 0, unacked, last_ack_ms)
    >>> unanswered_s(info(retransmits=3, unacked=1, last_ack_ms=21000)), unanswered_s(info(probes=2, last_ack_ms=30000))
    (21.0, 30.0)
    >>> unanswered_s(info(unacked=1, last_ack_ms=40000)), unanswered_s(info(last_ack_ms=40000))
    (0.0, 0.0)
    """
    unacked, = struct.unpack_from("I", info, _UNACKED)
    last_ack, = struct.unpack_from("I", info, _LAST_ACK_RECV)
    waiting = unacked and (info[_RETRANSMITS] or info[_BACKOFF]) or info[_PROBES]
    return last_ack / 1000 if waiting else 0.0


class HostWatch:
    """One host's processes' connection, held for the run; ``check`` names the host once it went unanswered."""

    def __init__(self, host) -> None:
        self.host = host
        self.lost: str | None = None
        self._held = host.hold_connection()
        transport = self._held.connection.transport
        transport.set_keepalive(KEEPALIVE_S)
        direct = isinstance(transport.sock, socket.socket) and tcp_info(transport.sock) is not None
        self._sock = transport.sock if direct else None
        self._asking = None if direct else _AskingWatch(host)

    def check(self) -> str | None:
        """Why the host is lost, or None while it answers."""
        if self.lost is None:
            info = None if self._asking else tcp_info(self._sock)  # None once closed: its processes say so
            silent = self._asking.silent if self._asking else info is not None and unanswered_s(info) >= SILENT_S
            if silent:
                self.lost = f"no reply for {SILENT_S} s"
                self.host.unreachable.set()
        return self.lost

    def close(self) -> None:
        """Stop watching: the connection closes with its last session."""
        if self._asking:
            self._asking.close()
        self.host.release_connection(self._held)


class _AskingWatch:
    """Keepalive requests on a connection of its own, each answered within SILENT_S, or ``silent``."""

    def __init__(self, host) -> None:
        self.host, self.silent = host, False
        self._stopped = threading.Event()
        self._connection = host.connect()
        threading.Thread(target=self._run, name=f"watch {host.label}", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped.wait(KEEPALIVE_S):
            if not self._answered():
                self.silent = True
                return

    def _answered(self) -> bool:
        transport, done = self._connection.transport, threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)  # sshd answers "unsupported" at once
            except Exception:  # noqa: BLE001 - a broken transport is an unanswered request
                return
            done.set()

        started = time.monotonic()
        threading.Thread(target=ask, name=f"keepalive {self.host.label}", daemon=True).start()
        done.wait(SILENT_S)
        return done.is_set() and transport.is_active() and time.monotonic() - started < SILENT_S

    def close(self) -> None:
        self._stopped.set()
        threading.Thread(target=self._connection.close, name=f"close {self.host.label}", daemon=True).start()


def first_lost(watches) -> HostWatch | None:
    """The first watched host found lost, if any."""
    return next((watch for watch in watches if watch.check() is not None), None)
