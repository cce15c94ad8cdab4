"""SSH at scale (issue 15): a host's processes share a few connections; probing and staging use a bounded pool.

The session pool's logic is tested at its seam (a fake connection that refuses sessions beyond
the server's MaxSessions); the bounded pools against 200 real, unreachable addresses.
"""
from __future__ import annotations

import threading

import paramiko
import pytest

from cluster.errors import JobFailed
from cluster.failure import FailureKind
from cluster.hosts import HostSpec
from cluster.ssh import HOSTS_AT_ONCE, SSHHost, SSHOptions
from cluster.ssh_sessions import SessionPool
from launcher.plan import Transfer
from launcher.run.preflight import probe_all
from launcher.run.stage import stage_all

UNREACHABLE = [f"10.255.255.{i}" for i in range(1, 201)]  # no route, or no answer: each fails within 1 s


class FakeTransport:
    """An SSH connection whose server allows ``max_sessions`` sessions at once."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions, self.sessions, self.active = max_sessions, 0, True

    def is_active(self) -> bool:
        return self.active

    def open_session(self, timeout: float) -> object:
        if self.sessions >= self.max_sessions:
            raise paramiko.ChannelException(1, "administratively prohibited: open failed")
        self.sessions += 1
        return object()


class FakeConnection:
    def __init__(self, max_sessions: int) -> None:
        self.transport = FakeTransport(max_sessions)
        self.closed = False

    def close(self) -> None:
        self.closed, self.transport.active = True, False


def pool_of(max_sessions: int, **limits) -> tuple[SessionPool, list[FakeConnection]]:
    opened: list[FakeConnection] = []

    def connect() -> FakeConnection:
        opened.append(FakeConnection(max_sessions))
        return opened[-1]

    return SessionPool(connect, **limits), opened


@pytest.mark.timeout(10)
def test_sixteen_sessions_share_two_connections_which_close_with_their_last_session():
    pool, opened = pool_of(10)  # sshd's default MaxSessions
    sessions = [pool.open_session()[0] for _ in range(16)]
    assert [c.transport.sessions for c in opened] == [9, 7]
    assert pool.connections() == 2
    for shared in sessions[:9]:
        pool.release(shared)
    assert [c.closed for c in opened] == [True, False] and pool.connections() == 1
    for shared in sessions[9:]:
        pool.release(shared)
    assert [c.closed for c in opened] == [True, True] and pool.connections() == 0
    pool.open_session()
    assert len(opened) == 3  # a closed connection is never reused


@pytest.mark.timeout(10)
def test_a_server_allowing_fewer_sessions_gets_more_connections():
    pool, opened = pool_of(4)  # MaxSessions 4 in this server's sshd_config
    for _ in range(10):
        pool.open_session()
    assert [c.transport.sessions for c in opened] == [4, 4, 2]
    refusing, _ = pool_of(0)  # a server that takes no session at all: the error, and no connection left open
    with pytest.raises(paramiko.ChannelException):
        refusing.open_session()
    assert refusing.connections() == 0


@pytest.mark.timeout(10)
def test_a_lost_connection_is_replaced():
    pool, opened = pool_of(10)
    pool.open_session()
    opened[0].transport.active = False  # the network went away
    pool.open_session()
    assert len(opened) == 2 and opened[0].closed and pool.connections() == 1


class ThreadWatch:
    """The most threads this process ran at once while the block ran (sampled every 10 ms)."""

    def __enter__(self) -> "ThreadWatch":
        self.most, self._done = threading.active_count(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.most = max(self.most, threading.active_count())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def unreachable_hosts(tmp_path) -> list[tuple[HostSpec, SSHHost]]:
    config = tmp_path / "ssh_config"
    config.write_text("")
    options = SSHOptions(ssh_config=str(config), connect_timeout_s=1)
    return [(HostSpec(address, port=9), SSHHost(HostSpec(address, port=9), options)) for address in UNREACHABLE]


@pytest.mark.timeout(90)
def test_preflight_of_200_unreachable_hosts_uses_a_bounded_pool(tmp_path):
    hosts = unreachable_hosts(tmp_path)
    before = threading.active_count()
    with ThreadWatch() as watch:
        probed = probe_all(hosts, "~/.mxft")
    assert list(probed.hosts) == list(probed.failed) == [spec.label for spec, _ in hosts] and not probed.ok
    assert all(f.failure.kind is FailureKind.UNREACHABLE and f.reason.startswith("unreachable over SSH")
               for f in probed.failed.values()), {f.reason for f in probed.failed.values()}
    # The watcher, the pool, each connection's transport thread and a few of those still ending:
    # bounded by the pool, far below one per host.
    assert watch.most <= before + 1 + 3 * HOSTS_AT_ONCE < len(hosts)


@pytest.mark.timeout(120)
def test_staging_200_unreachable_hosts_names_each_in_order_with_a_bounded_pool(tmp_path):
    hosts = unreachable_hosts(tmp_path)
    source = tmp_path / "a.rec"
    source.write_bytes(b"records")
    transfers = [Transfer(spec.label, str(source), "/w/data/k/a.rec", "data") for spec, _ in hosts]
    before = threading.active_count()
    with ThreadWatch() as watch, pytest.raises(JobFailed) as failed:
        stage_all({spec.label: ssh for spec, ssh in hosts}, transfers, root_of=lambda label: "/w",
                  python_of=lambda label: "python3", progress=lambda *report: None)
    lines = str(failed.value).splitlines()
    assert lines[0] == "staging failed:" and failed.value.failure.kind is FailureKind.STAGING
    assert len(lines) == 1 + len(hosts)
    assert all(line.startswith(f"  {spec.label}: copying 1 files failed") for line, (spec, _) in zip(lines[1:], hosts))
    # The test's watcher, the pool and the one thread that watches every copy for silence (each host's ssh is a
    # process): bounded by the pool, not by the hosts.
    assert watch.most <= before + 1 + HOSTS_AT_ONCE + 1
