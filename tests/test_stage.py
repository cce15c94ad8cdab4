"""The staging receiver, run as a real process on this machine with hand-made streams."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from launcher.stage import _RECEIVER, _frame


def _receive(root: str, stream: bytes, offer: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the receiver on ``stream`` after an offer of ``offer`` (its answer is in stdout)."""
    return subprocess.run([sys.executable, "-c", _RECEIVER, root], input=_frame({"offer": list(offer)}) + stream,
                          capture_output=True, timeout=60)


def _file_frame(dest: str, body: bytes, digest: str | None = None) -> bytes:
    return _frame({"dest": dest, "size": len(body), "sha256": digest or hashlib.sha256(body).hexdigest()}) + body


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


def test_the_offer_is_answered_with_the_files_already_there(tmp_path):
    root, kept = str(tmp_path), tmp_path / "data" / "k" / "a.bin"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"old")
    done = _receive(root, _frame({"end": 0}), offer=(str(kept), str(tmp_path / "data" / "k" / "b.bin")))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"present": [str(kept)]}
