"""The job's ``train`` section: the optimizer and its settings, the learning rate's scaling, warm-up and schedule,
the new layer's initializer, and how evaluation is shared (``launcher.spec.jobspec`` reads the whole job)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from launcher.spec import checks as ok
from launcher.spec import optimizers
from launcher.spec.schema import key, keys_of, plain, section
from launcher.spec.yamlfields import Fields

OPTIMIZERS = ("sgd", "nag", "adam", "rmsprop", "adagrad", "adadelta", "signum", "ftml", "lamb")
INITIALIZERS = ("xavier", "msraprelu", "normal", "uniform")
INITIALIZER_KEYS = ("type", "rnd_type", "factor_type", "magnitude", "sigma", "scale", "slope")
LR_SCALINGS = ("none", "linear")
EVALUATIONS = ("shared", "worker0")
LR_SCHEDULES = ("step", "multistep", "cosine")
KEEPS = ("both", "best", "last")


def _epochs_in_order(value: Any) -> tuple[int, ...]:
    if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                            for v in value) and value == sorted(set(value))):
        raise ValueError("a list of epochs, each >= 1, in increasing order")
    return tuple(value)


def _decay_factor(value: Any) -> float:
    if ok.fraction(value) == 0:
        raise ValueError("a number above 0, at most 1")
    return float(value)


def _rate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e6:
        raise ValueError("a learning rate >= 0")
    return float(value)


@dataclasses.dataclass(frozen=True)
class LRScheduleSpec:
    """How the learning rate falls after its warm-up, in epochs (MXNet's schedulers, counting updates)."""

    type: str = key(check=ok.choice(LR_SCHEDULES), help="step: x factor every every_epochs; multistep: x factor after "
                    "each of at_epochs; cosine: down to final_lr at the end of the last epoch")
    every_epochs: int = key(1, check=ok.at_least(1), help="step: epochs between two decays")
    at_epochs: tuple[int, ...] = key((), check=_epochs_in_order, to_yaml=list,
                                     help="multistep: the epochs after which the rate is multiplied by factor")
    factor: float = key(0.1, check=_decay_factor, help="step, multistep: what each decay multiplies the rate by")
    final_lr: float = key(0.0, check=_rate, help="cosine: the rate at the end of the last epoch")


def _read_initializer(fields: Fields, expand) -> "InitializerSpec":
    kind = fields.get("type", ok.choice(INITIALIZERS), "xavier")
    params = {name: value for name, value in fields.raw.items() if name != "type"}
    if not params:
        return InitializerSpec(kind) if kind == "xavier" else InitializerSpec(kind, {})
    try:
        return InitializerSpec(kind, ok.scalar_mapping(params))
    except ValueError as err:
        fields.fail(fields.path, f"{fields.dotted(fields.path)} must be {err}, got {params!r}")


@dataclasses.dataclass(frozen=True)
class EarlyStopSpec:
    patience: int = key(check=ok.at_least(1), help="stop after this many epochs without a better validation "
                        "accuracy than the best so far")


@dataclasses.dataclass(frozen=True)
class InitializerSpec:
    type: str = "xavier"
    params: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"rnd_type": "gaussian", "factor_type": "in", "magnitude": 2})


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    epochs: int = key(8, check=ok.at_least(1), help="passes over the training data")
    batch_per_device: int = key(16, check=ok.at_least(1), help="images per device per step")
    optimizer: str = key("sgd", check=ok.choice(OPTIMIZERS), help="an MXNet optimizer")
    optimizer_params: Mapping[str, Any] = key(check=ok.scalar_mapping, factory=lambda: {"learning_rate": 0.01},
                                              help="its settings (--set train.lr/momentum/wd)")
    initializer: InitializerSpec = section(
        InitializerSpec, help="for the new output layer", read=_read_initializer, allowed=INITIALIZER_KEYS,
        to_yaml=lambda init: {"type": init.type, **plain(init.params)})
    seed: int | None = key(None, check=ok.at_least(0), help="seeds MXNet, numpy and the data order")
    log_every_batches: int = key(20, check=ok.at_least(1), help="a progress line every N batches")
    lr_scaling: str = key("none", check=ok.choice(LR_SCALINGS),
                          help="linear: learning_rate x global batch / reference_batch (Goyal et al.)")
    reference_batch: int = key(128, check=ok.at_least(1), help="the global batch learning_rate was tuned for "
                               "(the tutorial's 16 per GPU x 8 GPUs)")
    lr_schedule: LRScheduleSpec | None = section(LRScheduleSpec, optional=True, help="the learning rate's decay "
                                                  "after the warm-up (none: it stays)")
    warmup_epochs: int = key(0, check=ok.at_least(0),
                             help="epochs that ramp the learning rate up from its unscaled value")
    top_k: int = key(5, check=ok.at_least(2), help="also report top-k accuracy (only when k < num_classes: "
                     "with k classes or fewer it is 1.0 by construction)")
    step_timing: bool = key(False, check=ok.boolean, help="split each epoch's time into compute and communication "
                            "(compute_s, communication_s in result.json); waiting between the two slows training, so "
                            "it is for measuring")
    early_stop: EarlyStopSpec | None = section(EarlyStopSpec, optional=True, help="stop every worker at the same "
                                                "epoch once the validation accuracy stops improving (shared evaluation)")
    keep: str = key("both", check=ok.choice(KEEPS), help="the params RUN_DIR/checkpoint holds: the last epoch's and "
                    "the best validation accuracy's (both, when they differ), best, or last")
    evaluation: str = key("shared", check=ok.choice(EVALUATIONS),
                          help="shared: workers average BatchNorm statistics, each evaluates a part of the "
                               "validation set; worker0: worker 0 alone, with its own statistics")


