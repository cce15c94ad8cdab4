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
    cwd: str | None = None                # None: the transport's default (home on SSH hosts)

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
class HostFacts:
    """What preflight learnt about a host (or what a dry run assumes)."""

    address: str                          # where the other hosts reach it (DMLC_NODE_HOST)
    python: str                           # the interpreter that runs trainer there
    cpu_count: int
    work_dir: str = ""                    # absolute remote work folder ("" = Facts.remote_dir)
    home: str = ""                        # the SSH user's home there (``~`` in paths given for that host)


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the plan depends on that is decided outside it (so planning stays pure)."""

    run_id: str
    run_dir: str                          # on this machine: logs, results, checkpoints
    cache_dir: str                        # shards are cached here, keyed by data and worker count
    scheduler_port: int
    code_dir: str                         # folder holding the trainer package on this machine
    train_fingerprint: str                # changes whenever the training .rec changes ("": command mode)
    hosts: Mapping[str, HostFacts]        # by host label
    remote_dir: str = "~/.mxft"           # work folder on remote hosts
    code_files: tuple[str, ...] = ()      # paths under code_dir that remote hosts need
    code_hash: str = ""                   # changes whenever any of code_files changes
    file_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)  # local path -> content key
    attempt: int = 1                      # 2, 3, ...: a resumed or restarted run (logs in logs/attempt-N)
    resume_epoch: int = 0                 # epochs already done
    resume_prefix: str | None = None      # local checkpoint of epoch resume_epoch
    worker_ports: tuple[int, ...] = ()    # ps-lite PORT of each worker (ascending: worker i gets rank i)


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One file to put on a host before the run starts."""

    host: str
    source: str                           # path on this machine
    dest: str                             # path on the host
    kind: str                             # code | data (content-addressed, kept) | run (this run's own)


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
    worker_hosts: tuple[str, ...]         # host label of each worker
    batches_per_epoch: int
    transfers: tuple[Transfer, ...] = ()
    remote_roots: Mapping[str, str] = dataclasses.field(default_factory=dict)  # host label -> work folder
    remote_pythons: Mapping[str, str] = dataclasses.field(default_factory=dict)  # host label -> interpreter
    trimmed_params: str | None = None     # params without the layers above the cut, staged to hosts
    attempt: int = 1

    @property
    def remote(self) -> bool:
        return bool(self.transfers) or any(not h.is_local for h in self.hosts)

    def config_path(self, worker: int) -> str:
        """Where the launcher writes worker ``worker``'s config on this machine."""
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
            f"  validation {worker0.num_val_images} images of {job.data.val}, evaluated by worker 0",
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
        for host in self.hosts:
            files = [t for t in self.transfers if t.host == host.label]
            if files:
                kinds = ", ".join(f"{sum(t.kind == kind for t in files)} {kind}" for kind in ("code", "data", "run"))
                lines.append(f"  stage to {host.label}: {len(files)} files ({kinds})")
                lines += [f"      {t.source} -> {t.dest}" for t in files if t.kind != "code"]
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


@dataclasses.dataclass(frozen=True)
class HostLayout:
    """Where a host keeps this run's files: this machine's paths, or under the remote dir."""

    local: bool
    root: str
    run_dir: str
    code_dir: str
    data_dir: str

    @classmethod
    def of(cls, host: HostSpec, facts: Facts) -> "HostLayout":
        if host.is_local:
            return cls(True, "", facts.run_dir, facts.code_dir, "")
        root = (facts.hosts[host.label].work_dir or facts.remote_dir).rstrip("/")
        return cls(False, root, f"{root}/runs/{facts.run_id}", f"{root}/code/{facts.code_hash}", f"{root}/data")

    def data(self, local_path: str, key: str) -> str:
        return local_path if self.local else f"{self.data_dir}/{key}/{os.path.basename(local_path)}"


