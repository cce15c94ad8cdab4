"""Hosts from a Slurm allocation: ``SLURM_JOB_NODELIST`` and the slots of each node.

Inside ``salloc`` or an ``sbatch`` script, ``mxft-launch --hosts slurm`` (or no
``--hosts`` at all) takes the allocation's nodes as its hosts and reaches them over
SSH, as on any other cluster; each node's slots are its GPUs (``SLURM_GPUS_ON_NODE``)
when the allocation has GPUs, else its tasks (``SLURM_TASKS_PER_NODE``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from cluster.errors import InputError
from cluster.hosts import HostSpec


def expand_nodelist(text: str) -> list[str]:
    """Slurm's compressed host list, expanded in order (zero padding kept).

    >>> expand_nodelist("gpu[01-03,07],cpu9")
    ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'cpu9']
    >>> expand_nodelist("r[1-2]-n[8-9]")
    ['r1-n8', 'r1-n9', 'r2-n8', 'r2-n9']
    """
    names: list[str] = []
    for item in _split_top_level(text.strip(), text):
        names += _expand_one(item, text)
    return names


def _split_top_level(text: str, whole: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"unbalanced brackets in node list {whole!r}")
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced brackets in node list {whole!r}")
    items.append(text[start:])
    if any(not item.strip() for item in items):
        raise ValueError(f"empty name in node list {whole!r}")
    return [item.strip() for item in items]


def _expand_one(item: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", item)
    if match is None:
        return [item]
    head, tail = item[:match.start()], item[match.end():]
    out = []
    for value in _range_values(match.group(1), whole):
        out += [head + value + rest for rest in _expand_one(tail, whole)]
    return out


def _range_values(body: str, whole: str) -> list[str]:
    values = []
    for part in body.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"bad range {part!r} in node list {whole!r}")
        if not sep:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"range {part!r} runs backwards in node list {whole!r}")
        width = len(low)
        values += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return values


def expand_counts(text: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE``'s form: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ValueError(f"bad count {part!r} in {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def hosts_from_slurm(environ: Mapping[str, str]) -> tuple[HostSpec, ...]:
    """The allocation's nodes as hosts, with slots; InputError outside an allocation."""
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise InputError("--hosts slurm", "SLURM_JOB_NODELIST is not set: this is not inside a Slurm allocation",
                         hint="run under salloc/sbatch, or give a hosts file")
    try:
        names = expand_nodelist(nodelist)
        gpus = environ.get("SLURM_GPUS_ON_NODE")
        if gpus:
            slots = [int(gpus)] * len(names)
        elif environ.get("SLURM_TASKS_PER_NODE"):
            slots = expand_counts(environ["SLURM_TASKS_PER_NODE"])
        else:
            slots = [None] * len(names)
    except ValueError as err:
        raise InputError("SLURM_JOB_NODELIST", str(err)) from None
    if len(slots) != len(names):
        raise InputError("SLURM_TASKS_PER_NODE", f"gives {len(slots)} counts for {len(names)} nodes ({nodelist})")
    return tuple(HostSpec(name, slots=count, line=i + 1) for i, (name, count) in enumerate(zip(names, slots)))
