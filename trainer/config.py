"""What one worker is told to do: written by the launcher as JSON, read here.

Plain JSON types only, so the launcher can build it without mxnet and a config file
in a run directory can be read (and rerun) by hand.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    index: int                      # this worker's place in the plan (not its ps-lite rank)
    train_rec: str                  # this worker's shard
    val_rec: str
    num_val_images: int             # every one is evaluated exactly once
    batches_per_epoch: int          # the same on every worker, or dist_sync would deadlock
    model_prefix: str
    model_epoch: int
    cut_layer: str
    variant: str                    # full | frozen | scratch
    num_classes: int
    data_shape: list[int]
    rand_crop: bool
    rand_mirror: bool
    preprocess_threads: int
    epochs: int
    batch_per_device: int
    optimizer: str
    optimizer_params: dict[str, Any]
    initializer: dict[str, Any]     # {"type": "xavier", "params": {...}}
    seed: int | None
    log_every_batches: int
    devices: list[int] | None       # GPU ids, or None for the CPU
    kvstore: str
    out_dir: str                    # worker 0 writes result.json and the checkpoint here
    checkpoint_name: str
    job: dict[str, Any]             # the job spec, recorded in result.json
    begin_epoch: int = 0            # epochs already done (resuming)
    resume_prefix: str | None = None  # fine-tuned checkpoint of epoch begin_epoch to start from

    @classmethod
    def load(cls, path: str) -> "WorkerConfig":
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
