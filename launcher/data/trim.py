"""Trim a checkpoint to what the fine-tuning graph uses, without mxnet.

The layers above the cut (the old ``fc1`` of an ImageNet ResNet: 2048 x 1000 floats,
or 2048 x 11221 for the ImageNet-11k ResNet-152, 40% of its file) are discarded by
every worker anyway, so hosts get a params file without them. Two small formats:

* ``-symbol.json``: ``nodes`` with ``op`` ("null" for a variable) and ``inputs``
  ``[[node, output, version], ...]``; the cut layer's ancestors are what stays.
* ``.params`` (``mx.nd.save``): a list of arrays and their names ``arg:NAME`` /
  ``aux:NAME``, walked by ``launcher.data.paramsfile``; each kept array's bytes are copied verbatim.

A file that is not a complete params file, or has no names, makes ``trim_params`` return
None (``check_inputs`` refuses such files before anything starts).
"""
from __future__ import annotations

import json
import struct

from launcher.data import paramsfile
from launcher.data.cachefile import replacing


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


def trim_params(params_path: str, keep: set[str], out_path: str, *,
                kinds: tuple[str, ...] = ("arg", "aux")) -> tuple[int, int] | None:
    """Write ``out_path`` with only the arrays whose name (without arg:/aux:) is in ``keep`` and whose kind (arg:
    weights, aux: BatchNorm's moving statistics) is in ``kinds``.

    Returns (arrays kept, arrays dropped), or None if the file is not a complete params
    file with names (then nothing is written). ``out_path`` appears only when complete.
    """
    with paramsfile.mapped(params_path) as data:
        layout = paramsfile.parse_layout(data)
        if isinstance(layout, paramsfile.BadParams) or not layout.names:
            return None
        kept = [i for i, name in enumerate(layout.names)
                if name.split(":", 1)[-1] in keep and name.split(":", 1)[0] in kinds]
        with replacing(out_path) as out:
            out.write(struct.pack("<QQQ", paramsfile.LIST_MAGIC, 0, len(kept)))
            for i in kept:
                out.write(data[layout.arrays[i].start: layout.arrays[i].end])
            out.write(struct.pack("<Q", len(kept)))
            for i in kept:
                encoded = layout.names[i].encode()
                out.write(struct.pack("<Q", len(encoded)) + encoded)
    return len(kept), len(layout.arrays) - len(kept)
