"""The workers' structured events while a fine-tuning run goes: recorded, checked, and watched for ps-lite's hangs.

``RunEvents.on_line`` runs in the log pump threads and only records; what takes time
(fetching worker 0's epoch checkpoint, rewriting the metrics files) runs on two
background threads. ``Watchdog`` turns ps-lite's silent hangs into failures: a start-up
deadline and a progress timeout.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import time
from collections.abc import Callable, Mapping

from cluster.backend import RemoteHost
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.supervise import Member
from launcher.plan import Plan, Role
from launcher.report.console import Console
from launcher.report.metrics import MetricsWriter
from launcher.run.event_check import checked_event
from launcher.run.worker0 import FromWorker0, keep_checkpoint
from trainer import events


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
            event["process"], event["attempt"] = member.name, self.plan.attempt
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
        ``CHECKPOINT_REPEATS`` times (each is a fetch), joining, the start, the first batch and the end once, waits
        for the scheduler ``WAITS_KEPT`` times, progress always (it is not stored). What a process repeats beyond
        that is dropped, so events.jsonl stays within processes x ((1 + CHECKPOINT_REPEATS) epochs + WAITS_KEPT + 4)
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
                self.metrics.add_batch(event, batches_per_epoch=self.plan.component.batches_per_epoch)
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

