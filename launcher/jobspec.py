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
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from cluster.errors import InputError

TUTORIAL_GPUS = tuple(range(8))
KVSTORES = ("auto", "dist_sync", "dist_sync_device", "dist_async", "dist_device_sync")
OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "adadelta", "signum", "ftml", "lamb")
INITIALIZERS = ("xavier", "msraprelu", "normal", "uniform")
BUILTIN_ASSETS = ("digits",)


class Variant(str, enum.Enum):
    """How the pretrained network is used."""

    FULL = "full"        # fine-tune every layer (the tutorial's main recipe)
    FROZEN = "frozen"    # fixed feature extractor: only the new output layer learns
    SCRATCH = "scratch"  # same graph, pretrained weights ignored: the baseline to beat


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    prefix: str
    epoch: int = 0
    url: str | None = None
    params_sha256: str | None = None
    cut_layer: str = "flatten0"
    variant: Variant = Variant.FULL

    @property
    def symbol_path(self) -> str:
        return f"{self.prefix}-symbol.json"

    @property
    def params_path(self) -> str:
        return f"{self.prefix}-{self.epoch:04d}.params"


@dataclasses.dataclass(frozen=True)
class ImagesSpec:
    """An image folder (one sub-folder per class) that the launch packs with mxft-prepare."""

    folder: str
    train_per_class: int = 60
    resize: int = 256
    quality: int = 90
    exclude: tuple[str, ...] = ()
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataSpec:
    train: str                            # "" until an image folder is prepared
    val: str
    shape: tuple[int, int, int] = (3, 224, 224)
    rand_crop: bool = True
    rand_mirror: bool = True
    preprocess_threads: int = 4
    images: ImagesSpec | None = None      # instead of train/val: packed (and cached) at launch


