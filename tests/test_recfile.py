"""RecordIO reading and sharding in pure Python, checked against files mxnet writes."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import mxnet as mx
import pytest

from cluster.errors import InputError
from launcher.data import pieces, recfile, shards
from tests.helpers import REPO


def write_rec(prefix: str, labels, *, payload=lambda i: b"img%d" % i) -> str:
    writer = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for key, label in enumerate(labels):
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), payload(key)))
    writer.close()
    return prefix + ".rec"


def test_index_labels_and_scan_agree(tmp_path):
    rec = write_rec(str(tmp_path / "a"), [0, 1, 2, 1, 0])
    spans = recfile.read_index(rec)
    assert [s.key for s in spans] == [0, 1, 2, 3, 4]
    assert sum(s.size_bytes for s in spans) == os.path.getsize(rec)
    assert recfile.read_labels(rec, spans) == [0, 1, 2, 1, 0]
    os.remove(str(tmp_path / "a.idx"))
    assert [(s.offset, s.size_bytes) for s in recfile.read_index(rec)] == [(s.offset, s.size_bytes) for s in spans]


def test_multi_part_records_and_label_arrays(tmp_path):
    magic = (0xCED7230A).to_bytes(4, "little")
    prefix = str(tmp_path / "m")
    writer = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    # A payload holding the magic word is split into parts by the writer.
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, 3.0, 0, 0), b"ab" + magic + b"cd" + magic))
    writer.write_idx(1, mx.recordio.pack(mx.recordio.IRHeader(0, [4.0, 9.0], 1, 0), b"xy"))
    writer.close()
    spans = recfile.read_index(prefix + ".rec")
    assert recfile.read_labels(prefix + ".rec", spans) == [3.0, 4.0]
    assert [s.size_bytes for s in recfile.scan_records(prefix + ".rec")] == [s.size_bytes for s in spans]
    recfile.write_shard(prefix + ".rec", spans[:1], str(tmp_path / "shard"))
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "shard.idx"), str(tmp_path / "shard.rec"), "r")
    header, payload = mx.recordio.unpack(reader.read_idx(0))
    assert header.label == 3.0 and payload == b"ab" + magic + b"cd" + magic


def test_strided_shards_cover_every_record_once():
    parts = shards.strided_shards(10, 3)
    assert [list(s) for s in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert shards.strided_shards(2, 1) == [range(0, 2, 1)]


def test_a_shard_sent_as_it_is_cut_is_the_shard_written_here(tmp_path):
    """Issue 26, item 4: the pieces staging sends for another host's shard hold the bytes ``write_shard`` writes (and
    say their sha256), without any file made here; a training file cut short since is named, not sent short."""
    rec = write_rec(str(tmp_path / "a"), [i % 3 for i in range(9)], payload=lambda i: bytes([i]) * (100 + i))
    spans = recfile.read_index(rec)
    chosen = [spans[i] for i in range(1, 9, 3)]
    written = recfile.write_shard(rec, chosen, str(tmp_path / "part"))
    for piece, path in ((pieces.ShardRecords(rec, chosen), written[0]), (pieces.ShardIndex(chosen), written[1])):
        out = tmp_path / "sent"
        with open(out, "wb") as handle:
            counted = []
            piece.write_to(handle.fileno(), counted.append)
        expected = open(path, "rb").read()
        assert out.read_bytes() == expected and sum(counted) == piece.size == len(expected)
        assert piece.sha256() == hashlib.sha256(expected).hexdigest() and piece.mode == 0o600
    os.truncate(rec, spans[7].offset)
    with pytest.raises(pieces.SourceShrank):
        pieces.ShardRecords(rec, chosen).sha256()
    with open(tmp_path / "short", "wb") as handle, pytest.raises(pieces.SourceShrank):
        pieces.ShardRecords(rec, chosen).write_to(handle.fileno(), lambda count: None)


HASHED_IN_A_PROCESS = """
import resource, sys
from launcher.data import pieces
from launcher.remote import stage_receiver
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
digests = {pieces.file_sha256(sys.argv[1]), stage_receiver.sha256_of(sys.argv[1])}
print(*digests, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_the_launcher_and_the_hosts_hash_a_file_in_one_block_of_memory(tmp_path):
    # Hashed through a mapping, a file counted in full in the process's resident memory as it was read: the launcher
    # staging a 100 GB training file looked 100 GB large. Here the peak grows by far less than the 192 MiB file.
    path, expected, block = tmp_path / "big", hashlib.sha256(), os.urandom(1 << 20)
    with open(path, "wb") as handle:
        for count in range(192):
            handle.write(block[count:] + block[:count])
            expected.update(block[count:] + block[:count])
    out = subprocess.run([sys.executable, "-c", HASHED_IN_A_PROCESS, str(path)], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=60).stdout.split()
    assert out[0] == expected.hexdigest() and len(out) == 2, out  # one digest: both programs agree with hashlib
    assert int(out[1]) < 32 * 1024, f"the peak resident memory grew by {int(out[1]) // 1024} MiB"


def test_shards_are_byte_copies_readable_by_mxnet(tmp_path):
    rec = write_rec(str(tmp_path / "a"), [i % 3 for i in range(7)], payload=lambda i: bytes([i]) * (i + 1))
    spans = recfile.read_index(rec)
    parts = [recfile.write_shard(rec, [spans[i] for i in positions], str(tmp_path / f"part{n}"))
             for n, positions in enumerate(shards.strided_shards(len(spans), 2))]
    seen = []
    for shard_rec, shard_idx in parts:
        reader = mx.recordio.MXIndexedRecordIO(shard_idx, shard_rec, "r")
        for key in reader.keys:
            header, payload = mx.recordio.unpack(reader.read_idx(key))
            assert payload == bytes([key]) * (key + 1) and header.label == key % 3
            seen.append(key)
    assert sorted(seen) == list(range(7))
    assert not any(name.endswith(".partial") for name in os.listdir(tmp_path))


def test_a_shard_that_cannot_be_finished_leaves_nothing(tmp_path):
    rec = write_rec(str(tmp_path / "a"), [0, 1, 2], payload=lambda i: bytes([i]) * 8)
    spans = recfile.read_index(rec)
    past_the_end = recfile.RecordSpan(9, spans[-1].offset, spans[-1].size_bytes + 4)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InputError, match="record 9 is truncated"):
        recfile.write_shard(rec, [spans[0], past_the_end], str(tmp_path / "part"))
    assert sorted(os.listdir(tmp_path)) == before  # neither the shard nor a temporary file


