"""The programs mxft runs on hosts, as the modules they are (issue 25): each is sent as source and run by the
host's own Python, and each is tested here as a real process on this machine (the receiver in test_stage.py,
the probe in test_preflight.py)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys

from launcher.remote import fetch_sender, host_probe
from launcher.run.reach import PROBE as REACH_PROBE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(port: int) -> str:
    done = subprocess.run([sys.executable, "-c", REACH_PROBE, "connect", "127.0.0.1", str(port), "5"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_reach_probe_listens_until_its_input_closes_and_connects_or_says_why_not():
    port = free_port()
    assert connect(port) == "Connection refused"
    listener = subprocess.Popen([sys.executable, "-c", REACH_PROBE, "listen", "127.0.0.1", str(port), "60"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        assert connect(port) == "ok"
        taken = subprocess.run([sys.executable, "-c", REACH_PROBE, "listen", "127.0.0.1", str(port), "60"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert taken.returncode == 3 and taken.stdout.strip() == "cannot listen: Address already in use"
    finally:
        listener.stdin.close()  # the launcher's end: the listener stops
        assert listener.wait(timeout=30) == 0


def test_the_fetch_sender_frames_regular_files_and_stops_at_the_first_that_is_not_one(tmp_path):
    (tmp_path / "a.json").write_bytes(b"{}")
    (tmp_path / "b.params").write_bytes(b"x" * 3_000_000)  # more than one chunk
    os.symlink(tmp_path / "a.json", tmp_path / "link.json")
    out = io.BytesIO()
    assert fetch_sender.send(str(tmp_path), ["a.json", "b.params"], out) == 0
    frames, data = [], out.getvalue()
    while data:
        (length,) = struct.unpack(">I", data[:4])
        header, data = json.loads(data[4:4 + length]), data[4 + length:]
        frames.append(header)
        data = data[header.get("size", 0):]
    assert frames == [{"name": "a.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()},
                      {"name": "b.params", "size": 3_000_000, "sha256": hashlib.sha256(b"x" * 3_000_000).hexdigest()},
                      {"end": 2}]
    refused = io.BytesIO()
    assert fetch_sender.send(str(tmp_path), ["a.json", "link.json"], refused) == 1
    assert refused.getvalue().endswith(b'{"error": "link.json: Too many levels of symbolic links"}')


def test_the_host_probe_reports_this_machine(tmp_path):
    found = host_probe.facts([str(tmp_path / "work"), "/tmp"])
    assert found["python"] == sys.version.split()[0] and found["work_dir"] == str(tmp_path / "work")
    assert found["free_bytes"] > 0 and "lo" in found["interfaces"] and found["interfaces"]["lo"] == "127.0.0.1"
    assert [folder for folder, _ in found["unsafe_folders"]] == ["/tmp"]  # others can write there
    assert not os.path.exists(tmp_path / "work")  # asked about, never made


def test_a_file_is_known_by_size_time_and_first_and_last_mib(tmp_path):
    """Issue 26: what preflight compares to decide that a host has the very file this machine has."""
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    rec.write_bytes(b"a" * (3 << 20))
    idx.write_bytes(b"0\t0\n" * 1000)
    os.utime(rec, (1_700_000_000, 1_700_000_000))
    first = host_probe.file_id(str(rec))
    assert first.startswith(f"{3 << 20}:1700000000:") and len(first.split(":")[2]) == 32
    with open(rec, "r+b") as handle:  # a byte in the middle: not seen (that is what size and time are for)
        handle.seek(3 << 19)
        handle.write(b"b")
    os.utime(rec, (1_700_000_000, 1_700_000_000))
    assert host_probe.file_id(str(rec)) == first
    with open(rec, "r+b") as handle:  # the last MiB: seen, though size and time stay
        handle.seek((3 << 20) - 1)
        handle.write(b"b")
    os.utime(rec, (1_700_000_000, 1_700_000_000))
    assert host_probe.file_id(str(rec)) != first
    before = host_probe.file_id(str(idx))
    idx.write_bytes(b"0\t0\n" * 499 + b"0\t1\n" + b"0\t0\n" * 500)  # an .idx is hashed whole
    os.utime(idx, (os.stat(idx).st_atime, int(before.split(":")[1])))
    assert host_probe.file_id(str(idx)) != before
    os.mkfifo(tmp_path / "fifo")  # never blocks the probe
    assert [host_probe.file_id(str(p)) for p in (tmp_path / "fifo", tmp_path / "none", tmp_path)] == ["", "", ""]


def test_the_probe_answers_for_the_files_it_is_asked_about(tmp_path, capsys):
    (tmp_path / "t.rec").write_bytes(b"x")
    assert host_probe.main([str(tmp_path / "work"), "--files", str(tmp_path / "t.rec"), str(tmp_path / "no")]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["work_dir"] == str(tmp_path / "work") and found["unsafe_folders"] == []
    assert found["files"] == {str(tmp_path / "t.rec"): host_probe.file_id(str(tmp_path / "t.rec")),
                              str(tmp_path / "no"): ""}
