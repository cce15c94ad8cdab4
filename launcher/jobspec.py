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
whether the files exist is checked later (``launcher.inputs``).

**One declaration per key.** Each key is a dataclass field declared with ``key(...)``
(its check, default and help) or ``section(...)``; the parser, the allowed keys (and the
"did you mean" suggestions), the defaults, ``to_job_dict`` and the worker's config all
derive from those fields, so a new setting is one new line in its section.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cluster.errors import InputError
from cluster.secret import Secret
from launcher.yamlfields import Fields, compose_with_lines, load_value

TUTORIAL_GPUS = tuple(range(8))
KVSTORES = ("auto", "dist_sync", "dist_sync_device", "dist_async", "dist_device_sync")
OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "adadelta", "signum", "ftml", "lamb")
INITIALIZERS = ("xavier", "msraprelu", "normal", "uniform")
INITIALIZER_KEYS = ("type", "rnd_type", "factor_type", "magnitude", "sigma", "scale", "slope")
BUILTIN_ASSETS = ("digits",)
LR_SCALINGS = ("none", "linear")
EVALUATIONS = ("shared", "worker0")
COMPRESSIONS = ("2bit",)
AUTO = "auto"  # cluster.workers / cluster.servers: decided from the hosts (launcher.plan.assign_workers)
# Caps on counts, checked before anything is built from them (a list per process, per device).
MAX_PROCESSES = 4096        # workers or servers of one job
MAX_DEVICES = 256           # GPUs or CPU contexts of one worker
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")   # a run's name: one plain folder name, no path
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")            # an environment variable's name (never an option)


# --------------------------------------------------------------------------- checking values

