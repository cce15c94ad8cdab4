"""The fine-tuning component: shards, staged files and a config per worker, then ps-lite processes running ``trainer``.

``make_recipe_plan`` is pure: the job, what its data holds (``launcher.data.inputs.Inventory``),
the hosts and the facts give the one ``Plan``; ``Recipe`` is its part of that plan.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.data import recfile
from launcher.data.inputs import Inventory
from launcher.plan.model import Facts, Plan, ProcessSpec, Role, Transfer
from launcher.plan.placement import (Assignment, HostLayout, Placement, Program, assign_workers, check_slots,
                                     device_count, plan_processes)
from launcher.plan.sources import ShardSpec, describe_sources, read_in_place, validation_parts, worker_shards
from launcher.spec.jobspec import ClusterSpec, CPUContexts, JobSpec
from trainer.config import SECTIONS, WorkerConfig


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
    statistics_params: str | None = None  # the trimmed params' BatchNorm statistics alone, staged to the hosts
                                          # without worker 0, whose workers take its weights through the kvstore
    val_parts: tuple[ShardSpec, ...] = ()  # each worker's part of the validation set (shared evaluation, an .idx)

    # The workers update the weights themselves (shared evaluation): the optimizer's state is theirs, and saved.
    keeps_optimizer_state = property(lambda self: self.job.train.evaluation == "shared")
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
           f"{plan.facts.resume_prefix}, " + _resumed_state(plan, recipe)] if plan.facts.resume_prefix else []),
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
        *describe_sources(plan, job, recipe.shards, recipe.in_place),
        *_describe_model_once(plan, recipe),
        "  processes:",
    ]


def _resumed_state(plan: Plan, recipe: Recipe) -> str:
    """Whether the resumed run continues exactly: the optimizer's state and each epoch's data order."""
    if plan.facts.resume_states:
        return "with the optimizer's state: it continues as if it never stopped"
    if not recipe.keeps_optimizer_state:
        return ("approximately: the servers kept the optimizer's state (train.evaluation: worker0) and it restarts "
                "from zero")
    return "approximately: the checkpoint has no optimizer state (an older mxft wrote it), which restarts from zero"


def _describe_model_once(plan: Plan, recipe: Recipe) -> list[str]:
    """Which hosts get the model's weights, when only worker 0's does."""
    if not recipe.statistics_params:
        return []
    lean = ", ".join(dict.fromkeys(t.host for t in plan.transfers if t.source == recipe.statistics_params))
    return [f"  model once its weights go to {plan.worker_hosts[0]} (worker 0's host) alone: {lean} get its BatchNorm "
            "statistics, and every worker starts from worker 0's weights through the kvstore"]


def _describe_lr(job: JobSpec, scaled: float | None, global_batch: int) -> str:
    """The learning rate each worker uses, where it comes from, and how it changes."""
    warmup = f", warmed up over {job.train.warmup_epochs} epoch(s)" if job.train.warmup_epochs else ""
    if scaled is None:
        given = job.train.optimizer_params.get("learning_rate", "the optimizer's default")
        return (f"  lr         {given} as given (train.lr_scaling: none; global batch {global_batch}, "
                f"train.reference_batch {job.train.reference_batch}){warmup}{_describe_schedule(job)}")
    return (f"  lr         {scaled:g}: linear scaling, global batch {global_batch} / reference "
            f"{job.train.reference_batch}{warmup}{_describe_schedule(job)}")


def _describe_schedule(job: JobSpec) -> str:
    """``train.lr_schedule`` in words (epochs counted from the run's start, warm-up included)."""
    schedule = job.train.lr_schedule
    if schedule is None:
        return ""
    if schedule.type == "step":
        return f"; x{schedule.factor:g} after every {schedule.every_epochs} epoch(s) (train.lr_schedule: step)"
    if schedule.type == "multistep":
        return (f"; x{schedule.factor:g} after epoch(s) {', '.join(map(str, schedule.at_epochs))} "
                "(train.lr_schedule: multistep)")
    return (f"; down a cosine to {schedule.final_lr:g} at the end of epoch {job.train.epochs} "
            "(train.lr_schedule: cosine)")


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
    in_place = read_in_place(job, facts, placement.workers)
    shards = worker_shards(job, inventory, facts, count, [h.is_local or h.label in in_place["train"]
                                                    for h in placement.workers],
                     remote=not all(h.is_local for h in placement.workers))
    val_parts = validation_parts(job, inventory, facts, count,
                                 [h.is_local or h.label in in_place["val"] for h in placement.workers])
    trimmed = os.path.join(facts.cache_dir, "trimmed", f"{_model_key(job, facts)}-{job.model.cut_layer}")
    params_name = os.path.basename(job.model.params_path)
    recipe = Recipe(job, shards, (), math.ceil(max(len(s.positions) for s in shards) / batch),
                    os.path.join(trimmed, params_name), assignment.why, in_place,
                    os.path.join(f"{trimmed}-statistics", params_name)
                    if _weights_through_kvstore(job, facts, placement, in_place) else None, val_parts)
    transfers = placement.code_transfers(facts)
    rate = scaled_learning_rate(job, batch * count)
    workers = tuple(_place_worker(recipe, inventory, placement, facts, i, transfers, assignment.devices[i], rate)
                    for i in range(count))
    sent = {t.source for t in transfers}
    recipe = dataclasses.replace(recipe, workers=workers, trimmed_params=recipe.trimmed_params if
                                 recipe.trimmed_params in sent else None)
    processes = plan_processes(placement, facts, servers=len(assignment.servers), workers=count,
                               program=lambda role, rank, host: _trainer(job, placement, facts, role, rank, host))
    return placement.assemble(facts, processes, transfers, recipe)


def _weights_through_kvstore(job: JobSpec, facts: Facts, placement: Placement,
                             in_place: Mapping[str, tuple[str, ...]]) -> bool:
    """The model once (issue 26): whether the hosts without worker 0 that would get a copy of the model get only its
    BatchNorm statistics (what the kvstore does not carry), every worker then starting from worker 0's weights
    pulled through the kvstore. Not with gradient compression (every push is quantised), an asynchronous kvstore
    (its servers sum nothing: they apply an optimizer to every push), on resume (the run's own checkpoint goes to
    every host) or for ``model.variant: scratch`` (no pretrained weights)."""
    if (job.cluster.gradient_compression or "async" in job.cluster.effective_kvstore or facts.resume_prefix
            or job.model.variant == "scratch"):
        return False
    lead = placement.workers[0].label
    return any(host.label != lead and not placement.layouts[host.label].local and host.label not in in_place["model"]
               for host in placement.workers)


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


def _validation_files(recipe: Recipe, index: int, stage, keys: Mapping[str, str],
                      here: bool) -> tuple[str, list | None]:
    """Worker ``index``'s validation file and the part of it the worker evaluates ([part, parts, .idx or ""]; None:
    all of it): its part alone staged to its host (``recipe.val_parts``), or the whole set read in place or staged."""
    job, count = recipe.job, len(recipe.shards)  # a shard per worker
    part = recipe.val_parts[index] if recipe.val_parts else None
    if part is not None and not part.in_place:
        key = os.path.basename(os.path.dirname(part.rec_path))
        stage(part.idx_path, key, False)
        return stage(part.rec_path, key, False), None
    if part is not None:
        return job.data.val, [index, len(recipe.val_parts), part.idx_path]
    val_rec = stage(job.data.val, keys.get(job.data.val, "val"), here)
    val_idx = recfile.idx_path_for(job.data.val)
    if val_idx in keys:
        stage(val_idx, keys[val_idx], here)
    shared = job.train.evaluation == "shared" and count > 1
    return val_rec, [index, count, ""] if shared else None  # "": MXNet's byte ranges, without an index


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
    val_rec, val_part = _validation_files(recipe, index, stage, keys, val_here or layout.local)
    resume = _resume_files(host, layout, facts, transfers) if facts.resume_prefix else None
    if resume:  # a resumed worker starts from the run's checkpoint: the pretrained model is not read
        symbol = f"{resume}-symbol.json"
    elif recipe.statistics_params and host.label != placement.workers[0].label:  # the weights come from worker 0
        symbol = stage(job.model.symbol_path, f"{model_key}-statistics", model_here)
        stage(job.model.params_path, f"{model_key}-statistics", model_here, send=recipe.statistics_params)
    else:
        symbol = stage(job.model.symbol_path, model_key, model_here)
        stage(job.model.params_path, model_key, model_here, send=recipe.trimmed_params)
    if not layout.local:
        transfers.append(Transfer(host.label, os.path.join(facts.run_dir, "config", f"worker-{index}.json"),
                                  f"{layout.run_dir}/config/worker-{index}.json", "run"))
    return WorkerConfig(
        index=index, train_rec=train_rec, val_rec=val_rec, val_part=val_part, num_val_images=inventory.val_records,
        train_part=[index, len(recipe.shards), shard.idx_path] if shard.in_place else None,
        learning_rate=learning_rate,
        batches_per_epoch=recipe.batches_per_epoch, model_prefix=symbol[: -len("-symbol.json")],
        devices=list(devices) if isinstance(devices, tuple) else None,
        cpu_contexts=devices.count if isinstance(devices, CPUContexts) else 1,
        kvstore=job.cluster.effective_kvstore, out_dir=f"{layout.run_dir}/workers/worker-{index}",
        start_weights="worker0" if recipe.statistics_params else "own",
        checkpoint_name=job.name, begin_epoch=facts.resume_epoch, resume_prefix=resume,
        best_so_far=[int(facts.resume_best[0]), facts.resume_best[1]] if facts.resume_best else None,
        **trainer_settings(job))


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
    states = (f"-{facts.resume_epoch:04d}.states",) if facts.resume_states else ()
    for suffix in ("-symbol.json", f"-{facts.resume_epoch:04d}.params", *states):
        transfer = Transfer(host.label, local + suffix, remote + suffix, "run")
        if transfer not in transfers:
            transfers.append(transfer)
    return remote


def _check_slots(cluster: ClusterSpec, assignment: Assignment) -> None:
    """Each worker takes a slot per GPU, or per CPU context (``cpu:N``), of its host."""
    check_slots(assignment.workers, device_count(assignment.devices[0]),
                unit="devices" if cluster.uses_gpu else "CPU contexts",
                hint="add hosts, raise slots, or lower cluster.workers / cluster.devices")

