"""The labels of a ``.rec``'s records, for planning, from the cheapest source that still speaks for the records.

Planning checks every label (an integer in range, every class present) and decides whether
the workers can read their parts of the file in place (``shards.mixed_classes``). Reading
each record's header costs one random read per record: on a cold disk here 0.4-0.45 s per GB
of 100 KB records (BENCHMARKS.md, "Start-up"). The sources, in order:

1. **The label cache** (``CACHE/labels/``): the labels read earlier from this very file. An
   entry holds for as long as the ``.rec`` and its ``.idx`` keep their device, inode, size,
   modification time and change time; any write moves the change time, which no user can set.
2. **The ``.lst`` beside the ``.rec``** (im2rec and mxft-prepare write it: ``INDEX<TAB>LABEL...
   <TAB>PATH``), read in one sequential pass. It is used only when it gives a label for every
   key of the ``.idx``, and when ``SAMPLE`` records chosen at random hold in their own headers
   the labels it gives. A stale list (re-shuffled, or from another pack) fails that check and
   is ignored, with a note saying why. A sample is not a proof: a list edited in a few lines
   and not re-packed can pass it, and then the checks speak for the list, while training reads
   the records. The list is trusted no further than the ``.rec`` beside it: whoever can write
   one can write the other.
3. **Every record's header** (``recfile.read_labels``).

Whatever the source, a launch caches the labels for the next one (a dry run only reads the
cache). Any problem with a cache entry is a miss: the labels are read again.
"""
from __future__ import annotations

import array
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import secrets
import stat
import struct
from collections.abc import Sequence

from launcher.data import recfile
from launcher.data.cachefile import file_identity, replacing

SAMPLE = 64
_CACHE_VERSION = 1
_MAX_LST_LINE = 4096                 # characters: an index, labels and a path
_DECIMAL = re.compile(r"[0-9]{1,19}")


@dataclasses.dataclass(frozen=True)
class Labels:
    """Each record's first label in ``spans`` order, where they came from, and why a ``.lst`` was not used."""

    values: tuple[float, ...]
    source: str                  # "cache", "lst" or "records"
    note: str = ""               # a .lst that was present but ignored, and why


def load_labels(rec_path: str, cache_dir: str | None, *,
                remember: bool = True) -> tuple[list[recfile.RecordSpan], Labels]:
    """The records of ``rec_path`` (``recfile.read_index``) and their labels; see the module's text.

    The file's identity is taken before its index is read and again after its labels are: only labels read
    from one unchanged file are cached, and only with ``remember`` (a dry run writes nothing)."""
    identity = _identity(rec_path)
    spans = recfile.read_index(rec_path)
    entry = _cache_entry(cache_dir, rec_path) if cache_dir else None
    cached = _read_cache(entry, identity, len(spans)) if entry else None
    if cached is not None:
        return spans, Labels(cached, "cache")
    from_list, note = labels_from_lst(rec_path, spans)
    labels = (Labels(from_list, "lst") if from_list is not None
              else Labels(tuple(recfile.read_labels(rec_path, spans)), "records", note))
    if entry and remember and _identity(rec_path) == identity:
        _write_cache(entry, identity, labels)
    return spans, labels


def lst_path_for(rec_path: str) -> str:
    """``data/train.rec`` -> ``data/train.lst`` (im2rec's and mxft-prepare's layout)."""
    return os.path.splitext(rec_path)[0] + ".lst"


def labels_from_lst(rec_path: str, spans: Sequence[recfile.RecordSpan]) -> tuple[tuple[float, ...] | None, str]:
    """The labels the ``.lst`` gives the records, if it speaks for them; else None and why not ("" if no list)."""
    lst = lst_path_for(rec_path)
    if not os.path.isfile(lst) or recfile.present_index(rec_path) is None:
        return None, ""   # without the .idx the keys are positions, which a .lst does not name
    try:
        by_key, problem = _parse_lst(lst, {span.key for span in spans})
    except OSError as err:
        return None, f"ignored {lst}: {err.strerror or err}"
    if problem:
        return None, f"ignored {problem}"
    missing = next((span.key for span in spans if span.key not in by_key), None)
    if missing is not None:
        return None, f"ignored {lst}: it gives no label for key {missing} of {recfile.idx_path_for(rec_path)}"
    labels = tuple(by_key[span.key] for span in spans)
    picked = sorted(secrets.SystemRandom().sample(range(len(spans)), min(SAMPLE, len(spans))))
    held = recfile.read_labels(rec_path, [spans[i] for i in picked])
    for position, label in zip(picked, held):
        if labels[position] != label:
            key = spans[position].key
            return None, (f"ignored {lst}: it gives key {key} label {labels[position]:g}, but the record holds "
                          f"{label:g} (a list from another pack?)")
    return labels, ""


