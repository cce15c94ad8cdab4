"""What comes back from worker 0: each epoch's checkpoint, its result.json and the final checkpoint, each taken only
as the plan names it, within bounds, and from regular files (``launcher.run.fetch`` brings remote ones)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping

from cluster.backend import RemoteHost
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from launcher.data import runstate
from launcher.plan import Plan
from launcher.report.metrics import MetricsWriter
from launcher.run.event_check import result_problem
from launcher.run.fetch import fetch_files


def checkpoint_files(plan: Plan, epoch: int) -> list[str]:
    """The files of worker 0's checkpoint of ``epoch``, as the plan names them (marker last): with the optimizer's
    state where the workers update the weights (``Recipe.keeps_optimizer_state``)."""
    name = plan.component.workers[0].checkpoint_name
    states = [f"{name}-{epoch:04d}.states"] if plan.component.keeps_optimizer_state else []
    return [f"{name}-symbol.json", f"{name}-{epoch:04d}.params", *states, f"checkpoint-{epoch:04d}.json"]


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
    staged: Mapping[str, int]       # "-symbol.json" / ".params" -> bytes of the model (the largest of each)
    silence_s: float

    @classmethod
    def of(cls, plan: Plan, remote_hosts: Mapping[str, RemoteHost]) -> "FromWorker0":
        """The sizes are the model's own files and what the plan sends (a resumed run's checkpoint), whichever is
        larger: a host that reads the model in place, or gets only its BatchNorm statistics, is sent no weights."""
        label, model = plan.worker_hosts[0], plan.component.job.model
        own = {".params": _size(model.params_path), "-symbol.json": _size(model.symbol_path)}
        staged = {suffix: max([own[suffix], *(_size(t.source) for t in plan.transfers if t.dest.endswith(suffix))])
                  for suffix in (".params", "-symbol.json")}
        return cls(plan.component.workers[0].out_dir, remote_hosts.get(label), plan.remote_pythons.get(label, ""),
                   staged, plan.component.host_silence_s)

    def cap(self, name: str) -> int:
        """At most twice the model's size plus 16 MiB; an optimizer's state twice that (two arrays per weight, as
        Adam's); result.json and a checkpoint's record 1 MiB."""
        if name.endswith(".states"):
            return 2 * (2 * self.staged[".params"] + (16 << 20))
        suffix = next((s for s in self.staged if name.endswith(s)), None)
        return 2 * self.staged[suffix] + (16 << 20) if suffix else RESULT_CAP

    def fetch(self, names: list[str], local_dir: str) -> None:
        """The named files of worker 0's folder into ``local_dir``, all verified or none (``launcher.run.fetch``)."""
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


def collect(plan: Plan, worker0: FromWorker0, metrics: MetricsWriter, *, rank_of_worker0: int | None,
            timing: Mapping[str, float]) -> dict:
    """Worker 0's result with the run's timing, throughput and every epoch; its checkpoint to RUN_DIR/checkpoint.
    Whatever goes wrong on the way is a JobFailed that says so (the attempt is then recorded as failed)."""
    try:
        return _collect(plan, worker0, metrics, rank_of_worker0=rank_of_worker0, timing=timing)
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise JobFailed(f"collecting worker 0's result failed ({type(err).__name__}: {str(err)[:300]})",
                        failure=_bad_result()) from err


def _collect(plan: Plan, worker0: FromWorker0, metrics: MetricsWriter, *, rank_of_worker0: int | None,
             timing: Mapping[str, float]) -> dict:
    if rank_of_worker0 is None:
        raise JobFailed("the workers finished but worker 0 never reported joining; see the worker logs in "
                        f"{os.path.join(plan.run_dir, 'logs')}", failure=_bad_result())
    result = _worker0_result(plan, worker0)
    _check_result(plan, result)
    result.update(rank_of_worker_0=rank_of_worker0, run_id=plan.run_id, timing=dict(timing))
    rows = metrics.write()
    result["images_per_s_per_worker"] = {
        str(i): round(sum(float(r[f"images_per_s_worker_{i}"]) for r in rows) / len(rows), 2)
        for i in range(len(plan.component.workers)) if rows}
    earlier = runstate.latest_checkpoint(plan.run_dir)
    done = {record["epoch"] for record in result["epochs"]}
    result["epochs"] = [r for r in (earlier.records if earlier else ()) if r["epoch"] not in done] + result["epochs"]
    _install_final_checkpoint(plan, worker0, result["checkpoint"]["prefix"],
                              result["checkpoint"]["epoch"])
    result["kept"] = _keep_best(plan, result)
    names = _class_names_beside(plan, result["checkpoint"]["prefix"])
    if names:
        result["class_names_file"] = names
    return result


def _class_names_beside(plan: Plan, name: str) -> str | None:
    """The class names (``LABEL<TAB>NAME`` lines, as mxft-prepare writes ``PREFIX-labels.txt`` beside
    ``PREFIX-train.rec``) copied beside the fine-tuned model as ``checkpoint/NAME-labels.txt``; None without them."""
    train = plan.component.job.data.train
    source = train[: -len("-train.rec")] + "-labels.txt" if train.endswith("-train.rec") else ""
    if not os.path.isfile(source):
        return None
    target = os.path.join(plan.run_dir, "checkpoint", f"{name}-labels.txt")
    try:
        shutil.copyfile(source, target)
    except OSError:  # this machine's own file: the model is whole without it
        return None
    return os.path.relpath(target, plan.run_dir)


def _keep_best(plan: Plan, result: dict) -> dict:
    """``train.keep``: the best validation accuracy's params beside (or instead of) the last epoch's in
    RUN_DIR/checkpoint, from RUN_DIR/checkpoints (which keeps the best epoch's); what is kept, by epoch."""
    name, last = result["checkpoint"]["prefix"], result["checkpoint"]["epoch"]
    best = runstate.best_epoch(result["epochs"])
    keep = plan.component.job.train.keep
    source = os.path.join(runstate.checkpoint_dir(plan.run_dir), f"{name}-{best:04d}.params") if best else ""
    kept = {"last": last}
    if best == last:
        kept["best"] = best
    elif best is not None and keep != "last" and not os.path.isfile(source):
        kept["best_not_kept"] = best  # its fetch failed: the last epoch's params stay, and the run says so
    elif best is not None and keep != "last":
        runstate.link_or_copy(source, os.path.join(plan.run_dir, "checkpoint", os.path.basename(source)))
        kept["best"] = best
        if keep == "best":
            os.remove(os.path.join(plan.run_dir, "checkpoint", f"{name}-{last:04d}.params"))
            del kept["last"]
    return kept


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
    expected = {"prefix": plan.component.workers[0].checkpoint_name, "epoch": _last_epoch(job, result)}
    named = result.get("checkpoint") if isinstance(result, dict) else None
    if named != expected:
        raise JobFailed(f"worker 0's result.json names the checkpoint {named!r}, the plan says {expected}; "
                        "the result is not taken", failure=_bad_result())
    problem = result_problem(result, epochs=job.train.epochs)
    stopped = result.get("stopped_early")
    if problem is None and stopped is not None and not (
            _last_epoch(job, result) < job.train.epochs
            and all(isinstance(stopped.get(key), int) and not isinstance(stopped.get(key), bool)
                    for key in ("best_epoch", "patience"))):
        problem = "its stopped_early is not an early stop the job allows, after an epoch before the last"
    if problem is not None:
        raise JobFailed(f"worker 0's result.json is not taken: {problem}", failure=_bad_result())


def _last_epoch(job, result) -> int:
    """The epoch a run ends with: ``train.epochs``, or, with ``train.early_stop``, the one worker 0 says it stopped
    after (an epoch before the last, whose record is the result's last)."""
    stopped = result.get("stopped_early") if isinstance(result, dict) and job.train.early_stop else None
    epoch = stopped.get("epoch") if isinstance(stopped, dict) else None
    records = result.get("epochs") if isinstance(result, dict) else None
    if (isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch < job.train.epochs
            and isinstance(records, list) and records and isinstance(records[-1], dict)
            and records[-1].get("epoch") == epoch):
        return epoch
    return job.train.epochs


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

