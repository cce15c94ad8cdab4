"""The relay (``launcher.run.relay``) between processes of this machine: real relay programs, pipes and TCP, each
"host" a folder of its own (the seam: its program runs in that folder, and the destinations are relative, so each
host's files land in its folder). Namespace hosts, a killed relay host and limited links:
``tests/test_multihost_relay.py``."""
from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys

import pytest

from launcher.run.relay import Common, relay
from launcher.run.relay_routes import Reroute

pytestmark = pytest.mark.timeout(120)


class _FolderHost:
    """A host whose relay program is a process here, in its own folder."""

    def __init__(self, folder) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def stream_to(self, command: str) -> subprocess.Popen:
        return self.run_here(shlex.split(command)[1:])

    def run_here(self, python_args: list[str]) -> subprocess.Popen:
        """``python_args`` run by this Python in the host's folder, with the pipes staging gets."""
        self.proc = subprocess.Popen([sys.executable, *python_args], cwd=self.folder, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        return self.proc


def _files(tmp_path, sizes: dict[str, int], *, keep: bool = True) -> list[Common]:
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    files = []
    for name, size in sizes.items():
        path = source / name
        path.write_bytes(os.urandom(size))
        files.append(Common(str(path), f"got/{name}", size, hashlib.sha256(path.read_bytes()).hexdigest(), 0o640,
                            keep=keep))
    return files


def _hosts(tmp_path, count: int) -> dict[str, _FolderHost]:
    hosts = {}
    for index in range(1, count + 1):
        folder = tmp_path / f"h{index}"
        folder.mkdir()
        hosts[f"h{index}"] = _FolderHost(folder)
    return hosts


def _relay(hosts, files, *, on_start=None, **options):
    def progress(what: str, done: int, total: int) -> None:
        if done == 0 and on_start is not None:
            on_start()
    return relay(hosts, files, {label: list(range(len(files))) for label in hosts}, root_of=lambda label: "work",
                 python_of=lambda label: sys.executable, address_of=lambda label: "127.0.0.1", progress=progress,
                 silence_s=30, **options)


def _landed(host: _FolderHost, files: list[Common]) -> bool:
    return all((host.folder / f.dest).read_bytes() == open(f.source, "rb").read() for f in files)


def test_every_host_gets_every_file_and_the_launcher_sends_one_stream_per_chain(tmp_path):
    files = _files(tmp_path, {"model.params": 6 << 20, "small.py": 300, "empty": 0})
    hosts = _hosts(tmp_path, 5)
    outcome = _relay(hosts, files)
    assert outcome.missed == {} and outcome.placed == {label: 3 for label in hosts}
    assert outcome.stream_bytes == sum(f.size for f in files)
    assert outcome.launcher_bytes == 2 * outcome.stream_bytes          # two chains: h1-h2-h3 and h4-h5
    assert all(_landed(host, files) for host in hosts.values())
    assert oct((hosts["h3"].folder / "got/model.params").stat().st_mode & 0o777) == "0o640"
    assert all(not [n for n in os.listdir(host.folder / "work") if n.startswith(".incoming.")]
               for host in hosts.values())

    again = _relay(hosts, files)       # every file checked and marked there: nothing is sent again
    assert (again.stream_bytes, again.launcher_bytes, again.placed, again.missed) == (0, 0, {}, {})


def test_files_of_the_run_itself_go_again_and_a_host_missing_one_file_gets_only_that_one(tmp_path):
    files = _files(tmp_path, {"a": 1 << 20, "b": 2 << 20})
    hosts = _hosts(tmp_path, 3)
    _relay(hosts, files)
    os.remove(hosts["h2"].folder / "got/b")
    again = _relay(hosts, files)
    assert (again.placed, again.stream_bytes) == ({"h2": 1}, 2 << 20)
    assert _landed(hosts["h2"], files)


@pytest.mark.parametrize("how, why", [(signal.SIGKILL, "h2 ended"), (signal.SIGSTOP, "h2 said nothing for 3 s")])
def test_a_relay_host_that_dies_or_hangs_is_routed_around_and_named(tmp_path, how, why):
    files = _files(tmp_path, {"model.params": 8 << 20})
    hosts = _hosts(tmp_path, 4)
    outcome = _relay(hosts, files, chain_count=1, deadline_s=3, on_start=lambda: hosts["h2"].proc.send_signal(how))
    assert sorted(outcome.placed) == ["h1", "h3", "h4"] and list(outcome.missed) == ["h2"]
    assert Reroute("h3", "h2", "h1", why) in outcome.reroutes
    assert all(_landed(hosts[label], files) for label in ("h1", "h3", "h4"))
    assert not (hosts["h2"].folder / "got/model.params").exists()
    assert hosts["h2"].proc.poll() is not None    # the stopped one was ended, not left behind


class _SaysWrong(_FolderHost):
    def stream_to(self, command: str) -> subprocess.Popen:
        return self.run_here(["-c", "import sys; sys.stdin.read(4);"
                                    "print('{\"present\": [], \"port\": 99999}', flush=True); sys.stdin.read()"])


def test_a_host_that_answers_the_relay_in_a_shape_it_does_not_write_is_left_to_staging_named(tmp_path):
    files = _files(tmp_path, {"a": 1 << 20})
    hosts = _hosts(tmp_path, 3)
    hosts["h2"] = _SaysWrong(hosts["h2"].folder)
    outcome = _relay(hosts, files)
    assert outcome.missed == {"h2": "answered the relay wrongly (a line the relay does not write: "
                                    "'{\"present\": [], \"port\": 99999}')"}
    assert sorted(outcome.placed) == ["h1", "h3"] and _landed(hosts["h3"], files)


def test_a_stream_that_does_not_match_the_launchers_digest_lands_nowhere(tmp_path):
    files = _files(tmp_path, {"a": 1 << 20})
    files[0] = Common(files[0].source, files[0].dest, files[0].size, "0" * 64, files[0].mode, keep=True)
    hosts = _hosts(tmp_path, 3)
    outcome = _relay(hosts, files)
    assert outcome.placed == {} and outcome.missed == {label: "checksum mismatch: got/a" for label in hosts}
    assert not any((host.folder / "got").exists() for host in hosts.values())


def test_a_host_that_cannot_listen_at_its_address_is_left_to_staging_named(tmp_path):
    files = _files(tmp_path, {"a": 1 << 20})
    hosts = _hosts(tmp_path, 3)
    outcome = relay(hosts, files, {label: [0] for label in hosts}, root_of=lambda label: "work",
                    python_of=lambda label: sys.executable, progress=lambda *report: None, silence_s=30,
                    address_of=lambda label: "192.0.2.1" if label == "h2" else "127.0.0.1")  # TEST-NET: not here
    assert list(outcome.missed) == ["h2"] and "Cannot assign requested address" in outcome.missed["h2"]
    assert sorted(outcome.placed) == ["h1", "h3"] and _landed(hosts["h3"], files)
    assert not [n for n in os.listdir(hosts["h2"].folder / "work") if n.startswith(".incoming.")]


def test_a_byte_once_written_is_never_written_again_and_each_is_hashed_as_written(tmp_path):
    from launcher.remote import relay_host
    good, bad = b"a" * 1000, b"b" * 1000
    stream = relay_host.Stream([{"dest": "x", "size": 1000, "sha256": "", "mode": 0o600}], str(tmp_path))
    assert stream.write(0, good[:600]) and stream.write(400, bad[400:700])   # a feed that overlaps what is here
    assert not stream.write(800, good[800:])                                 # a gap: refused
    assert stream.write(0, bad) and stream.write(700, good[700:])            # a feed from the start again
    assert (tmp_path / "0").read_bytes() == b"a" * 600 + b"b" * 400              # each byte as it first came
    assert stream.hashes[0].hexdigest() == hashlib.sha256((tmp_path / "0").read_bytes()).hexdigest()


def test_a_host_takes_a_feed_only_with_the_secret_of_the_feed_the_launcher_gave_it(tmp_path):
    import json
    import socket
    import struct

    from launcher.remote import relay_host
    feeds = relay_host.Feeds("127.0.0.1")
    feeds.start(relay_host.Stream([{"dest": "x", "size": 10, "sha256": "", "mode": 0o600}], str(tmp_path)))
    feeds.expect("new")

    def greet(token: str) -> bytes:
        with socket.create_connection(("127.0.0.1", feeds.port), timeout=5) as conn:
            hello = json.dumps({"token": token}).encode()
            conn.sendall(struct.pack(">I", len(hello)) + hello)
            return conn.recv(8)
    try:
        assert greet("old") == b"" and greet("") == b""          # refused: closed without an answer
        assert greet("new") == struct.pack(">Q", 0)              # taken: it says how much it has
    finally:
        feeds.close()


class _SlowToStart(_FolderHost):
    """A host whose relay program starts 4 s after the others' (a slow SSH login)."""

    def stream_to(self, command: str) -> subprocess.Popen:
        return self.run_here(["-c", "import os, sys, time; time.sleep(4); "
                                    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])",
                              *shlex.split(command)[1:]])


