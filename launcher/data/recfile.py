"""Read and split MXNet RecordIO files (``.rec`` + ``.idx``) without MXNet.

The launch host plans and stages data but need not have mxnet installed, and the
formats are small:

* ``.idx``: one ``KEY<TAB>OFFSET`` line per record, OFFSET the byte where the record starts.
* ``.rec``: records of ``uint32 magic 0xced7230a, uint32 lrec, payload, pad to 4 bytes``,
  where ``lrec >> 29`` is a continuation flag (0 whole, 1 first, 2 middle, 3 last part:
  a payload that contains the magic word is split there and the word re-inserted on read)
  and ``lrec & (2**29 - 1)`` the part's length.
* An image record's payload starts with the header ``struct 'IfQQ'`` (flag, label, id, id2);
  when ``flag > 0`` the label is the ``flag`` float32 values that follow the header.

Shards are cut by copying each record's bytes verbatim, so an image is never decoded
or re-encoded and a shard is bit-identical to the records it came from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from cluster.errors import InputError
from launcher.data.cachefile import replacing, temp_name

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IR_HEADER = struct.Struct("<IfQQ")
_IDX_LINE = re.compile(r"([0-9]{1,19})[ \t]+([0-9]{1,19})")


class RecordSpan(NamedTuple):
    """Where one record lives in a ``.rec`` file (a named tuple: an index makes one per record, and a tuple of
    numbers is half as dear to make as a frozen dataclass, and no longer walked by the cycle collector once it
    has seen it)."""

    key: int
    offset: int
    size_bytes: int


def idx_path_for(rec_path: str) -> str:
    """``data/train.rec`` -> ``data/train.idx`` (the layout im2rec writes)."""
    return os.path.splitext(rec_path)[0] + ".idx"


_IDX_LINE_MAX = 256  # characters of one .idx line, newline included, at the most


def present_index(rec_path: str) -> str | None:
    """``rec_path``'s ``.idx`` if there is one."""
    idx_path = idx_path_for(rec_path)
    return idx_path if os.path.isfile(idx_path) else None


def read_index(rec_path: str) -> list[RecordSpan]:
    """Parse ``rec_path``'s ``.idx`` into spans in index order, sizes from the next offset.

    Raises InputError naming the file and line for a missing or malformed index, or
    offsets that point outside the ``.rec``.
    """
    idx_path = idx_path_for(rec_path)
    if not os.path.isfile(rec_path):
        if os.path.isdir(rec_path):
            raise InputError(rec_path, "is a folder, not a .rec file",
                             hint="for a folder of images (one subfolder per class) set data.images: {folder: "
                                  f"{rec_path}}} instead, or pack it once with mxft-prepare")
        raise InputError(rec_path, "file not found",
                         hint="fix the path in the job file, or pack the images with mxft-prepare (or MXNet's "
                              "im2rec.py), or name the image folder as data.images")
    if not os.path.isfile(idx_path):
        return scan_records(rec_path)
    rec_size = os.path.getsize(rec_path)
    entries: list[tuple[int, int]] = []
    seen: dict[int, int] = {}
    with open(idx_path, encoding="ascii", errors="replace") as handle:
        for line_no, line in enumerate(iter(lambda: handle.readline(_IDX_LINE_MAX + 1), ""), 1):
            if len(line) > _IDX_LINE_MAX:  # two decimal numbers and a tab are far shorter
                raise InputError(f"{idx_path}:{line_no}", f"a line of more than {_IDX_LINE_MAX} characters",
                                 hint="this is not an index MXNet wrote; re-pack the .rec and .idx")
            if not line.strip():
                continue
            match = _IDX_LINE.fullmatch(line.strip())  # two decimal numbers, as MXNet's own reader takes them
            if match is None:
                raise InputError(f"{idx_path}:{line_no}", f"expected 'KEY<TAB>OFFSET', got {line.strip()[:60]!r}")
            key, offset = int(match.group(1)), int(match.group(2))
            if not 0 <= offset < rec_size:
                raise InputError(f"{idx_path}:{line_no}",
                                 f"offset {offset} is outside {rec_path} ({rec_size} bytes)",
                                 hint="the .idx does not belong to this .rec; re-pack both")
            if offset in seen:  # MXNet would read the repeat as an empty record and end a worker's epoch early
                raise InputError(f"{idx_path}:{line_no}", f"offset {offset} is listed twice (also on line "
                                 f"{seen[offset]})", hint="re-pack the .rec and .idx")
            seen[offset] = line_no
            entries.append((key, offset))
    if not entries:
        raise InputError(idx_path, "the index lists no records")
    ends = sorted({offset for _, offset in entries}) + [rec_size]
    next_start = {start: end for start, end in zip(ends, ends[1:])}
    return [RecordSpan(key, offset, next_start[offset] - offset) for key, offset in entries]


