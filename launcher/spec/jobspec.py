"""Job files: YAML in, frozen ``JobSpec`` out; every mistake named with file and line.

A job file describes one fine-tuning run. Every key but ``num_classes``,
``model.prefix``, ``data.train`` and ``data.val`` has a default, and the defaults are
MXNet's fine-tuning tutorial exactly (SGD, lr 0.01, 8 epochs, 16 images per GPU on
8 GPUs, random crop 224 and mirror, Xavier(gaussian, in, 2) for the new layer)::

    num_classes: 256
    model:
      prefix: models/resnet-50          # models/resnet-50-symbol.json + -0000.params
    data:
      train: data/caltech-256-60-train.rec
      val: data/caltech-256-60-val.rec

Paths may use ``~``, ``${VAR}`` and ``${VAR:-default}``; relative paths are relative
to the job file's folder. Parsing touches no disk beyond reading the job file itself:
whether the files exist is checked later (``launcher.data.inputs``).

**One declaration per key.** Each key is a dataclass field declared with ``key(...)``
(its check, default and help) or ``section(...)``; the parser, the allowed keys (and the
"did you mean" suggestions), the defaults, ``to_job_dict`` and the worker's config all
derive from those fields, so a new setting is one new line in its section.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cluster.errors import InputError
from launcher.spec import checks as ok
from launcher.spec.checks import AUTO, CPUContexts
from launcher.spec.command_job import CommandSpec, parse_command_job
from launcher.spec.schema import key, keys_of, read_section, section, to_yaml_dict
from launcher.spec.train_keys import TrainSpec, check_early_stop, check_lr_schedule, check_optimizer
from launcher.spec.yamlfields import Fields, compose_with_lines, load_value

TUTORIAL_GPUS = tuple(range(8))
KVSTORES = ("auto", "dist_sync", "dist_sync_device", "dist_async", "dist_device_sync")
BUILTIN_ASSETS = ("digits",)
STAGINGS = ("auto", "always", "never")
COMPRESSIONS = ("2bit",)


# --------------------------------------------------------------------------- declaring keys


# --------------------------------------------------------------------------- the recipe's keys

class Variant(str, enum.Enum):
    """How the pretrained network is used."""

    FULL = "full"        # fine-tune every layer (the tutorial's main recipe)
    FROZEN = "frozen"    # fixed feature extractor: only the new output layer learns
    SCRATCH = "scratch"  # same graph, pretrained weights ignored: the baseline to beat


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    prefix: str = key(check=ok.text, path=True, help="PREFIX-symbol.json + PREFIX-EEEE.params")
    epoch: int = key(0, check=ok.at_least(0), help="which PREFIX-EEEE.params")
    url: str | None = key(None, check=ok.text, help="where the checkpoint can be downloaded (recorded, not fetched)")
    params_sha256: str | None = key(None, check=ok.sha256, help="checked before launch when given")
    cut_layer: str = key("flatten0", check=ok.text, help="the layer the new output layer goes on")
    variant: Variant = key(Variant.FULL, check=lambda v: Variant(ok.choice(tuple(x.value for x in Variant))(v)),
                           help="full | frozen (only the new layer learns) | scratch (baseline)")

    @property
    def symbol_path(self) -> str:
        return f"{self.prefix}-symbol.json"

    @property
    def params_path(self) -> str:
        return f"{self.prefix}-{self.epoch:04d}.params"


@dataclasses.dataclass(frozen=True)
class ImagesSpec:
    """An image folder (one sub-folder per class) that the launch packs with mxft-prepare."""

    folder: str = key(check=ok.text, path=True, help="one sub-folder of images per class")
    train_per_class: int = key(60, check=ok.at_least(1), help="training images per class; the rest validate")
    resize: int = key(256, check=ok.at_least(0), help="shorter edge in pixels (0: keep)")
    quality: int = key(90, check=ok.at_least(1), help="JPEG quality")
    exclude: tuple[str, ...] = key((), check=ok.names, help="class folders to leave out")
    seed: int = key(0, check=ok.at_least(0), help="seed of the split")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    train: str = key("", check=ok.text, path=True, help="training .rec (its .idx beside it)")
    val: str = key("", check=ok.text, path=True, help="validation .rec")
    images: ImagesSpec | None = section(ImagesSpec, optional=True, help="instead of train/val: packed at launch")
    shape: tuple[int, int, int] = key((3, 224, 224), check=ok.shape, help="[channels, height, width] fed to the net")
    rand_crop: bool = key(True, check=ok.boolean, help="random crops of training images")
    rand_mirror: bool = key(True, check=ok.boolean, help="random horizontal flips of training images")
    preprocess_threads: int = key(4, check=ok.at_least(1), help="decoding threads per worker")
    staging: str = key("auto", check=ok.choice(STAGINGS),
                       help="auto: a host that has the same files at the same paths (a shared filesystem) reads "
                            "them in place, the others get copies; always: copies everywhere; never: every host "
                            "must have them")


@dataclasses.dataclass(frozen=True)
class CompressionSpec:
    type: str = key(check=ok.choice(COMPRESSIONS), help="2bit: each value a worker pushes is sent as -threshold, 0 "
                    "or +threshold (16 values per float), what is left over added to its next push")
    threshold: float = key(0.5, check=ok.positive, help="the 2bit quantisation step")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    workers: int | str = key(AUTO, check=ok.count_or_auto, help="worker processes; auto: one per GPU host (all "
                             "its slots), or one per slot of a CPU host (per N slots with devices: cpu:N)")
    servers: int | str = key(AUTO, check=ok.count_or_auto, help="parameter servers; auto: one on each worker host")
    devices: tuple[int, ...] | CPUContexts = key(
        TUTORIAL_GPUS, check=ok.devices, to_yaml=lambda d: str(d) if isinstance(d, CPUContexts) else list(d),
        help="GPU ids per worker ('gpu:N', [ids]), or 'cpu' / 'cpu:N' (N CPU contexts per worker, each taking a "
             "slot); with cluster.workers: auto, a host's slots= decides")
    kvstore: str = key("auto", check=ok.choice(KVSTORES), help="auto: dist_sync_device on GPUs, dist_sync on CPU")
    startup_timeout_s: int = key(300, check=ok.at_least(1), help="every worker must have joined ps-lite by then")
    progress_timeout_s: int = key(1800, check=ok.at_least(1), help="a worker silent this long is reported stuck")
    host_silence_s: int = key(60, check=ok.at_least(1), help="a host that sends or takes nothing this long while files "
                              "are copied to it or fetched from it fails the run, named (time to hash is added)")
    max_restarts: int = key(0, check=ok.at_least(0), help="resume from the last epoch after a failure, this many times")
    min_hosts: int | None = key(None, check=ok.at_least(1), help="with max_restarts: restart without a host that "
                                "failed (stopped answering, or fails preflight) while at least this many remain")
    interface: str | None = key(None, check=ok.interface, help="network interface ps-lite uses on every host (its "
                                "address there, found by preflight); a host's addr= in the hosts file wins")
    bigarray_bound: int = key(100_000, check=ok.at_least(1), help="arrays of this many values or more are split over "
                              "all servers, smaller ones go whole to one (MXNET_KVSTORE_BIGARRAY_BOUND; MXNet's own "
                              "default, 1000000, loads one of 3 servers 2-8x the others on ResNet-50/152)")
    gradient_compression: CompressionSpec | None = section(
        CompressionSpec, optional=True, help="compress what workers push to the servers (MXNet's "
        "set_gradient_compression; pulls stay float32); a synchronous kvstore and train.evaluation: worker0")

    @property
    def uses_gpu(self) -> bool:
        return not isinstance(self.devices, CPUContexts)

    @property
    def effective_kvstore(self) -> str:
        """``auto`` is ``dist_sync_device`` on GPUs and ``dist_sync`` on CPU."""
        if self.kvstore != "auto":
            return self.kvstore
        return "dist_sync_device" if self.uses_gpu else "dist_sync"


@dataclasses.dataclass(frozen=True)
class ExpectSpec:
    min_accuracy: float | None = key(None, check=ok.fraction, help="exit 1 below this validation accuracy")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    source: str                                   # the job file (not a key)
    num_classes: int = key(check=ok.at_least(2), help="classes of the new output layer")
    model: ModelSpec = section(ModelSpec, required=True, help="the pretrained checkpoint and where to cut it")
    data: DataSpec = section(DataSpec, required=True, help="training and validation data")
    name: str = key("", check=ok.job_name, help="names the run (default: the job file's name)")
    train: TrainSpec = section(TrainSpec, help="the training recipe")
    cluster: ClusterSpec = section(ClusterSpec, help="processes, devices, deadlines")
    expect: ExpectSpec = section(ExpectSpec, help="what counts as success")
    builtin_assets: str | None = key(None, check=ok.choice(BUILTIN_ASSETS), help="build the demo's files if missing")
    env: Mapping[str, str] | None = key(None, check=ok.job_env, help="environment of every process, e.g. "
                                        "MXNET_CUDNN_AUTOTUNE_DEFAULT: 0 (recorded with the job; a secret: --env NAME)")

    def to_job_dict(self) -> dict[str, Any]:
        """This spec as a job file would say it (absolute paths): ``parse_job`` of it gives it back."""
        out = to_yaml_dict(self)
        if self.data.images is not None:  # the packed .rec files follow from the folder, which stays the key
            out["data"].pop("train", None)
            out["data"].pop("val", None)
        return out


# --------------------------------------------------------------------------- paths, overrides, parsing

_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_path(value: str, base_dir: str, environ: Mapping[str, str]) -> str:
    """``${VAR}``, ``${VAR:-default}`` and ``~``, then relative to ``base_dir``.

    >>> expand_path("${D:-/tmp}/x.rec", "/jobs", {})
    '/tmp/x.rec'
    """
    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and environ[name] != "":
            return environ[name]
        if default is None:
            raise KeyError(name)
        return default
    expanded = os.path.expanduser(_VAR.sub(substitute, value))
    return os.path.normpath(os.path.join(base_dir, expanded))


# ``--set`` names that are not keys of the file (the tutorial's words for common ones).
SET_ALIASES = {"train.lr": "train.optimizer_params.learning_rate",
               "train.momentum": "train.optimizer_params.momentum",
               "train.wd": "train.optimizer_params.wd"}


def apply_overrides(raw: Any, lines: dict[tuple, Any], overrides: Sequence[str]) -> None:
    """Apply ``KEY.PATH=VALUE`` (a YAML value) to the parsed file, before it is checked.

    Errors in an overridden value then name the ``--set`` that gave it, not a file line.

    >>> raw, lines = {"train": {"epochs": 8}}, {}
    >>> apply_overrides(raw, lines, ["train.epochs=4", "train.lr=0.005"])
    >>> raw["train"]
    {'epochs': 4, 'optimizer_params': {'learning_rate': 0.005}}
    """
    for item in overrides:
        where = f"--set {item}"
        key, sep, text = item.partition("=")
        key = SET_ALIASES.get(key.strip(), key.strip())
        if not sep or not key or any(not part for part in key.split(".")):
            raise InputError(where, "expected KEY.PATH=VALUE", hint="e.g. --set train.epochs=4")
        value = load_value(text, where) if text.strip() else None
        if not isinstance(raw, dict):
            raise InputError(where, "the job file is not a mapping of keys")
        node, path = raw, ()
        *parents, last = key.split(".")
        for part in parents:
            path += (part,)
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise InputError(where, f"{'.'.join(path)} is not a section")
            node = node[part]
        node[last] = value
        for sub in [p for p in lines if p[:len(path) + 1] == path + (last,)]:
            del lines[sub]
        lines[path + (last,)] = where


def _path_expander(base_dir: str, environ: Mapping[str, str]) -> Callable[[Fields, str, str], str]:
    def expand(fields: Fields, name: str, value: str) -> str:
        try:
            return expand_path(value, base_dir, environ)
        except KeyError as err:
            fields.fail(fields.path + (name,), f"environment variable {err.args[0]} is not set",
                        hint=f"set it, or write ${{{err.args[0]}:-default}}")
    return expand


def _check_data_source(job: JobSpec, top: Fields) -> None:
    """``data.images`` or ``data.train`` + ``data.val``: exactly one of the two."""
    data = top.section("data", keys_of(DataSpec))
    if job.data.images is not None:
        if data.raw.get("train") is not None or data.raw.get("val") is not None:
            data.fail(data.path + ("images",), "give data.images or data.train + data.val, not both")
        return
    for name in ("train", "val"):
        if not getattr(job.data, name):
            data.fail(data.path, f"missing required key 'data.{name}'")


def _check_evaluation(job: JobSpec, top: Fields) -> None:
    """Shared evaluation sums through servers that keep what is pushed: a synchronous kvstore only."""
    if job.train.evaluation == "shared" and "async" in job.cluster.effective_kvstore:
        cluster = top.section("cluster", keys_of(ClusterSpec))
        cluster.fail(cluster.path + ("kvstore",), f"train.evaluation: shared needs a synchronous kvstore, not "
                   f"{job.cluster.effective_kvstore} (its servers must apply an optimizer)",
                   hint="set train.evaluation: worker0, or cluster.kvstore: dist_sync / dist_sync_device")


def _check_compression(job: JobSpec, top: Fields) -> None:
    """2bit compression quantises every push: of gradients, and also of shared evaluation's sums."""
    if job.cluster.gradient_compression is None:
        return
    cluster = top.section("cluster", keys_of(ClusterSpec))
    where = cluster.path + ("gradient_compression",)
    if "async" in job.cluster.effective_kvstore:
        cluster.fail(where, f"cluster.gradient_compression needs a synchronous kvstore, not "
                     f"{job.cluster.effective_kvstore}",
                     hint="cluster.kvstore: dist_sync or dist_sync_device")
    if job.train.evaluation == "shared":
        cluster.fail(where, "cluster.gradient_compression needs train.evaluation: worker0 (shared evaluation sums "
                     "BatchNorm statistics and counts through the kvstore, whose pushes would be compressed too)",
                     hint="add train.evaluation: worker0, or remove gradient_compression")


