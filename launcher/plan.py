"""The plan of a run, as data: which process runs where, with which argv and env.

``make_plan`` is a pure function of the job (a fine-tuning recipe or a command), what
its data holds, the hosts and the facts decided before planning (run id, directories,
ports, each host's address, Python, CPUs and work folder, probed or cached or marked
assumed). ``--dry-run`` prints the Plan it returns; ``execute`` carries out that same
object and nothing else; ``RUN_DIR/plan.json`` records it. Nothing here touches a
disk, a clock, a socket or a random generator.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.secret import ENV_FROM_STDIN, split_secrets
from cluster.srun import srun_argv
from cluster.ssh import SSHOptions
from launcher import recfile
from launcher.inputs import Inventory
from launcher.jobspec import AUTO, ClusterSpec, CommandSpec, CPUContexts, JobSpec, plain
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
    """The training records of one worker: a copy cut into the cache (staged to its host), or a part of the
    training file that a worker on this machine reads where it is (``in_place``: ImageRecordIter's
    ``part_index``/``num_parts`` over the file's ``.idx``; nothing copied)."""

    worker: int
    positions: range | tuple[int, ...]    # which records of the training .rec (recfile.strided_shards / index_parts)
    rec_path: str
    idx_path: str
    in_place: bool = False


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What preflight learnt about a host, what an earlier probe cached, or what a dry run assumes."""

    address: str                          # where the other hosts reach it (DMLC_NODE_HOST)
    python: str                           # the interpreter that runs trainer there
    cpu_count: int
    work_dir: str = ""                    # absolute remote work folder ("" = Facts.remote_dir)
    home: str = ""                        # the SSH user's home there (``~`` in paths given for that host)
    assumed: bool = False                 # not probed: python, CPUs and folders are guesses (dry run)
    interfaces: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> IPv4 address, probed
    ip: str = ""                          # the IP address SSH reached it at (probed), when ``address`` is a name


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
    ssh: SSHOptions = SSHOptions()        # how the executor reaches remote hosts
    launcher: str = "ssh"                 # ssh | srun (job steps of the Slurm allocation the launcher runs in)
    synced: tuple[str, ...] = ()          # command mode: files of the working folder that --sync-dir copies


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One file to put on a host before the run starts."""

    host: str
    source: str                           # path on this machine
    dest: str                             # path on the host
    kind: str                             # code | data (content-addressed, kept) | run (this run's own)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a fine-tuning run adds to a plan: the job, the shards and every worker's config."""

    job: JobSpec
    shards: tuple[ShardSpec, ...]
    workers: tuple[WorkerConfig, ...]
    batches_per_epoch: int
    trimmed_params: str | None = None     # params without the layers above the cut, staged to hosts
    why: tuple[str, ...] = ()             # how cluster.workers / servers: auto were decided


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything ``execute`` needs: processes, transfers, hosts and how to reach them."""

    run_id: str
    run_dir: str
    hosts: tuple[HostSpec, ...]
    ssh: SSHOptions
    scheduler_uri: str
    scheduler_port: int
    processes: tuple[ProcessSpec, ...]
    worker_hosts: tuple[str, ...]         # host label of each worker
    transfers: tuple[Transfer, ...] = ()
    remote_roots: Mapping[str, str] = dataclasses.field(default_factory=dict)  # host label -> work folder
    remote_pythons: Mapping[str, str] = dataclasses.field(default_factory=dict)  # host label -> interpreter
    attempt: int = 1
    assumed: Mapping[str, HostFacts] = dataclasses.field(default_factory=dict)  # hosts not probed (dry run)
    recipe: Recipe | None = None          # a fine-tuning job
    command: CommandSpec | None = None    # a command-mode job
    network: str = ""                     # why ps-lite uses the addresses it does, if not the SSH ones
    launcher: str = "ssh"                 # how remote processes start: ssh | srun (``cluster.srun``)

    @property
    def name(self) -> str:
        return self.recipe.job.name if self.recipe else self.command.name

    @property
    def source(self) -> str:
        return self.recipe.job.source if self.recipe else self.command.source

    def job_dict(self) -> dict:
        """The effective job file of this run (``RUN_DIR/job.yaml``; --resume reads it)."""
        return self.recipe.job.to_job_dict() if self.recipe else self.command.to_job_dict()

    def config_path(self, worker: int) -> str:
        """Where the launcher writes worker ``worker``'s config on this machine."""
        return os.path.join(self.run_dir, "config", f"worker-{worker}.json")

    def to_json(self) -> str:
        """The whole plan as JSON (``RUN_DIR/plan.json``)."""
        def default(value):
            if isinstance(value, range):
                return {"start": value.start, "stop": value.stop, "step": value.step}
            raise TypeError(type(value).__name__)
        return json.dumps(plain(self), indent=1, default=default)

    def describe(self) -> str:
        """The plan as a person reads it (``--dry-run`` prints this; ``RUN_DIR/plan.txt`` holds it)."""
        lines = [f"run {self.run_id}"]
        lines += _describe_recipe(self) if self.recipe else _describe_command(self)
        for proc in self.processes:
            lines.append(f"    {proc.name:<10} on {proc.host:<16} DMLC_NODE_HOST={proc.env_dict['DMLC_NODE_HOST']:<15} "
                         f"{_process_detail(self, proc)}".rstrip())
            lines.append(f"      {shlex.join(proc.argv)}")
            lines.append(f"      log {proc.log_path}")
        lines += _describe_transfers(self)
        lines += _describe_network(self)
        for label, facts in sorted(self.assumed.items()):
            lines.append(f"  assumed    {label}: python {facts.python}, {facts.cpu_count} CPU(s), work folder "
                         f"{facts.work_dir or '~/.mxft'} (never probed: --dry-run --probe asks the host)")
        return "\n".join(lines)


def _describe_recipe(plan: Plan) -> list[str]:
    recipe = plan.recipe
    job, cluster = recipe.job, recipe.job.cluster
    worker0 = recipe.workers[0]
    devices = str(cluster.devices) if not cluster.uses_gpu else f"{len(worker0.devices)} GPU(s)"
    batch = worker0.batch_size
    servers = sum(p.role is Role.SERVER for p in plan.processes)
    return [
        f"  job        {job.source} ({job.name}): {job.model.variant.value} fine-tuning of "
        f"{os.path.basename(job.model.prefix)} at {job.model.cut_layer}, {job.num_classes} classes",
        f"  run dir    {plan.run_dir}",
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
        "  processes:",
    ]


def _describe_lr(job: JobSpec, scaled: float | None, global_batch: int) -> str:
    """The learning rate each worker uses, and where it comes from."""
    if scaled is None:
        given = job.train.optimizer_params.get("learning_rate", "the optimizer's default")
        return (f"  lr         {given} as given (train.lr_scaling: none; global batch {global_batch}, "
                f"train.reference_batch {job.train.reference_batch})")
    return (f"  lr         {scaled:g}: linear scaling, global batch {global_batch} / reference "
            f"{job.train.reference_batch}" + (f", warmed up over {job.train.warmup_epochs} epoch(s)"
                                              if job.train.warmup_epochs else ""))


def _describe_network(plan: Plan) -> list[str]:
    """Which addresses ps-lite listens on and why; a warning when one is public (ps-lite has no authentication)."""
    addresses = dict.fromkeys(p.env_dict["DMLC_NODE_HOST"] for p in plan.processes)
    lines = [f"  network    ps-lite on {', '.join(addresses)} ({plan.network})"] if plan.network else []
    if plan.launcher == "srun":
        lines.append("  launcher   srun: each process, copy and probe is a job step of this Slurm allocation "
                     f"({shlex.join(srun_argv('NODE', ['...'])[:-2])} -- ARGV); no SSH between nodes")
    public = public_addresses(addresses)
    if public:
        lines.append(f"  warning    ps-lite listens on public address(es) {', '.join(public)} with no authentication "
                     "or encryption: use a private network (addr= in the hosts file, or cluster.interface)")
    return lines


def public_addresses(addresses) -> list[str]:
    """The addresses that are neither private nor loopback (nor placeholders of a dry run).

    >>> public_addresses(["10.1.0.7", "127.0.0.1", "192.168.3.4", "8.8.8.8", "<eth1 of h1>", "fd00::1"])
    ['8.8.8.8']
    """
    public = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue  # a dry run's placeholder, or a name of a host never probed
        if not (address.is_private or address.is_loopback or address.is_link_local):
            public.append(text)
    return public


def _describe_command(plan: Plan) -> list[str]:
    spec = plan.command
    return [f"  command    {shlex.join(spec.argv)} ({spec.source})",
            f"  run dir    {plan.run_dir}",
            f"  ps-lite    {spec.workers} worker(s), {spec.servers} server(s), "
            f"scheduler at {plan.scheduler_uri}:{plan.scheduler_port}",
            "  processes:"]


def _process_detail(plan: Plan, proc: ProcessSpec) -> str:
    if plan.command is not None:
        extra = " ".join(f"{k}={plain(v)}" for k, v in sorted(plan.command.env_for(proc.role.value).items()))
        return f"cwd {proc.cwd}" + (f" {extra}" if extra else "")
    if proc.role is Role.SCHEDULER:
        return f"root {plan.scheduler_uri}:{plan.scheduler_port}"
    if proc.role is Role.WORKER:
        shard, worker = plan.recipe.shards[proc.rank], plan.recipe.workers[proc.rank]
        on = (f", gpu {','.join(map(str, worker.devices))}" if worker.devices is not None else
              f", cpu {','.join(map(str, range(worker.cpu_contexts)))}" if worker.cpu_contexts > 1 else "")
        if shard.in_place:
            return (f"part {proc.rank} of {len(plan.recipe.shards)} of {shard.rec_path} in place: "
                    f"{len(shard.positions)} records{on}")
        return f"shard {proc.rank}: {len(shard.positions)} records -> {shard.rec_path}{on}"
    return ""


def _describe_transfers(plan: Plan) -> list[str]:
    lines = []
    for host in plan.hosts:
        files = [t for t in plan.transfers if t.host == host.label]
        if not files:
            continue
        if plan.command is not None:
            synced = [t for t in files if t.kind == "run"]
            sync = f", {len(synced)} files of {plan.command.workdir} -> {plan.command.sync_dir}" \
                if plan.command.sync_dir else ""
            lines.append(f"  stage to {host.label}: {len(files) - len(synced)} code files{sync}")
            continue
        kinds = ", ".join(f"{sum(t.kind == kind for t in files)} {kind}" for kind in ("code", "data", "run"))
        lines.append(f"  stage to {host.label}: {len(files)} files ({kinds})")
        lines += [f"      {t.source} -> {t.dest}" for t in files if t.kind != "code"]
    return lines


def shard_dir(facts: Facts, num_workers: int) -> str:
    key = hashlib.sha256(f"{facts.train_fingerprint}|{num_workers}".encode()).hexdigest()[:16]
    return os.path.join(facts.cache_dir, "shards", key)


def _where(host: HostSpec) -> str:
    """Where a host-placement error points: the hosts file and line, else the host."""
    return host.where


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


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which host runs the scheduler, each server and each worker, and where each keeps its files."""

    hosts: tuple[HostSpec, ...]
    scheduler: HostSpec
    servers: tuple[HostSpec, ...]
    workers: tuple[HostSpec, ...]
    layouts: Mapping[str, HostLayout]

    @classmethod
    def of(cls, hosts: Sequence[HostSpec], facts: Facts, *, workers: Sequence[HostSpec],
           servers: Sequence[HostSpec]) -> "Placement":
        """The given worker and server hosts, the scheduler on the first host."""
        hosts = tuple(hosts)
        return cls(hosts, hosts[0], tuple(servers), tuple(workers), {h.label: HostLayout.of(h, facts) for h in hosts})

    @classmethod
    def round_robin(cls, hosts: Sequence[HostSpec], facts: Facts, *, workers: int, servers: int) -> "Placement":
        """Workers round-robin from the first host, servers continue after them (tools/launch.py's way)."""
        return cls.of(hosts, facts, workers=place(workers, hosts), servers=place(servers, hosts, offset=workers))

    @property
    def busy(self) -> list[HostSpec]:
        """Hosts that run at least one process, in hosts-file order."""
        used = {h.label for h in (self.scheduler, *self.servers, *self.workers)}
        return [h for h in self.hosts if h.label in used]

    def code_transfers(self, facts: Facts) -> list[Transfer]:
        """The trainer package to every busy remote host."""
        return [Transfer(host.label, os.path.join(facts.code_dir, rel), f"{self.layouts[host.label].code_dir}/{rel}",
                         "code")
                for host in self.busy if not self.layouts[host.label].local for rel in facts.code_files]

    def assemble(self, facts: Facts, processes: Sequence[ProcessSpec], transfers: Sequence[Transfer],
                 **payload) -> Plan:
        """The Plan of these processes and transfers (``payload``: recipe= or command=)."""
        roots = {h.label: self.layouts[h.label].root for h in self.busy if not self.layouts[h.label].local}
        return Plan(facts.run_id, facts.run_dir, self.hosts, facts.ssh, facts.hosts[self.scheduler.label].address,
                    facts.scheduler_port, tuple(processes), tuple(h.label for h in self.workers), tuple(transfers),
                    roots, {label: facts.hosts[label].python for label in roots}, facts.attempt,
                    {label: f for label, f in facts.hosts.items() if f.assumed}, launcher=facts.launcher, **payload)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Which host each worker and server runs on, each worker's devices, and why (printed in the plan)."""

    workers: tuple[HostSpec, ...]
    devices: tuple[tuple[int, ...] | CPUContexts, ...]   # per worker: GPU ids on its host, or its CPU contexts
    servers: tuple[HostSpec, ...]
    why: tuple[str, ...] = ()


def assign_workers(cluster: ClusterSpec, hosts: Sequence[HostSpec]) -> Assignment:
    """Workers, their GPUs and the servers over ``hosts``: a pure function with literal tests.

    ``workers: auto``: a GPU job runs one worker per host driving all its ``slots=`` (else
    the job's devices): dist_sync_device reduces a host's GPUs locally and pushes once; a
    CPU job runs one worker per slot (1 without ``slots=``), and with ``cpu:N`` one per N
    slots (a host with fewer is refused; leftover slots stay idle). A count: round-robin
    over the hosts, and two workers on one host drive disjoint blocks of its GPUs (0-3 and
    4-7). Either way a host's ``slots=`` must cover its workers' GPUs or CPU contexts.
    ``servers: auto``: one on each host that runs a worker.

    >>> a = assign_workers(ClusterSpec(), (HostSpec("a", slots=8), HostSpec("b", slots=8)))
    >>> [(h.name, d) for h, d in zip(a.workers, a.devices)], [h.name for h in a.servers]
    ([('a', (0, 1, 2, 3, 4, 5, 6, 7)), ('b', (0, 1, 2, 3, 4, 5, 6, 7))], ['a', 'b'])
    """
    hosts = tuple(hosts)
    if cluster.workers == AUTO:
        workers, devices, why = _auto_workers(cluster, hosts)
    else:
        workers = tuple(place(cluster.workers, hosts))
        devices, why = _device_blocks(cluster, workers), (f"workers    {len(workers)} (cluster.workers), "
                                                          "round-robin over the hosts",)
    if len({len(d) for d in devices if isinstance(d, tuple)}) > 1:
        counts = ", ".join(f"{h.label}: {len(d)}" for h, d in dict(zip(workers, devices)).items())
        raise InputError(_where(workers[0]),
                         f"the workers would drive different numbers of GPUs ({counts}); in dist_sync every worker "
                         "must run the same batches per epoch",
                         hint="give the hosts the same slots=, or set cluster.workers and cluster.devices")
    if cluster.servers == AUTO:
        servers = tuple(dict.fromkeys(workers))
        why += (f"servers    {len(servers)}: one on each worker host (cluster.servers: auto)",)
    else:
        servers = tuple(place(cluster.servers, hosts, offset=len(workers)))
    return Assignment(workers, tuple(devices), servers, why)


def _auto_workers(cluster: ClusterSpec, hosts: tuple[HostSpec, ...]) -> tuple[tuple[HostSpec, ...], tuple, tuple[str]]:
    """``workers: auto``: (worker hosts, their devices, why)."""
    if not cluster.uses_gpu:
        size = cluster.devices.count
        for host in hosts:
            if host.slots is not None and host.slots < size:
                raise InputError(_where(host), f"host '{host.label}' offers slots={host.slots}, fewer than the {size} "
                                 f"CPU contexts of one worker (cluster.devices: {cluster.devices})",
                                 hint="raise slots, or lower N in cluster.devices: cpu:N")
        workers = tuple(h for h in hosts for _ in range((h.slots or size) // size))
        per = (f"one per {size} slots of each host ({cluster.devices} workers" if size > 1
               else "one per slot of each host (CPU job")
        return workers, (cluster.devices,) * len(workers), (f"workers    {len(workers)}: {per}, "
                                                             "cluster.workers: auto)",)
    devices = tuple(tuple(range(h.slots)) if h.slots else cluster.devices for h in hosts)
    gpus = sorted({len(d) for d in devices})
    return hosts, devices, (f"workers    {len(hosts)}: one per host, {'/'.join(map(str, gpus))} GPUs each "
                            "(cluster.workers: auto)",)


def device_count(devices: tuple[int, ...] | CPUContexts) -> int:
    """A worker's GPUs or CPU contexts: each takes one of its host's slots and train.batch_per_device images a step."""
    return devices.count if isinstance(devices, CPUContexts) else len(devices)


def _device_blocks(cluster: ClusterSpec, workers: tuple[HostSpec, ...]) -> list[tuple[int, ...] | CPUContexts]:
    """The job's devices for a host's only worker; disjoint blocks (0-3, 4-7) for several on one host."""
    if not cluster.uses_gpu:
        return [cluster.devices] * len(workers)  # CPU contexts are the worker's own, whatever shares its host
    size, out = len(cluster.devices), []
    for i, host in enumerate(workers):
        shared = workers.count(host) > 1
        if shared and cluster.devices != tuple(range(size)):
            raise InputError(_where(host),
                             f"{workers.count(host)} workers on host '{host.label}' cannot all drive GPUs "
                             f"{list(cluster.devices)}", hint=f"use cluster.devices: gpu:{size} (each worker then "
                             "gets its own block of the host's GPUs)")
        block = workers[:i].count(host)
        out.append(tuple(range(block * size, (block + 1) * size)) if shared else cluster.devices)
    return out


def make_plan(job: JobSpec | CommandSpec, hosts: Sequence[HostSpec], facts: Facts, *,
              inventory: Inventory | None = None) -> Plan:
    """Decide every process, shard, file copy and config of the run: the one planner.

    Raises InputError if the job cannot fit the data or the hosts.
    """
    interface = job.cluster.interface if isinstance(job, JobSpec) else None
    facts, network = training_network(hosts, facts, interface)
    if isinstance(job, CommandSpec):
        from launcher.command import make_command_plan  # the command planner builds on this module
        return dataclasses.replace(make_command_plan(job, hosts, facts), network=network)
    if inventory is None:
        raise TypeError("a fine-tuning plan needs the inventory of its data (launcher.inputs.check_inputs)")
    return dataclasses.replace(make_recipe_plan(job, inventory, hosts, facts), network=network)


def training_network(hosts: Sequence[HostSpec], facts: Facts, interface: str | None) -> tuple[Facts, str]:
    """The facts with each host's address made ps-lite's (``node_address``), and why, for the plan."""
    chosen = {h.label: dataclasses.replace(facts.hosts[h.label], address=node_address(h, facts.hosts[h.label],
                                                                                       interface))
              for h in hosts if h.label in facts.hosts}
    why = (["addr= in the hosts file"] if any(h.addr for h in hosts) else []) + \
        ([f"interface {interface} (cluster.interface)"] if interface and not all(h.is_local for h in hosts) else [])
    return dataclasses.replace(facts, hosts={**facts.hosts, **chosen}), "; ".join(why)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def node_address(host: HostSpec, facts: HostFacts, interface: str | None) -> str:
    """Where ps-lite binds and is reached on ``host``: its ``addr=``, else its address on ``interface``, else
    the SSH one (``DMLC_NODE_HOST``; the scheduler's is ``DMLC_PS_ROOT_URI``).

    >>> node_address(HostSpec("h1", addr="10.1.0.7"), HostFacts("192.168.0.5", "python3", 8), "eth1")
    '10.1.0.7'
    >>> node_address(HostSpec("h1"), HostFacts("192.168.0.5", "python3", 8, interfaces={"eth1": "10.1.0.5"}), "eth1")
    '10.1.0.5'
    >>> node_address(HostSpec("h1"), HostFacts("192.168.0.5", "python3", 8), None)
    '192.168.0.5'
    >>> node_address(HostSpec("gpu01"), HostFacts("gpu01.cluster", "python3", 8, ip="10.0.0.11"), None)
    '10.0.0.11'
    """
    if host.addr:
        return host.addr
    if interface is None or host.is_local:
        if _is_ip(facts.address) or facts.ip:
            return facts.address if _is_ip(facts.address) else facts.ip  # ps-lite binds numeric addresses only
        return f"<IP of {host.label}>" if facts.assumed else facts.address
    if facts.assumed:
        return f"<{interface} of {host.label}>"  # a dry run that never probed the host
    if interface not in facts.interfaces:
        have = ", ".join(f"{name} {address}" for name, address in sorted(facts.interfaces.items())) or "none"
        raise InputError(_where(host), f"host '{host.label}' has no IPv4 address on interface {interface} "
                         f"(cluster.interface); it has: {have}",
                         hint="choose another interface, or give this host addr= in the hosts file")
    return facts.interfaces[interface]


def make_recipe_plan(job: JobSpec, inventory: Inventory, hosts: Sequence[HostSpec], facts: Facts) -> Plan:
    """A fine-tuning run: shards, staged files and a config per worker, then the processes."""
    assignment = assign_workers(job.cluster, hosts)
    count = len(assignment.workers)
    if count > len(inventory.train_records):
        raise InputError(job.source, f"{count} workers but only {len(inventory.train_records)} "
                         "training images", hint="use fewer workers")
    placement = Placement.of(hosts, facts, workers=assignment.workers, servers=assignment.servers)
    _check_slots(job.cluster, assignment)
    batch = job.train.batch_per_device * device_count(assignment.devices[0])
    all_local = all(placement.layouts[h.label].local for h in placement.workers)
    shards = _shards(job, inventory, facts, count, local=all_local)
    recipe = Recipe(job, shards, (), math.ceil(max(len(s.positions) for s in shards) / batch),
                    os.path.join(facts.cache_dir, "trimmed", f"{_model_key(job, facts)}-{job.model.cut_layer}",
                                 os.path.basename(job.model.params_path)), assignment.why)
    transfers = placement.code_transfers(facts)
    rate = scaled_learning_rate(job, batch * count)
    workers = tuple(_place_worker(recipe, inventory, placement, facts, i, transfers, assignment.devices[i], rate)
                    for i in range(count))
    recipe = dataclasses.replace(recipe, workers=workers, trimmed_params=recipe.trimmed_params if any(
        t.source == recipe.trimmed_params for t in transfers) else None)
    processes = plan_processes(placement, facts, len(assignment.servers), count,
                           worker_env=lambda host: {**_worker_threads(job, placement, facts, host),
                                                    "MXNET_KVSTORE_BIGARRAY_BOUND": str(job.cluster.bigarray_bound)},
                           worker_args=lambda i, host: ("--config", f"{placement.layouts[host.label].run_dir}"
                                                                    f"/config/worker-{i}.json"))
    return placement.assemble(facts, processes, transfers, recipe=recipe)


def _shards(job: JobSpec, inventory: Inventory, facts: Facts, count: int, *, local: bool) -> tuple[ShardSpec, ...]:
    """Workers on this machine read parts of the training file in place when it has an index and its classes are
    mixed through it; otherwise (and for data that must travel) strided copies are cut into the cache."""
    if local and inventory.train_index is not None:
        parts = recfile.index_parts(inventory.train_records, count)
        if all(parts) and recfile.mixed_classes(inventory.train_labels, parts):
            return tuple(ShardSpec(i, p, job.data.train, inventory.train_index, in_place=True)
                         for i, p in enumerate(parts))
    shards_at = shard_dir(facts, count)
    return tuple(ShardSpec(i, p, os.path.join(shards_at, f"part-{i}-of-{count}.rec"),
                           os.path.join(shards_at, f"part-{i}-of-{count}.idx"))
                 for i, p in enumerate(recfile.strided_shards(len(inventory.train_records), count)))


def _model_key(job: JobSpec, facts: Facts) -> str:
    return facts.file_keys.get(job.model.params_path, "model")


def _place_worker(recipe: Recipe, inventory: Inventory, placement: Placement, facts: Facts, index: int,
                  transfers: list[Transfer], devices: tuple[int, ...] | CPUContexts,
                  learning_rate: float | None) -> WorkerConfig:
    """Worker ``index``'s config, with the transfers that put its files on its host (appended)."""
    job, host = recipe.job, placement.workers[index]
    layout, keys, shard = placement.layouts[host.label], facts.file_keys, recipe.shards[index]
    model_key = f"{_model_key(job, facts)}-{job.model.cut_layer}"

    def stage(source: str, key: str, *, send: str | None = None) -> str:
        dest = layout.data(source, key)
        transfer = Transfer(host.label, send or source, dest, "data")
        if not layout.local and all(t.host != host.label or t.dest != dest for t in transfers):
            transfers.append(transfer)
        return dest

    shard_key = os.path.basename(os.path.dirname(shard.rec_path))
    train_rec = stage(shard.rec_path, shard_key)
    stage(shard.idx_path, shard_key)
    val_rec = stage(job.data.val, keys.get(job.data.val, "val"))
    symbol = stage(job.model.symbol_path, model_key)
    stage(job.model.params_path, model_key, send=recipe.trimmed_params)
    val_idx = recfile.idx_path_for(job.data.val)
    if val_idx in keys:
        stage(val_idx, keys[val_idx])
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
        checkpoint_name=job.name, job=job.to_job_dict(), begin_epoch=facts.resume_epoch, resume_prefix=resume)


def scaled_learning_rate(job: JobSpec, global_batch: int) -> float | None:
    """``train.lr_scaling: linear``: the job's learning rate x global batch / ``train.reference_batch``.

    >>> from launcher.jobspec import parse_job
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


def plan_processes(placement: Placement, facts: Facts, servers: int, workers: int, *, worker_env, worker_args,
               argv=None, env_for=None, cwd_for=None) -> list[ProcessSpec]:
    """Scheduler, servers and workers in that order, each with its ps-lite environment.

    The recipe runs ``python -m trainer`` (``worker_args`` for workers); a command passes
    its own ``argv``, ``env_for(role)``, and ``cwd_for(host)``. Remote processes run under
    ``trainer.remote``, which ends their process group when the SSH session ends.
    """
    base = pslite_env(facts, placement.scheduler, servers=servers, workers=workers)

    def process(role: Role, rank: int, host: HostSpec) -> ProcessSpec:
        layout, host_facts = placement.layouts[host.label], facts.hosts[host.label]
        env = {**(env_for(role) if env_for else {}), **base, "DMLC_ROLE": role.value,
               "DMLC_NODE_HOST": host_facts.address}
        if argv is None:
            env["PYTHONPATH"] = layout.code_dir
            env["PYTHONSAFEPATH"] = "1"  # -m trainer: a trainer/ in the folder it starts in must not shadow ours
            env.update(worker_env(host) if role is Role.WORKER else {"OMP_NUM_THREADS": "1"})
            if role is Role.WORKER and facts.worker_ports:
                env["PORT"] = str(facts.worker_ports[rank])  # ps-lite ranks workers by (address, port)
        command = (host_facts.python, "-m", "trainer") + (worker_args(rank, host) if role is Role.WORKER else ()) \
            if argv is None else argv(host_facts)
        name = file_name(role, rank)
        if not layout.local:
            wrapper = ("-m", "trainer.remote") if argv is None else (f"{layout.code_dir}/trainer/remote.py",)
            secrets = (ENV_FROM_STDIN,) if split_secrets(env)[1] else ()  # values on the SSH session's input
            command = (host_facts.python, *wrapper, "--pid-file", f"{layout.run_dir}/pids/{name}.pid", *secrets,
                       "--") + command
        return ProcessSpec(role, rank, host.label, tuple(command), tuple(sorted(env.items())), log_path(facts, name),
                           cwd_for(host, layout) if cwd_for else None)

    return ([process(Role.SCHEDULER, 0, placement.scheduler)]
            + [process(Role.SERVER, i, h) for i, h in enumerate(placement.servers)]
            + [process(Role.WORKER, i, h) for i, h in enumerate(placement.workers)])


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


def check_slots(worker_hosts: Sequence[HostSpec], devices_per_worker: int, *, hint: str,
                unit: str = "devices") -> None:
    """A host with ``slots=N`` must not get more devices (GPUs, CPU contexts) or workers (commands) than N."""
    for host in dict.fromkeys(worker_hosts):
        count = worker_hosts.count(host)
        wanted = count * devices_per_worker
        if host.slots is not None and wanted > host.slots:
            what = f"{count} worker(s) x {devices_per_worker} {unit}" if devices_per_worker > 1 else f"{count} workers"
            raise InputError(_where(host),
                             f"host '{host.label}' offers slots={host.slots} but gets {what}", hint=hint)


def _check_slots(cluster: ClusterSpec, assignment: Assignment) -> None:
    """Each worker takes a slot per GPU, or per CPU context (``cpu:N``), of its host."""
    check_slots(assignment.workers, device_count(assignment.devices[0]),
                unit="devices" if cluster.uses_gpu else "CPU contexts",
                hint="add hosts, raise slots, or lower cluster.workers / cluster.devices")
