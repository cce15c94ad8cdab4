"""The plan of a run, as data: which process runs where, with which argv and env.

``make_plan`` is a pure function of the job, what its data holds, the hosts and a
few facts decided outside (run id, directories, the scheduler's port, the Python
to run). ``--dry-run`` prints the Plan it returns; ``execute`` carries out that same
object. Nothing here touches a disk, a clock, a socket or a random generator.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import os
from collections.abc import Mapping, Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher import recfile
from launcher.inputs import Inventory
from launcher.jobspec import JobSpec
from trainer.config import WorkerConfig


class Role(str, enum.Enum):
    SCHEDULER = "scheduler"
    SERVER = "server"
    WORKER = "worker"


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    role: Role
    rank: int                             # place within its role in the plan
    host: str                             # the host's label in the hosts file
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    log_path: str

    @property
    def name(self) -> str:
        return self.role.value if self.role is Role.SCHEDULER else f"{self.role.value} {self.rank}"

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    worker: int
    positions: range                      # which records of the training .rec (see recfile.strided_shards)
    prefix: str                           # written as PREFIX.rec + PREFIX.idx

    @property
    def rec_path(self) -> str:
        return self.prefix + ".rec"


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the plan depends on that is decided outside it (so planning stays pure)."""

    run_id: str
    run_dir: str
    cache_dir: str                        # shards are cached here, keyed by data and worker count
    scheduler_port: int
    python: str                           # interpreter that runs trainer on the hosts
    code_dir: str                         # folder holding the trainer package
    cpu_count: int
    train_fingerprint: str                # changes whenever the training .rec changes


@dataclasses.dataclass(frozen=True)
class Plan:
    run_id: str
    run_dir: str
    job: JobSpec
    hosts: tuple[HostSpec, ...]
    scheduler_uri: str
    scheduler_port: int
    processes: tuple[ProcessSpec, ...]
    shards: tuple[ShardSpec, ...]
    workers: tuple[WorkerConfig, ...]
    batches_per_epoch: int

    def config_path(self, worker: int) -> str:
        return os.path.join(self.run_dir, "config", f"worker-{worker}.json")

    @property
    def result_path(self) -> str:
        return os.path.join(self.run_dir, "result.json")

    def describe(self) -> str:
        """The plan as a person reads it (``--dry-run`` prints this)."""
        job, cluster = self.job, self.job.cluster
        devices = "cpu" if cluster.devices is None else "gpu " + ",".join(map(str, cluster.devices))
        worker0 = self.workers[0]
        lines = [
            f"run {self.run_id}",
            f"  job        {job.source} ({job.name}): {job.model.variant.value} fine-tuning of "
            f"{os.path.basename(job.model.prefix)} at {job.model.cut_layer}, {job.num_classes} classes",
            f"  run dir    {self.run_dir}",
            f"  kvstore    {cluster.effective_kvstore}, {cluster.workers} worker(s) x {devices}, "
            f"{cluster.servers} server(s)",
            f"  training   {job.train.epochs} epochs x {self.batches_per_epoch} batches of "
            f"{len(worker0.devices or [0]) * job.train.batch_per_device} per worker, "
            f"{job.train.optimizer} {dict(job.train.optimizer_params)}",
            f"  validation {worker0.num_val_images} images of {job.data.val}, evaluated by rank 0",
            "  processes:",
        ]
        for proc in self.processes:
            env = proc.env_dict
            detail = f"root {self.scheduler_uri}:{self.scheduler_port}" if proc.role is Role.SCHEDULER else ""
            if proc.role is Role.WORKER:
                shard = self.shards[proc.rank]
                detail = f"shard {proc.rank}: {len(shard.positions)} records -> {shard.rec_path}"
            lines.append(f"    {proc.name:<10} on {proc.host:<16} DMLC_NODE_HOST={env['DMLC_NODE_HOST']:<15} "
                         f"{detail}".rstrip())
            lines.append(f"      {' '.join(proc.argv)}")
            lines.append(f"      log {proc.log_path}")
        return "\n".join(lines)


def shard_dir(facts: Facts, num_workers: int) -> str:
    key = hashlib.sha256(f"{facts.train_fingerprint}|{num_workers}".encode()).hexdigest()[:16]
    return os.path.join(facts.cache_dir, "shards", key)


def place(count: int, hosts: Sequence[HostSpec], *, offset: int = 0) -> list[HostSpec]:
    """Round-robin ``count`` processes over ``hosts``, starting at host ``offset``.

    >>> [h.name for h in place(3, (HostSpec("a"), HostSpec("b")))]
    ['a', 'b', 'a']
    """
    return [hosts[(offset + i) % len(hosts)] for i in range(count)]


def _address(host: HostSpec) -> str:
    return "127.0.0.1" if host.is_local else host.name


