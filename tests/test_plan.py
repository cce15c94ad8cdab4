"""Planning is pure: literal expectations for a small job, and a dry run that touches nothing."""
from __future__ import annotations

import dataclasses
import os

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec, parse_hosts
from launcher.data.recfile import RecordSpan
from launcher.plan import Facts, HostFacts, Role, Transfer, make_plan, place, shard_dir
from launcher.spec.jobspec import parse_job
from tests.plan_literals import FACTS, JOB, inventory


def test_local_plan_literal():
    plan = make_plan(parse_job(JOB, "/jobs/small.yaml", environ={}), [HostSpec("localhost")], FACTS,
                     inventory=inventory())
    assert [(p.role, p.rank, p.host) for p in plan.processes] == [
        (Role.SCHEDULER, 0, "localhost"), (Role.SERVER, 0, "localhost"), (Role.SERVER, 1, "localhost"),
        (Role.WORKER, 0, "localhost"), (Role.WORKER, 1, "localhost")]
    common = {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9000", "DMLC_NUM_SERVER": "2",
              "DMLC_NUM_WORKER": "2", "DMLC_NODE_HOST": "127.0.0.1", "PYTHONPATH": "/code", "PYTHONSAFEPATH": "1",
              "PYTHONUNBUFFERED": "1", "MXFT_RUN_ID": "small-1"}
    assert plan.processes[0].env_dict == {**common, "DMLC_ROLE": "scheduler", "OMP_NUM_THREADS": "1"}
    assert plan.processes[3].env_dict == {**common, "DMLC_ROLE": "worker", "OMP_NUM_THREADS": "1",
                                          "MXNET_KVSTORE_BIGARRAY_BOUND": "100000"}  # key balance (bench/network.py)
    assert plan.processes[3].argv == ("/usr/bin/python3", "-m", "trainer", "--config",
                                      "/runs/small-1/config/worker-0.json")
    assert plan.processes[4].log_path == "/runs/small-1/logs/worker-1.log"
    # 9 records over 2 workers: 5 and 4; batches of 4 -> 2 batches per epoch on both.
    assert [list(s.positions) for s in plan.component.shards] == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    assert plan.component.batches_per_epoch == 2
    assert plan.component.shards[1].rec_path == os.path.join(shard_dir(FACTS, 2), "part-1-of-2.rec")
    worker, shard = plan.component.workers[1], plan.component.shards[1]
    assert (worker.index, worker.train_rec, worker.val_rec, worker.num_val_images, worker.kvstore,
            worker.devices, worker.out_dir) == (1, shard.rec_path, "/d/val.rec", 5, "dist_sync", None,
                                                "/runs/small-1/workers/worker-1")


def test_workers_on_this_machine_read_parts_of_a_mixed_indexed_file_in_place():
    job = parse_job(JOB, "/jobs/small.yaml", environ={})
    mixed = dataclasses.replace(inventory(), train_labels=(0, 1, 2) * 3, train_index="/d/train.idx")
    plan = make_plan(job, [HostSpec("localhost")], FACTS, inventory=mixed)
    # ImageRecordIter's parts over the .idx: ceil(9 / 2) = 5 records, then 4; nothing is copied or cached
    assert [(s.positions, s.rec_path, s.idx_path, s.in_place) for s in plan.component.shards] == [
        (range(0, 5), "/d/train.rec", "/d/train.idx", True), (range(5, 9), "/d/train.rec", "/d/train.idx", True)]
    assert [(w.train_rec, w.train_part) for w in plan.component.workers] == [
        ("/d/train.rec", [0, 2, "/d/train.idx"]), ("/d/train.rec", [1, 2, "/d/train.idx"])]
    assert plan.component.batches_per_epoch == 2 and not plan.transfers
    assert "part 1 of 2 of /d/train.rec in place: 4 records" in plan.describe()
    # sorted by class: contiguous parts would give each worker a few classes, so strided copies are cut
    by_class = dataclasses.replace(mixed, train_labels=(0, 0, 0, 1, 1, 1, 2, 2, 2))
    shards = make_plan(job, [HostSpec("localhost")], FACTS, inventory=by_class).component.shards
    assert [(list(s.positions), s.in_place) for s in shards] == [([0, 2, 4, 6, 8], False), ([1, 3, 5, 7], False)]
    # no .idx: copies too (the indexed reader needs one)
    assert not make_plan(job, [HostSpec("localhost")], FACTS, inventory=dataclasses.replace(
        mixed, train_index=None)).component.shards[0].in_place


