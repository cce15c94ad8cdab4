"""Where planning gets the labels: the label cache, a checked .lst, or every record's header (real files)."""
from __future__ import annotations

import os
import struct

import pytest

from cluster.errors import InputError
from launcher.data import labelsource, recfile
from launcher.data.labelsource import load_labels

pytestmark = pytest.mark.timeout(60)


def write_rec(prefix: str, labels) -> str:
    writer = recfile.RecordWriter(prefix)
    for key, label in enumerate(labels):
        writer.write(b"image-%d" % key, float(label), key)
    writer.close()
    return prefix + ".rec"


def write_lst(rec: str, labels, *, keys=None) -> str:
    path = os.path.splitext(rec)[0] + ".lst"
    keys = range(len(labels)) if keys is None else keys
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{key}\t{float(label):f}\timg/{key}.jpg\n" for key, label in zip(keys, labels))
    return path


def load(rec: str, cache) -> labelsource.Labels:
    spans, labels = load_labels(rec, None if cache is None else str(cache))
    assert spans == recfile.read_index(rec)
    return labels


def test_a_relaunch_reads_the_cache_and_a_rewritten_file_is_read_again(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [0, 1, 2, 3, 4] * 20)
    first = load(rec, tmp_path / "cache")
    assert (first.source, first.values) == ("records", tuple([0.0, 1.0, 2.0, 3.0, 4.0] * 20))
    assert load(rec, tmp_path / "cache") == labelsource.Labels(first.values, "cache")
    # Labels rewritten in place, the modification time set back: only the change time tells.
    stat = os.stat(rec)
    with open(rec, "r+b") as handle:
        for span in recfile.read_index(rec):
            handle.seek(span.offset + 8 + 4)   # part header, then the image header's flag; the label follows
            handle.write(struct.pack("<f", 4.0 - first.values[span.key]))
    os.utime(rec, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(rec)[:9] == stat[:9] and os.stat(rec).st_ino == stat.st_ino
    again = load(rec, tmp_path / "cache")
    assert (again.source, again.values) == ("records", tuple([4.0, 3.0, 2.0, 1.0, 0.0] * 20))


def test_the_shard_and_staging_keys_move_with_an_in_place_rewrite_and_with_the_index(tmp_path):
    """The keys of cut shards and staged copies (``kinds.fingerprint``) see what the label cache sees."""
    from launcher.run.kinds import fingerprint as _fingerprint, rec_files as _rec_files
    rec = write_rec(str(tmp_path / "train"), [0, 1, 2, 3, 4] * 20)
    key = _fingerprint(*_rec_files(rec))
    assert _fingerprint(*_rec_files(rec)) == key and _rec_files(rec) == [rec, recfile.idx_path_for(rec)]
    stat = os.stat(rec)
    with open(rec, "r+b") as handle:  # one label rewritten in place, the modification time set back
        handle.seek(recfile.read_index(rec)[0].offset + 8 + 4)
        handle.write(struct.pack("<f", 4.0))
    os.utime(rec, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rewritten = _fingerprint(*_rec_files(rec))
    assert rewritten != key
    idx = recfile.idx_path_for(rec)
    lines = open(idx, encoding="ascii").read().splitlines()
    with open(idx, "w", encoding="ascii") as handle:  # the same records, indexed in another order
        handle.write("\n".join(lines[::-1]) + "\n")
    assert _fingerprint(*_rec_files(rec)) != rewritten


def test_a_damaged_cache_entry_is_a_miss(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [0, 1] * 30)
    load(rec, tmp_path / "cache")
    [entry] = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "cache") for name in names]
    with open(entry, "r+b") as handle:
        handle.truncate(os.path.getsize(entry) - 3)
    assert load(rec, tmp_path / "cache").source == "records"
    with open(entry, "wb") as handle:
        handle.write(b"not json\n")
    assert load(rec, tmp_path / "cache").values == tuple([0.0, 1.0] * 30)


def test_a_list_that_agrees_with_the_records_is_used_and_cached(tmp_path):
    labels = [(key * 7) % 5 for key in range(300)]
    rec = write_rec(str(tmp_path / "train"), labels)
    write_lst(rec, labels)
    got = load(rec, tmp_path / "cache")
    assert (got.source, got.values, got.note) == ("lst", tuple(map(float, labels)), "")
    assert load(rec, tmp_path / "cache").source == "cache"


