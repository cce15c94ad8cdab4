"""Command mode: any ps-lite program, started the way MXNet's ``tools/launch.py`` would.

    mxft-launch -H hosts.txt -n 3 -s 2 --sync-dir ~/job -- python train.py --kv-store dist_sync

Every process (scheduler, servers, workers) runs the same command with ``DMLC_ROLE``
and the other ``DMLC_*`` variables set, exactly as launch.py does; MXNet turns a
process whose role is server or scheduler into that role when it imports mxnet. What
mxft adds is what launch.py lacks: preflight, staging of the working folder
(``--sync-dir``), ``DMLC_NODE_HOST`` per host, prefixed logs, and teardown of every
process on every host as soon as one fails (ps-lite itself would hang).

``CommandSpec`` is the parsed command line or job file; ``make_command_plan`` is pure
like ``make_plan`` and shares its placement, process and transfer types.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping, Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.jobspec import CommandSpec
from launcher.plan import (Facts, HostLayout, ProcessSpec, Role, Transfer, file_name, log_path, place,
                           pslite_env)

# Never copied by --sync-dir: version control, caches, virtual environments, run folders.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                          "runs", ".tox"})


@dataclasses.dataclass(frozen=True)
class CommandPlan:
    run_id: str
    run_dir: str
    spec: CommandSpec
    hosts: tuple[HostSpec, ...]
    scheduler_uri: str
    scheduler_port: int
    processes: tuple[ProcessSpec, ...]
    transfers: tuple[Transfer, ...] = ()
    remote_roots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    remote_pythons: Mapping[str, str] = dataclasses.field(default_factory=dict)
    worker_hosts: tuple[str, ...] = ()
    attempt: int = 1

    def describe(self) -> str:
        spec = self.spec
        lines = [f"run {self.run_id}",
                 f"  command    {shlex.join(spec.argv)} ({spec.source})",
                 f"  run dir    {self.run_dir}",
                 f"  ps-lite    {spec.workers} worker(s), {spec.servers} server(s), "
                 f"scheduler at {self.scheduler_uri}:{self.scheduler_port}",
                 "  processes:"]
        for proc in self.processes:
            env = proc.env_dict
            extra = " ".join(f"{k}={v}" for k, v in sorted(spec.env_for(proc.role.value).items()))
            lines.append(f"    {proc.name:<10} on {proc.host:<16} DMLC_NODE_HOST={env['DMLC_NODE_HOST']:<15} "
                         f"cwd {proc.cwd}" + (f" {extra}" if extra else ""))
            lines.append(f"      {shlex.join(proc.argv)}")
        for host in self.hosts:
            files = [t for t in self.transfers if t.host == host.label]
            if files:
                synced = [t for t in files if t.kind == "run"]
                lines.append(f"  stage to {host.label}: {len(files) - len(synced)} code files, "
                             f"{len(synced)} files of {spec.workdir} -> {spec.sync_dir}")
        return "\n".join(lines)


def sync_files(folder: str) -> tuple[str, ...]:
    """Files under ``folder`` that ``--sync-dir`` copies (relative paths, sorted)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        found += [os.path.relpath(os.path.join(root, name), folder) for name in files
                  if os.path.isfile(os.path.join(root, name))]
    return tuple(sorted(found))


def remote_path(path: str, home: str) -> str:
    """``~/x`` on a host whose home is ``home`` -> ``home/x``; other paths unchanged."""
    if path == "~" or path.startswith("~/"):
        return home.rstrip("/") + path[1:]
    return path


