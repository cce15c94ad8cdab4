"""The plan of a run as data: which process runs where, with which argv and env, which files go where.

A ``Plan`` is what a component (``launcher.plan.recipe`` for fine-tuning,
``launcher.plan.command`` for any ps-lite program) makes of a job, the hosts and the
facts decided before planning. ``--dry-run`` prints it; the executor carries out that
same value and nothing else; ``RUN_DIR/plan.json`` records it and ``launch --plan``
reads it back (``launcher.plan.plan_from_json``). Nothing here touches a disk, a clock,
a socket or a random generator.
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import os
import shlex
from collections.abc import Mapping
from typing import ClassVar, Protocol

from cluster.hosts import HostSpec, Launcher
from cluster.srun import srun_argv
from cluster.ssh import SSHOptions
from launcher.spec.schema import plain


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
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # path -> what it is there (file_id; "": none)


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
    resume_states: bool = False           # it has the optimizer's state too (PREFIX-EEEE.states)
    resume_best: tuple[float, ...] = ()   # (epoch, validation accuracy) of the best epoch so far, or () if none
    worker_ports: tuple[int, ...] = ()    # ps-lite PORT of each worker (ascending: worker i gets rank i)
    ssh: SSHOptions = SSHOptions()        # how the executor reaches remote hosts
    launcher: Launcher = Launcher.SSH     # ssh | srun (job steps of the Slurm allocation the launcher runs in)
    synced: tuple[str, ...] = ()          # command mode: files of the working folder that --sync-dir copies
    file_ids: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the data's files here (file_id), which
                                          # a host that has the same at the same path reads in place


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One file to put on a host before the run starts."""

    host: str
    source: str                           # path on this machine
    dest: str                             # path on the host
    kind: str                             # code | data (content-addressed, kept) | run (this run's own)


RELAY_CHAINS = 2             # chains the launcher feeds in the relay: its links carry this many copies of each file
RELAY_FROM_BYTES = 64 << 20  # the relay is used once it keeps this much off the launcher's links (its set-up costs)


@dataclasses.dataclass(frozen=True)
class Relayed:
    """A file of this machine that more than ``RELAY_CHAINS`` hosts get at the same path: staging sends it through the
    relay (once into each chain of those hosts, each host forwarding it as it writes; ``launcher.run.relay``) when the
    relayed files, as they are then, keep ``RELAY_FROM_BYTES`` or more off the launcher's links."""

    source: str
    dest: str
    kind: str                             # as Transfer.kind
    hosts: tuple[str, ...]                # the hosts that get it, in the hosts file's order


RUN_OWN_FACTS = ("run_id", "run_dir", "scheduler_port", "worker_ports", "attempt", "resume_epoch", "resume_prefix",
                 "resume_states", "resume_best")


def fact_changes(before: Facts, after: Facts) -> list[str]:
    """What differs between the facts a plan was made from and those gathered now, a line each (the run's own
    choices, its id, folder and ports, aside).

    >>> old = Facts("r", "/r", "/c", 9000, "/code", "f1", {"h1": HostFacts("10.0.0.1", "/usr/bin/python3", 8)})
    >>> new = dataclasses.replace(old, train_fingerprint="f2", scheduler_port=9001,
    ...                           hosts={"h1": HostFacts("10.0.0.1", "/opt/py", 8), "h2": HostFacts("h2", "py", 1)})
    >>> fact_changes(old, new)
    ['the training data (train_fingerprint f1 -> f2)', 'host h1: python /usr/bin/python3 -> /opt/py', 'host h2: new']
    """
    changes = []
    for field in dataclasses.fields(Facts):
        was, now = getattr(before, field.name), getattr(after, field.name)
        if field.name in RUN_OWN_FACTS or field.name == "hosts" or was == now:
            continue
        what = {"train_fingerprint": "the training data", "code_hash": "the trainer's code",
                "file_keys": "the model or validation files", "synced": "the files --sync-dir copies",
                "file_ids": "the data's files"}.get(field.name)
        was, now = _first_change(was, now)
        changes.append(f"{what} ({field.name} {was} -> {now})" if what else f"{field.name}: {was} -> {now}")
    for label in sorted(set(before.hosts) | set(after.hosts)):
        was, now = before.hosts.get(label), after.hosts.get(label)
        if was is None or now is None:
            changes.append(f"host {label}: {'new' if was is None else 'gone'}")
            continue
        for f in dataclasses.fields(HostFacts):
            if getattr(was, f.name) != getattr(now, f.name):
                old, new = _first_change(getattr(was, f.name), getattr(now, f.name))
                changes.append(f"host {label}: {f.name} {old} -> {new}")
    return changes


def _first_change(was, now) -> tuple:
    """Two differing values, or for two mappings the first key whose value differs: (``KEY OLD``, new)."""
    if not (isinstance(was, Mapping) and isinstance(now, Mapping)):
        return was, now
    key = next(k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k))
    return f"{key} {was.get(key)}", now.get(key)


