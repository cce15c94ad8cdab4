"""Where each worker's data comes from: read in place (this machine's files, or a host's that are the same at the
same paths, ``data.staging``), or copies cut into the cache and staged. Pure functions of the job, the facts and
the hosts."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.data import recfile, shards
from launcher.data.inputs import Inventory
from launcher.plan.model import Facts, Plan
from launcher.spec.jobspec import JobSpec


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """The training records of one worker: a copy (cut into the cache for this machine's workers, or as it is sent
    for another host's: ``launcher.data.pieces``), or a part of the training file that the worker reads where it is
    (``in_place``: ImageRecordIter's ``part_index``/``num_parts`` over the file's ``.idx``; nothing copied)."""

    worker: int
    positions: range | tuple[int, ...]    # which records of the training .rec (shards.strided_shards / index_parts)
    rec_path: str
    idx_path: str
    in_place: bool = False


DATA_FILES = ("train", "val", "model")  # what a worker reads, by the name the plan gives it


def data_files(job: JobSpec, facts: Facts) -> dict[str, tuple[str, ...]]:
    """The files of each of ``DATA_FILES`` on this machine: a ``.rec`` with its ``.idx`` where there is one (those
    ``facts.file_ids`` holds), the model's symbol and params."""
    def rec(path: str) -> tuple[str, ...]:
        idx = recfile.idx_path_for(path)
        return (path, idx) if idx in facts.file_ids else (path,)
    return {"train": rec(job.data.train), "val": rec(job.data.val),
            "model": (job.model.symbol_path, job.model.params_path)}


def read_in_place(job: JobSpec, facts: Facts, workers: Sequence[HostSpec]) -> dict[str, tuple[str, ...]]:
    """Which remote worker hosts read each of ``DATA_FILES`` where it is (``data.staging``): auto, a host that has the
    same files at the same paths (``HostFacts.files``, probed); never, every host (InputError naming the first that
    has not, unless not probed: a dry run takes the job's word). This machine's workers always read in place."""
    remote = [h for h in dict.fromkeys(workers) if not h.is_local]
    found = {}
    for what, paths in data_files(job, facts).items():
        found[what] = tuple(h.label for h in remote if job.data.staging != "always" and (
            facts.hosts[h.label].assumed and job.data.staging == "never" or _same_files(facts, h.label, paths)))
        missing = next((h for h in remote if h.label not in found[what]), None)
        if job.data.staging == "never" and missing is not None:
            path = next(p for p in paths if not _same_files(facts, missing.label, [p]))
            there = "is not there" if not facts.hosts[missing.label].files.get(path) else \
                "there is not the file this machine has (its size, time or first and last MiB differ)"
            raise InputError(f"host {missing.label}", f"{path} {there}, and {job.source} says data.staging: never",
                             hint="put the same file at the same path there, or set data.staging: auto")
    return found


def _same_files(facts: Facts, label: str, paths: Sequence[str]) -> bool:
    seen = facts.hosts[label].files
    return all(facts.file_ids.get(path) and seen.get(path) == facts.file_ids[path] for path in paths)


def shard_dir(facts: Facts, num_workers: int, *, partition: str = "strided") -> str:
    """Where the copies of one training file cut for ``num_workers`` are cached: strided, or the parts the file's
    ``.idx`` gives (for hosts that do not have the file beside others that read it in place)."""
    tag = "" if partition == "strided" else f"|{partition}"
    key = hashlib.sha256(f"{facts.train_fingerprint}|{num_workers}{tag}".encode()).hexdigest()[:16]
    return os.path.join(facts.cache_dir, "shards", key)


def worker_shards(job: JobSpec, inventory: Inventory, facts: Facts, count: int, in_place: Sequence[bool], *,
            remote: bool) -> tuple[ShardSpec, ...]:
    """Workers that can (``in_place[i]``) read their part of the training file where it is when it has an index and
    its classes are mixed through it, and the others get a copy of the same part; otherwise strided copies for all
    (InputError if ``data.staging: never`` puts a worker on another host)."""
    parts = shards.index_parts(inventory.train_records, count) if inventory.train_index is not None else []
    if any(in_place) and parts and all(parts) and shards.mixed_classes(inventory.train_labels, parts):
        shards_at = shard_dir(facts, count, partition="index")
        return tuple(ShardSpec(i, p, job.data.train, inventory.train_index, in_place=True) if in_place[i] else
                     ShardSpec(i, p, *_shard_paths(shards_at, i, count)) for i, p in enumerate(parts))
    if job.data.staging == "never" and remote:
        why = ("has no .idx" if not parts else "has too few records for a part per worker" if not all(parts) else
               "is sorted by class, so its parts would each hold a few classes")
        raise InputError(job.source, f"data.staging is never, but {job.data.train} {why}: the workers on other hosts "
                         "cannot read their parts of it in place", hint="shuffle it (mxft-prepare), or set "
                         "data.staging: auto")
    shards_at = shard_dir(facts, count)
    return tuple(ShardSpec(i, p, *_shard_paths(shards_at, i, count))
                 for i, p in enumerate(shards.strided_shards(len(inventory.train_records), count)))


def validation_parts(job: JobSpec, inventory: Inventory, facts: Facts, count: int,
                     in_place: Sequence[bool]) -> tuple[ShardSpec, ...]:
    """With shared evaluation, each worker's part of the validation set (ImageRecordIter's ``part_index`` of
    ``num_parts`` through the ``.idx``): read where it is by the workers that can (``in_place[i]``), and staged alone,
    as a copy of that part, to the others' hosts; () when the set has no ``.idx`` (then every host gets all of it,
    and each worker reads its part by the byte ranges MXNet gives without an index)."""
    if job.train.evaluation != "shared" or count < 2 or inventory.val_index is None:
        return ()
    parts = shards.index_parts(inventory.val_spans, count)
    if not all(parts):
        return ()
    key = hashlib.sha256(f"{facts.file_keys.get(job.data.val, job.data.val)}|{count}|val".encode()).hexdigest()[:16]
    folder = os.path.join(facts.cache_dir, "val-parts", key)
    return tuple(ShardSpec(i, p, job.data.val, inventory.val_index, in_place=True) if in_place[i] else
                 ShardSpec(i, p, os.path.join(folder, f"val-part-{i}-of-{count}.rec"),
                           os.path.join(folder, f"val-part-{i}-of-{count}.idx")) for i, p in enumerate(parts))


def _shard_paths(shards_at: str, index: int, count: int) -> tuple[str, str]:
    return (os.path.join(shards_at, f"part-{index}-of-{count}.rec"),
            os.path.join(shards_at, f"part-{index}-of-{count}.idx"))


def describe_sources(plan: Plan, job: JobSpec, shards: Sequence[ShardSpec],
                     in_place: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Where the workers on other hosts read the training data, the validation data and the model: in place or from
    copies staged there, and why (``data.staging``)."""
    local = {host.label for host in plan.hosts if host.is_local}
    remote = [label for label in dict.fromkeys(plan.worker_hosts) if label not in local]
    if not remote:
        return []
    train_here = {plan.worker_hosts[shard.worker] for shard in shards if shard.in_place}
    lines = []
    for what, name in zip(DATA_FILES, ("training data", "validation data", "model")):
        here = [label for label in remote if label in in_place[what] and (what != "train" or label in train_here)]
        staged = {label: _why_staged(plan.facts, job, in_place, what, label) for label in remote if label not in here}
        said = [f"read in place on {'every host' if not staged else ', '.join(here)} (the same files at the same "
                "paths as here)"] if here else []
        reasons = {}
        for label, why in staged.items():
            reasons.setdefault(why, []).append(label)
        said += [f"staged to {'every host' if not here and len(reasons) == 1 else ', '.join(labels)} ({why})"
                 for why, labels in reasons.items()]
        lines.append(f"  {'data' if not lines else '':<10} {name}: {'; '.join(said)}")
    return lines


def _why_staged(facts: Facts, job: JobSpec, in_place: Mapping[str, tuple[str, ...]], what: str, label: str) -> str:
    """Why the workers on host ``label`` get copies of ``what`` instead of reading it where it is."""
    if job.data.staging == "always":
        return "data.staging: always"
    if facts.hosts[label].assumed:
        return "not probed: --dry-run --probe asks"
    if label in in_place[what]:
        return "its parts cannot be read in place: no .idx, or sorted by class"
    seen = facts.hosts[label].files
    path = next(p for p in data_files(job, facts)[what] if not _same_files(facts, label, [p]))
    return f"{path} is not there" if not seen.get(path) else f"{path} there is not the file here"