def _part_header(handle, rec_path: str, what: str) -> tuple[int, int]:
    """Read one part header at the handle's position: (continuation flag, length)."""
    head = handle.read(8)
    if len(head) < 8:
        raise InputError(rec_path, f"{what} is truncated")
    magic, lrec = struct.unpack("<II", head)
    if magic != MAGIC:
        raise InputError(rec_path, f"{what} has no RecordIO magic", hint="the file is corrupt or not a .rec; re-pack it")
    return lrec >> 29, lrec & _LENGTH_MASK


def scan_records(rec_path: str) -> list[RecordSpan]:
    """Find every record of a ``.rec`` that came without its ``.idx`` by walking the headers.

    Only the 8-byte part headers are read; keys are the record's position (0, 1, ...).
    """
    rec_size = os.path.getsize(rec_path)
    spans: list[RecordSpan] = []
    start = None
    position = 0
    with open(rec_path, "rb") as handle:
        while position < rec_size:
            cflag, length = _part_header(handle, rec_path, f"the record header at byte {position}")
            if cflag in (0, 1):
                start = position
            elif start is None:  # a middle or last part with no first part before it
                raise InputError(rec_path, f"the record at byte {position} continues a record that never began",
                                 hint="the file is corrupt or was cut at its start; re-pack it")
            position += 8 + length + (4 - length % 4) % 4
            if cflag in (0, 3):
                spans.append(RecordSpan(len(spans), start, position - start))
                start = None
            handle.seek(position)
    if position != rec_size:
        raise InputError(rec_path, f"the last record runs past the end of the file ({rec_size} bytes)")
    if not spans:
        raise InputError(rec_path, "the file holds no records")
    return spans


def _read_payload(handle, rec_path: str, span: RecordSpan, *, max_bytes: int) -> bytes:
    """The first ``max_bytes`` of a record's payload, joining multi-part records; nothing past them is read."""
    position = span.offset
    handle.seek(position)
    payload = b""
    while True:
        cflag, length = _part_header(handle, rec_path, f"record {span.key} at byte {span.offset}")
        payload += handle.read(max(0, min(length, max_bytes - len(payload))))
        if cflag in (0, 3) or len(payload) >= max_bytes:
            return payload[:max_bytes]
        payload += _MAGIC_BYTES
        position += 8 + length + (4 - length % 4) % 4
        handle.seek(position)


def read_labels(rec_path: str, spans: Sequence[RecordSpan]) -> list[float]:
    """The (first) label of every record, in ``spans`` order, from its first 40 bytes only.

    Unbuffered, and with read-ahead off (``POSIX_FADV_RANDOM``): a 100 KB record costs one page
    read from disk, not the record (a 2 GB file of them: about 80 MB of pages, not 2 GB). A cold
    disk serves many small reads at once far faster than one after another, so a second thread
    asks the kernel for the coming headers' pages (``_headers_requested``) while this one reads
    them in order. 5,000 records of 100 KB here, page cache dropped: 0.05 s, against 0.13 s
    with four threads each reading a quarter of them (BENCHMARKS.md, "Start-up against the
    training data's size"). A file of small records is read in order with read-ahead instead.
    """
    labels = []
    with open(rec_path, "rb", buffering=0) as handle:
        dense = os.fstat(handle.fileno()).st_size < _DENSE_RECORD_BYTES * len(spans)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL if dense else os.POSIX_FADV_RANDOM)
        with _headers_requested(handle.fileno(), () if dense else spans) as read_one:
            for span in spans:
                labels.append(_label_of(handle, rec_path, span))
                read_one()
    return labels


