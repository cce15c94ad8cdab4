"""A fine-tuning run's own part of execution: its local files first, then the workers' events watched.

``make_local_files`` writes each worker's config, the trimmed params and (unless cached)
the shards of this machine's workers, and gives the other hosts' shards as pieces that staging cuts from the
training file as it sends them. ``RecipeWatch`` is what the supervisor calls while the processes run: the
log pumps hand it each line (``RunEvents`` records the structured events; fetching
worker 0's checkpoints and redrawing the metrics happen on background threads, so a slow
SSH fetch never stalls a process's output), its ``check`` turns ps-lite's silent hangs
into failures (``Watchdog``), and its ``result`` collects worker 0's result.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping

from cluster.backend import RemoteHost
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.supervise import ProcessOutcome
from launcher.data import cachefile, paramsfile, recfile
from launcher.data.pieces import ShardIndex, ShardRecords
from launcher.data.trim import trim_params, used_variables
from launcher.plan import Plan
from launcher.report.console import Console
from launcher.run.run_events import RunEvents, Watchdog
from launcher.run.stage import Piece
from launcher.run.worker0 import collect
from launcher.spec.jobspec import ModelSpec


def make_local_files(plan: Plan) -> dict[str, Piece]:
    """Each worker's config, the trimmed params and (unless cached) the shards of this machine's workers; returns the
    shards of the other hosts' workers, and their parts of the validation set, as pieces, cut from the training and
    validation files as they are sent (never written here)."""
    recipe = plan.component
    for config in recipe.workers:
        with open(plan.config_path(config.index), "w", encoding="utf-8") as handle:
            handle.write(config.to_json())
    for path, kinds in ((recipe.trimmed_params, ("arg", "aux")), (recipe.statistics_params, ("aux",))):
        if path:
            with cachefile.locked(os.path.dirname(path)):  # one launch builds it, the others wait
                _write_trimmed_params(recipe.job.model, path, kinds)
    local = {host.label for host in plan.hosts if host.is_local}
    pieces = _validation_pieces(recipe)
    copies = [s for s in recipe.shards if not s.in_place]
    if not copies:  # every worker reads its part of the training file where it is
        return pieces
    spans = recfile.read_index(recipe.job.data.train)
    for shard in copies:
        if plan.worker_hosts[shard.worker] not in local:
            records = [spans[i] for i in shard.positions]
            pieces.update({shard.rec_path: ShardRecords(recipe.job.data.train, records),
                           shard.idx_path: ShardIndex(records)})
    here = [s for s in copies if s.rec_path not in pieces]
    if here:
        with cachefile.locked(os.path.dirname(here[0].rec_path)):
            for shard in here:  # written atomically, so a present one is complete
                if not (os.path.isfile(shard.rec_path) and os.path.isfile(shard.idx_path)):
                    recfile.write_shard(recipe.job.data.train, [spans[i] for i in shard.positions],
                                        os.path.splitext(shard.rec_path)[0])
    return pieces


def _validation_pieces(recipe) -> dict[str, Piece]:
    """The parts of the validation set that go, each alone, to the hosts of workers that cannot read it in place
    (``launcher.plan.sources.validation_parts``), cut as they are sent."""
    copies = [part for part in recipe.val_parts if not part.in_place]
    if not copies:
        return {}
    spans = recfile.read_index(recipe.job.data.val)
    pieces: dict[str, Piece] = {}
    for part in copies:
        records = [spans[i] for i in part.positions]
        pieces.update({part.rec_path: ShardRecords(recipe.job.data.val, records), part.idx_path: ShardIndex(records)})
    return pieces


def _write_trimmed_params(model: ModelSpec, trimmed: str, kinds: tuple[str, ...]) -> None:
    """The trimmed params (of ``kinds``: ``arg``, ``aux``) in the cache, unless a complete params file is there already.

    ``trim_params`` handles every file ``check_inputs`` accepts; one it cannot read has changed since.
    """
    if os.path.isfile(trimmed) and isinstance(paramsfile.read_layout(trimmed), paramsfile.ParamsLayout):
        return
    used = used_variables(model.symbol_path, model.cut_layer)
    if trim_params(model.params_path, used, trimmed, kinds=kinds) is None:
        layout = paramsfile.read_layout(model.params_path)
        why = layout.reason if isinstance(layout, paramsfile.BadParams) else "its arrays have no names"
        raise JobFailed(f"{model.params_path} changed after the input checks and cannot be used: {why}",
                        failure=Failure(FailureKind.INPUT_CHANGED))


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
        return collect(self.plan, self.events.from_worker0, self.events.metrics,
                       rank_of_worker0=self.events.rank_of.get(0), timing=timing)