def test_label_summary_checks():
    summary = recfile.LabelSummary.of("t.rec", [0, 1, 2, 256, 256])
    with pytest.raises(InputError) as info:
        summary.check(256, require_every_class=True)
    assert str(info.value) == ("t.rec: labels 0..256 (4 distinct), but num_classes 256 allows labels 0..255 only, "
                               "not 256 (set num_classes to 257 or re-pack the data)")
    with pytest.raises(InputError) as info:
        recfile.LabelSummary.of("t.rec", [0, 3]).check(6, require_every_class=True)
    assert str(info.value) == ("t.rec: 4 of 6 classes have no training images: 1-2, 4-5 "
                               "(lower num_classes or add images for those classes)")
    recfile.LabelSummary.of("v.rec", [0, 3]).check(6, require_every_class=False)


def test_broken_files_are_named(tmp_path):
    rec = write_rec(str(tmp_path / "a"), [0, 1])
    with open(tmp_path / "a.idx", "a") as handle:
        handle.write("2\t999999\n")
    with pytest.raises(InputError, match=r"a\.idx:3: offset 999999 is outside"):
        recfile.read_index(rec)
    with open(tmp_path / "junk.rec", "wb") as handle:
        handle.write(b"\0" * 64)
    with pytest.raises(InputError, match="the record header at byte 0 has no RecordIO magic"):
        recfile.read_index(str(tmp_path / "junk.rec"))
    with pytest.raises(InputError, match="file not found"):
        recfile.read_index(str(tmp_path / "missing.rec"))