def _parse_lst(path: str, keys: set[int]) -> tuple[dict[int, float], str]:
    """``{INDEX: first label as float32}`` for the ``keys`` of the ``.idx``, or ``({}, "FILE[:LINE]: what is
    wrong")``. Lines for other keys (images im2rec listed but could not pack) are passed over, up to as many
    again as there are keys; a line is at most ``_MAX_LST_LINE`` bytes."""
    by_key: dict[int, float] = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = iter(functools.partial(handle.readline, _MAX_LST_LINE + 1), "")
        for line_no, line in enumerate(lines, 1):
            if len(line) > _MAX_LST_LINE:
                return {}, f"{path}:{line_no}: a line longer than {_MAX_LST_LINE} characters"
            if line_no > 2 * len(keys) + 1024:
                return {}, f"{path}: far more lines than the {len(keys)} records of its .rec"
            fields = line.rstrip("\r\n").split("\t")
            if fields == [""]:
                continue
            key, label = _lst_fields(fields)
            if key is None:
                return {}, f"{path}:{line_no}: expected 'INDEX<TAB>LABEL<TAB>PATH', got {line.strip()[:60]!r}"
            if key in by_key:
                return {}, f"{path}:{line_no}: index {key} is listed twice"
            if key in keys:
                by_key[key] = label
    return by_key, ""


def _lst_fields(fields: list[str]) -> tuple[int | None, float]:
    """(index, first label as float32) of one ``.lst`` line, or (None, 0.0): a decimal index and a finite label."""
    if len(fields) < 3 or not _DECIMAL.fullmatch(fields[0]):
        return None, 0.0
    try:
        label = _float32(fields[1])
    except (ValueError, OverflowError):
        return None, 0.0
    return (int(fields[0]), label) if math.isfinite(label) else (None, 0.0)


def _float32(text: str) -> float:
    """The value a record's float32 label field holds for ``text``."""
    return struct.unpack("<f", struct.pack("<f", float(text)))[0]


def _identity(rec_path: str) -> list[list[int] | None]:
    """What changes whenever the ``.rec`` or its ``.idx`` is written, renamed over or replaced (as JSON holds it)."""
    return [None if identity is None else list(identity)
            for identity in map(file_identity, (rec_path, recfile.idx_path_for(rec_path)))]


def _cache_entry(cache_dir: str, rec_path: str) -> str:
    name = hashlib.sha256(os.fsencode(os.path.realpath(rec_path))).hexdigest()[:24]
    return os.path.join(cache_dir, "labels", name + ".labels")


def _read_cache(entry: str, identity: list, count: int) -> tuple[float, ...] | None:
    """The cached labels if the entry is a whole regular file about this very file, else None."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            header = json.loads(handle.readline(4096))
            body = handle.read(4 * count + 1)
        except (OSError, ValueError, RecursionError):
            return None
    if not isinstance(header, dict) or header.get("version") != _CACHE_VERSION \
            or header.get("identity") != identity or header.get("records") != count or len(body) != 4 * count:
        return None
    values = array.array("f")
    values.frombytes(body)
    return tuple(values)


def _write_cache(entry: str, identity: list, labels: Labels) -> None:
    """Best effort: a cache that cannot be written costs the next launch the reads, nothing more."""
    try:
        os.makedirs(os.path.dirname(entry), exist_ok=True)
        with replacing(entry) as handle:
            header = {"version": _CACHE_VERSION, "identity": identity, "records": len(labels.values),
                      "from": labels.source}
            handle.write(json.dumps(header).encode() + b"\n")
            handle.write(array.array("f", labels.values).tobytes())
    except OSError:
        pass
