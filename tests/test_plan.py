"""Planning is pure: literal expectations for a small job, and a dry run that touches nothing."""
from __future__ import annotations

import os

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.inputs import Inventory
from launcher.jobspec import parse_job
from launcher.plan import Facts, Role, make_plan, place, shard_dir
from launcher.recfile import RecordSpan

JOB = """\
name: small
num_classes: 3
model: {prefix: /m/net}
data: {train: /d/train.rec, val: /d/val.rec, shape: [3, 28, 28]}
train: {epochs: 2, batch_per_device: 4}
cluster: {workers: 2, servers: 2, devices: cpu}
"""
FACTS = Facts(run_id="small-1", run_dir="/runs/small-1", cache_dir="/cache", scheduler_port=9000,
              python="/usr/bin/python3", code_dir="/code", cpu_count=2, train_fingerprint="f")


def inventory(num_train: int = 9, num_val: int = 5) -> Inventory:
    spans = tuple(RecordSpan(i, 100 * i, 100) for i in range(num_train))
    return Inventory(spans, {0: 3, 1: 3, 2: 3}, 100 * num_train, num_val, 500, 1000)


def test_local_plan_literal():
    plan = make_plan(parse_job(JOB, "/jobs/small.yaml", environ={}), inventory(), [HostSpec("localhost")], FACTS)
    assert [(p.role, p.rank, p.host) for p in plan.processes] == [
        (Role.SCHEDULER, 0, "localhost"), (Role.SERVER, 0, "localhost"), (Role.SERVER, 1, "localhost"),
        (Role.WORKER, 0, "localhost"), (Role.WORKER, 1, "localhost")]
    common = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000", "DMLC_NUM_SERVER": "2",
              "DMLC_NUM_WORKER": "2", "DMLC_NODE_HOST": "127.0.0.1", "PYTHONPATH": "/code",
              "PYTHONUNBUFFERED": "1", "MXFT_RUN_ID": "small-1"}
    assert plan.processes[0].env_dict == {**common, "DMLC_ROLE": "scheduler", "OMP_NUM_THREADS": "1"}
    assert plan.processes[3].env_dict == {**common, "DMLC_ROLE": "worker", "OMP_NUM_THREADS": "1"}
    assert plan.processes[3].argv == ("/usr/bin/python3", "-m", "trainer", "--config",
                                      "/runs/small-1/config/worker-0.json")
    assert plan.processes[4].log_path == "/runs/small-1/logs/worker-1.log"
    # 9 records over 2 workers: 5 and 4; batches of 4 -> 2 batches per epoch on both.
    assert [list(s.positions) for s in plan.shards] == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    assert plan.batches_per_epoch == 2
    assert plan.shards[1].rec_path == os.path.join(shard_dir(FACTS, 2), "part-1-of-2.rec")
    worker = plan.workers[1]
    assert (worker.index, worker.train_rec, worker.val_rec, worker.num_val_images, worker.kvstore,
            worker.devices, worker.out_dir) == (1, plan.shards[1].rec_path, "/d/val.rec", 5, "dist_sync", None,
                                                "/runs/small-1/workers/worker-1")


def test_threads_split_between_workers_of_a_host():
    job = parse_job(JOB.replace("workers: 2", "workers: 1"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, inventory(), [HostSpec("localhost")], FACTS)
    assert plan.processes[-1].env_dict["OMP_NUM_THREADS"] == "2"


def test_shard_cache_key_follows_data_and_worker_count():
    other = Facts(**{**FACTS.__dict__, "train_fingerprint": "g"})
    assert len({shard_dir(FACTS, 2), shard_dir(FACTS, 3), shard_dir(other, 2)}) == 3


def test_more_workers_than_images_is_bad_input():
    job = parse_job(JOB.replace("workers: 2", "workers: 12"), "/jobs/small.yaml", environ={})
    with pytest.raises(InputError, match="12 workers but only 9 training images"):
        make_plan(job, inventory(), [HostSpec("localhost")], FACTS)


def test_round_robin_placement():
    hosts = (HostSpec("a"), HostSpec("b"), HostSpec("c"))
    assert [h.name for h in place(4, hosts)] == ["a", "b", "c", "a"]
    assert [h.name for h in place(2, hosts, offset=1)] == ["b", "c"]


def test_describe_names_every_process():
    plan = make_plan(parse_job(JOB, "/jobs/small.yaml", environ={}), inventory(), [HostSpec("localhost")], FACTS)
    text = plan.describe()
    for name in ("scheduler", "server 0", "server 1", "worker 0", "worker 1", "shard 1: 4 records",
                 "root 127.0.0.1:9000", "2 epochs x 2 batches of 4 per worker"):
        assert name in text
