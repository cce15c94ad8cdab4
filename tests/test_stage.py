"""The staging receiver, run as a real process on this machine with hand-made streams."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from cluster.errors import JobFailed
from cluster.failure import FailureKind
from launcher.plan import Relayed, Transfer
from launcher.plan.model import RELAY_FROM_BYTES
from launcher.data.pieces import frame as _frame
from launcher.run.stage import _RECEIVER, FilePiece, relay_saves, stage_all


def _receive(root: str, stream: bytes, offer: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the receiver on ``stream`` after an offer of ``offer`` (its answer is in stdout)."""
    return subprocess.run([sys.executable, "-c", _RECEIVER, root], input=_frame({"offer": list(offer)}) + stream,
                          capture_output=True, timeout=60)


def _file_frame(dest: str, body: bytes, digest: str | None = None, *, keep: bool = False) -> bytes:
    return _frame({"dest": dest, "size": len(body), "sha256": digest or hashlib.sha256(body).hexdigest(),
                   "keep": keep}) + body


def test_complete_stream_lands_every_file(tmp_path):
    root, a, b = str(tmp_path), str(tmp_path / "x" / "a.bin"), str(tmp_path / "b.bin")
    body = os.urandom(3 << 20)
    done = _receive(root, _file_frame(a, body) + _file_frame(b, b"") + _frame({"end": 2}))
    assert done.returncode == 0, done.stderr
    assert open(a, "rb").read() == body and open(b, "rb").read() == b""
    assert [n for n in os.listdir(root) if n.startswith(".incoming")] == []


def test_wrong_checksum_lands_nothing(tmp_path):
    root, a, b = str(tmp_path), str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    stream = _file_frame(a, b"good") + _file_frame(b, b"bad", digest="0" * 64) + _frame({"end": 2})
    done = _receive(root, stream)
    assert done.returncode != 0 and b"checksum mismatch: " + b.encode() in done.stderr
    assert os.listdir(root) == []


