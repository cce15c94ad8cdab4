"""Carry out a Plan: write the run folder, stage files, start every process, wait, and hand back the result.

``execute(plan, kind)`` takes the plan and the job kind that made it (``launcher.run.kinds``):
which hosts and how to reach them, every process and every file copy are in the plan;
the kind adds its local files and an observer the supervisor calls with each line of
output and at each poll. All processes of a run are owned by one Supervisor, so every
way out (success, a failed process, Ctrl-C, SIGTERM) goes through its teardown.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import yaml

from cluster.backend import Backend, RemoteHost
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.fanout import on_each_host
from cluster.hostwatch import HostWatch, first_lost
from cluster.local import LocalTransport
from cluster.ssh import HOSTS_AT_ONCE
from cluster.supervise import Member, ProcessOutcome, Supervisor, Transport
from launcher.plan import Plan, Role
from launcher.report.console import Console
from launcher.run.stage import Piece, stage_all


class Observer(Protocol):
    """What a job kind watches while its processes run (``RecipeWatch``; a command's is ``CommandWatch``)."""

    on_line: Callable[[Member, str], bool] | None   # a process's line; True: consumed (kept off the console)

    def check(self) -> None: ...                    # each poll; raises JobFailed to end the run

    def close(self) -> None: ...                    # the processes ended, however

    def result(self, outcomes: list[ProcessOutcome], *, staging_s: float) -> dict: ...


class Kind(Protocol):
    """The job kind's part in execution (``launcher.run.kinds``)."""

    def make_local_files(self, plan: Plan) -> Mapping[str, Piece]: ...   # what staging sends that is no file here

    def observer(self, plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> Observer: ...


def write_run_files(plan: Plan) -> None:
    """The run's folders, plan.txt (plan-attempt-N.txt later) as --dry-run prints it, plan.json and job.yaml."""
    for sub in ("config", "workers"):
        os.makedirs(os.path.join(plan.run_dir, sub), exist_ok=True)
    os.makedirs(os.path.dirname(plan.processes[0].log_path), exist_ok=True)
    suffix = f"-attempt-{plan.attempt}" if plan.attempt > 1 else ""
    with open(os.path.join(plan.run_dir, f"plan{suffix}.txt"), "w", encoding="utf-8") as handle:
        handle.write(plan.describe() + "\n")
    with open(os.path.join(plan.run_dir, f"plan{suffix}.json"), "w", encoding="utf-8") as handle:
        handle.write(plan.to_json() + "\n")
    with open(os.path.join(plan.run_dir, "job.yaml"), "w", encoding="utf-8") as handle:
        handle.write(f"# The effective job of this run (from {plan.source}); --resume reads it.\n")
        yaml.safe_dump(plan.job_dict(), handle, sort_keys=False)


def execute(plan: Plan, kind: Kind, backend: Backend, *, console: Console) -> dict:
    """Run the plan to completion and return its result (the observer's); raises JobFailed (root cause first).

    The caller writes the result to RUN_DIR/result.json.
    """
    remote_hosts = backend.remotes(plan.hosts)
    began = time.time()
    write_run_files(plan)
    pieces = kind.make_local_files(plan)
    stage_remote(plan, remote_hosts, console=console, pieces=pieces)
    staging_s = time.time() - began
    observer = kind.observer(plan, remote_hosts, console=console)
    try:
        with watching(plan, remote_hosts) as hosts_answer:
            outcomes = run_processes(plan, remote_hosts, console=console, on_line=observer.on_line,
                                     check=lambda: (hosts_answer(), observer.check()))
    finally:
        observer.close()
    return observer.result(outcomes, staging_s=staging_s)


@contextlib.contextmanager
def watching(plan: Plan, remote_hosts: Mapping[str, RemoteHost]):
    """Keepalives to every remote host that runs a process; yields a check that raises JobFailed naming the
    first host that stopped answering (before its silent processes or the ps-lite hang say anything)."""
    busy = [label for label in dict.fromkeys(p.host for p in plan.processes)
            if label in remote_hosts and remote_hosts[label].watched_by_keepalive]
    done = on_each_host(lambda label: HostWatch(remote_hosts[label]), busy, name="watch",
                        kind=FailureKind.CONNECTION_LOST,  # gone between staging and now
                        reason=lambda err: f"cannot connect to watch it ({type(err).__name__}: {err})")
    watches = list(done.ok.values())
    if done.failed:
        for watch in watches:
            watch.close()
        done.raise_failed("watching the hosts", kind=FailureKind.CONNECTION_LOST)

    def hosts_answer() -> None:
        lost = first_lost(watches)
        if lost is not None:
            raise JobFailed(f"host {lost.host.label} stopped answering ({lost.lost}); the processes on the other "
                            "hosts were stopped", reason=f"host {lost.host.label} stopped answering ({lost.lost})",
                            failure=Failure(FailureKind.HOST_SILENT, host=lost.host.label))
    try:
        yield hosts_answer
    finally:
        for watch in watches:
            watch.close()


def stage_remote(plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console,
                 pieces: Mapping[str, Piece] | None = None) -> None:
    """Send every remote host what the plan puts there, reporting per host (``pieces``: sources that are no file
    here, ``launcher.run.stage.Piece``)."""
    if not plan.transfers:
        return
    started = time.monotonic()
    reports = stage_all(remote_hosts, plan.transfers, root_of=plan.remote_roots.__getitem__,
                        python_of=plan.remote_pythons.__getitem__,
                        progress=lambda host, sent, total: console.progress(f"staging {host}", sent, total, unit="B"),
                        silence_s=plan.component.host_silence_s, pieces=pieces)
    for report in reports:
        console(f"[stage] {report.host}: sent {report.files_sent} files ({report.data_bytes_sent} bytes of data, "
             f"{report.code_bytes_sent} of code), "
             f"{report.files_present} already there ({report.bytes_present} bytes) in {report.seconds:.1f} s")
    console(f"[stage] {sum(r.data_bytes_sent for r in reports)} bytes of data sent in total "
         f"({time.monotonic() - started:.1f} s)")


def run_processes(plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console,
                  on_line: Callable[[Member, str], bool] | None = None,
                  check: Callable[[], None] | None = None) -> list[ProcessOutcome]:
    """Start every process of the plan under one Supervisor, wait for the workers; how each ended."""
    transports: dict[str, Transport] = {label: LocalTransport() for label in (h.label for h in plan.hosts)}
    transports.update(remote_hosts)
    with Supervisor(echo=console, relay=console.relay, on_line=on_line) as group:
        def start(proc):
            return group.start(proc.name, transports[proc.host], proc.argv, env=proc.env_dict,
                               log_path=proc.log_path, primary=proc.role is Role.WORKER, cwd=proc.cwd,
                               role=proc.role.value, index=proc.rank)

        # Remote starts in parallel across hosts: each is a session of its host's shared connections
        # (cluster.ssh_sessions), which a host opens one at a time (~0.3 s of handshake each).
        # Local ones stay in this thread: PR_SET_PDEATHSIG fires when the thread that started
        # the child ends, so a pool thread would take its children with it (srun steps are such children too).
        remote = [proc for proc in plan.processes if transports[proc.host].starts_in_pool]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(HOSTS_AT_ONCE, len(remote)))) as pool:
            futures = {proc.name: pool.submit(start, proc) for proc in remote}
            local = {proc.name: start(proc) for proc in plan.processes if proc not in remote}
        started = [local[proc.name] if proc.name in local else futures[proc.name].result()
                   for proc in plan.processes]
        with open(os.path.join(plan.run_dir, "processes.json"), "w", encoding="utf-8") as handle:  # for status
            json.dump([{"name": proc.name, "role": proc.role.value, "host": proc.host, "log": proc.log_path,
                        "pid": member.process.pid if proc.host not in remote_hosts else None}
                       for proc, member in zip(plan.processes, started)], handle, indent=1)
        group.wait(check=check)
    return group.outcomes()

