"""Files the launcher sends without holding them: a shard cut from the training file as it is sent, and its ``.idx``
made in memory (issue 26: no full local copy of the data for the hosts that cannot read it).

A piece has a size, a sha256 and a way to write its bytes into a pipe; ``launcher.run.stage`` sends pieces and
files alike. A shard's records go from the training file to the pipe by ``sendfile`` (no byte through Python),
hashed first a block at a time (the launcher's memory holds one block, whatever the file's size), so the launcher's
disk holds no copy at any time and a relaunch, whose hosts already hold the shard, reads nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Sequence

from launcher.data.recfile import RecordSpan

CHUNK = 4 << 20
PRIVATE = 0o600  # a piece's mode on the host: a copy of the data is the user's alone


def frame(header: dict) -> bytes:
    """A header as the host programs read it (``stage_receiver.read_frame``): a 4-byte big-endian length, then JSON."""
    body = json.dumps(header).encode()
    return struct.pack(">I", len(body)) + body


class SourceShrank(Exception):
    """A file ended before the bytes the plan counted on (it changed since the inputs were checked)."""


HASH_BLOCK = 1 << 20


def ranges_sha256(fd: int, ranges: Sequence[tuple[int, int]]) -> str:
    """The sha256 of the (offset, length) ranges of the open file ``fd``, one after the other, read a block at a
    time into one buffer: the memory it takes does not grow with the file (a mapped file counts in the launcher's
    resident memory as it is read). SourceShrank if the file ends first."""
    digest, block = hashlib.sha256(), bytearray(HASH_BLOCK)
    view = memoryview(block)
    for offset, length in ranges:
        end = offset + length
        while offset < end:
            got = os.preadv(fd, [view[:min(HASH_BLOCK, end - offset)]], offset)
            if not got:
                raise SourceShrank(f"{length - (end - offset)} of {length} bytes")
            digest.update(view[:got])
            offset += got
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    """The sha256 of the whole file at ``path`` (``ranges_sha256``'s bounded memory)."""
    with open(path, "rb") as handle:
        return ranges_sha256(handle.fileno(), [(0, os.fstat(handle.fileno()).st_size)])


def send_range(pipe: int, fd: int, offset: int, length: int, on_bytes: Callable[[int], None]) -> None:
    """``length`` bytes of ``fd`` from ``offset`` into ``pipe`` by ``sendfile``; SourceShrank if the file ends first."""
    end = offset + length
    while offset < end:
        moved = os.sendfile(pipe, fd, offset, min(CHUNK, end - offset))
        if not moved:
            raise SourceShrank(f"{length - (end - offset)} of {length} bytes")
        offset += moved
        on_bytes(moved)


class ShardRecords:
    """The records ``spans`` of ``rec_path``, one after the other: the ``.rec`` of a shard, as ``write_shard`` would
    write it."""

    mode = PRIVATE

    def __init__(self, rec_path: str, spans: Sequence[RecordSpan]) -> None:
        self.rec_path, self.spans = rec_path, spans
        self.size = sum(span.size_bytes for span in spans)

    def sha256(self) -> str:
        with open(self.rec_path, "rb") as handle:  # a file that ends before a span: SourceShrank (ranges_sha256)
            return ranges_sha256(handle.fileno(), [(span.offset, span.size_bytes) for span in self.spans])

    def write_to(self, pipe: int, on_bytes: Callable[[int], None]) -> None:
        with open(self.rec_path, "rb") as handle:
            for span in self.spans:
                send_range(pipe, handle.fileno(), span.offset, span.size_bytes, on_bytes)


class ShardIndex:
    """The ``.idx`` of ``ShardRecords(..., spans)``: each record's key and its offset in the shard."""

    mode = PRIVATE

    def __init__(self, spans: Sequence[RecordSpan]) -> None:
        lines, offset = [], 0
        for span in spans:
            lines.append(f"{span.key}\t{offset}\n")
            offset += span.size_bytes
        self.data = "".join(lines).encode("ascii")
        self.size = len(self.data)

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def write_to(self, pipe: int, on_bytes: Callable[[int], None]) -> None:
        view = memoryview(self.data)
        while view:
            written = os.write(pipe, view[:CHUNK])
            on_bytes(written)
            view = view[written:]
