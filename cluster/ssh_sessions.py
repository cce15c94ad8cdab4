"""One host's SSH connections for its processes: a session (channel) per process, few connections.

A launch that starts 16 processes on one host used to open 16 connections at once, and
OpenSSH's sshd refuses new unauthenticated connections beyond ``MaxStartups 10:30:100``
(by default 30% of them once 10 are pending, all of them at 100). Here every process of a
host is a session of a shared connection instead. sshd allows ``MaxSessions`` sessions
per connection (10 by default), so a connection carries at most ``SESSIONS_PER_CONNECTION``
(9: one is left for the account's own use, e.g. agent forwarding) and the next process
opens another connection; a server configured lower refuses a session, and that
connection is then taken as full at what it carries. Connections are opened one at a time
per host (under the pool's lock), so a host never has more than one unauthenticated
connection from this launcher pending, and each is closed when its last session is done.

Teardown is unchanged: each process is its own session, so closing its channel (or losing
the connection, or the launcher dying) ends that session, and ``trainer.remote`` ends the
process group when its stdin closes.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import fabric
import paramiko

SESSIONS_PER_CONNECTION = 9  # sshd's default MaxSessions is 10


class SharedConnection:
    """One open connection and how many sessions it carries for processes (``in_use``) of at most ``limit``."""

    def __init__(self, connection: fabric.Connection, limit: int) -> None:
        self.connection = connection
        self.limit = limit
        self.in_use = 0

    @property
    def alive(self) -> bool:
        transport = self.connection.transport
        return transport is not None and transport.is_active()


class SessionPool:
    """A host's connections for process sessions: ``open_session`` a channel, ``release`` it when done.

    ``connect`` opens a new connection (host keys checked; raises as ``SSHHost.connect``).
    """

    def __init__(self, connect: Callable[[], fabric.Connection], *, limit: int = SESSIONS_PER_CONNECTION,
                 open_timeout_s: float = 30.0) -> None:
        self._connect = connect
        self._limit = limit
        self._open_timeout_s = open_timeout_s
        self._lock = threading.Lock()
        self._shared: list[SharedConnection] = []

    def open_session(self) -> tuple[SharedConnection, paramiko.Channel]:
        """A new session channel on a connection with room (opened if none has); give it back with ``release``."""
        with self._lock:
            while True:
                shared = self._with_room()
                try:
                    channel = shared.connection.transport.open_session(timeout=self._open_timeout_s)
                except paramiko.ChannelException:
                    if shared.in_use == 0:  # a fresh connection that takes no session at all
                        self._drop(shared)
                        raise
                    shared.limit = shared.in_use  # the server's MaxSessions is lower than assumed: full
                    continue
                shared.in_use += 1
                return shared, channel

    def _with_room(self) -> SharedConnection:
        """A live connection below its limit; a new one if there is none (held under the lock)."""
        for shared in [s for s in self._shared if not s.alive]:
            self._drop(shared)  # lost: its processes see that themselves (CONNECTION_LOST)
        room = next((s for s in self._shared if s.in_use < s.limit), None)
        if room is None:
            room = SharedConnection(self._connect(), self._limit)
            self._shared.append(room)
        return room

    def hold(self) -> SharedConnection:
        """A live connection (opened if none has room), counted as one of its sessions until ``release``."""
        with self._lock:
            shared = self._with_room()
            shared.in_use += 1
            return shared

    def release(self, shared: SharedConnection) -> None:
        """One session of ``shared`` is done; the connection closes with its last one."""
        with self._lock:
            shared.in_use -= 1
            if shared.in_use <= 0:
                self._drop(shared)

    def close(self) -> None:
        """Close every connection still open (their sessions' processes are stopped or lost by then)."""
        with self._lock:
            for shared in list(self._shared):
                self._drop(shared)

    def connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return len(self._shared)

    def _drop(self, shared: SharedConnection) -> None:
        if shared in self._shared:
            self._shared.remove(shared)
        shared.connection.close()