def parse_job(text: str, source: str, *, environ: Mapping[str, str] | None = None,
              overrides: Sequence[str] = (), schema: type = JobSpec) -> "JobSpec | CommandSpec":
    """Turn the text of a job file into a JobSpec (or a CommandSpec for a ``command:`` job).

    ``overrides`` are ``--set KEY.PATH=VALUE`` items, applied before any check; ``schema``
    is the job's dataclass (a test extends it). Raises InputError at the bad line (or the
    bad ``--set``).
    """
    environ = os.environ if environ is None else environ
    raw, lines = compose_with_lines(text, source)
    apply_overrides(raw, lines, overrides)
    if isinstance(raw, dict) and "command" in raw:
        return parse_command_job(raw, lines, source)
    top = Fields(source, lines, raw, (), keys_of(schema))
    expand = _path_expander(os.path.dirname(os.path.abspath(source)), environ)
    job = read_section(schema, top, expand, source=os.path.abspath(source))
    _check_data_source(job, top)
    _check_evaluation(job, top)
    _check_compression(job, top)
    check_optimizer(job.train, top)
    check_lr_schedule(job.train, top)
    check_early_stop(job.train, top)
    return job if job.name else dataclasses.replace(job, name=os.path.splitext(os.path.basename(source))[0])


def load_job(path: str, *, environ: Mapping[str, str] | None = None,
             overrides: Sequence[str] = ()) -> "JobSpec | CommandSpec":
    """Read and parse the job file at ``path`` (with ``--set`` overrides)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise InputError(path, "job file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the job file: {err}") from None
    return parse_job(text, path, environ=environ, overrides=overrides)
