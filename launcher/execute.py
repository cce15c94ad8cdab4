"""Carry out a Plan: write the run folder, stage files, start every process, wait, collect.

``execute(plan)`` takes nothing but the plan: which hosts and how to reach them, every
process and every file copy are in it. All processes of a run are owned by one
Supervisor, so every way out (success, a failed process, Ctrl-C, SIGTERM) goes through
its teardown. The log pumps only record events; fetching checkpoints and redrawing the
metrics happen on background threads, so a slow SSH fetch never stalls a process's
output.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping

import yaml

from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.hostwatch import HostWatch, first_lost
from cluster.local import LocalTransport
from cluster.srun import RemoteHost, remote_host
from cluster.ssh import HOSTS_AT_ONCE, SSHHost, on_hosts
from cluster.supervise import Member, ProcessOutcome, Supervisor, Transport
from launcher import cachefile, paramsfile, recfile, runstate
from launcher.console import Console
from launcher.event_check import checked_event, result_problem
from launcher.fetch import fetch_files
from launcher.jobspec import ClusterSpec, ModelSpec
from launcher.metrics import MetricsWriter
from launcher.plan import Plan, Role
from launcher.stage import stage_all
from launcher.trim import trim_params, used_variables
from trainer import events


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


def stage_local(plan: Plan) -> None:
    """Write the run folder and, for a recipe, the worker configs, trimmed params and (unless cached) shards."""
    write_run_files(plan)
    recipe = plan.recipe
    if recipe is None:
        return
    for config in recipe.workers:
        with open(plan.config_path(config.index), "w", encoding="utf-8") as handle:
            handle.write(config.to_json())
    if recipe.trimmed_params:
        with cachefile.locked(os.path.dirname(recipe.trimmed_params)):  # one launch builds it, the others wait
            _write_trimmed_params(recipe.job.model, recipe.trimmed_params)
    copies = [s for s in recipe.shards if not s.in_place]
    if not copies:  # every worker reads its part of the training file where it is
        return
    with cachefile.locked(os.path.dirname(copies[0].rec_path)):
        missing = [s for s in copies if not (os.path.isfile(s.rec_path) and os.path.isfile(s.idx_path))]
        if missing:  # shards are written atomically, so a present one is complete
            spans = recfile.read_index(recipe.job.data.train)
            for shard in missing:
                recfile.write_shard(recipe.job.data.train, [spans[i] for i in shard.positions],
                                    os.path.splitext(shard.rec_path)[0])


def _write_trimmed_params(model: ModelSpec, trimmed: str) -> None:
    """The trimmed params in the cache, unless a complete params file is there already.

    ``trim_params`` handles every file ``check_inputs`` accepts; one it cannot read has changed since.
    """
    if os.path.isfile(trimmed) and isinstance(paramsfile.read_layout(trimmed), paramsfile.ParamsLayout):
        return
    if trim_params(model.params_path, used_variables(model.symbol_path, model.cut_layer), trimmed) is None:
        layout = paramsfile.read_layout(model.params_path)
        why = layout.reason if isinstance(layout, paramsfile.BadParams) else "its arrays have no names"
        raise JobFailed(f"{model.params_path} changed after the input checks and cannot be used: {why}",
                        failure=Failure(FailureKind.INPUT_CHANGED))


REFUSALS_SAID = 3   # events of one process refused with a console line; later ones are only counted
WAITS_KEPT = 100     # scheduler_unreachable (and _reachable) events kept per process
CHECKPOINT_REPEATS = 3  # checkpoint events taken per epoch from worker 0 (a save retried), each a fetch


class RunEvents:
    """The workers' structured events: appended to ``events.jsonl`` and tracked for the watchdogs.

    ``on_line`` runs in the log pump threads and only records; what takes time (fetching
    worker 0's epoch checkpoint, rewriting the metrics files) runs on two background threads.
    """

    def __init__(self, plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> None:
        self.plan, self.console = plan, console
        # Two queues: a slow plot never delays a checkpoint fetch (worker 0 prunes old epochs).
        self.fetches = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxft-fetch")
        self.drawing = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mxft-metrics")
        self.path = os.path.join(plan.run_dir, "events.jsonl")
        self.metrics = MetricsWriter(plan.run_dir, len(plan.recipe.workers))
        self.from_worker0 = FromWorker0.of(plan, remote_hosts)
        self.epochs = plan.recipe.job.train.epochs
        self.first_batch_at: float | None = None  # wall-clock time of the first batch any worker finished
        self.rank_of: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.position: dict[int, tuple[int, int]] = {}
        self.done: set[int] = set()
        self.unreachable: dict[str, str] = {}  # process name -> why it cannot reach the scheduler
        self.said_waiting: set[str] = set()  # processes the console was told are still waiting
        self.seen: collections.Counter = collections.Counter()  # (process, kind, epoch) -> events received
        self.refused: collections.Counter = collections.Counter()  # process -> events that failed their check

    def on_line(self, member: Member, line: str) -> bool:
        claimed = events.parse(line)
        if claimed is None:
            return False
        event, why = checked_event(claimed, index=member.index, epochs=self.epochs)
        if event is None:
            if self.refused[member.name] < REFUSALS_SAID:
                self.console(f"[mxft] ignored an event of {member.name} on {member.host}: {why}")
            self.refused[member.name] += 1
            return True
        if not self._first_of_its_kind(member, event):
            return True  # a repeat beyond its kind's allowance: dropped
        if event["event"] != "progress":  # one per batch: tracked, not stored
            event["process"] = member.name
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event, sort_keys=True) + "\n")
        if event["event"] == "scheduler_unreachable":
            self._waiting_for_scheduler(member, event)
        elif event["event"] == "scheduler_reachable":
            self.unreachable.pop(member.name, None)
        if member.role == Role.WORKER.value:
            self._on_worker_event(member.index, event)
        return True

    def _first_of_its_kind(self, member: Member, event: dict) -> bool:
        """Whether ``event`` is one the process may still send: each epoch's report once, its checkpoint
        ``CHECKPOINT_REPEATS`` times (each is a fetch), joining, the first batch and the end once, waits for the
        scheduler ``WAITS_KEPT`` times, progress always (it is not stored). What a process repeats beyond that is
        dropped, so events.jsonl stays within processes x ((1 + CHECKPOINT_REPEATS) epochs + WAITS_KEPT + 3)
        lines whatever a host sends."""
        kind = event["event"]
        if kind == "progress":
            return True
        key = (member.name, kind, event.get("epoch") if kind in ("epoch", "checkpoint") else None)
        self.seen[key] += 1
        return self.seen[key] <= {"checkpoint": CHECKPOINT_REPEATS, "scheduler_unreachable": WAITS_KEPT,
                                  "scheduler_reachable": WAITS_KEPT}.get(kind, 1)

    def _waiting_for_scheduler(self, member: Member, event: dict) -> None:
        """Kept for the start-up deadline's report; said once if the wait grows long (a slow scheduler is normal)."""
        address, error = str(event.get("address")), str(event.get("error"))[:200]
        self.unreachable[member.name] = f"on {member.host} cannot connect to the scheduler at {address}: {error}"
        waited = event.get("waited_s")
        if isinstance(waited, (int, float)) and waited >= 30 and member.name not in self.said_waiting:
            self.said_waiting.add(member.name)
            self.console(f"[mxft] {member.name} on {member.host} is still waiting for the ps-lite scheduler at "
                         f"{address} after {waited:.0f} s ({error}); the launch gives up after "
                         f"{self.plan.recipe.job.cluster.startup_timeout_s} s (cluster.startup_timeout_s)")

    def _on_worker_event(self, index: int, event: dict) -> None:
        self.last_seen[index] = time.monotonic()
        kind = event["event"]
        if kind == "joined":
            self.rank_of[index] = int(event["rank"])
        elif kind == "progress":
            self.position[index] = (int(event["epoch"]), int(event["batch"]))
            if index == 0:
                self.console.batch(*self.position[index])
        elif kind == "done":
            self.done.add(index)
        elif kind == "first_batch":
            self.first_batch_at = min(self.first_batch_at or event["time"], event["time"])
        elif kind == "epoch" and self.metrics.add(event):
            self._epoch_done(int(event["epoch"]))
        elif kind == "checkpoint" and index == 0:  # worker 0 keeps the run's checkpoints; others are ignored
            epoch = event["epoch"]  # checked: in 1..epochs
            self._later(self.fetches, f"keeping the checkpoint of epoch {epoch}", keep_checkpoint, self.plan,
                        self.from_worker0, epoch)

    def _epoch_done(self, epoch: int) -> None:
        """Every worker reported ``epoch``: its line on the console, and the metrics files redrawn."""
        row = next((r for r in self.metrics.rows() if r["epoch"] == epoch), None)
        if row is not None:
            self.console.epoch(row)
        self._later(self.drawing, f"rewriting the metrics after epoch {epoch}", self.metrics.write, final=False)

    def _later(self, queue: concurrent.futures.Executor, what: str, work: Callable, *args, **kwargs) -> None:
        """Run ``work`` on a background thread; a failure is said, and the run goes on."""
        def guarded() -> None:
            try:
                work(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - a late checkpoint or plot must not stop training
                self.console(f"[mxft] {what} failed ({type(err).__name__}: {err}); continuing")
        try:
            queue.submit(guarded)
        except RuntimeError:  # a line read after the run ended: nothing is waiting for it any more
            pass

    def lead_joined(self) -> bool:
        """Whether worker 0 (which evaluates and writes the result) joined ps-lite."""
        return 0 in self.rank_of

    def close(self) -> None:
        """Wait for the fetches and redraws still queued (each reports its own failure)."""
        self.fetches.shutdown(wait=True)
        self.drawing.shutdown(wait=True)


class Watchdog:
    """Turns ps-lite's silent hangs into errors: a start-up deadline and a progress timeout."""

    def __init__(self, plan: Plan, run_events: RunEvents) -> None:
        self.plan, self.events = plan, run_events
        self.started = time.monotonic()
        cluster = plan.recipe.job.cluster
        self.startup_timeout_s, self.progress_timeout_s = cluster.startup_timeout_s, cluster.progress_timeout_s

    def check(self) -> None:
        now = time.monotonic()
        workers = range(len(self.plan.recipe.workers))
        missing = [i for i in workers if i not in self.events.rank_of]
        if missing:
            if now - self.started > self.startup_timeout_s:
                self._never_joined(missing)
            return
        active = [i for i in workers if i not in self.events.done]
        silent = [i for i in active if now - self.events.last_seen.get(i, self.started) > self.progress_timeout_s]
        if silent:
            behind = min(self.events.position.get(i, (-1, 0)) for i in active)
            stuck = [i for i in active if self.events.position.get(i, (-1, 0)) == behind] or silent
            where = ", ".join(f"worker {i} on {self.plan.worker_hosts[i]}" for i in stuck)
            epoch, batch = behind
            raise JobFailed(f"{where} reported no progress for {self.progress_timeout_s} s "
                            f"(cluster.progress_timeout_s); stuck at epoch {epoch + 1} batch {batch}, "
                            "the other workers wait for it", failure=Failure(FailureKind.STALLED),
                            reason=f"{where} reported no progress for {self.progress_timeout_s} s")

    def _never_joined(self, missing: list[int]) -> None:
        causes = "".join(f"{name} {why}; " for name, why in sorted(self.events.unreachable.items()))
        names = ", ".join(f"worker {i} on {self.plan.worker_hosts[i]}" for i in missing)
        raise JobFailed(
            f"{causes}{names} did not join ps-lite within {self.startup_timeout_s} s "
            f"(cluster.startup_timeout_s); the scheduler is at {self.plan.scheduler_uri}:"
            f"{self.plan.scheduler_port}: check that every host can reach it and that DMLC_NODE_HOST is "
            "an address the other hosts can reach", failure=Failure(FailureKind.STARTUP_TIMEOUT),
            reason=f"{names} did not join ps-lite within {self.startup_timeout_s} s")


def execute(plan: Plan, *, console: Console) -> dict:
    """Run the plan to completion and return its result; raises JobFailed (root cause first).

    A recipe's result is worker 0's result.json with timing and throughput added; a
    command's is each process's outcome. The caller writes it to RUN_DIR/result.json.
    """
    remote_hosts = {host.label: remote_host(host, plan.ssh, plan.launcher) for host in plan.hosts if not host.is_local}
    began = time.time()
    stage_local(plan)
    stage_remote(plan, remote_hosts, console=console)
    started = time.time()
    if plan.recipe is None:
        console.verbose = True  # a command's own output is what its user came for (as with tools/launch.py)
        with watching(plan, remote_hosts) as hosts_answer:
            outcomes = run_processes(plan, remote_hosts, console=console, check=hosts_answer)
        return {"run_id": plan.run_id, "command": list(plan.command.argv), "staging_s": round(started - began, 3),
                "running_s": round(time.time() - started, 3), "processes": [o.summary() for o in outcomes]}
    run_events = RunEvents(plan, remote_hosts, console=console)
    console.start_training(plan.recipe.workers[0].begin_epoch, plan.recipe.job.train.epochs,
                           plan.recipe.batches_per_epoch)
    watchdog = Watchdog(plan, run_events)
    try:
        with watching(plan, remote_hosts) as hosts_answer:
            run_processes(plan, remote_hosts, console=console, on_line=run_events.on_line,
                          check=lambda: (hosts_answer(), watchdog.check()))
    finally:
        run_events.close()
        console.close()
    ended = time.time()
    first = run_events.first_batch_at or started
    timing = {"staging_s": round(started - began, 3), "startup_s": round(first - started, 3),
              "training_s": round(ended - first, 3)}
    return collect(plan, run_events, timing=timing)


@contextlib.contextmanager
def watching(plan: Plan, remote_hosts: Mapping[str, RemoteHost]):
    """Keepalives to every remote host that runs a process; yields a check that raises JobFailed naming the
    first host that stopped answering (before its silent processes or the ps-lite hang say anything)."""
    # srun's steps have no keepalive of their own here: Slurm ends a job whose node stops answering (SlurmdTimeout)
    busy = [remote_hosts[label] for label in dict.fromkeys(p.host for p in plan.processes)
            if isinstance(remote_hosts.get(label), SSHHost)]
    started = on_hosts(_watch, busy, name="watch")
    failed = [w for w in started if isinstance(w, JobFailed)]
    watches = [w for w in started if isinstance(w, HostWatch)]
    if failed:
        for watch in watches:
            watch.close()
        raise failed[0]

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


def _watch(host: SSHHost) -> HostWatch | JobFailed:
    """A watch on ``host``, or the failure of a host that went away between staging and now."""
    try:
        return HostWatch(host)
    except Exception as err:  # noqa: BLE001 - whatever stops the connection, the host failed
        return JobFailed(f"host {host.label}: cannot connect to watch it ({type(err).__name__}: {err})",
                         failure=Failure(FailureKind.CONNECTION_LOST, host=host.label))


def stage_remote(plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> None:
    """Send every remote host what the plan puts there, reporting per host."""
    if not plan.transfers:
        return
    started = time.monotonic()
    reports = stage_all(remote_hosts, plan.transfers, root_of=plan.remote_roots.__getitem__,
                        python_of=plan.remote_pythons.__getitem__,
                        progress=lambda host, sent, total: console.progress(f"staging {host}", sent, total, unit="B"),
                        silence_s=host_silence_s(plan))
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
        remote = [proc for proc in plan.processes if isinstance(transports[proc.host], SSHHost)]
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


def checkpoint_files(plan: Plan, epoch: int) -> list[str]:
    """The files of worker 0's checkpoint of ``epoch``, as the plan names them (marker last)."""
    name = plan.recipe.workers[0].checkpoint_name
    return [f"{name}-symbol.json", f"{name}-{epoch:04d}.params", f"checkpoint-{epoch:04d}.json"]


def keep_checkpoint(plan: Plan, worker0: FromWorker0, epoch: int) -> None:
    """Bring worker 0's checkpoint of ``epoch`` into RUN_DIR/checkpoints (the marker last).

    A worker's event is a claim: it only says which epoch is ready. The folder and the file
    names come from the plan, and only regular files are taken (a link could point anywhere).
    """
    files = checkpoint_files(plan, epoch)
    if worker0.host is None:
        _require_regular_files(worker0.folder, files)
        runstate.install_checkpoint(worker0.folder, files, plan.run_dir, link=True)
        return
    os.makedirs(runstate.checkpoint_dir(plan.run_dir), exist_ok=True)
    incoming = tempfile.mkdtemp(prefix=".incoming-", dir=runstate.checkpoint_dir(plan.run_dir))
    try:
        worker0.fetch(files, incoming)
        runstate.install_checkpoint(incoming, files, plan.run_dir, link=False)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


RESULT_CAP = 1 << 20   # bytes of worker 0's result.json, and of each checkpoint's record


def _bad_result() -> Failure:
    return Failure(FailureKind.BAD_RESULT, process="worker 0")


def host_silence_s(plan: Plan) -> float:
    """How long a host may send or take nothing during a copy or a fetch (a command job has the default)."""
    return float(plan.recipe.job.cluster.host_silence_s if plan.recipe else ClusterSpec.host_silence_s)


@dataclasses.dataclass(frozen=True)
class FromWorker0:
    """Where worker 0's files come from in this attempt, and how much of each is taken: params at most twice what
    was staged (the new layer on top of the cut model is far smaller than the model) plus 16 MiB, the symbol
    likewise, result.json and checkpoint records 1 MiB. The staged sizes are read once, at the attempt's start:
    a resumed run's staged checkpoint may be pruned from RUN_DIR/checkpoints later."""

    folder: str                     # worker 0's output folder (on its host)
    host: RemoteHost | None         # None: worker 0 runs on this machine
    python: str
    staged: Mapping[str, int]       # "-symbol.json" / ".params" -> bytes staged (the largest of each)
    silence_s: float

    @classmethod
    def of(cls, plan: Plan, remote_hosts: Mapping[str, RemoteHost]) -> "FromWorker0":
        label = plan.worker_hosts[0]
        staged = {suffix: max((_size(t.source) for t in plan.transfers if t.dest.endswith(suffix)), default=0)
                  for suffix in (".params", "-symbol.json")}
        return cls(plan.recipe.workers[0].out_dir, remote_hosts.get(label), plan.remote_pythons.get(label, ""),
                   staged, host_silence_s(plan))

    def cap(self, name: str) -> int:
        suffix = next((s for s in self.staged if name.endswith(s)), None)
        return 2 * self.staged[suffix] + (16 << 20) if suffix else RESULT_CAP

    def fetch(self, names: list[str], local_dir: str) -> None:
        """The named files of worker 0's folder into ``local_dir``, all verified or none (``launcher.fetch``)."""
        fetch_files(self.host, self.folder, {name: self.cap(name) for name in names}, local_dir,
                    python=self.python, stall_s=self.silence_s)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _require_regular_files(folder: str, names: list[str]) -> None:
    for name in names:
        path = os.path.join(folder, name)
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise JobFailed(f"{path} is not a regular file (a link or a folder); not taken", failure=_bad_result())


def collect(plan: Plan, run_events: RunEvents, *, timing: Mapping[str, float]) -> dict:
    """Worker 0's result with the run's timing, throughput and every epoch; its checkpoint to RUN_DIR/checkpoint.
    Whatever goes wrong on the way is a JobFailed that says so (the attempt is then recorded as failed)."""
    try:
        return _collect(plan, run_events, timing=timing)
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise JobFailed(f"collecting worker 0's result failed ({type(err).__name__}: {str(err)[:300]})",
                        failure=_bad_result()) from err


def _collect(plan: Plan, run_events: RunEvents, *, timing: Mapping[str, float]) -> dict:
    if not run_events.lead_joined():
        raise JobFailed("the workers finished but worker 0 never reported joining; see the worker logs in "
                        f"{os.path.join(plan.run_dir, 'logs')}", failure=_bad_result())
    result = _worker0_result(plan, run_events.from_worker0)
    _check_result(plan, result)
    result.update(rank_of_worker_0=run_events.rank_of[0], run_id=plan.run_id, timing=dict(timing))
    rows = run_events.metrics.write()
    result["images_per_s_per_worker"] = {
        str(i): round(sum(float(r[f"images_per_s_worker_{i}"]) for r in rows) / len(rows), 2)
        for i in range(len(plan.recipe.workers)) if rows}
    earlier = runstate.latest_checkpoint(plan.run_dir)
    done = {record["epoch"] for record in result["epochs"]}
    result["epochs"] = [r for r in (earlier.records if earlier else ()) if r["epoch"] not in done] + result["epochs"]
    _install_final_checkpoint(plan, run_events.from_worker0, result["checkpoint"]["prefix"],
                              result["checkpoint"]["epoch"])
    return result


def _worker0_result(plan: Plan, worker0: FromWorker0) -> dict:
    out_dir = worker0.folder
    if worker0.host is not None:
        out_dir = os.path.join(plan.run_dir, "workers", "worker-0")
        worker0.fetch(["result.json"], out_dir)  # the checkpoint came per epoch
    source = os.path.join(out_dir, "result.json")
    if not os.path.isfile(source):
        raise JobFailed(f"worker 0 exited 0 but wrote no {source}", failure=_bad_result())
    if os.path.getsize(source) > RESULT_CAP:
        raise JobFailed(f"worker 0's {source} has {os.path.getsize(source)} bytes (at most {RESULT_CAP}); not taken",
                        failure=_bad_result())
    with open(source, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except (ValueError, RecursionError) as err:
            raise JobFailed(f"worker 0's {source} is not JSON ({str(err)[:100]}); the result is not taken",
                            failure=_bad_result()) from None


def _check_result(plan: Plan, result) -> None:
    """Worker 0's result.json is a claim too: the fields the launcher uses must be what the plan says."""
    job = plan.recipe.job
    expected = {"prefix": plan.recipe.workers[0].checkpoint_name, "epoch": job.train.epochs}
    named = result.get("checkpoint") if isinstance(result, dict) else None
    if named != expected:
        raise JobFailed(f"worker 0's result.json names the checkpoint {named!r}, the plan says {expected}; "
                        "the result is not taken", failure=_bad_result())
    problem = result_problem(result, epochs=job.train.epochs)
    if problem is not None:
        raise JobFailed(f"worker 0's result.json is not taken: {problem}", failure=_bad_result())


def _install_final_checkpoint(plan: Plan, worker0: FromWorker0, name: str, epoch: int) -> None:
    """RUN_DIR/checkpoint/NAME-symbol.json + NAME-EEEE.params: linked from checkpoints/ (fetched per epoch)."""
    files = [f"{name}-symbol.json", f"{name}-{epoch:04d}.params"]
    kept = runstate.latest_checkpoint(plan.run_dir)
    if kept is not None and kept.epoch == epoch:
        source_dir = runstate.checkpoint_dir(plan.run_dir)
    elif worker0.host is not None:
        source_dir = os.path.join(plan.run_dir, "workers", "worker-0")
        worker0.fetch(files, source_dir)
    else:
        source_dir = worker0.folder
    checkpoint_dir = os.path.join(plan.run_dir, "checkpoint")
    os.makedirs(checkpoint_dir, exist_ok=True)
    for filename in files:
        runstate.link_or_copy(os.path.join(source_dir, filename), os.path.join(checkpoint_dir, filename))