@dataclasses.dataclass(frozen=True)
class InitializerSpec:
    type: str = "xavier"
    params: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"rnd_type": "gaussian", "factor_type": "in", "magnitude": 2})


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    epochs: int = 8
    batch_per_device: int = 16
    optimizer: str = "sgd"
    optimizer_params: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"learning_rate": 0.01})
    initializer: InitializerSpec = dataclasses.field(default_factory=InitializerSpec)
    seed: int | None = None
    log_every_batches: int = 20


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    workers: int = 1
    servers: int = 1
    devices: tuple[int, ...] | None = TUTORIAL_GPUS  # GPU ids per worker; None = CPU
    kvstore: str = "auto"
    startup_timeout_s: int = 300          # every worker must have joined ps-lite by then
    progress_timeout_s: int = 1800        # a worker silent this long is reported stuck
    max_restarts: int = 0                 # resume from the last epoch after a failure, this many times

    @property
    def uses_gpu(self) -> bool:
        return self.devices is not None

    @property
    def effective_kvstore(self) -> str:
        """``auto`` is ``dist_sync_device`` on GPUs and ``dist_sync`` on CPU."""
        if self.kvstore != "auto":
            return self.kvstore
        return "dist_sync_device" if self.uses_gpu else "dist_sync"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str
    source: str
    num_classes: int
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    cluster: ClusterSpec = dataclasses.field(default_factory=ClusterSpec)
    min_accuracy: float | None = None
    builtin_assets: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (enums as their values), for plans and result files."""
        def plain(value: Any) -> Any:
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, Mapping):
                return {key: plain(item) for key, item in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(item) for item in value]
            return value
        return plain(dataclasses.asdict(self))

    def to_job_dict(self) -> dict[str, Any]:
        """This spec as a job file would say it (absolute paths): ``parse_job`` of it gives it back."""
        model, data, train, cluster = self.model, self.data, self.train, self.cluster
        out: dict[str, Any] = {
            "name": self.name,
            "num_classes": self.num_classes,
            "model": {"prefix": model.prefix, "epoch": model.epoch, "cut_layer": model.cut_layer,
                      "variant": model.variant.value},
            "data": {**({"images": {**dataclasses.asdict(data.images), "exclude": list(data.images.exclude)}}
                        if data.images else {"train": data.train, "val": data.val}),
                     "shape": list(data.shape), "rand_crop": data.rand_crop,
                     "rand_mirror": data.rand_mirror, "preprocess_threads": data.preprocess_threads},
            "train": {"epochs": train.epochs, "batch_per_device": train.batch_per_device,
                      "optimizer": train.optimizer, "optimizer_params": dict(train.optimizer_params),
                      "initializer": {"type": train.initializer.type, **train.initializer.params},
                      "log_every_batches": train.log_every_batches},
            "cluster": {"workers": cluster.workers, "servers": cluster.servers,
                        "devices": "cpu" if cluster.devices is None else list(cluster.devices),
                        "kvstore": cluster.kvstore, "startup_timeout_s": cluster.startup_timeout_s,
                        "progress_timeout_s": cluster.progress_timeout_s, "max_restarts": cluster.max_restarts},
        }
        for key, value in (("url", model.url), ("params_sha256", model.params_sha256)):
            if value is not None:
                out["model"][key] = value
        if train.seed is not None:
            out["train"]["seed"] = train.seed
        if self.min_accuracy is not None:
            out["expect"] = {"min_accuracy": self.min_accuracy}
        if self.builtin_assets is not None:
            out["builtin_assets"] = self.builtin_assets
        return out


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
        if self.env or self.role_env:
            out["env"] = {**self.env, **{role: dict(values) for role, values in self.role_env.items()}}
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
    top = _Fields(source, lines, raw, (), ("name", "command", "cluster", "env", "workdir", "sync_dir"))
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
            common[key] = env_f.get(key, _env_value)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                env_f.fail(env_f.path + (key,), f"'{key}' is not an environment variable name")
    base_dir = os.path.dirname(os.path.abspath(source))
    workdir = top.get("workdir", _text, base_dir)
    return CommandSpec(
        name=top.get("name", _job_name, os.path.splitext(os.path.basename(source))[0]),
        source=os.path.abspath(source),
        argv=argv,
        workers=cluster_f.get("workers", _int(1), 1),
        servers=cluster_f.get("servers", _int(1), 1),
        env=common,
        role_env=by_role,
        workdir=os.path.normpath(os.path.join(base_dir, os.path.expanduser(workdir))),
        sync_dir=top.get("sync_dir", _text, None),
    )


def _argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError("a non-empty list of arguments (or one command line)")
    return tuple(str(v) for v in value)


def _env_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("a string or number")
    return str(value)


def _env_mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("a mapping of NAME: value")
    return {key: _env_value(item) for key, item in value.items()}


# --------------------------------------------------------------------------- YAML with lines

def _compose_with_lines(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Load YAML into plain Python values plus ``{key path: 1-based line}``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(where, f"not valid YAML: {getattr(err, 'problem', err)}") from None
    lines: dict[tuple, int] = {}
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, path: tuple) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    raise InputError(f"{source}:{key_node.start_mark.line + 1}", f"key {key!r} appears twice")
                lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    return (build(root, ()) if root is not None else {}), lines


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


# --------------------------------------------------------------------------- checking values

class _Fields:
    """Reads one mapping of the job file, reporting errors at the right line."""

    def __init__(self, source: str, lines: Mapping[tuple, int], raw: Any, path: tuple,
                 allowed: tuple[str, ...]) -> None:
        self.source, self.lines, self.path = source, lines, path
        if not isinstance(raw, dict):
            self.fail(path, f"{self.dotted(path) or 'the job'} must be a mapping of keys, "
                            f"got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                where = f" in {self.dotted(path)}" if path else ""
                hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(allowed)}"
                self.fail(path + (key,), f"unknown key '{key}'{where}; {hint}")
        self.raw = raw

    @staticmethod
    def dotted(path: tuple) -> str:
        return ".".join(str(part) for part in path)

    def where(self, path: tuple) -> str:
        while path and path not in self.lines:
            path = path[:-1]
        line = self.lines.get(path, 1)
        return line if isinstance(line, str) else f"{self.source}:{line}"  # a str: the --set that gave it

    def fail(self, path: tuple, message: str, hint: str = "") -> None:
        raise InputError(self.where(path), message, hint=hint)

    def get(self, key: str, check: Callable[[Any], Any], default: Any = dataclasses.MISSING) -> Any:
        """The checked value of ``key``; ``check`` raises ValueError with what was expected."""
        path = self.path + (key,)
        if key not in self.raw or self.raw[key] is None:
            if default is dataclasses.MISSING:
                self.fail(self.path, f"missing required key '{self.dotted(path)}'")
            return default
        try:
            return check(self.raw[key])
        except ValueError as err:
            self.fail(path, f"{self.dotted(path)} must be {err}, got {self.raw[key]!r}")

    def section(self, key: str, allowed: tuple[str, ...], *, required: bool = False) -> "_Fields":
        if key not in self.raw and required:
            self.fail(self.path, f"missing required section '{self.dotted(self.path + (key,))}'")
        return _Fields(self.source, self.lines, self.raw.get(key) or {}, self.path + (key,), allowed)


def _int(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value
    return check


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


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError("a number between 0 and 1")
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


def _devices(value: Any) -> tuple[int, ...] | None:
    """``cpu``, a GPU count ``gpu:4`` (ids 0-3), or a list of GPU ids ``[0, 1]``."""
    if value == "cpu":
        return None
    if isinstance(value, str) and re.fullmatch(r"gpu:[1-9]\d*", value):
        return tuple(range(int(value[4:])))
    if (isinstance(value, list) and value and len(set(value)) == len(value)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        return tuple(value)
    raise ValueError("'cpu', 'gpu:N' or a list of distinct GPU ids such as [0, 1]")


def _scalar_mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, str, bool)) for k, v in value.items()):
        raise ValueError("a mapping of names to numbers or strings")
    return dict(value)


# --------------------------------------------------------------------------- the schema

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
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise InputError(where, f"the value is not valid YAML: {getattr(err, 'problem', err)}") from None
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


def parse_job(text: str, source: str, *, environ: Mapping[str, str] | None = None,
              overrides: Sequence[str] = ()) -> "JobSpec | CommandSpec":
    """Turn the text of a job file into a JobSpec (or a CommandSpec for a ``command:`` job).

    ``overrides`` are ``--set KEY.PATH=VALUE`` items, applied before any check. Raises
    InputError at the bad line (or the bad ``--set``).
    """
    environ = os.environ if environ is None else environ
    raw, lines = _compose_with_lines(text, source)
    apply_overrides(raw, lines, overrides)
    if isinstance(raw, dict) and "command" in raw:
        return _parse_command_job(raw, lines, source)
    base_dir = os.path.dirname(os.path.abspath(source))
    top = _Fields(source, lines, raw, (), ("name", "num_classes", "model", "data", "train", "cluster",
                                          "expect", "builtin_assets"))

    def path_of(fields: _Fields, key: str) -> str | None:
        value = fields.get(key, _text, None)
        if value is None:
            return None
        try:
            return expand_path(value, base_dir, environ)
        except KeyError as err:
            fields.fail(fields.path + (key,), f"environment variable {err.args[0]} is not set",
                        hint=f"set it, or write ${{{err.args[0]}:-default}}")

    model_f = top.section("model", ("prefix", "epoch", "url", "params_sha256", "cut_layer", "variant"),
                          required=True)
    model = ModelSpec(
        prefix=path_of(model_f, "prefix") or model_f.get("prefix", _text),
        epoch=model_f.get("epoch", _int(0), 0),
        url=model_f.get("url", _text, None),
        params_sha256=model_f.get("params_sha256", _sha256, None),
        cut_layer=model_f.get("cut_layer", _text, "flatten0"),
        variant=Variant(model_f.get("variant", _choice(tuple(v.value for v in Variant)), "full")),
    )
    data_f = top.section("data", ("train", "val", "images", "shape", "rand_crop", "rand_mirror",
                                  "preprocess_threads"), required=True)
    images = None
    if data_f.raw.get("images") is not None:
        if data_f.raw.get("train") is not None or data_f.raw.get("val") is not None:
            data_f.fail(data_f.path + ("images",), "give data.images or data.train + data.val, not both")
        images_f = data_f.section("images", ("folder", "train_per_class", "resize", "quality", "exclude", "seed"))
        images = ImagesSpec(
            folder=path_of(images_f, "folder") or images_f.get("folder", _text),
            train_per_class=images_f.get("train_per_class", _int(1), 60),
            resize=images_f.get("resize", _int(0), 256),
            quality=images_f.get("quality", _int(1), 90),
            exclude=images_f.get("exclude", _names, ()),
            seed=images_f.get("seed", _int(0), 0),
        )
    data = DataSpec(
        train="" if images else path_of(data_f, "train") or data_f.get("train", _text),
        val="" if images else path_of(data_f, "val") or data_f.get("val", _text),
        images=images,
        shape=data_f.get("shape", _shape, (3, 224, 224)),
        rand_crop=data_f.get("rand_crop", _bool, True),
        rand_mirror=data_f.get("rand_mirror", _bool, True),
        preprocess_threads=data_f.get("preprocess_threads", _int(1), 4),
    )
    train_f = top.section("train", ("epochs", "batch_per_device", "optimizer", "optimizer_params",
                                    "initializer", "seed", "log_every_batches"))
    init_raw = train_f.raw.get("initializer")
    initializer = InitializerSpec()
    if init_raw is not None:
        init_f = train_f.section("initializer", ("type", "rnd_type", "factor_type", "magnitude", "sigma", "scale",
                                                 "slope"))
        init_type = init_f.get("type", _choice(INITIALIZERS), "xavier")
        params = {key: value for key, value in init_f.raw.items() if key != "type"}
        initializer = InitializerSpec(init_type, _scalar_mapping(params) if params else
                                      (InitializerSpec().params if init_type == "xavier" else {}))
    train = TrainSpec(
        epochs=train_f.get("epochs", _int(1), 8),
        batch_per_device=train_f.get("batch_per_device", _int(1), 16),
        optimizer=train_f.get("optimizer", _choice(OPTIMIZERS), "sgd"),
        optimizer_params=train_f.get("optimizer_params", _scalar_mapping, {"learning_rate": 0.01}),
        initializer=initializer,
        seed=train_f.get("seed", _int(0), None),
        log_every_batches=train_f.get("log_every_batches", _int(1), 20),
    )
    cluster_f = top.section("cluster", ("workers", "servers", "devices", "kvstore", "startup_timeout_s",
                                        "progress_timeout_s", "max_restarts"))
    cluster = ClusterSpec(
        workers=cluster_f.get("workers", _int(1), 1),
        servers=cluster_f.get("servers", _int(1), 1),
        devices=cluster_f.get("devices", _devices, TUTORIAL_GPUS),
        kvstore=cluster_f.get("kvstore", _choice(KVSTORES), "auto"),
        startup_timeout_s=cluster_f.get("startup_timeout_s", _int(1), 300),
        progress_timeout_s=cluster_f.get("progress_timeout_s", _int(1), 1800),
        max_restarts=cluster_f.get("max_restarts", _int(0), 0),
    )
    expect_f = top.section("expect", ("min_accuracy",))
    default_name = os.path.splitext(os.path.basename(source))[0]
    return JobSpec(
        name=top.get("name", _job_name, default_name),
        source=os.path.abspath(source),
        num_classes=top.get("num_classes", _int(2)),
        model=model,
        data=data,
        train=train,
        cluster=cluster,
        min_accuracy=expect_f.get("min_accuracy", _fraction, None),
        builtin_assets=top.get("builtin_assets", _choice(BUILTIN_ASSETS), None),
    )


def _job_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError("letters, digits, '.', '_' or '-' (at most 64)")
    return value


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