def make_command_plan(spec: CommandSpec, hosts: Sequence[HostSpec], facts: Facts, *,
                      synced: Sequence[str] = ()) -> CommandPlan:
    """Place scheduler, servers and workers like ``make_plan``; every one runs ``spec.argv``.

    ``synced`` lists the files of ``spec.workdir`` to copy to each busy remote host when
    ``spec.sync_dir`` is set (``sync_files`` finds them).
    """
    hosts = tuple(hosts)
    worker_hosts = place(spec.workers, hosts)
    server_hosts = place(spec.servers, hosts, offset=spec.workers)
    for host in set(worker_hosts):
        if host.slots is not None and worker_hosts.count(host) > host.slots:
            raise InputError(f"line {host.line}" if host.line else host.label,
                             f"host '{host.label}' offers slots={host.slots} but gets "
                             f"{worker_hosts.count(host)} workers", hint="add hosts, raise slots, or lower -n")
    scheduler_host = hosts[0]
    busy = {h.label for h in [scheduler_host, *server_hosts, *worker_hosts]}
    layouts = {h.label: HostLayout.of(h, facts) for h in hosts}
    transfers = []
    for host in hosts:
        layout = layouts[host.label]
        if layout.local or host.label not in busy:
            continue
        transfers += [Transfer(host.label, os.path.join(facts.code_dir, rel), f"{layout.code_dir}/{rel}", "code")
                      for rel in facts.code_files]
        if spec.sync_dir:
            dest = remote_path(spec.sync_dir, facts.hosts[host.label].home)
            transfers += [Transfer(host.label, os.path.join(spec.workdir, rel), f"{dest}/{rel}", "run")
                          for rel in synced]
    base_env = pslite_env(facts, scheduler_host, servers=spec.servers, workers=spec.workers)

    def process(role: Role, rank: int, host: HostSpec) -> ProcessSpec:
        layout, host_facts = layouts[host.label], facts.hosts[host.label]
        env = {**spec.env_for(role.value), **base_env, "DMLC_ROLE": role.value, "DMLC_NODE_HOST": host_facts.address}
        name = file_name(role, rank)
        argv = spec.argv
        if argv[0] in ("python", "python3"):
            argv = (host_facts.python,) + argv[1:]  # this launcher's Python, or the one preflight checked there
        if layout.local:
            cwd = spec.workdir
        else:
            argv = (host_facts.python, f"{layout.code_dir}/trainer/remote.py",
                    "--pid-file", f"{layout.run_dir}/pids/{name}.pid", "--") + argv
            cwd = remote_path(spec.sync_dir, host_facts.home) if spec.sync_dir else spec.workdir
        return ProcessSpec(role, rank, host.label, tuple(argv), tuple(sorted(env.items())), log_path(facts, name), cwd)

    processes = [process(Role.SCHEDULER, 0, scheduler_host)]
    processes += [process(Role.SERVER, i, h) for i, h in enumerate(server_hosts)]
    processes += [process(Role.WORKER, i, h) for i, h in enumerate(worker_hosts)]
    roots = {h.label: layouts[h.label].root for h in hosts if not layouts[h.label].local and h.label in busy}
    return CommandPlan(facts.run_id, facts.run_dir, spec, hosts, facts.hosts[scheduler_host.label].address,
                       facts.scheduler_port, tuple(processes), tuple(transfers), roots,
                       {label: facts.hosts[label].python for label in roots},
                       tuple(h.label for h in worker_hosts), facts.attempt)


def parse_env(items: Sequence[str], *, environ: Mapping[str, str], option: str) -> dict[str, str]:
    """``NAME=VALUE``, ``NAME:VALUE`` (launch.py's form) or ``NAME`` (this machine's value).

    >>> parse_env(["A=1", "B:x=y", "HOME"], environ={"HOME": "/root"}, option="--env")
    {'A': '1', 'B': 'x=y', 'HOME': '/root'}
    """
    out = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i > 0), default=-1)
        name, value = (item[:cut], item[cut + 1:]) if cut > 0 else (item, None)
        if not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise InputError(f"{option} {item}", f"'{name}' is not an environment variable name",
                             hint="write NAME=VALUE, NAME:VALUE or NAME")
        if value is None:
            if name not in environ:
                raise InputError(f"{option} {item}", f"{name} is not set on this machine",
                                 hint=f"set it, or write {name}=VALUE")
            value = environ[name]
        out[name] = value
    return out