def _int(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value
    return check


def _count(value: Any) -> int:
    """A number of processes: 1 .. MAX_PROCESSES."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PROCESSES:
        raise ValueError(f"an integer from 1 to {MAX_PROCESSES}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return value
    return check


def _interface(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", value) or value.startswith("-"):
        raise ValueError("a network interface name, e.g. eth1 or ib0")
    return value


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError("a number between 0 and 1")
    return float(value)


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1e6:
        raise ValueError("a number above 0")
    return float(value)


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("64 hexadecimal digits")
    return value.lower()


def _shape(value: Any) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
            or value[0] not in (1, 3)):
        raise ValueError("[channels, height, width] with 1 or 3 channels, e.g. [3, 224, 224]")
    return tuple(value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a list of folder names")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class CPUContexts:
    """``devices: cpu`` (one context) or ``cpu:N``: each worker computes on ``mx.cpu(0)`` .. ``mx.cpu(N-1)``.

    MXNet's Module splits every batch over a worker's contexts and sums their gradients
    before the push, as on a multi-GPU worker (so that code path runs without GPUs); a
    ``cpu:N`` worker takes N of its host's ``slots=`` and N x batch_per_device images a step.
    """

    count: int = 1

    def __str__(self) -> str:
        return "cpu" if self.count == 1 else f"cpu:{self.count}"


def _devices(value: Any) -> tuple[int, ...] | CPUContexts:
    """``cpu``, N CPU contexts ``cpu:2``, a GPU count ``gpu:4`` (ids 0-3), or a list of GPU ids ``[0, 1]``."""
    if value == "cpu":
        return CPUContexts(1)
    count = re.fullmatch(r"(cpu|gpu):([1-9][0-9]{0,5})", value) if isinstance(value, str) else None
    if count and int(count.group(2)) <= MAX_DEVICES:
        number = int(count.group(2))
        return CPUContexts(number) if count.group(1) == "cpu" else tuple(range(number))
    if (isinstance(value, list) and 0 < len(value) <= MAX_DEVICES
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_DEVICES for v in value)
            and len(set(value)) == len(value)):
        return tuple(value)
    raise ValueError(f"'cpu', 'cpu:N' or 'gpu:N' (N from 1 to {MAX_DEVICES}), or a list of distinct GPU ids "
                     "such as [0, 1]")


def _count_or_auto(value: Any) -> int | str:
    if value == AUTO:
        return AUTO
    try:
        return _count(value)
    except ValueError:
        raise ValueError(f"'auto' or an integer from 1 to {MAX_PROCESSES}") from None


def _scalar_mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, str, bool)) for k, v in value.items()):
        raise ValueError("a mapping of names to numbers or strings")
    return dict(value)



def _job_name(value: Any) -> str:
    if not isinstance(value, str) or not RUN_NAME.fullmatch(value):
        raise ValueError("letters, digits, '.', '_' or '-' (at most 64)")
    return value


def _argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError("a non-empty list of arguments (or one command line)")
    return tuple(str(v) for v in value)


def _env_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("a string or number")
    return Secret(str(value), "<from the job file>")  # passed to the processes, never written by mxft


def _env_mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k) for k in value):
        raise ValueError("a mapping of NAME: value, each NAME letters, digits and '_' (not first a digit)")
    return {key: _env_value(item) for key, item in value.items()}



# --------------------------------------------------------------------------- declaring keys

def key(default: Any = dataclasses.MISSING, *, check: Callable[[Any], Any], help: str,
        factory: Callable[[], Any] | None = None, path: bool = False,
        to_yaml: Callable[[Any], Any] | None = None) -> Any:
    """A job key: its check (raises ValueError saying what it expects), default and help.

    ``path``: a file path (``~``, ``${VAR}``, relative to the job file); ``to_yaml``: how
    the value is written back into a job file when its Python form differs.
    """
    metadata = {"check": check, "help": help, "path": path, "to_yaml": to_yaml}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, *, help: str, required: bool = False, optional: bool = False,
            read: Callable[["Fields", Callable], Any] | None = None, allowed: Sequence[str] | None = None,
            to_yaml: Callable[[Any], Any] | None = None) -> Any:
    """A mapping of keys (``cls``'s own ``key`` fields); ``optional``: None when absent.

    ``read``/``allowed``/``to_yaml`` replace the generic reading for a section whose YAML
    shape is not its dataclass's (the initializer's flat ``{type: xavier, magnitude: 2}``).
    """
    metadata = {"section": cls, "help": help, "read": read, "allowed": allowed, "to_yaml": to_yaml,
                "required": required, "optional": optional}
    if required:
        return dataclasses.field(metadata=metadata)
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(default_factory=cls, metadata=metadata)


def keys_of(cls: type) -> tuple[str, ...]:
    """The YAML keys of a section class, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if "check" in f.metadata or "section" in f.metadata)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def read_section(cls: type, fields: Fields, expand: Callable[[Fields, str, str], str], **given: Any) -> Any:
    """Build ``cls`` from one mapping of the file: every key checked, defaulted or refused."""
    values = dict(given)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "section" in meta:
            if meta["optional"] and fields.raw.get(field.name) is None:
                values[field.name] = None
                continue
            sub = fields.section(field.name, meta["allowed"] or keys_of(meta["section"]), required=meta["required"])
            values[field.name] = (meta["read"] or functools.partial(read_section, meta["section"]))(sub, expand)
        elif "check" in meta:
            value = fields.get(field.name, meta["check"], _default_of(field))
            values[field.name] = expand(fields, field.name, value) if meta["path"] and value else value
    return cls(**values)


