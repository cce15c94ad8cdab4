"""Job files: defaults, every shipped job, and each kind of mistake named at its line."""
from __future__ import annotations

import glob
import os

import pytest

from cluster.errors import InputError
from launcher.spec.jobspec import (ClusterSpec, CPUContexts, DataSpec, JobSpec, ModelSpec, Variant, expand_path,
                                   load_job, parse_job)
from launcher.spec.train_keys import InitializerSpec, TrainSpec
from tests.helpers import REPO

MINIMAL = """\
num_classes: 256
model:
  prefix: models/resnet-50
data:
  train: data/train.rec
  val: data/val.rec
"""


def parse(text: str, environ=None) -> JobSpec:
    return parse_job(text, "/jobs/x.yaml", environ=environ or {})


def error_of(text: str, environ=None) -> str:
    with pytest.raises(InputError) as info:
        parse(text, environ)
    return str(info.value)


def test_defaults_are_the_tutorial_recipe():
    job = parse(MINIMAL)
    assert job == JobSpec(
        name="x", source="/jobs/x.yaml", num_classes=256,
        model=ModelSpec(prefix="/jobs/models/resnet-50", epoch=0, cut_layer="flatten0", variant=Variant.FULL),
        data=DataSpec(train="/jobs/data/train.rec", val="/jobs/data/val.rec", shape=(3, 224, 224),
                      rand_crop=True, rand_mirror=True),
        train=TrainSpec(epochs=8, batch_per_device=16, optimizer="sgd", optimizer_params={"learning_rate": 0.01},
                        initializer=InitializerSpec("xavier", {"rnd_type": "gaussian", "factor_type": "in",
                                                               "magnitude": 2})),
        cluster=ClusterSpec(workers="auto", servers="auto", devices=(0, 1, 2, 3, 4, 5, 6, 7), kvstore="auto"),
    )
    # On one machine "auto" is the tutorial's run: one worker driving GPUs 0-7, one server.
    from cluster.hosts import HostSpec
    from launcher.plan import assign_workers
    one = assign_workers(job.cluster, (HostSpec("localhost"),))
    assert (len(one.workers), one.devices, len(one.servers)) == (1, ((0, 1, 2, 3, 4, 5, 6, 7),), 1)
    assert job.cluster.effective_kvstore == "dist_sync_device"
    assert job.model.params_path == "/jobs/models/resnet-50-0000.params"


def test_cpu_devices_use_dist_sync():
    job = parse(MINIMAL + "cluster: {devices: cpu, workers: 2}\n")
    assert job.cluster.devices == CPUContexts(1) and job.cluster.effective_kvstore == "dist_sync"
    assert parse(MINIMAL + "cluster: {devices: 'gpu:2'}\n").cluster.devices == (0, 1)
    assert parse(MINIMAL + "cluster: {devices: [3, 5]}\n").cluster.devices == (3, 5)


def test_cpu_n_gives_each_worker_n_cpu_contexts():
    job = parse(MINIMAL + "cluster: {devices: 'cpu:2'}\n")
    assert job.cluster.devices == CPUContexts(2) and not job.cluster.uses_gpu
    assert job.cluster.effective_kvstore == "dist_sync"
    assert job.to_job_dict()["cluster"]["devices"] == "cpu:2" and job.to_job_dict()["cluster"]["kvstore"] == "auto"
    assert parse_job(MINIMAL, "/jobs/x.yaml", environ={}, overrides=["cluster.devices=cpu:3"]).cluster.devices == \
        CPUContexts(3)
    assert parse(MINIMAL + "cluster: {devices: cpu}\n").to_job_dict()["cluster"]["devices"] == "cpu"
    expects = "must be 'cpu', 'cpu:N' or 'gpu:N' (N from 1 to 256), or a list of distinct GPU ids such as [0, 1]"
    for bad in ("cpu:0", "cpu:x", "cpu:-1", "cpu:2.5", "cpu:"):
        assert error_of(MINIMAL + f"cluster:\n  devices: '{bad}'\n") == \
            f"/jobs/x.yaml:8: cluster.devices {expects}, got '{bad}'"
    with pytest.raises(InputError) as info:
        parse_job(MINIMAL, "/jobs/x.yaml", environ={}, overrides=["cluster.devices=cpu:0"])
    assert str(info.value) == f"--set cluster.devices=cpu:0: cluster.devices {expects}, got 'cpu:0'"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "jobs", "*.yaml"))))
