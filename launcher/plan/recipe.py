"""The fine-tuning component: shards, staged files and a config per worker, then ps-lite processes running ``trainer``.

``make_recipe_plan`` is pure: the job, what its data holds (``launcher.data.inputs.Inventory``),
the hosts and the facts give the one ``Plan``; ``Recipe`` is its part of that plan.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.data import recfile, shards
from launcher.data.inputs import Inventory
from launcher.plan.model import Facts, Plan, ProcessSpec, Role, Transfer
from launcher.plan.placement import (Assignment, HostLayout, Placement, Program, assign_workers, check_slots,
                                     device_count, plan_processes)
from launcher.spec.jobspec import ClusterSpec, CPUContexts, JobSpec
from trainer.config import SECTIONS, WorkerConfig


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """The training records of one worker: a copy cut into the cache (staged to its host), or a part of the
    training file that a worker on this machine reads where it is (``in_place``: ImageRecordIter's
    ``part_index``/``num_parts`` over the file's ``.idx``; nothing copied)."""

    worker: int
    positions: range | tuple[int, ...]    # which records of the training .rec (shards.strided_shards / index_parts)
    rec_path: str
    idx_path: str
    in_place: bool = False


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a fine-tuning run adds to a plan: the job, the shards and every worker's config."""

    kind: ClassVar[str] = "finetune"

    job: JobSpec
    shards: tuple[ShardSpec, ...]
    workers: tuple[WorkerConfig, ...]
    batches_per_epoch: int
    trimmed_params: str | None = None     # params without the layers above the cut, staged to hosts
    why: tuple[str, ...] = ()             # how cluster.workers / servers: auto were decided
    in_place: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # "train" | "val" |
                                          # "model" -> the remote hosts whose workers read it where it is

    name = property(lambda self: self.job.name)
    source = property(lambda self: self.job.source)
    host_silence_s = property(lambda self: float(self.job.cluster.host_silence_s))

    def job_dict(self) -> dict:
        return self.job.to_job_dict()

    def header_lines(self, plan: Plan) -> list[str]:
        return _describe_recipe(plan, self)

    def process_detail(self, plan: Plan, proc: ProcessSpec) -> str:
        if proc.role is Role.SCHEDULER:
            return f"root {plan.scheduler_uri}:{plan.scheduler_port}"
        if proc.role is not Role.WORKER:
            return ""
        shard, worker = self.shards[proc.rank], self.workers[proc.rank]
        on = (f", gpu {','.join(map(str, worker.devices))}" if worker.devices is not None else
              f", cpu {','.join(map(str, range(worker.cpu_contexts)))}" if worker.cpu_contexts > 1 else "")
        if shard.in_place:
            return (f"part {proc.rank} of {len(self.shards)} of {shard.rec_path} in place: "
                    f"{len(shard.positions)} records{on}")
        return f"shard {proc.rank}: {len(shard.positions)} records -> {shard.rec_path}{on}"

    def transfer_lines(self, plan: Plan, host: str, files: list[Transfer]) -> list[str]:
        kinds = ", ".join(f"{sum(t.kind == kind for t in files)} {kind}" for kind in ("code", "data", "run"))
        return [f"  stage to {host}: {len(files)} files ({kinds})",
                *(f"      {t.source} -> {t.dest}" for t in files if t.kind != "code")]


def _describe_recipe(plan: Plan, recipe: Recipe) -> list[str]:
    job, cluster = recipe.job, recipe.job.cluster
    worker0 = recipe.workers[0]
    devices = str(cluster.devices) if not cluster.uses_gpu else f"{len(worker0.devices)} GPU(s)"
    batch = worker0.batch_size
    servers = sum(p.role is Role.SERVER for p in plan.processes)
    return [
        f"  job        {job.source} ({job.name}): {job.model.variant.value} fine-tuning of "
        f"{os.path.basename(job.model.prefix)} at {job.model.cut_layer}, {job.num_classes} classes",
        f"  run dir    {plan.run_dir}",
        *([f"  resume     attempt {plan.attempt}: from the checkpoint of epoch {plan.facts.resume_epoch}, "
           f"{plan.facts.resume_prefix}"] if plan.facts.resume_prefix else []),
        f"  kvstore    {cluster.effective_kvstore}, {len(recipe.workers)} worker(s) x {devices}, {servers} server(s)"
        + (f"; arrays of {cluster.bigarray_bound}+ values split over the servers (cluster.bigarray_bound)"
           if servers > 1 else "")
        + (f"; pushes compressed {cluster.gradient_compression.type}, threshold "
           f"{cluster.gradient_compression.threshold:g}" if cluster.gradient_compression else ""),
        *(f"  {line}" for line in recipe.why),
        f"  training   {job.train.epochs} epochs x {recipe.batches_per_epoch} batches of {batch} per worker "
        f"(global batch {batch * len(recipe.workers)}), {job.train.optimizer} {dict(job.train.optimizer_params)}",
        _describe_lr(job, worker0.learning_rate, batch * len(recipe.workers)),
        f"  validation {worker0.num_val_images} images of {job.data.val}, " + (
            "evaluated by worker 0 alone (train.evaluation: worker0)" if job.train.evaluation == "worker0" else
            f"a part evaluated by each of the {len(recipe.workers)} workers with their BatchNorm statistics averaged"
            if len(recipe.workers) > 1 else "evaluated by worker 0"),
        *_describe_data(plan, recipe),
        "  processes:",
    ]


def _describe_data(plan: Plan, recipe: Recipe) -> list[str]:
    """Where the workers on other hosts read the training data, the validation data and the model: in place or from
    copies staged there, and why (``data.staging``)."""
    local = {host.label for host in plan.hosts if host.is_local}
    remote = [label for label in dict.fromkeys(plan.worker_hosts) if label not in local]
    if not remote:
        return []
    train_here = {plan.worker_hosts[shard.worker] for shard in recipe.shards if shard.in_place}
    lines = []
    for what, name in zip(DATA_FILES, ("training data", "validation data", "model")):
        here = [label for label in remote if label in recipe.in_place[what]
                and (what != "train" or label in train_here)]
        staged = {label: _why_staged(plan, recipe, what, label) for label in remote if label not in here}
        said = [f"read in place on {'every host' if not staged else ', '.join(here)} (the same files at the same "
                "paths as here)"] if here else []
        reasons = {}
        for label, why in staged.items():
            reasons.setdefault(why, []).append(label)
        said += [f"staged to {'every host' if not here and len(reasons) == 1 else ', '.join(labels)} ({why})"
                 for why, labels in reasons.items()]
        lines.append(f"  {'data' if not lines else '':<10} {name}: {'; '.join(said)}")
    return lines


def _why_staged(plan: Plan, recipe: Recipe, what: str, label: str) -> str:
    """Why the workers on host ``label`` get copies of ``what`` instead of reading it where it is."""
    job, facts = recipe.job, plan.facts
    if job.data.staging == "always":
        return "data.staging: always"
    if facts.hosts[label].assumed:
        return "not probed: --dry-run --probe asks"
    if label in recipe.in_place[what]:
        return "its parts cannot be read in place: no .idx, or sorted by class"
    seen = facts.hosts[label].files
    path = next(p for p in data_files(job, facts)[what] if not _same_files(facts, label, [p]))
    return f"{path} is not there" if not seen.get(path) else f"{path} there is not the file here"


def _describe_lr(job: JobSpec, scaled: float | None, global_batch: int) -> str:
    """The learning rate each worker uses, and where it comes from."""
    if scaled is None:
        given = job.train.optimizer_params.get("learning_rate", "the optimizer's default")
        return (f"  lr         {given} as given (train.lr_scaling: none; global batch {global_batch}, "
                f"train.reference_batch {job.train.reference_batch})")
    return (f"  lr         {scaled:g}: linear scaling, global batch {global_batch} / reference "
            f"{job.train.reference_batch}" + (f", warmed up over {job.train.warmup_epochs} epoch(s)"
                                              if job.train.warmup_epochs else ""))


def shard_dir(facts: Facts, num_workers: int, *, partition: str = "strided") -> str:
    """Where the copies of one training file cut for ``num_workers`` are cached: strided, or the parts the file's
    ``.idx`` gives (for hosts that do not have the file beside others that read it in place)."""
    tag = "" if partition == "strided" else f"|{partition}"
    key = hashlib.sha256(f"{facts.train_fingerprint}|{num_workers}{tag}".encode()).hexdigest()[:16]
    return os.path.join(facts.cache_dir, "shards", key)


def make_recipe_plan(job: JobSpec, inventory: Inventory, hosts: Sequence[HostSpec], facts: Facts) -> Plan:
    """A fine-tuning run: shards, staged files and a config per worker, then the processes."""
    assignment = assign_workers(job.cluster, hosts)
    count = len(assignment.workers)
    if count > len(inventory.train_records):
        raise InputError(job.source, f"{count} workers but only {len(inventory.train_records)} "
                         "training images", hint="use fewer workers")
    if job.train.evaluation == "shared" and count > 1 and count > inventory.val_records:
        raise InputError(job.source, f"{count} workers share the evaluation but the validation set has only "
                         f"{inventory.val_records} images: a worker would have none to read",
                         hint="add validation images, use fewer workers, or set train.evaluation: worker0")
    placement = Placement.of(hosts, facts, workers=assignment.workers, servers=assignment.servers)
    _check_slots(job.cluster, assignment)
    batch = job.train.batch_per_device * device_count(assignment.devices[0])
    in_place = _read_in_place(job, facts, placement.workers)
    shards = _shards(job, inventory, facts, count, [h.is_local or h.label in in_place["train"]
                                                    for h in placement.workers],
                     remote=not all(h.is_local for h in placement.workers))
    recipe = Recipe(job, shards, (), math.ceil(max(len(s.positions) for s in shards) / batch),
                    os.path.join(facts.cache_dir, "trimmed", f"{_model_key(job, facts)}-{job.model.cut_layer}",
                                 os.path.basename(job.model.params_path)), assignment.why, in_place)
    transfers = placement.code_transfers(facts)
    rate = scaled_learning_rate(job, batch * count)
    workers = tuple(_place_worker(recipe, inventory, placement, facts, i, transfers, assignment.devices[i], rate)
                    for i in range(count))
    recipe = dataclasses.replace(recipe, workers=workers, trimmed_params=recipe.trimmed_params if any(
        t.source == recipe.trimmed_params for t in transfers) else None)
    processes = plan_processes(placement, facts, servers=len(assignment.servers), workers=count,
                               program=lambda role, rank, host: _trainer(job, placement, facts, role, rank, host))
    return placement.assemble(facts, processes, transfers, recipe)


def _trainer(job: JobSpec, placement: Placement, facts: Facts, role: Role, rank: int, host: HostSpec) -> Program:
    """``python -m trainer`` (with ``--config`` for a worker) and its environment: a worker's threads (one for the
    scheduler and servers), then the job's own ``env:`` (which may set threads too), then the staged code first on
    the path and a worker's ps-lite port."""
    layout, python = placement.layouts[host.label], facts.hosts[host.label].python
    own = {"PYTHONPATH": layout.code_dir,
           "PYTHONSAFEPATH": "1"}  # -m trainer: a trainer/ in the folder it starts in must not shadow ours
    if role is not Role.WORKER:
        return Program((python, "-m", "trainer"), {"OMP_NUM_THREADS": "1", **(job.env or {}), **own})
    if facts.worker_ports:
        own["PORT"] = str(facts.worker_ports[rank])  # ps-lite ranks workers by (address, port)
    defaults = {**_worker_threads(job, placement, facts, host),
                "MXNET_KVSTORE_BIGARRAY_BOUND": str(job.cluster.bigarray_bound)}
    return Program((python, "-m", "trainer", "--config", f"{layout.run_dir}/config/worker-{rank}.json"),
                   {**defaults, **(job.env or {}), **own})


def _shards(job: JobSpec, inventory: Inventory, facts: Facts, count: int, in_place: Sequence[bool], *,
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


def _shard_paths(shards_at: str, index: int, count: int) -> tuple[str, str]:
    return (os.path.join(shards_at, f"part-{index}-of-{count}.rec"),
            os.path.join(shards_at, f"part-{index}-of-{count}.idx"))


DATA_FILES = ("train", "val", "model")  # what a worker reads, by the name the plan gives it


def data_files(job: JobSpec, facts: Facts) -> dict[str, tuple[str, ...]]:
    """The files of each of ``DATA_FILES`` on this machine: a ``.rec`` with its ``.idx`` where there is one (those
    ``facts.file_ids`` holds), the model's symbol and params."""
    def rec(path: str) -> tuple[str, ...]:
        idx = recfile.idx_path_for(path)
        return (path, idx) if idx in facts.file_ids else (path,)
    return {"train": rec(job.data.train), "val": rec(job.data.val),
            "model": (job.model.symbol_path, job.model.params_path)}


def _read_in_place(job: JobSpec, facts: Facts, workers: Sequence[HostSpec]) -> dict[str, tuple[str, ...]]:
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


def _model_key(job: JobSpec, facts: Facts) -> str:
    return facts.file_keys.get(job.model.params_path, "model")


def _place_worker(recipe: Recipe, inventory: Inventory, placement: Placement, facts: Facts, index: int,
                  transfers: list[Transfer], devices: tuple[int, ...] | CPUContexts,
                  learning_rate: float | None) -> WorkerConfig:
    """Worker ``index``'s config, with the transfers that put its files on its host (appended)."""
    job, host = recipe.job, placement.workers[index]
    layout, keys, shard = placement.layouts[host.label], facts.file_keys, recipe.shards[index]
    model_key = f"{_model_key(job, facts)}-{job.model.cut_layer}"

    def stage(source: str, key: str, in_place: bool, *, send: str | None = None) -> str:
        """The file's path for this worker: where it is, or where a transfer (appended once per host) puts it."""
        dest = source if in_place else layout.data(source, key)
        transfer = Transfer(host.label, send or source, dest, "data")
        if not layout.local and not in_place and all(t.host != host.label or t.dest != dest for t in transfers):
            transfers.append(transfer)
        return dest

    shard_key = os.path.basename(os.path.dirname(shard.rec_path))
    train_rec = stage(shard.rec_path, shard_key, shard.in_place)
    stage(shard.idx_path, shard_key, shard.in_place)
    val_here, model_here = (host.label in recipe.in_place[what] for what in ("val", "model"))
    val_rec = stage(job.data.val, keys.get(job.data.val, "val"), val_here)
    symbol = stage(job.model.symbol_path, model_key, model_here)
    stage(job.model.params_path, model_key, model_here, send=recipe.trimmed_params)
    val_idx = recfile.idx_path_for(job.data.val)
    if val_idx in keys:
        stage(val_idx, keys[val_idx], val_here)
    resume = _resume_files(host, layout, facts, transfers) if facts.resume_prefix else None
    if not layout.local:
        transfers.append(Transfer(host.label, os.path.join(facts.run_dir, "config", f"worker-{index}.json"),
                                  f"{layout.run_dir}/config/worker-{index}.json", "run"))
    return WorkerConfig(
        index=index, train_rec=train_rec, val_rec=val_rec, num_val_images=inventory.val_records,
        train_part=[index, len(recipe.shards), shard.idx_path] if shard.in_place else None,
        learning_rate=learning_rate,
        batches_per_epoch=recipe.batches_per_epoch, model_prefix=symbol[: -len("-symbol.json")],
        devices=list(devices) if isinstance(devices, tuple) else None,
        cpu_contexts=devices.count if isinstance(devices, CPUContexts) else 1,
        kvstore=job.cluster.effective_kvstore, out_dir=f"{layout.run_dir}/workers/worker-{index}",
        checkpoint_name=job.name, begin_epoch=facts.resume_epoch, resume_prefix=resume, **trainer_settings(job))


def trainer_settings(job: JobSpec) -> dict:
    """The job as the trainer reads it: the effective job file (recorded in its result), and the typed sections it
    uses, each field taken from the job as its file would say it (a key left out there is one whose default is
    None); no default is declared a second time."""
    job_dict = job.to_job_dict()
    typed = {name: kind(**{f.name: job_dict.get(name, {}).get(f.name) for f in dataclasses.fields(kind)})
             for name, kind in SECTIONS.items()}
    return dict(job=job_dict, num_classes=job.num_classes, **typed,
                gradient_compression=job_dict.get("cluster", {}).get("gradient_compression"))


def scaled_learning_rate(job: JobSpec, global_batch: int) -> float | None:
    """``train.lr_scaling: linear``: the job's learning rate x global batch / ``train.reference_batch``.

    >>> from launcher.spec.jobspec import parse_job
    >>> job = parse_job("{num_classes: 2, model: {prefix: m}, data: {train: t, val: v}, train: {lr_scaling: "
    ...                 "linear, reference_batch: 16, optimizer_params: {learning_rate: 0.1}}}", "/j.yaml", environ={})
    >>> scaled_learning_rate(job, 64)
    0.4
    """
    rate = job.train.optimizer_params.get("learning_rate")
    if job.train.lr_scaling != "linear" or not isinstance(rate, (int, float)):
        return None
    return round(rate * global_batch / job.train.reference_batch, 10)


def _worker_threads(job: JobSpec, placement: Placement, facts: Facts, host: HostSpec) -> dict[str, str]:
    """A CPU job's contexts (workers x cpu:N) share their host's cores; GPU workers keep MXNet's own default."""
    if job.cluster.uses_gpu:
        return {}
    contexts = placement.workers.count(host) * job.cluster.devices.count
    return {"OMP_NUM_THREADS": str(max(1, facts.hosts[host.label].cpu_count // contexts))}


def _resume_files(host: HostSpec, layout: HostLayout, facts: Facts, transfers: list[Transfer]) -> str:
    """The resume checkpoint's prefix on ``host`` (staged there with this run's files)."""
    local = facts.resume_prefix
    if layout.local:
        return local
    remote = f"{layout.run_dir}/resume/{os.path.basename(local)}"
    for suffix in ("-symbol.json", f"-{facts.resume_epoch:04d}.params"):
        transfer = Transfer(host.label, local + suffix, remote + suffix, "run")
        if transfer not in transfers:
            transfers.append(transfer)
    return remote


def _check_slots(cluster: ClusterSpec, assignment: Assignment) -> None:
    """Each worker takes a slot per GPU, or per CPU context (``cpu:N``), of its host."""
    check_slots(assignment.workers, device_count(assignment.devices[0]),
                unit="devices" if cluster.uses_gpu else "CPU contexts",
                hint="add hosts, raise slots, or lower cluster.workers / cluster.devices")

