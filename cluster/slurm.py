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
from cluster.hosts import MAX_HOSTS, MAX_SLOTS, HostSpec


def expand_nodelist(text: str) -> list[str]:
    """Slurm's compressed host list, expanded in order (zero padding kept).

    >>> expand_nodelist("gpu[01-03,07],cpu9")
    ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'cpu9']
    >>> expand_nodelist("r[1-2]-n[8-9]")
    ['r1-n8', 'r1-n9', 'r2-n8', 'r2-n9']

    ValueError for a list that is malformed or names more than MAX_HOSTS nodes (counted
    before anything is expanded: ``n[1-100000000]`` is refused, not built).
    """
    items = _split_top_level(text.strip(), text)
    total = sum(_count_names(item, text) for item in items)
    if total > MAX_HOSTS:
        raise ValueError(f"node list {_short(text)} names {total} nodes; at most {MAX_HOSTS} are taken")
    names: list[str] = []
    for item in items:
        names += _expand_one(item, text)
    bad = next((name for name in names if name.startswith("-")), None)
    if bad is not None:
        raise ValueError(f"node name {bad!r} starts with '-' (ssh would read it as an option)")
    return names


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _count_names(item: str, whole: str) -> int:
    """How many names ``item`` expands to: the product of its bracket groups' sizes."""
    total = 1
    for body in re.findall(r"\[([^\]]*)\]", item):
        total *= sum(high - low + 1 for low, high in _ranges(body, whole))
        if total > MAX_HOSTS:
            return total  # enough to refuse; no need to multiply further
    return total


def _ranges(body: str, whole: str) -> list[tuple[int, int]]:
    """``01-03,7`` -> ``[(1, 3), (7, 7)]``; ValueError for anything else."""
    out = []
    for part in body.split(","):
        low, sep, high = part.strip().partition("-")
        if not re.fullmatch(r"[0-9]{1,9}", low) or (sep and not re.fullmatch(r"[0-9]{1,9}", high)):
            raise ValueError(f"bad range {part!r} in node list {_short(whole)}")
        if sep and int(high) < int(low):
            raise ValueError(f"range {part!r} runs backwards in node list {_short(whole)}")
        out.append((int(low), int(high) if sep else int(low)))
    return out


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
    for part, (low, high) in zip(body.split(","), _ranges(body, whole)):
        width = len(part.strip().partition("-")[0])
        values += [str(n).zfill(width) for n in range(low, high + 1)]
    return values


def expand_counts(text: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE``'s form: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]{1,6})(?:\(x([0-9]{1,6})\))?\s*", part)
        if match is None:
            raise ValueError(f"bad count {part!r} in {_short(text)}")
        if len(counts) + int(match.group(2) or 1) > MAX_HOSTS:
            raise ValueError(f"{_short(text)} gives counts for more than {MAX_HOSTS} nodes")
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
    except ValueError as err:
        raise InputError("SLURM_JOB_NODELIST", str(err)) from None
    slots = _slots(environ, len(names))
    if len(slots) != len(names):
        raise InputError("SLURM_TASKS_PER_NODE",
                         f"gives {len(slots)} counts for {len(names)} nodes ({_short(nodelist)})")
    return tuple(HostSpec(name, slots=count, line=i + 1) for i, (name, count) in enumerate(zip(names, slots)))


def _slots(environ: Mapping[str, str], nodes: int) -> list[int | None]:
    """Each node's slots: its GPUs (``SLURM_GPUS_ON_NODE``), else its tasks, else unknown (None)."""
    gpus, tasks = environ.get("SLURM_GPUS_ON_NODE"), environ.get("SLURM_TASKS_PER_NODE")
    variable = "SLURM_GPUS_ON_NODE" if gpus else "SLURM_TASKS_PER_NODE"
    try:
        if gpus:
            if not re.fullmatch(r"[0-9]{1,6}", gpus.strip()):
                raise ValueError(f"{gpus!r} is not a number of GPUs")
            slots = [int(gpus)] * nodes
        else:
            slots = expand_counts(tasks) if tasks else [None] * nodes
    except ValueError as err:
        raise InputError(variable, str(err)) from None
    if any(count is not None and count > MAX_SLOTS for count in slots):
        raise InputError(variable, f"gives a node more than {MAX_SLOTS} slots")
    return slots