def test_every_shipped_job_parses(path):
    job = load_job(path, environ={})
    assert job.num_classes >= 2 and job.name


def test_tutorial_jobs_match_the_published_runs():
    r50 = load_job(os.path.join(REPO, "jobs", "resnet50.yaml"), environ={})
    r152 = load_job(os.path.join(REPO, "jobs", "resnet152.yaml"), environ={})
    for job in (r50, r152):
        assert job.num_classes == 257  # the public rec files include 257.clutter
        assert job.train == TrainSpec()
        assert job.data.shape == (3, 224, 224) and job.data.rand_crop and job.data.rand_mirror
        assert job.cluster.devices == tuple(range(8))
        assert job.data.train.endswith("caltech-256-60-train.rec")
        assert job.model.url.startswith("http")
    assert r50.expect.min_accuracy == 0.77 and r152.expect.min_accuracy == 0.86
    assert r50.model.prefix.endswith("resnet-50") and r152.model.prefix.endswith("resnet-152")


def test_paths_expand_variables_and_home():
    assert expand_path("${D:-/tmp}/a.rec", "/jobs", {}) == "/tmp/a.rec"
    assert expand_path("${D:-/tmp}/a.rec", "/jobs", {"D": "/data"}) == "/data/a.rec"
    assert expand_path("a.rec", "/jobs", {}) == "/jobs/a.rec"
    assert expand_path("~/a.rec", "/jobs", {}) == os.path.expanduser("~/a.rec")


@pytest.mark.parametrize("text, expected", [
    (MINIMAL + "train:\n  epocs: 3\n",
     "/jobs/x.yaml:8: unknown key 'epocs' in train; did you mean 'epochs'?"),
    (MINIMAL.replace("model:", "modle:"),
     "/jobs/x.yaml:2: unknown key 'modle'; did you mean 'model'?"),
    (MINIMAL + "train:\n  epochs: eight\n",
     "/jobs/x.yaml:8: train.epochs must be an integer >= 1, got 'eight'"),
    (MINIMAL + "train:\n  epochs: 0\n",
     "/jobs/x.yaml:8: train.epochs must be an integer >= 1, got 0"),
    (MINIMAL + "cluster:\n  kvstore: dist_sink\n",
     "/jobs/x.yaml:8: cluster.kvstore must be one of auto, dist_sync, dist_sync_device, dist_async, "
     "dist_device_sync, got 'dist_sink'"),
    (MINIMAL + "cluster:\n  devices: gpu\n",
     "/jobs/x.yaml:8: cluster.devices must be 'cpu', 'cpu:N' or 'gpu:N' (N from 1 to 256), or a list of distinct "
     "GPU ids such as [0, 1], got 'gpu'"),
    (MINIMAL + "expect:\n  min_accuracy: 77\n",
     "/jobs/x.yaml:8: expect.min_accuracy must be a number between 0 and 1, got 77"),
    (MINIMAL + "data2: 1\n", "/jobs/x.yaml:7: unknown key 'data2'; did you mean 'data'?"),
    (MINIMAL.replace("num_classes: 256\n", ""), "/jobs/x.yaml:1: missing required key 'num_classes'"),
    (MINIMAL.replace("  val: data/val.rec\n", ""), "/jobs/x.yaml:4: missing required key 'data.val'"),
    (MINIMAL + "model: {prefix: a}\n", "/jobs/x.yaml:7: key 'model' appears twice"),
    (MINIMAL + "data:\n  shape: [3, 224]\n", "/jobs/x.yaml:7: key 'data' appears twice"),
    ("num_classes: [\n", "/jobs/x.yaml:2: not valid YAML: expected the node content, but found '<stream end>'"),
    ("- 1\n- 2\n", "/jobs/x.yaml:1: the job must be a mapping of keys, got list"),
    (MINIMAL + "train:\n  batch_per_device: true\n",
     "/jobs/x.yaml:8: train.batch_per_device must be an integer >= 1, got True"),
    (MINIMAL + "train:\n  top_k: 1\n",
     "/jobs/x.yaml:8: train.top_k must be an integer >= 2, got 1"),
    (MINIMAL + "train:\n  top_k: five\n",
     "/jobs/x.yaml:8: train.top_k must be an integer >= 2, got 'five'"),
    (MINIMAL.replace("prefix: models/resnet-50", "prefix: ${MODELS}/resnet-50"),
     "/jobs/x.yaml:3: environment variable MODELS is not set (set it, or write ${MODELS:-default})"),
    (MINIMAL + "model2: {}\n", "/jobs/x.yaml:7: unknown key 'model2'; did you mean 'model'?"),
    (MINIMAL + "train: {initializer: {type: xavier, magnitud: 3}}\n",
     "/jobs/x.yaml:7: unknown key 'magnitud' in train.initializer; did you mean 'magnitude'?"),
])
def test_mistakes_are_named_at_their_line(text, expected):
    assert error_of(text) == expected