def test_a_stale_list_is_ignored_with_the_record_that_disagrees(tmp_path):
    labels = [key % 5 for key in range(300)]
    rec = write_rec(str(tmp_path / "train"), labels)
    lst = write_lst(rec, [(label + 1) % 5 for label in labels])   # every label differs: any sample finds one
    got = load(rec, None)
    assert got.source == "records" and got.values == tuple(map(float, labels))
    assert got.note.startswith(f"ignored {lst}: it gives key ") and "but the record holds" in got.note


@pytest.mark.parametrize("body, expected", [
    ("0\t1\ta.jpg\n1\tx\tb.jpg\n", ".lst:2: expected 'INDEX<TAB>LABEL<TAB>PATH', got '1\\tx\\tb.jpg'"),
    ("0\t1\ta.jpg\n1 1 b.jpg\n", ".lst:2: expected"),
    ("0\t1\ta.jpg\n0\t1\tb.jpg\n", ".lst:2: index 0 is listed twice"),
    ("0\t1\ta.jpg\n", ": it gives no label for key 1 of "),
    ("0\tnan\ta.jpg\n1\t0\tb.jpg\n", ".lst:1: expected"),
    ("0\t1e40\ta.jpg\n1\t0\tb.jpg\n", ".lst:1: expected"),
    ("+0\t1\ta.jpg\n1\t0\tb.jpg\n", ".lst:1: expected"),
])
def test_a_list_that_is_broken_or_short_is_ignored_naming_the_line(tmp_path, body, expected):
    rec = write_rec(str(tmp_path / "train"), [1, 0])
    with open(os.path.splitext(rec)[0] + ".lst", "w", encoding="utf-8") as handle:
        handle.write(body)
    got = load(rec, None)
    assert got.source == "records" and got.values == (1.0, 0.0)
    assert got.note.startswith("ignored ") and expected in got.note


def test_a_list_is_not_read_without_the_idx_nor_past_its_limits(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [1, 0])
    write_lst(rec, [1, 0])
    with open(os.path.splitext(rec)[0] + ".lst", "a", encoding="utf-8") as handle:
        handle.write("#" * (labelsource._MAX_LST_LINE + 1))
    assert ".lst:3: a line longer than 4096 characters" in load(rec, None).note
    write_lst(rec, [0] * 1100, keys=range(1000, 2100))          # lines for keys the .idx does not have
    assert load(rec, None).note.endswith(".lst: far more lines than the 2 records of its .rec")
    write_lst(rec, [1, 0])
    os.remove(recfile.idx_path_for(rec))
    assert load(rec, None) == labelsource.Labels((1.0, 0.0), "records")


def test_extra_list_lines_for_images_im2rec_could_not_pack_are_fine(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [2, 3, 4])
    write_lst(rec, [2, 3, 4, 0], keys=[0, 1, 2, 99])
    assert load(rec, None) == labelsource.Labels((2.0, 3.0, 4.0), "lst")


def test_a_dry_run_reads_the_cache_and_writes_nothing(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [0, 1, 2])
    assert load_labels(rec, str(tmp_path / "cache"), remember=False)[1].source == "records"
    assert not os.path.exists(tmp_path / "cache")
    load_labels(rec, str(tmp_path / "cache"))
    assert load_labels(rec, str(tmp_path / "cache"), remember=False)[1].source == "cache"


def test_a_cache_entry_that_is_not_a_regular_file_is_a_miss(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [0, 1, 2])
    load(rec, tmp_path / "cache")
    [entry] = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "cache") for name in names]
    os.remove(entry)
    os.mkfifo(entry)                       # opening it for reading would wait for a writer forever
    assert load(rec, tmp_path / "cache").source == "records"
    os.remove(entry)
    with open(entry, "wb") as handle:
        handle.write(b"[" * 4000 + b"\n")  # JSON nested past the parser's recursion limit
    assert load(rec, tmp_path / "cache").source == "records"


def test_nan_and_infinite_record_labels_are_refused_not_a_traceback(tmp_path):
    rec = write_rec(str(tmp_path / "train"), [0, float("nan"), float("inf"), 1])
    summary = recfile.LabelSummary.of(rec, load(rec, None).values)
    with pytest.raises(InputError, match="2 records have non-integer labels"):
        summary.check(2, require_every_class=True)
