"""What one worker is told to do: written by the launcher as JSON, read here.

Plain JSON types only, so the launcher can build it without mxnet and a config file
in a run directory can be read (and rerun) by hand. The settings the trainer uses are
typed fields; every key's default is declared once, in the launcher's job schema.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the trainer reads of the job's ``train`` section, typed. The launcher fills each field from the effective
    job (launcher/spec/jobspec.py declares every key and its default, once; a test checks the names match)."""

    epochs: int
    batch_per_device: int
    optimizer: str
    optimizer_params: dict[str, Any]
    initializer: dict[str, Any]     # the job file's form: {type: xavier, magnitude: 2, ...}
    warmup_epochs: int
    lr_schedule: dict[str, Any] | None  # {type: step|multistep|cosine, every_epochs, at_epochs, factor, final_lr}
    early_stop: dict[str, Any] | None   # {patience: N}
    top_k: int
    evaluation: str                 # shared | worker0
    seed: int | None
    log_every_batches: int
    step_timing: bool


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What the trainer reads of the job's ``data`` section."""

    shape: list[int]
    rand_crop: bool
    rand_mirror: bool
    preprocess_threads: int


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """What the trainer reads of the job's ``model`` section."""

    epoch: int
    cut_layer: str
    variant: str                    # full | frozen | scratch


SECTIONS = {"train": TrainSettings, "data": DataSettings, "model": ModelSettings}


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Where this worker's files are and what it is (decided by the plan), what it trains (typed), and the whole job
    (recorded in its result.json as the run's effective job)."""

    index: int                      # this worker's place in the plan (not its ps-lite rank)
    train_rec: str                  # this worker's shard, on its host
    val_rec: str
    num_val_images: int             # every one is evaluated exactly once
    batches_per_epoch: int          # the same on every worker, or dist_sync would deadlock
    model_prefix: str               # the pretrained checkpoint as staged on this host
    devices: list[int] | None       # GPU ids, or None for the CPU
    kvstore: str
    out_dir: str                    # worker 0 writes result.json and the checkpoint here
    checkpoint_name: str
    num_classes: int
    train: TrainSettings
    data: DataSettings
    model: ModelSettings
    job: dict[str, Any]             # the effective job as its job file would say it (recorded in result.json)
    gradient_compression: dict[str, Any] | None = None   # cluster.gradient_compression: {type, threshold}
    learning_rate: float | None = None  # the plan's rate for the global batch (train.lr_scaling); None: the job's
    begin_epoch: int = 0            # epochs already done (resuming)
    resume_prefix: str | None = None  # fine-tuned checkpoint of epoch begin_epoch to start from
    cpu_contexts: int = 1           # devices None: computes on mx.cpu(0) .. mx.cpu(N-1) (cluster.devices: cpu:N)
    train_part: list | None = None  # [part, parts, .idx]: read that part of train_rec in place (no shard copied)
    best_so_far: list | None = None  # resuming: [epoch, validation accuracy] of the best epoch before (early_stop)
    val_part: list | None = None    # [part, parts, .idx or ""] this worker evaluates of val_rec; None: all of it
    start_weights: str = "own"      # "worker0": every worker takes worker 0's weights through the kvstore before
                                    # training (the same on all); the others' params files hold BatchNorm statistics

    @property
    def device_count(self) -> int:
        """The contexts this worker splits each batch over: its GPUs, or its CPU contexts."""
        return len(self.devices) if self.devices is not None else self.cpu_contexts

    @property
    def batch_size(self) -> int:
        """Images per step of this worker: ``train.batch_per_device`` on each of its contexts."""
        return self.train.batch_per_device * self.device_count

    @classmethod
    def load(cls, path: str) -> "WorkerConfig":
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        return cls(**{**raw, **{name: kind(**raw[name]) for name, kind in SECTIONS.items()}})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