def make_plan(job: JobSpec, inventory: Inventory, hosts: Sequence[HostSpec], facts: Facts) -> Plan:
    """Decide every process, shard, file copy and config of the run.

    Raises InputError if the job cannot fit the data or the hosts.
    """
    cluster = job.cluster
    num_workers = cluster.workers
    if num_workers > len(inventory.train_records):
        raise InputError(job.source, f"{num_workers} workers but only {len(inventory.train_records)} "
                         "training images", hint="use fewer workers")
    hosts = tuple(hosts)
    worker_hosts = place(num_workers, hosts)
    server_hosts = place(cluster.servers, hosts, offset=num_workers)  # servers continue after the workers
    _check_slots(job, worker_hosts)
    scheduler_host = hosts[0]
    layouts = {h.label: HostLayout.of(h, facts) for h in hosts}
    batch = job.train.batch_per_device * (len(cluster.devices) if cluster.devices else 1)
    positions = recfile.strided_shards(len(inventory.train_records), num_workers)
    batches_per_epoch = math.ceil(max(len(p) for p in positions) / batch)
    shards_at = shard_dir(facts, num_workers)
    shards = tuple(ShardSpec(i, p, os.path.join(shards_at, f"part-{i}-of-{num_workers}"))
                   for i, p in enumerate(positions))

    transfers: list[Transfer] = []
    model_key = facts.file_keys.get(job.model.params_path, "model")
    trimmed = os.path.join(facts.cache_dir, "trimmed", f"{model_key}-{job.model.cut_layer}",
                           os.path.basename(job.model.params_path))

    def stage(host: HostSpec, source: str, key: str, kind: str = "data", *, send: str | None = None) -> str:
        dest = layouts[host.label].data(source, key)
        source = send or source
        if not layouts[host.label].local and all(t.host != host.label or t.dest != dest for t in transfers):
            transfers.append(Transfer(host.label, source, dest, kind))
        return dest

    busy = {h.label for h in [scheduler_host, *server_hosts, *worker_hosts]}
    for host in hosts:
        layout = layouts[host.label]
        if not layout.local and host.label in busy:
            transfers += [Transfer(host.label, os.path.join(facts.code_dir, rel), f"{layout.code_dir}/{rel}", "code")
                          for rel in facts.code_files]
    workers = []
    shard_key = os.path.basename(shards_at)
    for i, host in enumerate(worker_hosts):
        layout = layouts[host.label]
        keys = facts.file_keys
        paths = {
            "train_rec": stage(host, shards[i].rec_path, shard_key),
            "train_idx": stage(host, shards[i].prefix + ".idx", shard_key),
            "val_rec": stage(host, job.data.val, keys.get(job.data.val, "val")),
            "model_symbol": stage(host, job.model.symbol_path, f"{model_key}-{job.model.cut_layer}"),
            "model_params": stage(host, job.model.params_path, f"{model_key}-{job.model.cut_layer}", send=trimmed),
        }
        val_idx = recfile.idx_path_for(job.data.val)
        if val_idx in keys:
            stage(host, val_idx, keys[val_idx])
        if facts.resume_prefix:
            paths["resume_prefix"] = _resume_files(host, layout, facts, transfers)
        workers.append(_worker_config(job, inventory, shards[i], batches_per_epoch, paths=paths,
                                      out_dir=f"{layout.run_dir}/workers/worker-{i}",
                                      begin_epoch=facts.resume_epoch))
        if not layout.local:
            transfers.append(Transfer(host.label, os.path.join(facts.run_dir, "config", f"worker-{i}.json"),
                                      f"{layout.run_dir}/config/worker-{i}.json", "run"))

    base_env = pslite_env(facts, scheduler_host, servers=cluster.servers, workers=num_workers)
    workers_per_host = {h.label: worker_hosts.count(h) for h in hosts}

    def process(role: Role, rank: int, host: HostSpec, args: tuple[str, ...] = ()) -> ProcessSpec:
        layout, host_facts = layouts[host.label], facts.hosts[host.label]
        env = dict(base_env, DMLC_ROLE=role.value, DMLC_NODE_HOST=host_facts.address, PYTHONPATH=layout.code_dir)
        if role is Role.WORKER and facts.worker_ports:
            env["PORT"] = str(facts.worker_ports[rank])  # ps-lite ranks workers by (address, port)
        if role is Role.WORKER and cluster.devices is None:
            env["OMP_NUM_THREADS"] = str(max(1, host_facts.cpu_count // workers_per_host[host.label]))
        elif role is not Role.WORKER:
            env["OMP_NUM_THREADS"] = "1"
        name = file_name(role, rank)
        argv = (host_facts.python, "-m", "trainer") + args
        if not layout.local:
            argv = (host_facts.python, "-m", "trainer.remote", "--pid-file",
                    f"{layout.run_dir}/pids/{name}.pid", "--") + argv
        return ProcessSpec(role, rank, host.label, argv, tuple(sorted(env.items())), log_path(facts, name))

    processes = [process(Role.SCHEDULER, 0, scheduler_host)]
    processes += [process(Role.SERVER, i, h) for i, h in enumerate(server_hosts)]
    processes += [process(Role.WORKER, i, h, ("--config", f"{layouts[h.label].run_dir}/config/worker-{i}.json"))
                  for i, h in enumerate(worker_hosts)]
    return Plan(facts.run_id, facts.run_dir, job, hosts, facts.hosts[scheduler_host.label].address,
                facts.scheduler_port, tuple(processes), shards, tuple(workers),
                tuple(h.label for h in worker_hosts), batches_per_epoch, tuple(transfers),
                {label: layout.root for label, layout in layouts.items() if not layout.local},
                {label: facts.hosts[label].python for label, layout in layouts.items() if not layout.local},
                trimmed if any(t.source == trimmed for t in transfers) else None, facts.attempt)


def pslite_env(facts: Facts, scheduler_host: HostSpec, *, servers: int, workers: int) -> dict[str, str]:
    """What every process of a run gets: where the scheduler is, how many nodes, the run's tag."""
    return {
        "DMLC_PS_ROOT_URI": facts.hosts[scheduler_host.label].address,
        "DMLC_PS_ROOT_PORT": str(facts.scheduler_port),
        "DMLC_NUM_SERVER": str(servers),
        "DMLC_NUM_WORKER": str(workers),
        "PYTHONUNBUFFERED": "1",
        "MXFT_RUN_ID": facts.run_id,
    }


def file_name(role: Role, rank: int) -> str:
    """``scheduler``, ``server-0``, ``worker-3``: a process's name in log and pid file names."""
    return role.value if role is Role.SCHEDULER else f"{role.value}-{rank}"


def log_path(facts: Facts, name: str) -> str:
    """RUN_DIR/logs/NAME.log, under logs/attempt-N/ for later attempts."""
    logs = os.path.join(facts.run_dir, "logs", *([f"attempt-{facts.attempt}"] if facts.attempt > 1 else []))
    return os.path.join(logs, f"{name}.log")


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


def _check_slots(job: JobSpec, worker_hosts: Sequence[HostSpec]) -> None:
    """A host with ``slots=N`` must not get more devices than N."""
    if job.cluster.devices is None:
        return
    for host in set(worker_hosts):
        wanted = worker_hosts.count(host) * len(job.cluster.devices)
        if host.slots is not None and wanted > host.slots:
            raise InputError(f"line {host.line}" if host.line else host.label,
                             f"host '{host.label}' offers slots={host.slots} but gets "
                             f"{worker_hosts.count(host)} worker(s) x {len(job.cluster.devices)} devices",
                             hint="add hosts, raise slots, or lower cluster.workers / cluster.devices")


def _worker_config(job: JobSpec, inventory: Inventory, shard: ShardSpec, batches_per_epoch: int, *,
                   paths: Mapping[str, str], out_dir: str, begin_epoch: int) -> WorkerConfig:
    train, data, model = job.train, job.data, job.model
    return WorkerConfig(
        index=shard.worker,
        train_rec=paths["train_rec"],
        val_rec=paths["val_rec"],
        num_val_images=inventory.val_records,
        batches_per_epoch=batches_per_epoch,
        model_prefix=paths["model_symbol"][: -len("-symbol.json")],
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
        out_dir=out_dir,
        checkpoint_name=job.name,
        job=job.to_dict(),
        begin_epoch=begin_epoch,
        resume_prefix=paths.get("resume_prefix"),
    )
