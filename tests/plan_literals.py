"""A small job, the facts a launch would gather for it and its training set's inventory: literals for the tests of
planning and of what reads a plan."""
from __future__ import annotations

from launcher.data.inputs import Inventory
from launcher.data.recfile import RecordSpan
from launcher.plan import Facts, HostFacts

JOB = """\
name: small
num_classes: 3
model: {prefix: /m/net}
data: {train: /d/train.rec, val: /d/val.rec, shape: [3, 28, 28]}
train: {epochs: 2, batch_per_device: 4}
cluster: {workers: 2, servers: 2, devices: cpu}
"""
FACTS = Facts(run_id="small-1", run_dir="/runs/small-1", cache_dir="/cache", scheduler_port=9000,
              code_dir="/code", train_fingerprint="f",
              hosts={"localhost": HostFacts("127.0.0.1", "/usr/bin/python3", 2)})


def inventory(num_train: int = 9, num_val: int = 5) -> Inventory:
    spans = tuple(RecordSpan(i, 100 * i, 100) for i in range(num_train))
    return Inventory(spans, 100 * num_train, num_val, 500)