# Records smaller than this on average are read with the kernel's read-ahead instead: the whole file in order costs
# less than a page read per record (here 610 MB/s in order against about 70,000 scattered page reads a second).
_DENSE_RECORD_BYTES = 8192


_REQUEST_LEAD = 2048  # headers requested ahead of the reader at most: the pages they hold stay few


@contextlib.contextmanager
def _headers_requested(fd: int, spans: Sequence[RecordSpan]) -> Iterator[Callable[[], None]]:
    """A thread that asks the kernel to read the pages of the headers in ``spans`` (``POSIX_FADV_WILLNEED``), at
    most ``_REQUEST_LEAD`` ahead of the reader, who calls the function it is given after each record. Where the
    call does not exist, or for a few records, nothing is requested."""
    if not hasattr(os, "posix_fadvise") or len(spans) < 64:
        yield lambda: None
        return
    room, stopped = threading.Semaphore(_REQUEST_LEAD), threading.Event()

    def request() -> None:
        for span in spans:
            room.acquire()
            if stopped.is_set():
                return
            try:
                os.posix_fadvise(fd, span.offset, 8 + _HEAD_BYTES, os.POSIX_FADV_WILLNEED)
            except OSError:  # only advice: the reader reads each page itself anyway
                return
    requester = threading.Thread(target=request, name="mxft-label-pages", daemon=True)
    requester.start()
    try:
        yield room.release
    finally:
        stopped.set()
        room.release(_REQUEST_LEAD)
        requester.join()


_HEAD_BYTES = _IR_HEADER.size + 4  # the image header and a first label


def _record_head(handle, rec_path: str, span: RecordSpan) -> bytes:
    """A record's first ``_HEAD_BYTES`` of payload: one ``pread`` for a whole record, the general path otherwise."""
    data = os.pread(handle.fileno(), 8 + _HEAD_BYTES, span.offset)
    if len(data) >= 8:
        magic, lrec = struct.unpack_from("<II", data)
        if magic == MAGIC and lrec >> 29 == 0:
            return data[8:8 + min(lrec & _LENGTH_MASK, _HEAD_BYTES)]
    return _read_payload(handle, rec_path, span, max_bytes=_HEAD_BYTES)


def _label_of(handle, rec_path: str, span: RecordSpan) -> float:
    """The first label in a record's image header."""
    head = _record_head(handle, rec_path, span)
    if len(head) < _IR_HEADER.size:
        raise InputError(rec_path, f"record {span.key} is too short to hold an image header")
    flag, label, _, _ = _IR_HEADER.unpack_from(head)
    if flag > 0:
        if len(head) < _IR_HEADER.size + 4:
            raise InputError(rec_path, f"record {span.key} declares {flag} labels but holds none")
        (label,) = struct.unpack_from("<f", head, _IR_HEADER.size)
    return label


@dataclasses.dataclass(frozen=True)
class LabelSummary:
    """What the labels of one ``.rec`` look like: record count and images per class."""

    path: str
    num_records: int
    per_class: dict[int, int]
    non_integer: int

    @classmethod
    def of(cls, path: str, labels: Iterable[float]) -> "LabelSummary":
        counts: Counter[int] = Counter()
        non_integer = 0
        total = 0
        for label in labels:
            total += 1
            if not math.isfinite(label) or label != int(label):  # a NaN or infinite header label too
                non_integer += 1
                continue
            counts[int(label)] += 1
        return cls(path, total, dict(sorted(counts.items())), non_integer)

    def check(self, num_classes: int, *, require_every_class: bool) -> None:
        """Raise InputError unless every label is an integer in ``[0, num_classes)``.

        With ``require_every_class`` also every class must have at least one record
        (a class the training data never shows cannot be learnt).
        """
        if self.non_integer:
            raise InputError(self.path, f"{self.non_integer} records have non-integer labels")
        outside = sorted(label for label in self.per_class if not 0 <= label < num_classes)
        if outside:
            found = f"labels {min(self.per_class)}..{max(self.per_class)} ({len(self.per_class)} distinct)"
            raise InputError(self.path, f"{found}, but num_classes {num_classes} allows labels "
                             f"0..{num_classes - 1} only, not {_ranges(outside)}",
                             hint=f"set num_classes to {max(self.per_class) + 1} or re-pack the data")
        if require_every_class:
            missing = [label for label in range(num_classes) if label not in self.per_class]
            if missing:
                raise InputError(self.path, f"{len(missing)} of {num_classes} classes have no training "
                                 f"images: {_ranges(missing)}",
                                 hint="lower num_classes or add images for those classes")


