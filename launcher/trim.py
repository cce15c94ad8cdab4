"""Trim a checkpoint to what the fine-tuning graph uses, without mxnet.

The layers above the cut (the old ``fc1`` of an ImageNet ResNet: 2048 x 1000 floats,
or 2048 x 11221 for the ImageNet-11k ResNet-152, 40% of its file) are discarded by
every worker anyway, so hosts get a params file without them. Two small formats:

* ``-symbol.json``: ``nodes`` with ``op`` ("null" for a variable) and ``inputs``
  ``[[node, output, version], ...]``; the cut layer's ancestors are what stays.
* ``.params`` (``mx.nd.save``): ``uint64 0x112, uint64 0, uint64 n, n arrays,
  uint64 n, n names (uint64 length + bytes)``; a dense array is ``uint32 magic,
  int32 storage type (0), int32 ndim, int64 dims[ndim], int32 dev_type, int32 dev_id,
  int32 dtype, data``. Names are ``arg:NAME`` / ``aux:NAME``.

Anything unexpected (sparse arrays, unknown versions) makes ``trim_params`` return
None, and the caller stages the file as it is.
"""
from __future__ import annotations

import json
import os
import struct

_LIST_MAGIC = 0x112
_ARRAY_MAGICS = (0xF993FAC9, 0xF993FACA)  # NDArray V2, V3
_DTYPE_BYTES = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1, 8: 2, 9: 2, 10: 4, 11: 8, 12: 2}


def used_variables(symbol_path: str, cut_layer: str) -> set[str]:
    """Names of the variables (weights, aux states, data) the graph up to ``cut_layer`` reads."""
    with open(symbol_path, encoding="utf-8") as handle:
        nodes = json.load(handle)["nodes"]
    start = next(i for i, node in enumerate(nodes) if node["name"] == cut_layer)
    seen, stack, names = set(), [start], set()
    while stack:
        index = stack.pop()
        if index in seen:
            continue
        seen.add(index)
        node = nodes[index]
        if node["op"] == "null":
            names.add(node["name"])
        stack.extend(edge[0] for edge in node.get("inputs", []))
    return names


def _array_spans(data: bytes, count: int, offset: int) -> list[tuple[int, int]] | None:
    spans = []
    for _ in range(count):
        start = offset
        magic, stype = struct.unpack_from("<Ii", data, offset)
        if magic not in _ARRAY_MAGICS or stype != 0:
            return None
        (ndim,) = struct.unpack_from("<i", data, offset + 8)
        dims = struct.unpack_from(f"<{ndim}q", data, offset + 12)
        offset += 12 + 8 * ndim
        if ndim > 0:
            _, _, dtype = struct.unpack_from("<iii", data, offset)
            if dtype not in _DTYPE_BYTES:
                return None
            size = _DTYPE_BYTES[dtype]
            for dim in dims:
                size *= dim
            offset += 12 + size
        spans.append((start, offset))
    return spans


def trim_params(params_path: str, keep: set[str], out_path: str) -> tuple[int, int] | None:
    """Write ``out_path`` with only the arrays whose name (without arg:/aux:) is in ``keep``.

    Returns (arrays kept, arrays dropped), or None if the file is not in a form this
    reader knows (then nothing is written).
    """
    with open(params_path, "rb") as handle:
        data = handle.read()
    try:
        magic, _, count = struct.unpack_from("<QQQ", data, 0)
        if magic != _LIST_MAGIC:
            return None
        spans = _array_spans(data, count, 24)
        if spans is None:
            return None
        offset = spans[-1][1] if spans else 24
        (num_names,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        names = []
        for _ in range(num_names):
            (length,) = struct.unpack_from("<Q", data, offset)
            names.append(data[offset + 8: offset + 8 + length].decode())
            offset += 8 + length
    except (struct.error, UnicodeDecodeError):
        return None
    if num_names != count or offset != len(data):
        return None
    kept = [i for i, name in enumerate(names) if name.split(":", 1)[-1] in keep]
    parts = [struct.pack("<QQQ", _LIST_MAGIC, 0, len(kept))]
    parts += [data[spans[i][0]: spans[i][1]] for i in kept]
    parts.append(struct.pack("<Q", len(kept)))
    for i in kept:
        encoded = names[i].encode()
        parts.append(struct.pack("<Q", len(encoded)) + encoded)
    tmp = out_path + ".partial"
    with open(tmp, "wb") as handle:
        handle.write(b"".join(parts))
    os.replace(tmp, out_path)
    return len(kept), count - len(kept)