class Component(Protocol):
    """What a job kind adds to a plan (``Recipe``, ``CommandRun``): its job, and its lines in the plan's text."""

    kind: ClassVar[str]                   # "finetune" | "command": the key plan.json names it by

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    def job_dict(self) -> dict: ...

    def header_lines(self, plan: "Plan") -> list[str]: ...

    def process_detail(self, plan: "Plan", proc: ProcessSpec) -> str: ...

    def transfer_lines(self, plan: "Plan", host: str, files: list[Transfer]) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the executor needs: processes, transfers, hosts, and the facts they were planned from."""

    facts: Facts                          # launch --plan checks them again before it runs the plan
    hosts: tuple[HostSpec, ...]
    scheduler_uri: str
    processes: tuple[ProcessSpec, ...]
    worker_hosts: tuple[str, ...]         # host label of each worker
    component: Component                  # the job kind's own part (Recipe, CommandRun)
    transfers: tuple[Transfer, ...] = ()
    remote_roots: Mapping[str, str] = dataclasses.field(default_factory=dict)  # host label -> work folder
    remote_pythons: Mapping[str, str] = dataclasses.field(default_factory=dict)  # host label -> interpreter
    network: str = ""                     # why ps-lite uses the addresses it does, if not the SSH ones
    relayed: tuple[Relayed, ...] = ()     # of the transfers, the files for the relay (none: each host its own)

    run_id = property(lambda self: self.facts.run_id)
    run_dir = property(lambda self: self.facts.run_dir)
    ssh = property(lambda self: self.facts.ssh)
    scheduler_port = property(lambda self: self.facts.scheduler_port)
    attempt = property(lambda self: self.facts.attempt)
    launcher = property(lambda self: self.facts.launcher)    # ssh | srun: how remote processes start

    @property
    def assumed(self) -> dict[str, HostFacts]:
        """Hosts a dry run never probed (their facts are guesses)."""
        return {label: f for label, f in self.facts.hosts.items() if f.assumed}

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def source(self) -> str:
        return self.component.source

    def job_dict(self) -> dict:
        """The effective job file of this run (``RUN_DIR/job.yaml``; --resume reads it)."""
        return self.component.job_dict()

    def config_path(self, worker: int) -> str:
        """Where the launcher writes worker ``worker``'s config on this machine."""
        return os.path.join(self.run_dir, "config", f"worker-{worker}.json")

    def to_json(self) -> str:
        """The whole plan as JSON (``RUN_DIR/plan.json``); ``launcher.plan.plan_from_json`` reads it back."""
        def default(value):
            if isinstance(value, range):
                return {"start": value.start, "stop": value.stop, "step": value.step}
            raise TypeError(type(value).__name__)
        data = plain(self)
        data["component"] = {"kind": self.component.kind, **data["component"]}
        return json.dumps(data, indent=1, default=default)

    def describe(self) -> str:
        """The plan as a person reads it (``--dry-run`` prints this; ``RUN_DIR/plan.txt`` holds it)."""
        lines = [f"run {self.run_id}", *self.component.header_lines(self)]
        for proc in self.processes:
            lines.append(f"    {proc.name:<10} on {proc.host:<16} DMLC_NODE_HOST={proc.env_dict['DMLC_NODE_HOST']:<15} "
                         f"{self.component.process_detail(self, proc)}".rstrip())
            lines.append(f"      {shlex.join(proc.argv)}")
            lines.append(f"      log {proc.log_path}")
        for host in self.hosts:
            files = [t for t in self.transfers if t.host == host.label]
            if files:
                lines += self.component.transfer_lines(self, host.label, files)
        lines += _describe_relay(self)
        lines += _describe_network(self)
        for label, facts in sorted(self.assumed.items()):
            lines.append(f"  assumed    {label}: python {facts.python}, {facts.cpu_count} CPU(s), work folder "
                         f"{facts.work_dir or '~/.mxft'} (never probed: --dry-run --probe asks the host)")
        return "\n".join(lines)


def _describe_relay(plan: Plan) -> list[str]:
    """Which files the relay may bring, to whom, and when."""
    if not plan.relayed:
        return []
    hosts = list(dict.fromkeys(label for file in plan.relayed for label in file.hosts))
    kinds = ", ".join(f"{count} {kind}" for kind in ("code", "data", "run")
                      if (count := sum(file.kind == kind for file in plan.relayed)))
    return [f"  relay      {len(plan.relayed)} files ({kinds}) that {len(hosts)} hosts get at the same path: through "
            f"the relay when that keeps {RELAY_FROM_BYTES >> 20} MiB or more off the launcher's links at staging "
            f"({RELAY_CHAINS} copies there, each host forwarding to the next), else a copy per host"]


def _describe_network(plan: Plan) -> list[str]:
    """Which addresses ps-lite listens on and why; a warning when one is public (ps-lite has no authentication)."""
    addresses = dict.fromkeys(p.env_dict["DMLC_NODE_HOST"] for p in plan.processes)
    lines = [f"  network    ps-lite on {', '.join(addresses)} ({plan.network})"] if plan.network else []
    if plan.launcher is Launcher.SRUN:
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