def test_variant_and_shape_are_checked():
    assert "model.variant must be one of full, frozen, scratch" in error_of(
        MINIMAL.replace("prefix: models/resnet-50", "prefix: m\n  variant: freeze"))
    assert "data.shape must be [channels, height, width]" in error_of(
        MINIMAL.replace("  val: data/val.rec", "  val: v.rec\n  shape: [3, 224]"))


def test_top_k_defaults_to_five_and_reaches_the_workers_job():
    assert parse(MINIMAL).train.top_k == 5
    job = parse(MINIMAL + "train: {top_k: 3}\n")
    assert job.train.top_k == 3 and job.to_job_dict()["train"]["top_k"] == 3
    assert parse_job(MINIMAL, "/jobs/x.yaml", environ={}, overrides=["train.top_k=10"]).train.top_k == 10


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "jobs", "*.yaml"))))
def test_effective_spec_round_trips(path):
    import yaml
    job = load_job(path, environ={})
    again = parse_job(yaml.safe_dump(job.to_job_dict()), job.source, environ={})
    assert again == job


def test_an_image_folder_instead_of_rec_files():
    job = parse(MINIMAL.replace("  train: data/train.rec\n  val: data/val.rec\n",
                                "  images: {folder: photos, train_per_class: 30, exclude: [257.clutter]}\n"))
    assert job.data.train == "" and job.data.images.folder == "/jobs/photos"
    assert job.data.images.train_per_class == 30 and job.data.images.exclude == ("257.clutter",)
    assert job.data.images.resize == 256 and job.data.images.quality == 90
    import yaml
    assert parse_job(yaml.safe_dump(job.to_job_dict()), job.source, environ={}) == job
    assert error_of(MINIMAL.replace("  val: data/val.rec\n", "  val: v.rec\n  images: {folder: p}\n")) == \
        "/jobs/x.yaml:7: give data.images or data.train + data.val, not both"


