"""The two job kinds and what each adds around the generic launch: the one place that chooses by kind.

``kind_of(spec)`` (a job just read) and ``kind_of_plan(plan)`` (a plan, perhaps read back
from plan.json) give a ``FineTuning`` or a ``Command``; the launch, the executor and the
CLI call its hooks and never ask which kind they hold. Planning itself is the
components' (``launcher.plan.recipe``, ``launcher.plan.command``).
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence

from cluster.backend import RemoteHost
from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.secret import Secret
from cluster.supervise import ProcessOutcome
from launcher.data import cachefile, recfile, runstate
from launcher.data.attempt_result import Verdict
from launcher.data.images import pack_image_folder
from launcher.data.inputs import Inventory, check_inputs
from launcher.plan import Plan, assign_workers
from launcher.remote import host_probe
from launcher.report.console import Console
from launcher.run import assets
from launcher.run.execute import write_run_files
from launcher.run.recipe_run import RecipeWatch, make_local_files
from launcher.run.stage import Piece
from launcher.spec.checks import SECRET_LOOKING
from launcher.spec.command import sync_destinations, sync_files
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import JobSpec


def fingerprint(*paths: str) -> str:
    """A key that changes whenever any of the files changes (its path and ``cachefile.file_identity``)."""
    parts = [f"{os.path.abspath(path)}|{cachefile.file_identity(path)}" for path in paths]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def rec_files(rec_path: str) -> list[str]:
    """A ``.rec`` and, if it has one, its ``.idx``: what records are read through."""
    idx = recfile.present_index(rec_path)
    return [rec_path] + ([idx] if idx else [])


class FineTuning:
    """A fine-tuning job: its data checked (and packed) first, restarts and --resume from checkpoints, the workers'
    events watched, worker 0's result kept."""

    name = "finetune"
    resumable = True

    @staticmethod
    def prepared(spec: JobSpec, config, console: Console) -> JobSpec:
        """The demo's files built if the job asks for them, ``data.images`` packed, into the cache once: a dry run and
        ``check`` too, whose plan needs what those files hold (they start nothing and reach no host for it)."""
        if spec.builtin_assets:
            assets.ensure_built(spec, console=console)
        return pack_image_folder(spec, config.cache_dir, echo=console,
                                 progress=lambda done, total: console.progress("packing images", done, total,
                                                                               unit="image"))

    @staticmethod
    def spec_of(plan: Plan, where: str) -> JobSpec:
        """The job of a saved plan (``--plan``); not one whose ``--env`` values the plan only names."""
        job = plan.component.job
        _refuse_unheld([name for name, value in (job.env or {}).items() if value in ("<from environment>", "<given>")],
                       where, what="job", given="--env")
        return job

    @staticmethod
    def inputs(spec: JobSpec, config) -> Inventory:
        """What the job's files hold; a dry run (and ``check``) reads the label cache but writes nothing to it."""
        return check_inputs(spec, cache_dir=config.cache_dir, remember_labels=not config.dry_run)

    @staticmethod
    def facts(spec: JobSpec, checkpoint, *, remote: bool) -> dict:
        """The facts of the job's data and resume point (``Facts`` fields); with ``remote`` hosts, what the data's
        files are here, for preflight to compare with theirs."""
        model = fingerprint(spec.model.symbol_path, spec.model.params_path)
        keys = {spec.model.symbol_path: model, spec.model.params_path: model}
        val_files = rec_files(spec.data.val)
        keys.update(dict.fromkeys(val_files, fingerprint(*val_files)))
        return dict(train_fingerprint=fingerprint(*rec_files(spec.data.train)), file_keys=keys,
                    resume_epoch=checkpoint.epoch if checkpoint else 0,
                    resume_prefix=checkpoint.prefix if checkpoint else None,
                    resume_states=bool(checkpoint and checkpoint.states), resume_best=_best(checkpoint),
                    file_ids=_data_file_ids(spec) if remote else {})

    @staticmethod
    def local_workers(spec: JobSpec, hosts: Sequence[HostSpec]) -> int:
        return len(assign_workers(spec.cluster, hosts).workers)

    @staticmethod
    def other_folders(spec: JobSpec) -> tuple[str, ...]:
        return ()

    @staticmethod
    def notes(spec: JobSpec, hosts: Sequence[HostSpec]) -> list[str]:
        """A job file's env: value that looks like a secret: it is recorded with the run (job.yaml, plan.json)."""
        return [f"note: env: {name} looks like a secret, and env: values are recorded with the run (job.yaml, "
                f"plan.json) and on remote command lines; pass it with --env {name} instead (never written)"
                for name, value in (spec.env or {}).items()
                if SECRET_LOOKING.search(name) and not isinstance(value, Secret)]

    @staticmethod
    def restarts(spec: JobSpec, *, given: int | None) -> int:
        """Restarts after a failed attempt: ``given`` (--max-restarts), else ``cluster.max_restarts``."""
        return spec.cluster.max_restarts if given is None else given

    @staticmethod
    def min_hosts(spec: JobSpec) -> int | None:
        return spec.cluster.min_hosts

    @staticmethod
    def demands(plan: Plan, inventory: Inventory) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
        """(bytes of each shard before it exists, GPU ids each host's workers use)."""
        recipe = plan.component
        known = {shard.rec_path: sum(inventory.train_records[i].size_bytes for i in shard.positions)
                 for shard in recipe.shards}
        gpu_ids: dict[str, tuple[int, ...]] = {}
        for label, worker in zip(plan.worker_hosts, recipe.workers):
            gpu_ids[label] = gpu_ids.get(label, ()) + tuple(worker.devices or ())
        return known, gpu_ids

    @staticmethod
    def started(plan: Plan, begin_epoch: int) -> tuple[dict, str]:
        """(what attempts.jsonl records of a start, what the start line adds)."""
        return {"begin_epoch": begin_epoch}, ""

    @staticmethod
    def verdict(plan: Plan, result: dict) -> tuple[Verdict, str]:
        """``succeeded``, or ``missed`` when the validation accuracy is below the job's ``expect.min_accuracy``
        (the run went through; what it gave is not what was expected)."""
        job = plan.component.job
        least, accuracy = job.expect.min_accuracy, result.get("val_accuracy")
        if least is not None and isinstance(accuracy, (int, float)) and accuracy < least:
            return Verdict.MISSED, (f"validation accuracy {accuracy:.4f} is below expect.min_accuracy {least} "
                                    f"({job.source})")
        return Verdict.SUCCEEDED, ""

    make_local_files = staticmethod(make_local_files)

    @staticmethod
    def observer(plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> RecipeWatch:
        return RecipeWatch(plan, remote_hosts, console=console)

    @staticmethod
    def summary(plan: Plan, result: dict) -> list[str]:
        """The end of a launch: where things are, per-worker throughput, where the time went, the score."""
        top = next((k for k in result if k.startswith("val_top")), None)
        lines = [f"[mxft] run dir {plan.run_dir}: result.json, {_kept(result)}, logs/", *_throughput(plan, result)]
        topk = f", {top.replace('val_', '')} {result[top]:.4f}" if top else ""
        return lines + [f"validation accuracy: {result['val_accuracy']:.4f}{topk} ({result['val_images']} images, "
                        f"{_evaluated_by(plan)})"]


def _data_file_ids(spec: JobSpec) -> dict[str, str]:
    """What the data's files are here (``host_probe.file_id``), for preflight to ask each host whether it has the same
    at the same path; none with ``data.staging: always``."""
    if spec.data.staging == "always":
        return {}
    paths = [*rec_files(spec.data.train), *rec_files(spec.data.val), spec.model.symbol_path, spec.model.params_path]
    return {path: host_probe.file_id(path) for path in paths}


def _best(checkpoint) -> tuple[float, ...]:
    """(epoch, validation accuracy) of the best epoch a resumed run's checkpoints recorded, or ()."""
    epoch = runstate.best_epoch(checkpoint.records) if checkpoint else None
    return () if epoch is None else (epoch, next(r["val_accuracy"] for r in checkpoint.records
                                                 if r.get("epoch") == epoch))


def _kept(result: dict) -> str:
    """The params RUN_DIR/checkpoint holds, each with what it is: ``checkpoint/demo-0010.params (last), ...``."""
    name, kept = result["checkpoint"]["prefix"], result.get("kept") or {"last": result["checkpoint"]["epoch"]}
    accuracy = {r.get("epoch"): r.get("val_accuracy") for r in result.get("epochs", ())}
    said = {}
    for what in ("last", "best"):
        if what in kept:
            said.setdefault(kept[what], []).append(what)
    lost = (f" (the best, epoch {kept['best_not_kept']}, was not fetched: its params are not kept)"
            if "best_not_kept" in kept else "")
    return ", ".join(f"checkpoint/{name}-{epoch:04d}.params ({' and '.join(whats)}"
                     + (f", validation accuracy {accuracy[epoch]:.4f})" if isinstance(accuracy.get(epoch), float)
                        else ")") for epoch, whats in said.items()) + lost


def _refuse_unheld(names: list[str], where: str, *, what: str, given: str) -> None:
    """A saved plan shows where a secret value came from, never the value: one that needs such values cannot run."""
    if names:
        raise InputError(where, f"this {what}'s processes get {names[0]} from {given}, whose value a saved plan "
                         "never holds", hint=f"launch the {what} again instead")


def _throughput(plan: Plan, result: dict) -> list[str]:
    """Per-worker throughput and where the time went."""
    per_worker = result.get("images_per_s_per_worker") or {}
    lines = ["[mxft] worker  host                 images/s"]
    lines += [f"[mxft] {i:>6}  {plan.worker_hosts[int(i)]:<20} {speed:>8.1f}" for i, speed in per_worker.items()]
    if per_worker:
        lines.append(f"[mxft] {'total':>6}  {'':<20} {sum(per_worker.values()):>8.1f}")
    timing = result.get("timing") or {}
    if timing:
        lines.append(f"[mxft] time: staging {timing['staging_s']:.1f} s, start-up to the first batch "
                     f"{timing['startup_s']:.1f} s, training and evaluation {timing['training_s']:.1f} s; "
                     f"curves in {os.path.join(plan.run_dir, 'metrics.png')}")
    return lines


def _evaluated_by(plan: Plan) -> str:
    """``worker 0`` (train.evaluation: worker0), else how many workers shared the evaluation."""
    if plan.component.job.train.evaluation == "worker0":
        return "worker 0"
    workers = len(plan.component.workers)
    return f"{workers} worker{'s' if workers != 1 else ''}"


class CommandWatch:
    """A command's observer: its output is what its user came for (every line to the console), no events."""

    on_line = None

    def __init__(self, plan: Plan, console: Console) -> None:
        self.plan, self.started = plan, time.time()
        console.verbose = True  # as with tools/launch.py

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass

    def result(self, outcomes: list[ProcessOutcome], *, staging_s: float) -> dict:
        return {"run_id": self.plan.run_id, "command": list(self.plan.component.spec.argv),
                "staging_s": round(staging_s, 3), "running_s": round(time.time() - self.started, 3),
                "processes": [o.summary() for o in outcomes]}


class Command:
    """A command job: any ps-lite program; its folder checked, ``--sync-dir`` copied, its processes' outcomes."""

    name = "command"
    resumable = False

    @staticmethod
    def prepared(spec: CommandSpec, config, console: Console) -> CommandSpec:
        return spec

    @staticmethod
    def spec_of(plan: Plan, where: str) -> CommandSpec:
        """The command of a saved plan (``--plan``); not one that passes values of its own (a plan never holds
        them: it shows where they came from)."""
        spec = plan.component.spec
        _refuse_unheld([*spec.env, *(name for env in spec.role_env.values() for name in env)], where,
                       what="command", given="--env or env:")
        return spec

    @staticmethod
    def inputs(spec: CommandSpec, config) -> None:
        if not os.path.isdir(spec.workdir):
            raise InputError(spec.workdir, "working folder not found", hint=f"check workdir in {spec.source}")
        return None

    @staticmethod
    def facts(spec: CommandSpec, checkpoint, *, remote: bool) -> dict:
        return dict(train_fingerprint="", synced=sync_files(spec.workdir) if spec.sync_dir else ())

    @staticmethod
    def local_workers(spec: CommandSpec, hosts: Sequence[HostSpec]) -> int:
        return 0  # ps-lite ranks them as it will: a command chooses no ports

    other_folders = staticmethod(sync_destinations)

    @staticmethod
    def notes(spec: CommandSpec, hosts: Sequence[HostSpec]) -> list[str]:
        if hosts[0].is_local or spec.sync_dir is not None:
            return []
        return [f"no --sync-dir: remote processes run in {spec.workdir}, which must exist on every host"]

    @staticmethod
    def restarts(spec: CommandSpec, *, given: int | None) -> int:
        return 0  # a command keeps no checkpoint to restart from

    @staticmethod
    def min_hosts(spec: CommandSpec) -> None:
        return None

    @staticmethod
    def demands(plan: Plan, inventory: None) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
        return {}, {}

    @staticmethod
    def started(plan: Plan, begin_epoch: int) -> tuple[dict, str]:
        return {}, f" running {plan.component.spec.argv[0]}"

    @staticmethod
    def verdict(plan: Plan, result: dict) -> tuple[Verdict, str]:
        return Verdict.SUCCEEDED, ""

    @staticmethod
    def make_local_files(plan: Plan) -> dict:
        return {}

    @staticmethod
    def observer(plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> CommandWatch:
        return CommandWatch(plan, console)

    @staticmethod
    def summary(plan: Plan, result: dict) -> list[str]:
        return [f"[mxft] run dir {plan.run_dir}: all {len(plan.processes)} processes finished "
                f"(staging {result['staging_s']:.1f} s, running {result['running_s']:.1f} s)"]


KINDS = {FineTuning.name: FineTuning, Command.name: Command}   # the component's kind (plan.json) -> job kind


def kind_of(spec: JobSpec | CommandSpec) -> type[FineTuning] | type[Command]:
    """The kind of a job just read: the one choice by the job's type."""
    return Command if isinstance(spec, CommandSpec) else FineTuning


def kind_of_plan(plan: Plan) -> type[FineTuning] | type[Command]:
    return KINDS[plan.component.kind]


def stage_local(plan: Plan) -> Mapping[str, Piece]:
    """The run folder and the job kind's local files, as ``execute`` writes them first (benchmarks time this); returns
    what staging sends that is no file here."""
    write_run_files(plan)
    return kind_of_plan(plan).make_local_files(plan)
