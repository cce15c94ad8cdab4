"""The command component: any ps-lite program, placed and started the way MXNet's ``tools/launch.py`` would.

Every process (scheduler, servers, workers) runs the same command with ``DMLC_ROLE`` and
the other ``DMLC_*`` variables set; MXNet turns a process whose role is server or
scheduler into that role when it imports mxnet. ``make_command_plan`` is pure and builds
the same ``Plan`` as the recipe, with the same placement and process layout.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Sequence
from typing import ClassVar

from cluster.hosts import HostSpec
from launcher.plan.model import Facts, Plan, ProcessSpec, Role, Transfer
from launcher.plan.placement import Placement, Program, check_slots, plan_processes
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import ClusterSpec
from launcher.spec.schema import plain


@dataclasses.dataclass(frozen=True)
class CommandRun:
    """What a command adds to a plan: the command (its argv, counts, environment and folders)."""

    kind: ClassVar[str] = "command"

    spec: CommandSpec

    name = property(lambda self: self.spec.name)
    source = property(lambda self: self.spec.source)
    host_silence_s = property(lambda self: float(ClusterSpec.host_silence_s))

    def job_dict(self) -> dict:
        return self.spec.to_job_dict()

    def header_lines(self, plan: Plan) -> list[str]:
        return [f"  command    {shlex.join(self.spec.argv)} ({self.spec.source})",
                f"  run dir    {plan.run_dir}",
                f"  ps-lite    {self.spec.workers} worker(s), {self.spec.servers} server(s), "
                f"scheduler at {plan.scheduler_uri}:{plan.scheduler_port}",
                "  processes:"]

    def process_detail(self, plan: Plan, proc: ProcessSpec) -> str:
        extra = " ".join(f"{k}={plain(v)}" for k, v in sorted(self.spec.env_for(proc.role.value).items()))
        return f"cwd {proc.cwd}" + (f" {extra}" if extra else "")

    def transfer_lines(self, plan: Plan, host: str, files: list[Transfer]) -> list[str]:
        synced = [t for t in files if t.kind == "run"]
        sync = f", {len(synced)} files of {self.spec.workdir} -> {self.spec.sync_dir}" if self.spec.sync_dir else ""
        return [f"  stage to {host}: {len(files) - len(synced)} code files{sync}"]


def remote_path(path: str, home: str) -> str:
    """``~/x`` on a host whose home is ``home`` -> ``home/x``; other paths unchanged."""
    if path == "~" or path.startswith("~/"):
        return home.rstrip("/") + path[1:]
    return path


def ends_on_exception(spec: CommandSpec, code_dir: str) -> tuple[str, ...]:
    """``trainer/pyrun.py`` in front of a ``python SCRIPT`` or ``python -m MODULE`` command: an uncaught exception
    then ends its process at once (code 1) instead of waiting in MXNet's finalisation for workers that wait for it.
    Other forms (``-c``, interpreter options) and ``plain_python`` run as given."""
    rest = spec.argv[1:]
    wrappable = bool(rest) and (rest[0] == "-m" and len(rest) > 1 or not rest[0].startswith("-"))
    return () if spec.plain_python or not wrappable else (f"{code_dir}/trainer/pyrun.py",)


def make_command_plan(spec: CommandSpec, hosts: Sequence[HostSpec], facts: Facts) -> Plan:
    """Place scheduler, servers and workers like a recipe; every one runs ``spec.argv``.

    ``facts.synced`` lists the files of ``spec.workdir`` to copy to each busy remote host
    when ``spec.sync_dir`` is set (``launcher.spec.command.sync_files`` finds them).
    """
    placement = Placement.round_robin(hosts, facts, workers=spec.workers, servers=spec.servers)
    check_slots(placement.workers, 1, hint="add hosts, raise slots, or lower -n")
    transfers = placement.code_transfers(facts)
    if spec.sync_dir:
        for host in placement.busy:
            if not placement.layouts[host.label].local:
                dest = remote_path(spec.sync_dir, facts.hosts[host.label].home)
                transfers += [Transfer(host.label, os.path.join(spec.workdir, rel), f"{dest}/{rel}", "run")
                              for rel in facts.synced]

    def program(role: Role, rank: int, host: HostSpec) -> Program:
        layout, host_facts = placement.layouts[host.label], facts.hosts[host.label]
        argv = spec.argv
        if argv[0] in ("python", "python3"):  # this launcher's Python, or the one preflight checked there
            argv = (host_facts.python, *ends_on_exception(spec, layout.code_dir), *argv[1:])
        cwd = spec.workdir if layout.local or not spec.sync_dir else remote_path(spec.sync_dir, host_facts.home)
        return Program(argv, spec.env_for(role.value), cwd, remote_wrapper=(f"{layout.code_dir}/trainer/remote.py",))

    processes = plan_processes(placement, facts, servers=spec.servers, workers=spec.workers, program=program)
    return placement.assemble(facts, processes, transfers, CommandRun(spec))