class _AnswersThenEnds(_FolderHost):
    def stream_to(self, command: str) -> subprocess.Popen:
        return self.run_here(["-c", "import sys; sys.stdin.buffer.read(4); "
                                    "print('{\"present\": [], \"port\": 9}', flush=True)"])


def test_hosts_that_answered_long_before_the_last_one_are_not_taken_for_silent(tmp_path):
    files = _files(tmp_path, {"a": 2 << 20})
    hosts = _hosts(tmp_path, 3)
    hosts["h3"] = _SlowToStart(hosts["h3"].folder)
    outcome = _relay(hosts, files, chain_count=1, deadline_s=3)
    assert (outcome.missed, outcome.reroutes, sorted(outcome.placed)) == ({}, (), ["h1", "h2", "h3"])


def test_a_host_that_answers_and_then_ends_is_left_to_staging_not_counted_as_served(tmp_path):
    files = _files(tmp_path, {"a": 1 << 20})
    hosts = _hosts(tmp_path, 3)
    hosts["h2"] = _AnswersThenEnds(hosts["h2"].folder)
    outcome = _relay(hosts, files)
    assert list(outcome.missed) == ["h2"] and outcome.missed["h2"].startswith("its relay program ended")
    assert sorted(outcome.placed) == ["h1", "h3"]