def test_stream_cut_short_lands_nothing(tmp_path):
    root, a = str(tmp_path), str(tmp_path / "a.bin")
    whole = _file_frame(a, os.urandom(1 << 20)) + _frame({"end": 1})
    for cut in (0, 2, 100, len(whole) // 2, len(whole) - 3):
        done = _receive(root, whole[:cut])
        assert done.returncode != 0 and b"ended early" in done.stderr, (cut, done.stderr)
        assert os.listdir(root) == []
    missing = _receive(root, _file_frame(a, b"x") + _frame({"end": 2}))
    assert missing.returncode != 0 and b"1 of 2 files" in missing.stderr
    assert os.listdir(root) == []


def test_only_files_the_receiver_checked_and_placed_count_as_present(tmp_path):
    root, data = str(tmp_path), tmp_path / "data" / "k"
    landed, run_file, planted = str(data / "a.rec"), str(tmp_path / "runs" / "r" / "w.json"), data / "b.rec"
    offer = (landed, run_file, str(planted))
    done = _receive(root, _file_frame(landed, b"records", keep=True) + _file_frame(run_file, b"{}")
                    + _frame({"end": 2}))
    assert done.returncode == 0, done.stderr
    planted.write_bytes(b"a file some other tool put at a content-addressed path")
    assert json.loads(_receive(root, _frame({"end": 0}), offer=offer).stdout) == {"present": [landed]}
    assert sorted(os.listdir(data)) == [".a.rec.verified", "a.rec", "b.rec"]

    with open(landed, "r+b") as handle:  # cut short after it was checked: sent again
        handle.truncate(3)
    assert json.loads(_receive(root, _frame({"end": 0}), offer=offer).stdout) == {"present": []}
    os.remove(landed)
    os.symlink(str(planted), landed)
    assert json.loads(_receive(root, _frame({"end": 0}), offer=offer).stdout) == {"present": []}

    again = _receive(root, _file_frame(landed, b"records", keep=True) + _file_frame(str(planted), b"b", keep=True)
                     + _frame({"end": 2}), offer=offer)
    assert json.loads(again.stdout.splitlines()[0]) == {"present": []}
    assert json.loads(_receive(root, _frame({"end": 0}), offer=offer).stdout) == {"present": [landed, str(planted)]}
    assert open(landed, "rb").read() == b"records" and not os.path.islink(landed)


def test_files_land_whole_on_another_file_system(tmp_path):
    """A destination outside the receiver's file system (here /dev/shm, where it is one) gets a copy
    beside it, checked again and renamed: never a copy straight to the final name."""
    outside = tempfile.mkdtemp(dir="/dev/shm")
    try:
        dest, body = os.path.join(outside, "x", "a.bin"), os.urandom(1 << 20)
        done = _receive(str(tmp_path), _file_frame(dest, body, keep=True) + _frame({"end": 1}))
        assert done.returncode == 0, done.stderr
        assert open(dest, "rb").read() == body
        assert sorted(os.listdir(os.path.dirname(dest))) == [".a.bin.verified", "a.bin"]
        assert json.loads(_receive(str(tmp_path), _frame({"end": 0}), offer=(dest,)).stdout) == {"present": [dest]}
    finally:
        shutil.rmtree(outside)


def test_a_receiver_removes_the_incoming_folders_of_copies_killed_over_an_hour_ago(tmp_path):
    old, live = tmp_path / ".incoming.old", tmp_path / ".incoming.live"  # live: another launch staging now
    for folder in (old, live):
        folder.mkdir()
        (folder / "0").write_bytes(b"part of a file")
    long_ago = time.time() - 3700
    for path in (old / "0", old, live):  # live's folder is old too, but a file in it was written just now
        os.utime(path, (long_ago, long_ago))
    done = _receive(str(tmp_path), _frame({"end": 0}))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == [".incoming.live"]


class _ThisMachineAsHost:
    """A host whose stream is a shell here: the seam between staging and SSH (the receiver and pipes are real)."""

    label = "h1"

    def stream_to(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)


class _ShrinksWhileSent(FilePiece):
    """The file on this machine, cut short by someone else after staging hashed it and before its bytes went."""

    def write_to(self, pipe, on_bytes) -> None:
        os.truncate(self.path, 3)
        super().write_to(pipe, on_bytes)


def test_a_source_that_shrinks_while_it_is_sent_fails_staging_as_a_changed_input_and_lands_nothing(tmp_path):
    source, root = tmp_path / "train.rec", tmp_path / "host"
    source.write_bytes(b"r" * 100_000)
    transfer = Transfer("h1", str(source), str(root / "data" / "k" / "train.rec"), "data")
    with pytest.raises(JobFailed) as failed:
        stage_all({"h1": _ThisMachineAsHost()}, [transfer], root_of=lambda label: str(root),
                  python_of=lambda label: sys.executable, progress=lambda *report: None,
                  pieces={str(source): _ShrinksWhileSent(str(source))})
    assert str(failed.value).splitlines() == ["staging failed:",
                                              f"  h1: {source} shrank while it was being sent (3 of 100000 bytes)"]
    assert failed.value.failure.kind is FailureKind.INPUT_CHANGED
    assert not (root / "data" / "k" / "train.rec").exists()


def test_the_plans_relayed_files_take_the_relay_only_when_it_saves_64_mib_and_never_as_a_piece(tmp_path):
    """Staging applies the plan's relay rule to the files as they are now: 1 KB for 3 hosts saves too little, and a
    source cut as it is sent (a piece) cannot be relayed; both go the usual way, and land."""
    source, root = tmp_path / "small.bin", tmp_path / "host"
    source.write_bytes(b"s" * 1000)
    dest = str(root / "job" / "small.bin")
    relayed = [Relayed(str(source), dest, "run", ("h1", "h2", "h3"))]
    for pieces, relay_from in (({}, RELAY_FROM_BYTES), ({str(source): FilePiece(str(source))}, 0)):
        staged = stage_all({"h1": _ThisMachineAsHost()}, [Transfer("h1", str(source), dest, "run")],
                           root_of=lambda label: str(root), python_of=lambda label: sys.executable,
                           progress=lambda *report: None, pieces=pieces, relayed=relayed,
                           address_of=lambda label: "127.0.0.1", relay_from=relay_from)
        assert staged.relay is None and [report.files_sent for report in staged.hosts] == [1]
        assert open(dest, "rb").read() == b"s" * 1000
        os.remove(dest)
    assert relay_saves(relayed * 2, {str(source): 32 << 20}.get) == RELAY_FROM_BYTES  # two such files would take it
