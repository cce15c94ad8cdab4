"""The structure of an MXNet ``.params`` file (``mx.nd.save``), read without mxnet.

A params file is a list of NDArrays and their names, little-endian::

    uint64 0x112, uint64 0 (reserved), uint64 n, n arrays, uint64 m (0 or n), m names (uint64 length, bytes)

and an array, as MXNet 1.x's ``NDArray::Save`` writes it, is::

    uint32 magic (V2 0xF993FAC9, V3 0xF993FACA), int32 storage type (0 dense, 1 row_sparse, 2 csr),
    [sparse: storage shape], shape, then unless the array is "none":
    int32 dev_type, int32 dev_id, int32 dtype, [sparse: per aux array int32 dtype + shape],
    data (dtype size x elements of the storage shape, else of the shape), [sparse: each aux array's data]

where a shape is ``int32 ndim, int64 dims[ndim]``. Older files hold V1 arrays (magic 0xF993FAC8,
no storage type) or legacy ones (no magic: the first uint32 is ndim, the dims are uint32). A V2
array with ndim 0, and a V1/V3 one with an unknown (negative) dim, is "none" and ends after its shape.

``read_layout`` walks every header and checks that the data lengths add up to the file's size
exactly, as MXNet's loader needs. A download cut short, or any other file, is a ``BadParams``
naming the byte where it went wrong, found before a worker would die on MXNet's "Invalid NDArray
file format". Only the headers are read (the file is mapped), so a 230 MB checkpoint costs
milliseconds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import mmap
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

LIST_MAGIC = 0x112
_V1, _V2, _V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_AUX_ARRAYS = {0: 0, 1: 1, 2: 2}  # storage type (dense, row_sparse, csr) -> its number of aux arrays
_DTYPE_BYTES = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 8: 2, 9: 2, 10: 4, 11: 8, 12: 2}  # mshadow type flags
_MAX_NDIM = 32
_SMALLEST_ARRAY = 12  # magic, storage type and an empty shape: a V2 "none" array
MAX_ARRAYS = 65536    # arrays in one file at the most (ResNet-152 has about 1,000): a file of 500,000 empty
                      # arrays would cost seconds and memory to walk for nothing a model needs


class ArraySpan(NamedTuple):
    """Where one array's bytes (header and data) are in the file: ``data[start:end]`` (a tuple: a file of many
    arrays costs little to describe)."""

    start: int
    end: int
    dense: bool                  # default storage (row_sparse and csr are not)


@dataclasses.dataclass(frozen=True)
class ParamsLayout:
    """A params file that MXNet can load, as far as its structure goes."""

    size_bytes: int
    arrays: tuple[ArraySpan, ...]
    names: tuple[str, ...]       # "arg:NAME" / "aux:NAME", one per array; () for a file saved from a list


@dataclasses.dataclass(frozen=True)
class BadParams:
    """Why a file is not a complete params file, e.g. ``cut short at byte 4096: array 7's data ...``."""

    reason: str


class _Refused(Exception):
    """Raised inside the walk; ``parse_layout`` turns it into a ``BadParams`` value."""


class _Cursor:
    def __init__(self, buffer) -> None:
        self.buffer, self.offset, self.size = buffer, 0, len(buffer)

    def need(self, count: int, what: str) -> int:
        """Advance over ``count`` bytes of ``what``; returns where they start."""
        start = self.offset
        if count < 0 or start + count > self.size:
            raise _Refused(f"cut short at byte {self.size}: {what} needs {count} bytes from byte {start}")
        self.offset += count
        return start

    def take(self, fmt: str, what: str) -> tuple:
        return struct.unpack_from(fmt, self.buffer, self.need(struct.calcsize(fmt), what))


def _shape(cursor: _Cursor, what: str) -> tuple[int, ...]:
    (ndim,) = cursor.take("<i", f"{what} shape")
    if not 0 <= ndim <= _MAX_NDIM:
        raise _Refused(f"{what} has {ndim} dimensions (byte {cursor.offset - 4})")
    return cursor.take(f"<{ndim}q", f"{what} shape")


def _elements(shape: tuple[int, ...], what: str) -> int:
    if any(dim < 0 for dim in shape):
        raise _Refused(f"{what} has a negative dimension {shape}")
    return math.prod(shape)


def _stored_elements(shape: tuple[int, ...], storage: tuple[int, ...] | None, aux_shapes: list[tuple[int, ...]],
                     what: str) -> int:
    """How many values the data holds. A sparse array saved with an empty storage shape gets it, as in
    MXNet's loader, from its indices: row_sparse (rows listed) x the other dims, csr the indices' shape."""
    if storage is None:
        return _elements(shape, what)
    stored = _elements(storage, what)
    if stored or not aux_shapes[-1]:
        return stored
    if len(aux_shapes) == 1:  # row_sparse: aux 0 holds the row indices
        return _elements((aux_shapes[0][0],) + shape[1:], what)
    return _elements(aux_shapes[1], what)  # csr: aux 0 is indptr, aux 1 the column indices