def test_threads_split_between_workers_of_a_host():
    job = parse_job(JOB.replace("workers: 2", "workers: 1"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, [HostSpec("localhost")], FACTS, inventory=inventory())
    assert plan.processes[-1].env_dict["OMP_NUM_THREADS"] == "2"


def test_shard_cache_key_follows_data_and_worker_count():
    other = Facts(**{**FACTS.__dict__, "train_fingerprint": "g"})
    assert len({shard_dir(FACTS, 2), shard_dir(FACTS, 3), shard_dir(other, 2)}) == 3


def test_more_workers_than_images_is_bad_input():
    job = parse_job(JOB.replace("workers: 2", "workers: 12"), "/jobs/small.yaml", environ={})
    with pytest.raises(InputError, match="12 workers but only 9 training images"):
        make_plan(job, [HostSpec("localhost")], FACTS, inventory=inventory())


def test_a_validation_set_smaller_than_the_workers_sharing_it_is_bad_input():
    """Issue 27: with shared evaluation a worker with no validation image to read raised StopIteration and hung."""
    job = parse_job(JOB.replace("workers: 2", "workers: 3"), "/jobs/small.yaml", environ={})
    with pytest.raises(InputError, match=r"^/jobs/small.yaml: 3 workers share the evaluation but the validation set "
                                         r"has only 2 images: a worker would have none to read"):
        make_plan(job, [HostSpec("localhost")], FACTS, inventory=inventory(num_val=2))
    alone = parse_job(JOB.replace("workers: 2", "workers: 3").replace("batch_per_device: 4}",
                                                                      "batch_per_device: 4, evaluation: worker0}"),
                      "/jobs/small.yaml", environ={})
    assert len(make_plan(alone, [HostSpec("localhost")], FACTS, inventory=inventory(num_val=2)).component.workers) == 3


def test_round_robin_placement():
    hosts = (HostSpec("a"), HostSpec("b"), HostSpec("c"))
    assert [h.name for h in place(4, hosts)] == ["a", "b", "c", "a"]
    assert [h.name for h in place(2, hosts, offset=1)] == ["b", "c"]


def test_describe_names_every_process():
    plan = make_plan(parse_job(JOB, "/jobs/small.yaml", environ={}), [HostSpec("localhost")], FACTS,
                     inventory=inventory())
    text = plan.describe()
    for name in ("scheduler", "server 0", "server 1", "worker 0", "worker 1", "shard 1: 4 records",
                 "root 127.0.0.1:9000", "2 epochs x 2 batches of 4 per worker"):
        assert name in text


def test_remote_plan_literal():
    hosts = (HostSpec("10.0.0.1"), HostSpec("10.0.0.2"))
    facts = Facts(run_id="small-1", run_dir="/runs/small-1", cache_dir="/cache", scheduler_port=9000,
                  code_dir="/code", train_fingerprint="f", remote_dir="~/.mxft",
                  hosts={"10.0.0.1": HostFacts("10.0.0.1", "py", 4, "/home/a/.mxft"),
                         "10.0.0.2": HostFacts("10.0.0.2", "py", 4, "/home/b/.mxft")},
                  code_files=("trainer/worker.py",), code_hash="c0de",
                  file_keys={"/m/net-symbol.json": "mk", "/m/net-0000.params": "mk", "/d/val.rec": "vk"})
    plan = make_plan(parse_job(JOB, "/jobs/small.yaml", environ={}), hosts, facts, inventory=inventory())
    assert [(p.name, p.host, p.env_dict["DMLC_NODE_HOST"]) for p in plan.processes] == [
        ("scheduler", "10.0.0.1", "10.0.0.1"), ("server 0", "10.0.0.1", "10.0.0.1"),
        ("server 1", "10.0.0.2", "10.0.0.2"), ("worker 0", "10.0.0.1", "10.0.0.1"),
        ("worker 1", "10.0.0.2", "10.0.0.2")]
    worker1 = plan.processes[-1]
    assert worker1.argv == ("py", "-m", "trainer.remote", "--pid-file", "/home/b/.mxft/runs/small-1/pids/worker-1.pid",
                            "--", "py", "-m", "trainer", "--config", "/home/b/.mxft/runs/small-1/config/worker-1.json")
    assert worker1.env_dict["PYTHONPATH"] == "/home/b/.mxft/code/c0de"
    assert worker1.env_dict["DMLC_PS_ROOT_URI"] == "10.0.0.1" and worker1.env_dict["OMP_NUM_THREADS"] == "4"
    shard_key = os.path.basename(shard_dir(facts, 2))
    assert [t for t in plan.transfers if t.host == "10.0.0.2"] == [
        Transfer("10.0.0.2", "/code/trainer/worker.py", "/home/b/.mxft/code/c0de/trainer/worker.py", "code"),
        Transfer("10.0.0.2", plan.component.shards[1].rec_path, f"/home/b/.mxft/data/{shard_key}/part-1-of-2.rec",
                 "data"),
        Transfer("10.0.0.2", plan.component.shards[1].idx_path, f"/home/b/.mxft/data/{shard_key}/part-1-of-2.idx",
                 "data"),
        Transfer("10.0.0.2", "/d/val.rec", "/home/b/.mxft/data/vk/val.rec", "data"),
        Transfer("10.0.0.2", "/m/net-symbol.json", "/home/b/.mxft/data/mk-flatten0-statistics/net-symbol.json",
                 "data"),
        # Worker 0's host gets the params without the layers above the cut (launcher.data.trim), made while
        # staging; this one only their BatchNorm statistics (its worker takes worker 0's weights).
        Transfer("10.0.0.2", "/cache/trimmed/mk-flatten0-statistics/net-0000.params",
                 "/home/b/.mxft/data/mk-flatten0-statistics/net-0000.params", "data"),
        Transfer("10.0.0.2", "/runs/small-1/config/worker-1.json", "/home/b/.mxft/runs/small-1/config/worker-1.json",
                 "run"),
    ]
    assert plan.component.workers[1].model_prefix == "/home/b/.mxft/data/mk-flatten0-statistics/net"
    assert plan.component.trimmed_params == "/cache/trimmed/mk-flatten0/net-0000.params"
    assert plan.component.workers[1].out_dir == "/home/b/.mxft/runs/small-1/workers/worker-1"
    assert plan.remote_roots == {"10.0.0.1": "/home/a/.mxft", "10.0.0.2": "/home/b/.mxft"}
    assert plan.remote_pythons == {"10.0.0.1": "py", "10.0.0.2": "py"}


SHARED = {"/d/train.rec": "900:1:" + "a" * 32, "/d/train.idx": "90:1:" + "b" * 32, "/d/val.rec": "500:1:" + "c" * 32,
          "/m/net-symbol.json": "50:1:" + "d" * 32, "/m/net-0000.params": "800:1:" + "e" * 32}


def _two_host_facts(seen_by_h2: dict[str, str], *, assumed: bool = False) -> Facts:
    """Facts of h1 (which has every data file at its path, as here) and h2 (which has ``seen_by_h2``)."""
    return Facts(run_id="small-1", run_dir="/runs/small-1", cache_dir="/cache", scheduler_port=9000,
                 code_dir="/code", train_fingerprint="f", file_ids=SHARED,
                 hosts={"h1": HostFacts("10.0.0.1", "py", 4, "/w", files=SHARED),
                        "h2": HostFacts("10.0.0.2", "py", 4, "/w", files=seen_by_h2, assumed=assumed)},
                 file_keys={"/m/net-symbol.json": "mk", "/m/net-0000.params": "mk", "/d/val.rec": "vk"})


def _shared_plan(seen_by_h2: dict[str, str], staging: str = "auto", *, labels=(0, 1, 2) * 3, assumed=False):
    job = parse_job(JOB.replace("shape:", f"staging: {staging}, shape:"), "/jobs/small.yaml", environ={})
    mixed = dataclasses.replace(inventory(), train_labels=labels, train_index="/d/train.idx")
    return make_plan(job, (HostSpec("h1"), HostSpec("h2")), _two_host_facts(seen_by_h2, assumed=assumed),
                     inventory=mixed)


def test_hosts_with_the_same_files_at_the_same_paths_read_them_in_place():
    """Issue 26: a shared filesystem, detected; nothing staged or cut, and the plan says why."""
    plan = _shared_plan(SHARED)
    assert not [t for t in plan.transfers if t.kind == "data"]
    assert [(s.positions, s.rec_path, s.in_place) for s in plan.component.shards] == [
        (range(0, 5), "/d/train.rec", True), (range(5, 9), "/d/train.rec", True)]
    worker = plan.component.workers[1]
    assert (worker.train_rec, worker.train_part, worker.val_rec, worker.model_prefix) == (
        "/d/train.rec", [1, 2, "/d/train.idx"], "/d/val.rec", "/m/net")
    assert plan.component.trimmed_params is None
    text = plan.describe()
    assert "  data       training data: read in place on every host (the same files at the same paths as here)" in text
    assert "validation data: read in place on every host" in text and "model: read in place on every host" in text


def test_a_host_without_the_files_gets_copies_of_the_same_parts():
    """h2 lacks the training file and has another validation file: it gets copies (of the very part it would have
    read, cut into a cache of its own); h1 still reads in place."""
    plan = _shared_plan({**SHARED, "/d/train.rec": "", "/d/val.rec": "500:2:" + "c" * 32})
    shards = plan.component.shards
    assert [(s.positions, s.in_place) for s in shards] == [(range(0, 5), True), (range(5, 9), False)]
    assert shards[1].rec_path == os.path.join(shard_dir(plan.facts, 2, partition="index"), "part-1-of-2.rec")
    assert shard_dir(plan.facts, 2, partition="index") != shard_dir(plan.facts, 2)
    staged = {(t.host, t.source) for t in plan.transfers if t.kind == "data"}
    assert staged == {("h2", shards[1].rec_path), ("h2", shards[1].idx_path), ("h2", "/d/val.rec")}
    text = plan.describe()
    assert "training data: read in place on h1 (the same files" in text
    assert "staged to h2 (/d/train.rec is not there)" in text
    assert "staged to h2 (/d/val.rec there is not the file here)" in text


def test_a_host_without_the_validation_file_gets_its_workers_part_of_it_alone():
    """Issue 26, item 3 (its last point): with shared evaluation each worker evaluates a part of the validation set
    through its .idx; h2, which lacks the file, gets its worker's part alone (cut as it is sent); h1 reads its part
    in place. Without an .idx every host still gets the whole set and the workers split it by byte ranges."""
    job = parse_job(JOB, "/jobs/small.yaml", environ={})
    indexed = dataclasses.replace(inventory(), train_labels=(0, 1, 2) * 3, train_index="/d/train.idx",
                                  val_spans=tuple(RecordSpan(i, 50 * i, 50) for i in range(5)), val_index="/d/val.idx")
    plan = make_plan(job, (HostSpec("h1"), HostSpec("h2")), _two_host_facts({**SHARED, "/d/val.rec": ""}),
                     inventory=indexed)
    parts = plan.component.val_parts
    assert [(p.positions, p.in_place) for p in parts] == [(range(0, 3), True), (range(3, 5), False)]
    folder = f"/w/data/{os.path.basename(os.path.dirname(parts[1].rec_path))}"
    first, second = plan.component.workers
    assert (first.val_rec, first.val_part) == ("/d/val.rec", [0, 2, "/d/val.idx"])
    assert (second.val_rec, second.val_part) == (f"{folder}/val-part-1-of-2.rec", None)
    assert {(t.host, t.source, t.dest) for t in plan.transfers if t.kind == "data"} == {
        ("h2", parts[1].rec_path, f"{folder}/val-part-1-of-2.rec"),
        ("h2", parts[1].idx_path, f"{folder}/val-part-1-of-2.idx")}
    whole = _shared_plan({**SHARED, "/d/val.rec": ""})  # no .idx beside the validation set
    assert not whole.component.val_parts and whole.component.workers[1].val_part == [1, 2, ""]
    assert ("h2", "/d/val.rec") in {(t.host, t.source) for t in whole.transfers}


def test_data_staging_always_and_a_file_sorted_by_class_stage_copies():
    always = _shared_plan(SHARED, "always")
    assert not any(s.in_place for s in always.component.shards)
    assert "training data: staged to every host (data.staging: always)" in always.describe()
    by_class = _shared_plan(SHARED, labels=(0, 0, 0, 1, 1, 1, 2, 2, 2))
    assert [(list(s.positions), s.in_place) for s in by_class.component.shards] == [
        ([0, 2, 4, 6, 8], False), ([1, 3, 5, 7], False)]
    assert "its parts cannot be read in place" in by_class.describe()
    assert "validation data: read in place on every host" in by_class.describe()


def test_data_staging_never_refuses_a_host_without_the_file_naming_it():
    with pytest.raises(InputError) as err:
        _shared_plan({**SHARED, "/m/net-0000.params": ""}, "never")
    assert str(err.value).startswith("host h2: /m/net-0000.params is not there, and /jobs/small.yaml says "
                                     "data.staging: never")
    with pytest.raises(InputError, match="sorted by class"):
        _shared_plan(SHARED, "never", labels=(0, 0, 0, 1, 1, 1, 2, 2, 2))
    # a dry run that never probed h2 takes the job's word
    assert all(s.in_place for s in _shared_plan({}, "never", assumed=True).component.shards)


def test_the_model_goes_whole_to_worker_0s_host_alone():
    """Issue 26, item 2: the others get the BatchNorm statistics and take worker 0's weights through the kvstore."""
    hosts = (HostSpec("h1"), HostSpec("h2"), HostSpec("h3"))
    facts = dataclasses.replace(_two_host_facts({}), file_ids={}, hosts={
        f"h{i}": HostFacts(f"10.0.0.{i}", "py", 4, "/w") for i in (1, 2, 3)})
    job = parse_job(JOB.replace("workers: 2", "workers: 3"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, hosts, facts, inventory=inventory())
    recipe = plan.component
    assert recipe.statistics_params == "/cache/trimmed/mk-flatten0-statistics/net-0000.params"
    models = {(t.host, t.source, t.dest) for t in plan.transfers if "/m/" in t.source or "/trimmed/" in t.source}
    assert models == {("h1", "/m/net-symbol.json", "/w/data/mk-flatten0/net-symbol.json"),
                      ("h1", recipe.trimmed_params, "/w/data/mk-flatten0/net-0000.params"),
                      *{(h, "/m/net-symbol.json", "/w/data/mk-flatten0-statistics/net-symbol.json")
                        for h in ("h2", "h3")},
                      *{(h, recipe.statistics_params, "/w/data/mk-flatten0-statistics/net-0000.params")
                        for h in ("h2", "h3")}}
    assert [(w.model_prefix, w.start_weights) for w in recipe.workers] == [
        ("/w/data/mk-flatten0/net", "worker0"), ("/w/data/mk-flatten0-statistics/net", "worker0"),
        ("/w/data/mk-flatten0-statistics/net", "worker0")]
    assert ("  model once its weights go to h1 (worker 0's host) alone: h2, h3 get its BatchNorm statistics, and every "
            "worker starts from worker 0's weights through the kvstore") in plan.describe()
    # every push quantised: the whole model everywhere, and each worker's own start as before
    compressed = parse_job(JOB.replace("cluster: {workers: 2,", "cluster: {gradient_compression: {type: 2bit}, "
                                       "workers: 3,").replace("train: {", "train: {evaluation: worker0, "),
                           "/jobs/small.yaml", environ={})
    whole = make_plan(compressed, hosts, facts, inventory=inventory()).component
    assert whole.statistics_params is None and {w.start_weights for w in whole.workers} == {"own"}


def test_slots_limit_devices_per_host():
    job = parse_job(JOB.replace("devices: cpu", "devices: [0, 1]"), "/jobs/small.yaml", environ={})
    hosts = (HostSpec("a", slots=2, line=1), HostSpec("b", slots=1, line=2))
    facts = Facts(**{**FACTS.__dict__, "hosts": {"a": HostFacts("a", "py", 1), "b": HostFacts("b", "py", 1)}})
    with pytest.raises(InputError, match=r"line 2: host 'b' offers slots=1 but gets 1 worker\(s\) x 2 devices"):
        make_plan(job, hosts, facts, inventory=inventory())


# --------------------------------------------------------------------------- scaling out (issue 12, items 1-2)

GPU_JOB = JOB.replace("cluster: {workers: 2, servers: 2, devices: cpu}", "cluster: {devices: gpu:8}")


def gpu_hosts(*slots: int) -> tuple[HostSpec, ...]:
    return tuple(HostSpec(f"10.0.0.{i + 1}", slots=n, line=i + 1) for i, n in enumerate(slots))


def facts_for(hosts) -> Facts:
    return Facts(**{**FACTS.__dict__, "hosts": {h.label: HostFacts(h.name, "py", 32, "/w") for h in hosts}})


def roles(plan) -> list[tuple[str, str, object]]:
    """(process, host, its GPUs) for every process of the plan."""
    devices = {f"worker {w.index}": w.devices for w in plan.component.workers}
    return [(p.name, p.host, devices.get(p.name)) for p in plan.processes]


@pytest.mark.parametrize("count", [1, 2, 4])
def test_auto_runs_one_worker_per_gpu_host_on_all_its_gpus_and_a_server_beside_it(count):
    hosts = gpu_hosts(*[8] * count)
    plan = make_plan(parse_job(GPU_JOB, "/jobs/small.yaml", environ={}), hosts, facts_for(hosts),
                     inventory=inventory())
    names = [h.name for h in hosts]
    assert roles(plan) == ([("scheduler", names[0], None)] + [(f"server {i}", n, None) for i, n in enumerate(names)]
                           + [(f"worker {i}", n, [0, 1, 2, 3, 4, 5, 6, 7]) for i, n in enumerate(names)])
    text = plan.describe()
    assert f"workers    {count}: one per host, 8 GPUs each (cluster.workers: auto)" in text
    assert f"batches of 32 per worker (global batch {32 * count})" in text


def test_two_workers_on_an_eight_gpu_host_get_disjoint_blocks():
    hosts = gpu_hosts(8, 8)
    job = parse_job(GPU_JOB.replace("{devices: gpu:8}", "{workers: 4, servers: 2, devices: gpu:4}"),
                    "/jobs/small.yaml", environ={})
    plan = make_plan(job, hosts, facts_for(hosts), inventory=inventory())
    assert [r for r in roles(plan) if r[0].startswith("worker")] == [
        ("worker 0", "10.0.0.1", [0, 1, 2, 3]), ("worker 1", "10.0.0.2", [0, 1, 2, 3]),
        ("worker 2", "10.0.0.1", [4, 5, 6, 7]), ("worker 3", "10.0.0.2", [4, 5, 6, 7])]
    assert "shard 2: 2 records -> " in plan.describe() and ", gpu 4,5,6,7" in plan.describe()


def test_hosts_with_different_gpu_counts_are_refused_clearly():
    hosts = gpu_hosts(8, 4)
    with pytest.raises(InputError, match=r"line 1: the workers would drive different numbers of GPUs "
                                         r"\(10.0.0.1: 8, 10.0.0.2: 4\)"):
        make_plan(parse_job(GPU_JOB, "/jobs/small.yaml", environ={}), hosts, facts_for(hosts), inventory=inventory())
    from_file = parse_hosts("10.0.0.1 slots=8\n10.0.0.2 slots=4\n", "/jobs/hosts.txt")  # the file is named too
    with pytest.raises(InputError, match=r"^/jobs/hosts.txt:1: the workers would drive different numbers of GPUs"):
        make_plan(parse_job(GPU_JOB, "/jobs/small.yaml", environ={}), from_file, facts_for(from_file),
                  inventory=inventory())


def test_shared_host_with_hand_picked_gpu_ids_is_refused():
    hosts = gpu_hosts(8)
    job = parse_job(GPU_JOB.replace("{devices: gpu:8}", "{workers: 2, devices: [3, 5]}"), "/jobs/small.yaml",
                    environ={})
    with pytest.raises(InputError, match=r"2 workers on host '10.0.0.1' cannot all drive GPUs \[3, 5\]"):
        make_plan(job, hosts, facts_for(hosts), inventory=inventory())


def test_auto_on_cpu_hosts_runs_one_worker_per_slot():
    hosts = gpu_hosts(2, 1)
    job = parse_job(GPU_JOB.replace("{devices: gpu:8}", "{devices: cpu}"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, hosts, facts_for(hosts), inventory=inventory())
    assert [r for r in roles(plan) if r[0] != "scheduler"] == [
        ("server 0", "10.0.0.1", None), ("server 1", "10.0.0.2", None), ("worker 0", "10.0.0.1", None),
        ("worker 1", "10.0.0.1", None), ("worker 2", "10.0.0.2", None)]
    assert plan.processes[-1].env_dict["OMP_NUM_THREADS"] == "32"   # alone on its host
    assert plan.processes[-2].env_dict["OMP_NUM_THREADS"] == "16"   # two workers share 10.0.0.1


# --------------------------------------------------------------------------- cpu:N workers (issue 12, item 3)

CPU2_JOB = GPU_JOB.replace("{devices: gpu:8}", "{devices: 'cpu:2'}")


def cpu_workers(plan) -> list[tuple[str, str, object, int]]:
    """(worker, host, its GPUs, its CPU contexts) for every worker of the plan."""
    hosts = {p.name: p.host for p in plan.processes}
    return [(f"worker {w.index}", hosts[f"worker {w.index}"], w.devices, w.cpu_contexts)
            for w in plan.component.workers]


def test_cpu2_on_two_2_slot_hosts_runs_one_worker_per_host_over_two_contexts():
    hosts = gpu_hosts(2, 2)
    plan = make_plan(parse_job(CPU2_JOB, "/jobs/small.yaml", environ={}), hosts, facts_for(hosts),
                     inventory=inventory(num_train=40))
    assert cpu_workers(plan) == [("worker 0", "10.0.0.1", None, 2), ("worker 1", "10.0.0.2", None, 2)]
    assert [(p.name, p.host) for p in plan.processes if p.role is Role.SERVER] == [
        ("server 0", "10.0.0.1"), ("server 1", "10.0.0.2")]
    assert [w.batch_size for w in plan.component.workers] == [8, 8]       # 4 per context x 2 contexts
    assert plan.component.batches_per_epoch == 3                          # 20 records per shard / 8, rounded up
    assert plan.processes[-1].env_dict["OMP_NUM_THREADS"] == "16"      # 32 CPUs over its 2 contexts
    text = plan.describe()
    assert "kvstore    dist_sync, 2 worker(s) x cpu:2, 2 server(s)" in text
    assert "workers    2: one per 2 slots of each host (cpu:2 workers, cluster.workers: auto)" in text
    assert "2 epochs x 3 batches of 8 per worker (global batch 16)" in text
    assert "shard 1: 20 records -> " in text and text.count(", cpu 0,1\n") == 2


def test_cpu2_on_a_4_slot_host_runs_two_workers_and_fills_no_more_slots_than_it_has():
    hosts = gpu_hosts(4)
    plan = make_plan(parse_job(CPU2_JOB, "/jobs/small.yaml", environ={}), hosts, facts_for(hosts),
                     inventory=inventory(num_train=40))
    assert cpu_workers(plan) == [("worker 0", "10.0.0.1", None, 2), ("worker 1", "10.0.0.1", None, 2)]
    assert plan.processes[-1].env_dict["OMP_NUM_THREADS"] == "8"       # 32 CPUs over 2 workers x 2 contexts
    assert "workers    2: one per 2 slots of each host (cpu:2 workers, cluster.workers: auto)" in plan.describe()
    odd = gpu_hosts(3)                                                 # one slot left idle
    assert len(make_plan(parse_job(CPU2_JOB, "/jobs/small.yaml", environ={}), odd, facts_for(odd),
                         inventory=inventory()).component.workers) == 1
    unsized = (HostSpec("10.0.0.1"),)                                  # no slots=: one worker, the job's contexts
    assert cpu_workers(make_plan(parse_job(CPU2_JOB, "/jobs/small.yaml", environ={}), unsized, facts_for(unsized),
                                 inventory=inventory())) == [("worker 0", "10.0.0.1", None, 2)]


def test_cpu2_workers_that_do_not_fit_the_slots_are_refused():
    hosts = gpu_hosts(4, 1)
    with pytest.raises(InputError, match=r"^line 2: host '10.0.0.2' offers slots=1, fewer than the 2 CPU contexts "
                                         r"of one worker \(cluster.devices: cpu:2\)"):
        make_plan(parse_job(CPU2_JOB, "/jobs/small.yaml", environ={}), hosts, facts_for(hosts), inventory=inventory())
    three = parse_job(CPU2_JOB.replace("{devices: 'cpu:2'}", "{workers: 3, devices: 'cpu:2'}"), "/jobs/small.yaml",
                      environ={})
    one = gpu_hosts(4)
    with pytest.raises(InputError, match=r"^line 1: host '10.0.0.1' offers slots=4 but gets 3 worker\(s\) x 2 CPU "
                                         r"contexts \(add hosts, raise slots, or lower cluster.workers"):
        make_plan(three, one, facts_for(one), inventory=inventory())
    wide = gpu_hosts(4, 4)
    assert len(make_plan(three, wide, facts_for(wide), inventory=inventory()).component.workers) == 3


def test_linear_lr_scaling_follows_the_global_batch():
    hosts = gpu_hosts(8, 8)
    job = parse_job(GPU_JOB.replace("train: {epochs: 2, batch_per_device: 4}",
                                    "train: {epochs: 2, batch_per_device: 4, lr_scaling: linear, warmup_epochs: 1}"),
                    "/jobs/small.yaml", environ={})
    plan = make_plan(job, hosts, facts_for(hosts), inventory=inventory())
    assert {w.learning_rate for w in plan.component.workers} == {0.005}  # 0.01 x 64 / 128
    assert "lr         0.005: linear scaling, global batch 64 / reference 128, warmed up over 1 epoch(s)" in \
        plan.describe()
    unscaled = make_plan(parse_job(GPU_JOB, "/jobs/small.yaml", environ={}), hosts, facts_for(hosts),
                         inventory=inventory())
    assert {w.learning_rate for w in unscaled.component.workers} == {None}
    assert ("  lr         0.01 as given (train.lr_scaling: none; global batch 64, train.reference_batch 128)"
            in unscaled.describe())


def _two_host_plan(hosts, interfaces=({}, {}), job_text=JOB, assumed=False):
    facts = dataclasses.replace(FACTS, hosts={
        h.label: HostFacts(ssh, "/usr/bin/python3", 2, interfaces=ifs, assumed=assumed)
        for h, ssh, ifs in zip(hosts, ("192.168.0.11", "192.168.0.12"), interfaces)})
    return make_plan(parse_job(job_text, "/jobs/small.yaml", environ={}), hosts, facts, inventory=inventory())


def test_training_network_from_addr_or_interface():
    """addr= wins, else the job's interface as preflight found it, else the SSH address; the plan says which."""
    by_addr = _two_host_plan([HostSpec("h1", addr="10.1.0.11", line=1), HostSpec("h2", addr="10.1.0.12", line=2)])
    assert {p.host: p.env_dict["DMLC_NODE_HOST"] for p in by_addr.processes} == {"h1": "10.1.0.11", "h2": "10.1.0.12"}
    assert by_addr.scheduler_uri == "10.1.0.11" and by_addr.processes[0].env_dict["DMLC_PS_ROOT_URI"] == "10.1.0.11"
    assert "  network    ps-lite on 10.1.0.11, 10.1.0.12 (addr= in the hosts file)" in by_addr.describe()

    eth1 = JOB.replace("devices: cpu}", "devices: cpu, interface: eth1}")
    hosts = [HostSpec("h1", line=1), HostSpec("h2", addr="10.1.0.99", line=2)]
    mixed = _two_host_plan(hosts, ({"eth0": "192.168.0.11", "eth1": "10.1.0.11"}, {}), eth1)
    assert {p.host: p.env_dict["DMLC_NODE_HOST"] for p in mixed.processes} == {"h1": "10.1.0.11", "h2": "10.1.0.99"}
    assert mixed.network == "addr= in the hosts file; interface eth1 (cluster.interface)"
    with pytest.raises(InputError, match=r"^line 2: host 'h2' has no IPv4 address on interface eth1 "
                                         r"\(cluster.interface\); it has: eth0 192.168.0.12 \("):
        _two_host_plan([HostSpec("h1", line=1), HostSpec("h2", line=2)],
                       ({"eth1": "10.1.0.11"}, {"eth0": "192.168.0.12"}), eth1)
    never_probed = _two_host_plan([HostSpec("h1", line=1), HostSpec("h2", line=2)], job_text=eth1, assumed=True)
    assert never_probed.processes[-1].env_dict["DMLC_NODE_HOST"] == "<eth1 of h2>"

    plain = _two_host_plan([HostSpec("h1", line=1), HostSpec("h2", line=2)])
    assert plain.network == "" and "  network" not in plain.describe()
    assert {p.env_dict["DMLC_NODE_HOST"] for p in plain.processes} == {"192.168.0.11", "192.168.0.12"}


def test_public_training_address_is_warned_about():
    plan = _two_host_plan([HostSpec("h1", addr="10.1.0.11", line=1), HostSpec("h2", addr="8.8.4.4", line=2)])
    assert ("  warning    ps-lite listens on public address(es) 8.8.4.4 with no authentication or encryption: use a "
            "private network (addr= in the hosts file, or cluster.interface)") in plan.describe()


def test_a_remote_schedulers_port_is_below_the_ephemeral_ports():
    """The launcher cannot probe a remote port; one below the kernel's ephemeral range is never held by an
    outgoing connection on that host (a port from 20000-39999 once was, and the reach check refused the launch)."""
    from launcher.run.facts import SCHEDULER_PORTS, remote_port as _remote_port
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as handle:
        lowest_ephemeral = int(handle.read().split()[0])
    assert SCHEDULER_PORTS[-1] < lowest_ephemeral
    assert {_remote_port() in SCHEDULER_PORTS for _ in range(1000)} == {True}