@pytest.mark.parametrize("order", ["file", "shuffled"])
def test_parts_are_the_records_imagerecorditer_reads(tmp_path, order):
    """index_parts against MXNet's own reader: part k of 3 of 11 records (labels are the keys), .idx in file order
    or shuffled (the reader sorts by offset)."""
    import cv2
    import numpy as np
    image = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    rec = write_rec(str(tmp_path / "p"), range(11), payload=lambda key: image)
    idx = tmp_path / "p.idx"
    if order == "shuffled":
        lines = idx.read_text().splitlines()
        idx.write_text("\n".join(lines[5:] + lines[:5][::-1]) + "\n")
    spans = recfile.read_index(rec)
    parts = shards.index_parts(spans, 3)
    assert [len(p) for p in parts] == [4, 4, 3]
    for k, part in enumerate(parts):
        reader = mx.io.ImageRecordIter(path_imgrec=rec, path_imgidx=str(idx), data_shape=(3, 8, 8), batch_size=1,
                                       part_index=k, num_parts=3, shuffle=False)
        read = sorted(int(label) for batch in reader for label in batch.label[0].asnumpy())
        assert read == sorted(spans[i].key for i in part), (k, read)


def test_an_index_mxnet_would_read_otherwise_is_refused(tmp_path):
    rec = write_rec(str(tmp_path / "d"), [0, 1, 2])
    idx = tmp_path / "d.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines + [lines[1].split("\t")[0] + "9\t" + lines[1].split("\t")[1]]) + "\n")
    with pytest.raises(InputError, match=r"d.idx:4: offset \d+ is listed twice \(also on line 2\)"):
        recfile.read_index(rec)
    idx.write_text(lines[0] + "\n1\t1_0\n")
    with pytest.raises(InputError, match=r"d.idx:2: expected 'KEY<TAB>OFFSET', got '1\\t1_0'"):
        recfile.read_index(rec)


@pytest.mark.parametrize("dense_below", [1, 10 ** 9], ids=["scattered", "dense"])
def test_labels_keep_the_records_order_whether_pages_are_requested_or_read_ahead(tmp_path, monkeypatch, dense_below):
    monkeypatch.setattr(recfile, "_DENSE_RECORD_BYTES", dense_below)  # 1: every file is scattered records
    monkeypatch.setattr(recfile, "_REQUEST_LEAD", 7)
    labels = [(key * 7) % 5 for key in range(3 * 64 + 1)]  # enough for a thread to request the pages
    rec = write_rec(str(tmp_path / "many"), labels)
    spans = recfile.read_index(rec)
    assert recfile.read_labels(rec, spans) == labels
    assert recfile.read_labels(rec, spans[::-1]) == labels[::-1]
    with open(rec, "r+b") as handle:  # a bad record half way: the error, and the requesting thread gone
        handle.seek(spans[100].offset)
        handle.write(b"\0" * 4)
    with pytest.raises(InputError, match="magic"):
        recfile.read_labels(rec, spans)
    assert [t.name for t in threading.enumerate() if t.name == "mxft-label-pages"] == []


def test_header_pages_are_requested_in_order_and_at_most_the_lead_ahead_of_the_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(recfile, "_REQUEST_LEAD", 5)
    requested = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, how: requested.append(offset)
                        if how == os.POSIX_FADV_WILLNEED else None)
    rec = write_rec(str(tmp_path / "many"), [key % 5 for key in range(100)])
    spans = recfile.read_index(rec)
    with open(rec, "rb") as handle, recfile._headers_requested(handle.fileno(), spans) as read_one:
        wait_until(lambda: len(requested) >= 5)
        time.sleep(0.2)  # time enough to ask for more, which it must not
        assert len(requested) == 5
        for _ in range(3):
            read_one()
        wait_until(lambda: len(requested) >= 8)
    assert requested == [span.offset for span in spans[:8]]
    assert [t.name for t in threading.enumerate() if t.name == "mxft-label-pages"] == []


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_a_folder_or_a_missing_file_as_data_train_points_at_mxfts_own_answers(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError) as info:
        recfile.read_index(str(tmp_path / "images"))
    assert str(info.value) == (f"{tmp_path}/images: is a folder, not a .rec file (for a folder of images (one "
                               f"subfolder per class) set data.images: {{folder: {tmp_path}/images}} instead, or "
                               "pack it once with mxft-prepare)")
    with pytest.raises(InputError, match=r"file not found \(fix the path in the job file, or pack the images with "
                                         r"mxft-prepare \(or MXNet's im2rec.py\), or name the image folder as "
                                         r"data.images\)"):
        recfile.read_index(str(tmp_path / "missing.rec"))