def test_set_overrides_are_checked_like_the_file():
    job = parse_job(MINIMAL, "/jobs/x.yaml", environ={},
                    overrides=["train.epochs=4", "train.lr=0.005", "cluster.devices=cpu", "data.shape=[3, 32, 32]"])
    assert (job.train.epochs, job.train.optimizer_params, job.cluster.devices, job.data.shape) == \
        (4, {"learning_rate": 0.005}, CPUContexts(1), (3, 32, 32))
    assert parse_job(MINIMAL, "/jobs/x.yaml", environ={}, overrides=["name=other"]).name == "other"


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=0", "--set train.epochs=0: train.epochs must be an integer >= 1, got 0"),
    ("train.epoch=4", "--set train.epoch=4: unknown key 'epoch' in train; did you mean 'epochs'?"),
    ("train.epochs", "--set train.epochs: expected KEY.PATH=VALUE"),
    ("num_classes.x=1", "--set num_classes.x=1: num_classes is not a section"),
    ("train.epochs=[1", "--set train.epochs=[1: not valid YAML"),
])
def test_bad_overrides_name_the_override(override, expected):
    with pytest.raises(InputError) as err:
        parse_job(MINIMAL, "/jobs/x.yaml", environ={}, overrides=[override])
    assert str(err.value).startswith(expected), str(err.value)


def test_a_new_key_needs_one_declaration():
    """One ``key(...)`` line in a section: parsing, its default, suggestions, the job file and the worker see it."""
    import dataclasses

    import yaml

    from cluster.hosts import HostSpec
    from launcher.spec.checks import at_least as _int
    from launcher.spec.schema import key, section
    from launcher.plan import make_plan
    from tests.plan_literals import FACTS, inventory

    assert "cooldown_epochs" not in {field.name for field in dataclasses.fields(TrainSpec)}  # new to the schema
    with pytest.raises(InputError, match="unknown key 'cooldown_epochs' in train"):
        parse_job(MINIMAL + "train: {cooldown_epochs: 2}\n", "/jobs/x.yaml", environ={})

    @dataclasses.dataclass(frozen=True)
    class CoolTrain(TrainSpec):
        cooldown_epochs: int = key(0, check=_int(0), help="epochs at the last learning rate")

    @dataclasses.dataclass(frozen=True)
    class CoolJob(JobSpec):
        train: CoolTrain = section(CoolTrain, help="the training recipe")

    text = MINIMAL + "train: {cooldown_epochs: 2}\ncluster: {devices: cpu}\n"
    job = parse_job(text, "/jobs/x.yaml", environ={}, schema=CoolJob)
    assert job.train.cooldown_epochs == 2
    assert parse_job(MINIMAL, "/jobs/x.yaml", environ={}, schema=CoolJob).train.cooldown_epochs == 0
    with pytest.raises(InputError, match="unknown key 'cooldown_epoch' in train; did you mean 'cooldown_epochs'"):
        parse_job(MINIMAL + "train: {cooldown_epoch: 2}\n", "/jobs/x.yaml", environ={}, schema=CoolJob)
    assert job.to_job_dict()["train"]["cooldown_epochs"] == 2
    assert parse_job(yaml.safe_dump(job.to_job_dict()), job.source, environ={}, schema=CoolJob) == job
    plan = make_plan(job, [HostSpec("localhost")], FACTS, inventory=inventory())
    assert {w.job["train"]["cooldown_epochs"] for w in plan.component.workers} == {2}  # the job each worker gets


def test_an_empty_mapping_value_survives_the_round_trip():
    """``optimizer_params: {}`` (the optimizer's own defaults) is a value, not an unset key."""
    import yaml
    job = parse(MINIMAL + "train: {optimizer: adam, optimizer_params: {}}\n")
    assert job.to_job_dict()["train"]["optimizer_params"] == {}
    assert parse_job(yaml.safe_dump(job.to_job_dict()), job.source, environ={}) == job


def test_shared_evaluation_needs_a_synchronous_kvstore():
    from launcher.spec.jobspec import parse_job
    text = MINIMAL + "cluster:\n  kvstore: dist_async\n"
    with pytest.raises(InputError, match=r"^/jobs/x.yaml:[89]: train.evaluation: shared needs a synchronous kvstore, not "
                                         r"dist_async .*\(set train.evaluation: worker0"):
        parse_job(text, "/jobs/x.yaml", environ={})
    assert parse_job(text + "train:\n  evaluation: worker0\n", "/jobs/x.yaml", environ={}).train.evaluation == \
        "worker0"


