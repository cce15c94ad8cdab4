"""The facts a plan depends on, gathered before planning: the run's own (id, folders, code), each host's (probed,
cached by an earlier probe, or assumed for a dry run) and the ports. Planning stays pure: it gets them all."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import secrets
import sys
from collections.abc import Callable, Sequence

from cluster.errors import InputError
from cluster.fanout import HostResults
from cluster.hosts import HostSpec
from cluster.local import free_ports
from cluster.ssh_resolve import SSHConfigError
from launcher.plan import Facts, HostFacts
from launcher.run.backend import Backend
from launcher.run.config import Attempt, LaunchConfig
from launcher.run.kinds import kind_of
from launcher.run.preflight import (HostProbe, assumed_facts, basic_requirements, cached_facts, facts_of,
                                    remember_facts, unfit_hosts)
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import JobSpec


CODE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def trainer_files() -> tuple[tuple[str, ...], str]:
    """The trainer package's files (relative to CODE_DIR) and a hash of their contents."""
    files = tuple(sorted(os.path.relpath(path, CODE_DIR)
                         for path in glob.glob(os.path.join(CODE_DIR, "trainer", "*.py"))))
    digest = hashlib.sha256()
    for rel in files:
        with open(os.path.join(CODE_DIR, rel), "rb") as handle:
            digest.update(rel.encode() + b"\0" + handle.read() + b"\0")
    return files, digest.hexdigest()[:16]


def run_facts(config: LaunchConfig, spec: JobSpec | CommandSpec, attempt: Attempt, *, remote: bool) -> Facts:
    """Every fact but the hosts' own and the ports: run, folders, code, the job kind's (data keys, resume point, and
    for ``remote`` hosts what the data's files are here)."""
    code_files, code_hash = trainer_files()
    return Facts(run_id=attempt.run_id, run_dir=attempt.run_dir, cache_dir=os.path.abspath(config.cache_dir),
                 scheduler_port=0, code_dir=CODE_DIR, hosts={}, remote_dir=config.remote_dir, code_files=code_files,
                 code_hash=code_hash, attempt=attempt.number, ssh=config.ssh, launcher=config.launcher,
                 **kind_of(spec).facts(spec, attempt.checkpoint, remote=remote))


def local_facts(facts: Facts, host: HostSpec, workers: int) -> Facts:
    # Ascending worker ports make worker i ps-lite's rank i here, so a seeded job trains the same every run.
    port, *worker_ports = free_ports(1 + workers)
    return dataclasses.replace(facts, hosts={host.label: HostFacts("127.0.0.1", sys.executable, os.cpu_count() or 1)},
                               scheduler_port=port, worker_ports=tuple(worker_ports))


def address_of(host: HostSpec, remote) -> str:
    """Where the host is, as the SSH config says (OpenSSH's HostName; no connection); InputError naming the host
    if OpenSSH cannot read its config."""
    try:
        return remote.address
    except SSHConfigError as err:
        raise InputError(host.where, str(err), hint=f"ssh -G {host.name} shows what OpenSSH makes of it") from None


def known_facts(config: LaunchConfig, facts: Facts, hosts: Sequence[HostSpec], backend: Backend) -> Facts:
    """A dry run's facts without contacting any host: cached by an earlier probe, else assumed."""
    found = {}
    for host in hosts:
        address = address_of(host, backend.remote(host))  # no connection
        found[host.label] = (cached_facts(config.cache_dir, host, config.remote_dir, config.ssh, address,
                                          launcher=config.launcher)
                             or assumed_facts(host, address, config.remote_dir))
    return dataclasses.replace(facts, hosts=found, scheduler_port=remote_port())


SCHEDULER_PORTS = range(20000, 32768)  # below Linux's ephemeral ports (32768-60999 by default): no outgoing
                                      # connection on the scheduler's host can be holding the one chosen


def remote_port() -> int:
    """A port for the scheduler on a remote host (one cannot be probed from here; the reach check binds it)."""
    return SCHEDULER_PORTS[secrets.randbelow(len(SCHEDULER_PORTS))]


def probed_facts(config: LaunchConfig, facts: Facts, hosts: Sequence[HostSpec], backend: Backend,
                 echo: Callable[[str], None] | None, *,
                 other_folders: Sequence[str] = ()) -> tuple[Facts, HostResults[HostProbe]]:
    """Probe every host; each usable one's facts (kept for later dry runs), assumed ones for the rest."""
    if echo:
        echo(f"[mxft] preflight: checking {len(hosts)} hosts")
    probed = backend.probe(hosts, config.remote_dir, other_folders=other_folders, files=tuple(facts.file_ids))
    unfit = unfit_hosts(probed, basic_requirements(config.remote_dir))
    found = {}
    for host in hosts:
        address = address_of(host, backend.remote(host))
        if host.label in unfit:
            found[host.label] = assumed_facts(host, address, config.remote_dir)
            continue
        found[host.label] = facts_of(probed.ok[host.label], address, tuple(facts.file_ids))
        remember_facts(config.cache_dir, host, config.remote_dir, config.ssh, found[host.label],
                       launcher=config.launcher)
    return dataclasses.replace(facts, hosts=found, scheduler_port=remote_port()), probed