def _dtype_bytes(cursor: _Cursor, what: str) -> int:
    (dtype,) = cursor.take("<i", f"{what} data type")
    if dtype not in _DTYPE_BYTES:
        raise _Refused(f"{what} has unknown data type {dtype} (byte {cursor.offset - 4})")
    return _DTYPE_BYTES[dtype]


def _array(cursor: _Cursor, index: int) -> ArraySpan:
    """Walk one array (see the module docstring); raises _Refused."""
    what, start = f"array {index}", cursor.offset
    (magic,) = cursor.take("<I", f"array {index}'s header")
    aux, storage = 0, None
    if magic in (_V2, _V3):
        (stype,) = cursor.take("<i", f"{what} storage type")
        if stype not in _AUX_ARRAYS:
            raise _Refused(f"{what} has unknown storage type {stype} (byte {cursor.offset - 4})")
        aux = _AUX_ARRAYS[stype]
        storage = _shape(cursor, what) if aux else None
        shape = _shape(cursor, what)
        none = not shape if magic == _V2 else any(dim < 0 for dim in shape)
    elif magic == _V1:
        shape = _shape(cursor, what)
        none = any(dim < 0 for dim in shape)
    elif magic <= _MAX_NDIM:  # legacy: no magic, this word is ndim and the dims are uint32
        shape, none = cursor.take(f"<{magic}I", f"{what} shape"), False
    else:
        raise _Refused(f"{what} has no NDArray header (0x{magic:08x} at byte {start})")
    if none:
        return ArraySpan(start, cursor.offset, aux == 0)
    cursor.take("<ii", f"{what} context")
    item_bytes = _dtype_bytes(cursor, what)
    aux_parts = [(_dtype_bytes(cursor, f"{what} aux {i}"), _shape(cursor, f"{what} aux {i}")) for i in range(aux)]
    cursor.need(item_bytes * _stored_elements(shape, storage, [part[1] for part in aux_parts], what),
                f"{what}'s data")
    for i, (aux_bytes, aux_shape) in enumerate(aux_parts):
        cursor.need(aux_bytes * _elements(aux_shape, f"{what} aux {i}"), f"{what}'s aux data {i}")
    return ArraySpan(start, cursor.offset, aux == 0)


def _names(cursor: _Cursor, count: int) -> tuple[str, ...]:
    (listed,) = cursor.take("<Q", "the name count")
    if listed not in (0, count):
        raise _Refused(f"{listed} names for {count} arrays (byte {cursor.offset - 8})")
    names = []
    for index in range(listed):
        (length,) = cursor.take("<Q", f"name {index}'s length")
        start = cursor.need(length, f"name {index}")
        try:
            names.append(bytes(cursor.buffer[start:cursor.offset]).decode())
        except UnicodeDecodeError:
            raise _Refused(f"name {index} is not UTF-8 (byte {start})") from None
    return tuple(names)


def parse_layout(buffer) -> ParamsLayout | BadParams:
    """The layout of a params file's bytes (``bytes`` or an ``mmap``), or why they are not one.

    >>> parse_layout(struct.pack("<QQQQ", LIST_MAGIC, 0, 0, 0))
    ParamsLayout(size_bytes=32, arrays=(), names=())
    >>> parse_layout(struct.pack("<QQQ", LIST_MAGIC, 0, 2))
    BadParams(reason='cut short at byte 24: the header lists 2 arrays, which need at least 24 bytes after it')
    """
    cursor = _Cursor(buffer)
    try:
        if cursor.size < 8 or struct.unpack_from("<Q", buffer)[0] != LIST_MAGIC:
            return BadParams("bad header")
        _, _, count = cursor.take("<QQQ", "the file header")
        if count > (cursor.size - cursor.offset) // _SMALLEST_ARRAY:
            raise _Refused(f"cut short at byte {cursor.size}: the header lists {count} arrays, which need at "
                           f"least {count * _SMALLEST_ARRAY} bytes after it")
        if count > MAX_ARRAYS:
            raise _Refused(f"the header lists {count} arrays; mxft takes at most {MAX_ARRAYS} (byte 16)")
        arrays = tuple(_array(cursor, index) for index in range(count))
        names = _names(cursor, count)
    except _Refused as refused:
        return BadParams(str(refused))
    if cursor.offset != cursor.size:
        return BadParams(f"{cursor.size - cursor.offset} extra bytes after the last name (from byte {cursor.offset})")
    return ParamsLayout(cursor.size, arrays, names)


@contextlib.contextmanager
def mapped(path: str) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes, mapped read-only (``b""`` for an empty file, which cannot be mapped)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view


def read_layout(path: str) -> ParamsLayout | BadParams:
    """``parse_layout`` of the file at ``path`` (mapped, so only the headers are read from disk)."""
    with mapped(path) as view:
        return parse_layout(view) if len(view) else BadParams("the file is empty")
