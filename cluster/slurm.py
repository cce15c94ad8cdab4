"""Hosts from a Slurm allocation: ``SLURM_JOB_NODELIST`` (expanded by Slurm's own ``scontrol show hostnames``)
and the slots of each node.

Inside ``salloc`` or an ``sbatch`` script, ``mxft-launch --hosts slurm`` (or no
``--hosts`` at all) takes the allocation's nodes as its hosts and reaches them over
SSH, as on any other cluster; each node's slots are its GPUs (``SLURM_GPUS_ON_NODE``)
when the allocation has GPUs, else its tasks (``SLURM_TASKS_PER_NODE``).
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping

from cluster.errors import InputError
from cluster.hosts import MAX_HOSTS, MAX_SLOTS, HostSpec


NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")   # a host name or address: never an option of ssh
LIST_BYTES = 256 * MAX_HOSTS   # scontrol's output read at the most (a name a line)
LIST_CHARS = 64 << 10          # a node list longer than this is no allocation's (and near the kernel's limit on argv)
SCONTROL_TIMEOUT_S = 10


def allocation_nodes(nodelist: str, environ: Mapping[str, str]) -> list[str]:
    """The node names of ``nodelist`` as Slurm itself expands it (``scontrol show hostnames``, with the allocation's
    configuration), at most MAX_HOSTS; ValueError naming what is wrong."""
    given = {**os.environ, **environ}
    env = {name: given[name] for name in ("PATH", "HOME", "SLURM_CONF") if name in given}  # where its config is
    if "\0" in nodelist or len(nodelist) > LIST_CHARS:
        raise ValueError(f"the node list is not one Slurm writes ({len(nodelist)} characters, or a NUL)")
    scontrol = shutil.which("scontrol", path=env.get("PATH") or os.defpath)
    if scontrol is None:
        raise ValueError("Slurm's scontrol is not installed here, and it is what expands the allocation's node list")
    out, err, code, expired = _bounded_output([scontrol, "show", "hostnames", "--", nodelist], env)
    if expired:
        raise ValueError(f"scontrol show hostnames did not answer within {SCONTROL_TIMEOUT_S} s")
    said = err.decode(errors="replace").strip().splitlines()
    if code not in (0, -9) or (said and not out):
        raise ValueError(f"Slurm cannot expand node list {_short(nodelist)}: {(said or ['no reason given'])[-1][:200]}")
    names = out.decode(errors="replace").split()
    if len(out) > LIST_BYTES or len(names) > MAX_HOSTS:
        raise ValueError(f"node list {_short(nodelist)} names more than {MAX_HOSTS} nodes")
    bad = next((name for name in names if not NODE_NAME.fullmatch(name)), None)
    if bad is not None:
        raise ValueError(f"Slurm expands node list {_short(nodelist)} to {bad!r}, which is not a host name")
    if not names:
        raise ValueError(f"node list {_short(nodelist)} names no node")
    twice = next((name for name, count in collections.Counter(names).items() if count > 1), None)
    if twice is not None:
        raise ValueError(f"node list {_short(nodelist)} names {twice} twice")
    return names


def _bounded_output(argv: list[str], env: Mapping[str, str]) -> tuple[bytes, bytes, int, bool]:
    """(the first LIST_BYTES + 1 bytes of stdout, of stderr 4 KiB, the exit code (-9: killed when its output
    ended or went over the bound), whether the deadline passed); stderr is drained meanwhile, so it never blocks."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env) as proc:
        expired, err = threading.Event(), bytearray()
        timer = threading.Timer(SCONTROL_TIMEOUT_S, lambda: (expired.set(), proc.kill()))  # a deadline, not a hang
        drain = threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)
        timer.start()
        drain.start()
        try:
            out = proc.stdout.read(LIST_BYTES + 1)
            proc.kill()  # done, or more than the bound
            drain.join(SCONTROL_TIMEOUT_S)
        finally:
            timer.cancel()
    return out, bytes(err[:4096]), proc.returncode, expired.is_set()


def _drain(stream, kept: bytearray) -> None:
    while chunk := stream.read(4096):
        if len(kept) < 4096:
            kept += chunk


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


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
        names = allocation_nodes(nodelist, environ)
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