def _ranges(values: Sequence[int], *, most: int = 6) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' (at most ``most`` groups, then '...')."""
    groups: list[list[int]] = []
    for value in values:
        if groups and value == groups[-1][1] + 1:
            groups[-1][1] = value
        else:
            groups.append([value, value])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in groups[:most])
    return text + (", ..." if len(groups) > most else "")


def write_shard(rec_path: str, spans: Sequence[RecordSpan], out_prefix: str) -> tuple[str, str]:
    """Copy the records ``spans`` verbatim into ``out_prefix.rec`` + ``.idx``.

    Written under fresh temporary names and renamed at the end (the ``.idx`` first), so a
    reader never sees a half-written shard and two writers never share a file. Returns the
    two paths.
    """
    out_rec, out_idx = out_prefix + ".rec", out_prefix + ".idx"
    with open(rec_path, "rb") as src, replacing(out_rec) as rec, replacing(out_idx, "w", encoding="ascii") as idx:
        for span in spans:
            src.seek(span.offset)
            data = src.read(span.size_bytes)
            if len(data) != span.size_bytes:
                raise InputError(rec_path, f"record {span.key} is truncated")
            idx.write(f"{span.key}\t{rec.tell()}\n")
            rec.write(data)
    return out_rec, out_idx


def pack_image_record(image: bytes, label: float, key: int) -> bytes:
    """One image record as MXNet's RecordIO writer lays it out (header, payload, padding).

    The payload is the ``IfQQ`` image header and the encoded image. Like dmlc's writer,
    a payload holding the magic word at a 4-byte-aligned position is split there into
    parts (flags 1, 2, ..., 3), the word itself dropped; readers put it back.
    """
    payload = _IR_HEADER.pack(0, float(label), key, 0) + image
    parts, start = [], 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            parts.append(payload[start:i])
            start = i + 4
    parts.append(payload[start:])
    out = []
    for number, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else 1 if number == 0 else 3 if number == len(parts) - 1 else 2
        out.append(struct.pack("<II", MAGIC, (cflag << 29) | len(part)) + part + b"\0" * ((4 - len(part) % 4) % 4))
    return b"".join(out)


class RecordWriter:
    """Append image records to ``PREFIX.rec`` and their offsets to ``PREFIX.idx``.

    Written under fresh temporary names and renamed by ``close``: an interrupted writer
    leaves no file a reader would take for complete, and two writers never share a file.
    """

    def __init__(self, prefix: str) -> None:
        self.rec_path, self.idx_path = prefix + ".rec", prefix + ".idx"
        self._rec_tmp, self._idx_tmp = temp_name(self.rec_path), temp_name(self.idx_path)
        self._rec = open(self._rec_tmp, "xb")
        self._idx = open(self._idx_tmp, "x", encoding="ascii")
        self.count = 0

    @property
    def size_bytes(self) -> int:
        return self._rec.tell()

    def write(self, image: bytes, label: float, key: int) -> None:
        self._idx.write(f"{key}\t{self._rec.tell()}\n")
        self._rec.write(pack_image_record(image, label, key))
        self.count += 1

    def close(self) -> None:
        self._rec.close()
        self._idx.close()
        os.replace(self._idx_tmp, self.idx_path)
        os.replace(self._rec_tmp, self.rec_path)

    def abort(self) -> None:
        for handle, path in ((self._rec, self._rec_tmp), (self._idx, self._idx_tmp)):
            handle.close()
            if os.path.exists(path):
                os.remove(path)
