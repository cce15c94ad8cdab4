"""A fine-tuning run's own part of execution: its local files first, then the workers' events watched.

``make_local_files`` writes each worker's config, the trimmed params and (unless cached)
the shards. ``RecipeWatch`` is what the supervisor calls while the processes run: the
log pumps hand it each line (``RunEvents`` records the structured events; fetching
worker 0's checkpoints and redrawing the metrics happen on background threads, so a slow
SSH fetch never stalls a process's output), its ``check`` turns ps-lite's silent hangs
into failures (``Watchdog``), and its ``result`` collects worker 0's result.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping

from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.srun import RemoteHost
from cluster.supervise import Member, ProcessOutcome
from launcher import cachefile, paramsfile, recfile, runstate
from launcher.console import Console
from launcher.event_check import checked_event, result_problem
from launcher.fetch import fetch_files
from launcher.jobspec import ModelSpec
from launcher.metrics import MetricsWriter
from launcher.plan import Plan, Role
from launcher.trim import trim_params, used_variables
from trainer import events


def make_local_files(plan: Plan) -> None:
    """Each worker's config, the trimmed params and (unless cached) the shards, on this machine."""
    recipe = plan.component
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
        self.metrics = MetricsWriter(plan.run_dir, len(plan.component.workers))
        self.from_worker0 = FromWorker0.of(plan, remote_hosts)
        self.epochs = plan.component.job.train.epochs
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
                         f"{self.plan.component.job.cluster.startup_timeout_s} s (cluster.startup_timeout_s)")

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
        cluster = plan.component.job.cluster
        self.startup_timeout_s, self.progress_timeout_s = cluster.startup_timeout_s, cluster.progress_timeout_s

    def check(self) -> None:
        now = time.monotonic()
        workers = range(len(self.plan.component.workers))
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



class RecipeWatch:
    """The fine-tuning run's observer: events from the log pumps, watchdogs each poll, worker 0's result at the end."""

    def __init__(self, plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> None:
        recipe = plan.component
        self.plan, self.console, self.began = plan, console, time.time()
        self.events = RunEvents(plan, remote_hosts, console=console)
        self.watchdog = Watchdog(plan, self.events)
        self.on_line = self.events.on_line
        console.start_training(recipe.workers[0].begin_epoch, recipe.job.train.epochs, recipe.batches_per_epoch)

    def check(self) -> None:
        self.watchdog.check()

    def close(self) -> None:
        self.events.close()
        self.console.close()

    def result(self, outcomes: list[ProcessOutcome], *, staging_s: float) -> dict:
        """Worker 0's result.json with timing and throughput added (``collect``)."""
        ended = time.time()
        first = self.events.first_batch_at or self.began
        timing = {"staging_s": round(staging_s, 3), "startup_s": round(first - self.began, 3),
                  "training_s": round(ended - first, 3)}
        return collect(self.plan, self.events, timing=timing)


def checkpoint_files(plan: Plan, epoch: int) -> list[str]:
    """The files of worker 0's checkpoint of ``epoch``, as the plan names them (marker last)."""
    name = plan.component.workers[0].checkpoint_name
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
        return cls(plan.component.workers[0].out_dir, remote_hosts.get(label), plan.remote_pythons.get(label, ""),
                   staged, plan.component.host_silence_s)

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
        for i in range(len(plan.component.workers)) if rows}
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
    job = plan.component.job
    expected = {"prefix": plan.component.workers[0].checkpoint_name, "epoch": job.train.epochs}
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

