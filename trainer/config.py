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
    """Where this worker's files are and what it is (decided by the plan), plus the whole job.

    ``job`` is the effective job file as a dict (the launcher's ``JobSpec.to_job_dict``):
    every setting of ``model``, ``data`` and ``train`` reaches the worker without being
    copied here one by one, so a new job key needs no change in this file.
    """

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
    job: dict[str, Any]             # the effective job: num_classes, model, data, train, ... (recorded in result.json)
    learning_rate: float | None = None  # the plan's rate for the global batch (train.lr_scaling); None: the job's
    begin_epoch: int = 0            # epochs already done (resuming)
    resume_prefix: str | None = None  # fine-tuned checkpoint of epoch begin_epoch to start from
    cpu_contexts: int = 1           # devices None: computes on mx.cpu(0) .. mx.cpu(N-1) (cluster.devices: cpu:N)
    train_part: list | None = None  # [part, parts, .idx]: read that part of train_rec in place (no shard copied)

    @property
    def device_count(self) -> int:
        """The contexts this worker splits each batch over: its GPUs, or its CPU contexts."""
        return len(self.devices) if self.devices is not None else self.cpu_contexts

    @property
    def batch_size(self) -> int:
        """Images per step of this worker: ``train.batch_per_device`` on each of its contexts."""
        return self.train["batch_per_device"] * self.device_count

    @property
    def train(self) -> dict[str, Any]:
        return self.job["train"]

    @property
    def data(self) -> dict[str, Any]:
        return self.job["data"]

    @property
    def model(self) -> dict[str, Any]:
        return self.job["model"]

    @classmethod
    def load(cls, path: str) -> "WorkerConfig":
        with open(path, encoding="utf-8") as handle:
            return cls(**json.load(handle))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