def plain(value: Any) -> Any:
    """JSON/YAML-ready: enums as their values, tuples as lists, mappings as dicts, dataclasses as dicts,
    secrets as where they came from (never their value)."""
    if isinstance(value, Secret):
        return value.shown
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def to_yaml_dict(spec: Any) -> dict[str, Any]:
    """A section as a job file says it: ``read_section`` of it gives it back (unset keys left out)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(spec):
        meta = field.metadata
        if "check" not in meta and "section" not in meta:
            continue
        value = getattr(spec, field.name)
        if meta["to_yaml"] is not None:
            value = meta["to_yaml"](value)
        elif "section" in meta:
            value = None if value is None else to_yaml_dict(value)
        else:
            value = plain(value)
        if value is not None and value != "" and not ("section" in meta and value == {}):
            out[field.name] = value  # unset keys and empty sections are left out; an empty mapping value stays
    return out


# --------------------------------------------------------------------------- the recipe's keys

class Variant(str, enum.Enum):
    """How the pretrained network is used."""

    FULL = "full"        # fine-tune every layer (the tutorial's main recipe)
    FROZEN = "frozen"    # fixed feature extractor: only the new output layer learns
    SCRATCH = "scratch"  # same graph, pretrained weights ignored: the baseline to beat


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    prefix: str = key(check=_text, path=True, help="PREFIX-symbol.json + PREFIX-EEEE.params")
    epoch: int = key(0, check=_int(0), help="which PREFIX-EEEE.params")
    url: str | None = key(None, check=_text, help="where the checkpoint can be downloaded (recorded, not fetched)")
    params_sha256: str | None = key(None, check=_sha256, help="checked before launch when given")
    cut_layer: str = key("flatten0", check=_text, help="the layer the new output layer goes on")
    variant: Variant = key(Variant.FULL, check=lambda v: Variant(_choice(tuple(x.value for x in Variant))(v)),
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

    folder: str = key(check=_text, path=True, help="one sub-folder of images per class")
    train_per_class: int = key(60, check=_int(1), help="training images per class; the rest validate")
    resize: int = key(256, check=_int(0), help="shorter edge in pixels (0: keep)")
    quality: int = key(90, check=_int(1), help="JPEG quality")
    exclude: tuple[str, ...] = key((), check=_names, help="class folders to leave out")
    seed: int = key(0, check=_int(0), help="seed of the split")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    train: str = key("", check=_text, path=True, help="training .rec (its .idx beside it)")
    val: str = key("", check=_text, path=True, help="validation .rec")
    images: ImagesSpec | None = section(ImagesSpec, optional=True, help="instead of train/val: packed at launch")
    shape: tuple[int, int, int] = key((3, 224, 224), check=_shape, help="[channels, height, width] fed to the net")
    rand_crop: bool = key(True, check=_bool, help="random crops of training images")
    rand_mirror: bool = key(True, check=_bool, help="random horizontal flips of training images")
    preprocess_threads: int = key(4, check=_int(1), help="decoding threads per worker")


def _read_initializer(fields: Fields, expand) -> "InitializerSpec":
    kind = fields.get("type", _choice(INITIALIZERS), "xavier")
    params = {name: value for name, value in fields.raw.items() if name != "type"}
    if not params:
        return InitializerSpec(kind) if kind == "xavier" else InitializerSpec(kind, {})
    try:
        return InitializerSpec(kind, _scalar_mapping(params))
    except ValueError as err:
        fields.fail(fields.path, f"{fields.dotted(fields.path)} must be {err}, got {params!r}")


@dataclasses.dataclass(frozen=True)
class InitializerSpec:
    type: str = "xavier"
    params: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"rnd_type": "gaussian", "factor_type": "in", "magnitude": 2})


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    epochs: int = key(8, check=_int(1), help="passes over the training data")
    batch_per_device: int = key(16, check=_int(1), help="images per device per step")
    optimizer: str = key("sgd", check=_choice(OPTIMIZERS), help="an MXNet optimizer")
    optimizer_params: Mapping[str, Any] = key(check=_scalar_mapping, factory=lambda: {"learning_rate": 0.01},
                                              help="its settings (--set train.lr/momentum/wd)")
    initializer: InitializerSpec = section(
        InitializerSpec, help="for the new output layer", read=_read_initializer, allowed=INITIALIZER_KEYS,
        to_yaml=lambda init: {"type": init.type, **plain(init.params)})
    seed: int | None = key(None, check=_int(0), help="seeds MXNet, numpy and the data order")
    log_every_batches: int = key(20, check=_int(1), help="a progress line every N batches")
    lr_scaling: str = key("none", check=_choice(LR_SCALINGS),
                          help="linear: learning_rate x global batch / reference_batch (Goyal et al.)")
    reference_batch: int = key(128, check=_int(1), help="the global batch learning_rate was tuned for "
                               "(the tutorial's 16 per GPU x 8 GPUs)")
    warmup_epochs: int = key(0, check=_int(0), help="epochs that ramp the learning rate up from its unscaled value")
    top_k: int = key(5, check=_int(2), help="also report top-k accuracy (only when k < num_classes: "
                     "with k classes or fewer it is 1.0 by construction)")
    step_timing: bool = key(False, check=_bool, help="split each epoch's time into compute and communication "
                            "(compute_s, communication_s in result.json); waiting between the two slows training, so "
                            "it is for measuring")
    evaluation: str = key("shared", check=_choice(EVALUATIONS),
                          help="shared: workers average BatchNorm statistics, each evaluates a part of the "
                               "validation set; worker0: worker 0 alone, with its own statistics")


@dataclasses.dataclass(frozen=True)
class CompressionSpec:
    type: str = key(check=_choice(COMPRESSIONS), help="2bit: each value a worker pushes is sent as -threshold, 0 "
                    "or +threshold (16 values per float), what is left over added to its next push")
    threshold: float = key(0.5, check=_positive, help="the 2bit quantisation step")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    workers: int | str = key(AUTO, check=_count_or_auto, help="worker processes; auto: one per GPU host (all "
                             "its slots), or one per slot of a CPU host (per N slots with devices: cpu:N)")
    servers: int | str = key(AUTO, check=_count_or_auto, help="parameter servers; auto: one on each worker host")
    devices: tuple[int, ...] | CPUContexts = key(
        TUTORIAL_GPUS, check=_devices, to_yaml=lambda d: str(d) if isinstance(d, CPUContexts) else list(d),
        help="GPU ids per worker ('gpu:N', [ids]), or 'cpu' / 'cpu:N' (N CPU contexts per worker, each taking a "
             "slot); with cluster.workers: auto, a host's slots= decides")
    kvstore: str = key("auto", check=_choice(KVSTORES), help="auto: dist_sync_device on GPUs, dist_sync on CPU")
    startup_timeout_s: int = key(300, check=_int(1), help="every worker must have joined ps-lite by then")
    progress_timeout_s: int = key(1800, check=_int(1), help="a worker silent this long is reported stuck")
    host_silence_s: int = key(60, check=_int(1), help="a host that sends or takes nothing this long while files "
                              "are copied to it or fetched from it fails the run, named (time to hash is added)")
    max_restarts: int = key(0, check=_int(0), help="resume from the last epoch after a failure, this many times")
    min_hosts: int | None = key(None, check=_int(1), help="with max_restarts: restart without a host that failed "
                                "(stopped answering, or fails preflight) while at least this many remain")
    interface: str | None = key(None, check=_interface, help="network interface ps-lite uses on every host (its "
                                "address there, found by preflight); a host's addr= in the hosts file wins")
    bigarray_bound: int = key(100_000, check=_int(1), help="arrays of this many values or more are split over all "
                              "servers, smaller ones go whole to one (MXNET_KVSTORE_BIGARRAY_BOUND; MXNet's own "
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
    min_accuracy: float | None = key(None, check=_fraction, help="exit 1 below this validation accuracy")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    source: str                                   # the job file (not a key)
    num_classes: int = key(check=_int(2), help="classes of the new output layer")
    model: ModelSpec = section(ModelSpec, required=True, help="the pretrained checkpoint and where to cut it")
    data: DataSpec = section(DataSpec, required=True, help="training and validation data")
    name: str = key("", check=_job_name, help="names the run (default: the job file's name)")
    train: TrainSpec = section(TrainSpec, help="the training recipe")
    cluster: ClusterSpec = section(ClusterSpec, help="processes, devices, deadlines")
    expect: ExpectSpec = section(ExpectSpec, help="what counts as success")
    builtin_assets: str | None = key(None, check=_choice(BUILTIN_ASSETS), help="build the demo's files if missing")

    def to_job_dict(self) -> dict[str, Any]:
        """This spec as a job file would say it (absolute paths): ``parse_job`` of it gives it back."""
        out = to_yaml_dict(self)
        if self.data.images is not None:  # the packed .rec files follow from the folder, which stays the key
            out["data"].pop("train", None)
            out["data"].pop("val", None)
        return out


# --------------------------------------------------------------------------- command jobs

ROLE_NAMES = ("scheduler", "server", "worker")


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """A ps-lite program to run in command mode (``launcher.command``): argv, counts, env, folders."""

    name: str
    source: str                                        # the job file, or "the command line"
    argv: tuple[str, ...]
    workers: int
    servers: int
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)               # every role
    role_env: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)  # role -> env
    workdir: str = ""                                  # local folder the command runs in (and --sync-dir copies)
    sync_dir: str | None = None                        # where remote hosts get a copy of workdir

    def env_for(self, role: str) -> dict[str, str]:
        return {**self.env, **self.role_env.get(role, {})}

    def to_job_dict(self) -> dict[str, Any]:
        """This command as a job file says it: ``parse_job`` of it gives it back."""
        out: dict[str, Any] = {"name": self.name, "command": list(self.argv), "workdir": self.workdir,
                               "cluster": {"workers": self.workers, "servers": self.servers}}
        if self.env or self.role_env:  # names only: the values are secrets (plain() shows where they came from)
            out["env"] = plain({**self.env, **{role: dict(values) for role, values in self.role_env.items()}})
        if self.sync_dir:
            out["sync_dir"] = self.sync_dir
        return out


def _parse_command_job(raw: dict, lines: Mapping[tuple, Any], source: str) -> CommandSpec:
    """A job that names ``command:`` (argv list or one shell-like string) instead of the recipe::

        command: [python, train.py, --kv-store, dist_sync]
        cluster: {workers: 3, servers: 2}
        env: {OMP_NUM_THREADS: 1, worker: {MXNET_ENGINE_TYPE: NaiveEngine}}
        sync_dir: ~/jobs/train        # copy workdir (default: the job file's folder) there on each host
    """
    top = Fields(source, lines, raw, (), ("name", "command", "cluster", "env", "workdir", "sync_dir"))
    argv = top.get("command", _argv)
    # No startup_timeout_s: a command emits no join events to time (the recipe's workers do).
    cluster_f = top.section("cluster", ("workers", "servers"))
    env_raw = top.raw.get("env") or {}
    env_f = top.section("env", tuple(k for k in env_raw if isinstance(k, str)) if isinstance(env_raw, dict) else ())
    common, by_role = {}, {}
    for key, value in env_f.raw.items():
        if key in ROLE_NAMES:
            by_role[key] = env_f.get(key, _env_mapping)
        else:
            if not ENV_NAME.fullmatch(key):  # [A-Za-z_][A-Za-z0-9_]*: never an option of the remote ``env``
                env_f.fail(env_f.path + (key,), f"{key!r} is not an environment variable name")
            common[key] = env_f.get(key, _env_value)
    base_dir = os.path.dirname(os.path.abspath(source))
    workdir = top.get("workdir", _text, base_dir)
    return CommandSpec(
        name=top.get("name", _job_name, os.path.splitext(os.path.basename(source))[0]),
        source=os.path.abspath(source),
        argv=argv,
        workers=cluster_f.get("workers", _count, 1),
        servers=cluster_f.get("servers", _count, 1),
        env=common,
        role_env=by_role,
        workdir=os.path.normpath(os.path.join(base_dir, os.path.expanduser(workdir))),
        sync_dir=top.get("sync_dir", _text, None),
    )



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
        return _parse_command_job(raw, lines, source)
    top = Fields(source, lines, raw, (), keys_of(schema))
    expand = _path_expander(os.path.dirname(os.path.abspath(source)), environ)
    job = read_section(schema, top, expand, source=os.path.abspath(source))
    _check_data_source(job, top)
    _check_evaluation(job, top)
    _check_compression(job, top)
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
