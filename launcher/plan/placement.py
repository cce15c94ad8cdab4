"""Where each process of a run goes: hosts for the scheduler, servers and workers, devices, folders, argv and env.

``assign_workers`` is a pure function with literal tests (Horovod's
``get_host_assignments``); ``plan_processes`` gives every process its ps-lite
environment and its command line, the same for every job kind.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.secret import ENV_FROM_STDIN, split_secrets
from launcher.plan.model import RELAY_CHAINS, Component, Facts, Plan, ProcessSpec, Relayed, Role, Transfer
from launcher.spec.jobspec import AUTO, ClusterSpec, CPUContexts


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
                 component: Component) -> Plan:
        """The Plan of these processes and transfers, with the job kind's own part."""
        roots = {h.label: self.layouts[h.label].root for h in self.busy if not self.layouts[h.label].local}
        return Plan(facts, self.hosts, facts.hosts[self.scheduler.label].address, tuple(processes),
                    tuple(h.label for h in self.workers), component, tuple(transfers), roots,
                    {label: facts.hosts[label].python for label in roots}, relayed=relayed_files(transfers))


def relayed_files(transfers: Sequence[Transfer]) -> tuple[Relayed, ...]:
    """The files that more than ``RELAY_CHAINS`` hosts get at the same path (fewer hosts: the relay keeps nothing off
    the launcher's links). Whether they go through the relay depends on their sizes when staged (``Relayed``).

    >>> relayed_files([Transfer("h1", "/c/a", "/w/a", "code"), Transfer("h2", "/c/a", "/w/a", "code"),
    ...                Transfer("h3", "/c/a", "/w/a", "code"), Transfer("h2", "/d/s", "/w/s", "data"),
    ...                Transfer("h3", "/c/a", "/x/a", "code"), Transfer("h3", "/d/s", "/w/s", "data")])
    (Relayed(source='/c/a', dest='/w/a', kind='code', hosts=('h1', 'h2', 'h3')),)
    """
    hosts_of: dict[tuple[str, str, str], list[str]] = {}
    for transfer in transfers:
        hosts_of.setdefault((transfer.source, transfer.dest, transfer.kind), []).append(transfer.host)
    return tuple(Relayed(source, dest, kind, tuple(dict.fromkeys(labels)))
                 for (source, dest, kind), labels in hosts_of.items() if len(set(labels)) > RELAY_CHAINS)


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
        raise InputError(workers[0].where,
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
                raise InputError(host.where, f"host '{host.label}' offers slots={host.slots}, fewer than the {size} "
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
            raise InputError(host.where,
                             f"{workers.count(host)} workers on host '{host.label}' cannot all drive GPUs "
                             f"{list(cluster.devices)}", hint=f"use cluster.devices: gpu:{size} (each worker then "
                             "gets its own block of the host's GPUs)")
        block = workers[:i].count(host)
        out.append(tuple(range(block * size, (block + 1) * size)) if shared else cluster.devices)
    return out


def check_slots(worker_hosts: Sequence[HostSpec], devices_per_worker: int, *, hint: str,
                unit: str = "devices") -> None:
    """A host with ``slots=N`` must not get more devices (GPUs, CPU contexts) or workers (commands) than N."""
    for host in dict.fromkeys(worker_hosts):
        count = worker_hosts.count(host)
        wanted = count * devices_per_worker
        if host.slots is not None and wanted > host.slots:
            what = f"{count} worker(s) x {devices_per_worker} {unit}" if devices_per_worker > 1 else f"{count} workers"
            raise InputError(host.where,
                             f"host '{host.label}' offers slots={host.slots} but gets {what}", hint=hint)


@dataclasses.dataclass(frozen=True)
class Program:
    """What a job kind runs as one process: its command, its own environment and folder, and how
    ``trainer.remote`` is started in front of it on a remote host (by module, the code on PYTHONPATH; or by file)."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cwd: str | None = None
    remote_wrapper: tuple[str, ...] = ("-m", "trainer.remote")


def plan_processes(placement: Placement, facts: Facts, *, servers: int, workers: int,
                   program: Callable[[Role, int, HostSpec], Program]) -> list[ProcessSpec]:
    """Scheduler, servers and workers in that order: each the job kind's ``program``, with its ps-lite environment.

    Remote processes run under ``trainer.remote``, which ends their process group when the
    SSH session ends; secret values reach it on the session's input, never its command line.
    """
    base = pslite_env(facts, placement.scheduler, servers=servers, workers=workers)

    def process(role: Role, rank: int, host: HostSpec) -> ProcessSpec:
        layout, host_facts, part = placement.layouts[host.label], facts.hosts[host.label], program(role, rank, host)
        env = {**part.env, **base, "DMLC_ROLE": role.value, "DMLC_NODE_HOST": host_facts.address}
        command, name = part.argv, file_name(role, rank)
        if not layout.local:
            secrets = (ENV_FROM_STDIN,) if split_secrets(env)[1] else ()  # values on the SSH session's input
            command = (host_facts.python, *part.remote_wrapper, "--pid-file", f"{layout.run_dir}/pids/{name}.pid",
                       *secrets, "--") + command
        return ProcessSpec(role, rank, host.label, tuple(command), tuple(sorted(env.items())), log_path(facts, name),
                           part.cwd)

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