def make_plan(job: JobSpec, inventory: Inventory, hosts: Sequence[HostSpec], facts: Facts) -> Plan:
    """Decide every process, shard and config of the run. Raises InputError if the job cannot fit."""
    cluster = job.cluster
    num_workers = cluster.workers
    if num_workers > len(inventory.train_records):
        raise InputError(job.source, f"{num_workers} workers but only {len(inventory.train_records)} "
                         "training images", hint="use fewer workers")
    hosts = tuple(hosts)
    worker_hosts = place(num_workers, hosts)
    server_hosts = place(cluster.servers, hosts)
    scheduler_host = hosts[0]
    batch = job.train.batch_per_device * (len(cluster.devices) if cluster.devices else 1)
    positions = recfile.strided_shards(len(inventory.train_records), num_workers)
    batches_per_epoch = math.ceil(max(len(p) for p in positions) / batch)
    shards_at = shard_dir(facts, num_workers)
    shards = tuple(ShardSpec(i, p, os.path.join(shards_at, f"part-{i}-of-{num_workers}"))
                   for i, p in enumerate(positions))

    base_env = {
        "DMLC_PS_ROOT_URI": _address(scheduler_host),
        "DMLC_PS_ROOT_PORT": str(facts.scheduler_port),
        "DMLC_NUM_SERVER": str(cluster.servers),
        "DMLC_NUM_WORKER": str(num_workers),
        "PYTHONPATH": facts.code_dir,
        "PYTHONUNBUFFERED": "1",
        "MXFT_RUN_ID": facts.run_id,
    }
    workers_per_host = {h.label: worker_hosts.count(h) for h in hosts}

    def process(role: Role, rank: int, host: HostSpec, argv: tuple[str, ...]) -> ProcessSpec:
        env = dict(base_env, DMLC_ROLE=role.value, DMLC_NODE_HOST=_address(host))
        if role is Role.WORKER and cluster.devices is None:
            env["OMP_NUM_THREADS"] = str(max(1, facts.cpu_count // workers_per_host[host.label]))
        elif role is not Role.WORKER:
            env["OMP_NUM_THREADS"] = "1"
        name = role.value if role is Role.SCHEDULER else f"{role.value}-{rank}"
        return ProcessSpec(role, rank, host.label, argv, tuple(sorted(env.items())),
                           os.path.join(facts.run_dir, "logs", f"{name}.log"))

    trainer = (facts.python, "-m", "trainer")
    processes = [process(Role.SCHEDULER, 0, scheduler_host, trainer)]
    processes += [process(Role.SERVER, i, h, trainer) for i, h in enumerate(server_hosts)]
    workers = tuple(_worker_config(job, inventory, facts, shards[i], batches_per_epoch) for i in range(num_workers))
    processes += [process(Role.WORKER, i, h, trainer + ("--config", os.path.join(facts.run_dir, "config",
                                                                                  f"worker-{i}.json")))
                  for i, h in enumerate(worker_hosts)]
    return Plan(facts.run_id, facts.run_dir, job, hosts, _address(scheduler_host), facts.scheduler_port,
                tuple(processes), shards, workers, batches_per_epoch)


def _worker_config(job: JobSpec, inventory: Inventory, facts: Facts, shard: ShardSpec,
                   batches_per_epoch: int) -> WorkerConfig:
    train, data, model = job.train, job.data, job.model
    return WorkerConfig(
        index=shard.worker,
        train_rec=shard.rec_path,
        val_rec=data.val,
        num_val_images=inventory.val_records,
        batches_per_epoch=batches_per_epoch,
        model_prefix=model.prefix,
        model_epoch=model.epoch,
        cut_layer=model.cut_layer,
        variant=model.variant.value,
        num_classes=job.num_classes,
        data_shape=list(data.shape),
        rand_crop=data.rand_crop,
        rand_mirror=data.rand_mirror,
        preprocess_threads=data.preprocess_threads,
        epochs=train.epochs,
        batch_per_device=train.batch_per_device,
        optimizer=train.optimizer,
        optimizer_params=dict(train.optimizer_params),
        initializer={"type": train.initializer.type, "params": dict(train.initializer.params)},
        seed=train.seed,
        log_every_batches=train.log_every_batches,
        devices=list(job.cluster.devices) if job.cluster.devices is not None else None,
        kvstore=job.cluster.effective_kvstore,
        out_dir=os.path.join(facts.run_dir, "workers", f"worker-{shard.worker}"),
        checkpoint_name=job.name,
        job=job.to_dict(),
    )


def worker_envs(plan: Plan) -> Mapping[int, dict[str, str]]:
    """Env of each worker by rank in the plan (handy for tests and reports)."""
    return {p.rank: p.env_dict for p in plan.processes if p.role is Role.WORKER}