def check_lr_schedule(train_spec: TrainSpec, top: Fields) -> None:
    """A schedule's keys that its type reads, and room for it after the warm-up."""
    schedule = train_spec.lr_schedule
    if schedule is None:
        return
    fields = top.section("train", keys_of(type(train_spec))).section("lr_schedule", keys_of(LRScheduleSpec))
    if schedule.type == "multistep" and not schedule.at_epochs:
        fields.fail(fields.path, "train.lr_schedule: multistep needs at_epochs, e.g. [5, 8]")
    if schedule.type == "cosine" and train_spec.warmup_epochs >= train_spec.epochs:
        fields.fail(fields.path + ("type",), f"a cosine schedule needs epochs after the warm-up: train.epochs is "
                    f"{train_spec.epochs}, train.warmup_epochs {train_spec.warmup_epochs}")
    unread = {"step": ("at_epochs", "final_lr"), "multistep": ("every_epochs", "final_lr"),
              "cosine": ("every_epochs", "at_epochs", "factor")}[schedule.type]
    default = LRScheduleSpec(schedule.type)
    for name in unread:  # given with another value than its default (an effective job.yaml writes every key)
        if name in fields.raw and getattr(schedule, name) != getattr(default, name):
            fields.fail(fields.path + (name,), f"train.lr_schedule.{name} is not read by a {schedule.type} schedule")


def check_early_stop(train_spec: TrainSpec, top: Fields) -> None:
    """Every worker must know each epoch's accuracy to stop at the same epoch: shared evaluation."""
    if train_spec.early_stop is not None and train_spec.evaluation != "shared":
        train = top.section("train", keys_of(type(train_spec)))
        train.fail(train.path + ("early_stop",), "train.early_stop needs train.evaluation: shared (with worker0 only "
                   "worker 0 knows the accuracy, and the workers must stop at the same epoch)")


def check_optimizer(train_spec: TrainSpec, top: Fields) -> None:
    """The optimizer's parameters as MXNet's own optimizer takes them (``launcher.spec.optimizers``): a bad one is
    named at its line here, not by MXNet's traceback at the first batch after everything was staged."""
    train = top.section("train", keys_of(type(train_spec)))
    for name, value in train_spec.optimizer_params.items():
        why = optimizers.problem(train_spec.optimizer, name, value)
        if why is not None:
            reference = optimizers.class_name(train_spec.optimizer)
            train.fail(train.path + ("optimizer_params", name), why, hint=f"see {reference}" if reference else "")