def test_gradient_compression_is_checked_where_it_is_written():
    worker0 = MINIMAL + "train:\n  evaluation: worker0\n"
    job = parse(worker0 + "cluster:\n  gradient_compression: {type: 2bit, threshold: 0.25}\n")
    assert (job.cluster.gradient_compression.type, job.cluster.gradient_compression.threshold) == ("2bit", 0.25)
    assert job.to_job_dict()["cluster"]["gradient_compression"] == {"type": "2bit", "threshold": 0.25}
    assert parse(worker0 + "cluster:\n  gradient_compression: {type: 2bit}\n").cluster.gradient_compression.threshold \
        == 0.5
    assert parse(MINIMAL).cluster.gradient_compression is None and "gradient_compression" not in \
        parse(MINIMAL).to_job_dict()["cluster"]
    assert error_of(MINIMAL + "cluster:\n  gradient_compression: {type: 2bit}\n").startswith(
        "/jobs/x.yaml:8: cluster.gradient_compression needs train.evaluation: worker0 (shared evaluation sums")
    assert error_of(worker0 + "cluster:\n  kvstore: dist_async\n  gradient_compression: {type: 2bit}\n") == (
        "/jobs/x.yaml:11: cluster.gradient_compression needs a synchronous kvstore, not dist_async "
        "(cluster.kvstore: dist_sync or dist_sync_device)")
    assert "threshold" in error_of(worker0 + "cluster:\n  gradient_compression: {type: 2bit, threshold: 0}\n")
    assert "one of 2bit" in error_of(worker0 + "cluster:\n  gradient_compression: {type: 1bit}\n")


@pytest.mark.parametrize("schedule, said", [
    ("{type: multistep}", "6: train.lr_schedule: multistep needs at_epochs, e.g. [5, 8]"),
    ("{type: multistep, at_epochs: [3, 2]}", "6: train.lr_schedule.at_epochs must be a list of epochs, each >= 1, in "
                                             "increasing order, got [3, 2]"),
    ("{type: step, factor: 0}", "6: train.lr_schedule.factor must be a number above 0, at most 1, got 0"),
    ("{type: cosine, factor: 0.5}", "6: train.lr_schedule.factor is not read by a cosine schedule"),
    ("{type: cosine, final_lr: -1}", "6: train.lr_schedule.final_lr must be a learning rate >= 0, got -1"),
    ("{type: linear}", "6: train.lr_schedule.type must be one of step, multistep, cosine, got 'linear'"),
])
def test_a_learning_rate_schedule_is_checked_at_its_line(schedule, said):
    """Issue 27: train.lr_schedule (step, multistep, cosine), each key the type reads, checked before anything."""
    text = (f"num_classes: 2\nmodel: {{prefix: m}}\ndata: {{train: t, val: v}}\ntrain:\n  epochs: 4\n"
            f"  lr_schedule: {schedule}\n")
    with pytest.raises(InputError) as err:
        parse_job(text, "/j.yaml", environ={})
    assert str(err.value) == f"/j.yaml:{said}"
    with pytest.raises(InputError, match="a cosine schedule needs epochs after the warm-up"):
        parse_job(text.replace(schedule, "{type: cosine}") + "  warmup_epochs: 4\n", "/j.yaml", environ={})


def test_early_stopping_needs_every_worker_to_know_the_accuracy():
    text = ("num_classes: 2\nmodel: {prefix: m}\ndata: {train: t, val: v}\ntrain:\n  evaluation: worker0\n"
            "  early_stop: {patience: 2}\n")
    with pytest.raises(InputError) as err:
        parse_job(text, "/j.yaml", environ={})
    assert str(err.value).startswith("/j.yaml:6: train.early_stop needs train.evaluation: shared")
    assert parse_job(text.replace("worker0", "shared"), "/j.yaml", environ={}).train.early_stop.patience == 2
