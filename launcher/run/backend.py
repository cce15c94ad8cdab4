"""How an attempt reaches and uses its hosts: one ``Backend``, made once per attempt from how the launch reaches
remote hosts (``cluster.hosts.Launcher``: SSH, or job steps of the Slurm allocation the launcher runs in) and
used for everything that touches a host: probe (preflight), stage, watch, start, close.

The backends differ only in their transports (``cluster.backend.Transports``: this machine's own processes start
here, the others over SSH or srun); the operations are one code for all of them, written against what a transport
says it can do (``starts_in_pool``, ``watched_by_keepalive``), never against which one it is.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence

from cluster.backend import RemoteHost, Transports
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.fanout import HostResults, on_each_host
from cluster.hosts import HostSpec, Launcher
from cluster.hostwatch import HostWatch, first_lost
from cluster.local import LocalTransport
from cluster.ssh import HOSTS_AT_ONCE, SSHOptions
from cluster.supervise import Member, ProcessOutcome, Supervisor, Transport
from launcher.plan import Plan, Role
from launcher.report.console import Console
from launcher.run.preflight import HostProbe, probe_all
from launcher.run.stage import Piece, stage_all


class Backend:
    """An attempt's hosts, reached one way: the transports made once each, and what the launch does on the hosts."""

    def __init__(self, launcher: Launcher, ssh: SSHOptions) -> None:
        self.transports = Transports(launcher, ssh)

    def remote(self, host: HostSpec) -> RemoteHost:
        """How the launcher reaches ``host`` (not this machine)."""
        return self.transports.remote(host)

    def remotes(self, hosts: Sequence[HostSpec]) -> dict[str, RemoteHost]:
        """The transports of the hosts that are not this machine, by label."""
        return self.transports.remotes(hosts)

    def probe(self, hosts: Sequence[HostSpec], work_dir: str, *, other_folders: Sequence[str] = (),
              files: Sequence[str] = ()) -> HostResults[HostProbe]:
        """Preflight's probe on every host (``launcher.run.preflight``)."""
        return probe_all([(host, self.remote(host)) for host in hosts], work_dir, other_folders=other_folders,
                         files=files)

    def stage(self, plan: Plan, *, console: Console, pieces: Mapping[str, Piece] | None = None) -> None:
        """Send every remote host what the plan puts there (``stage_remote``)."""
        stage_remote(plan, self.remotes(plan.hosts), console=console, pieces=pieces)

    def watch(self, plan: Plan) -> contextlib.AbstractContextManager[Callable[[], None]]:
        """Keepalives to the hosts that run the plan's processes (``watching``)."""
        return watching(plan, self.remotes(plan.hosts))

    def start(self, plan: Plan, *, console: Console, on_line: Callable[[Member, str], bool] | None = None,
              check: Callable[[], None] | None = None) -> list[ProcessOutcome]:
        """Start the plan's processes and wait for its workers (``run_processes``)."""
        return run_processes(plan, self.remotes(plan.hosts), console=console, on_line=on_line, check=check)

    def close(self) -> None:
        """Close what the transports still hold open (an attempt's processes are stopped by then)."""
        self.transports.close()


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
    staged = stage_all(remote_hosts, plan.transfers, root_of=plan.remote_roots.__getitem__,
                       python_of=plan.remote_pythons.__getitem__,
                       progress=lambda host, sent, total: console.progress(f"staging {host}", sent, total, unit="B"),
                       silence_s=plan.component.host_silence_s, pieces=pieces, relayed=plan.relayed,
                       address_of=lambda label: plan.facts.hosts[label].address)
    if staged.relay is not None:
        console(f"[stage] {staged.relay.summary()}")
        for label, why in staged.relay.missed.items():
            console(f"[stage] {label}: not served by the relay ({why}); its files are sent from here")
    reports = staged.hosts
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

