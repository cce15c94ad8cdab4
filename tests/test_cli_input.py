"""Bad input through the real CLI: one line naming the file, exit 2, nothing started or written."""
from __future__ import annotations

import os
import shutil
from importlib import metadata
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, demo_job, run_launch, write_job


@pytest.fixture()
def assets_copy(demo_assets, tmp_path):
    """A private copy of the demo assets that a test may damage."""
    target = tmp_path / "assets"
    shutil.copytree(demo_assets, target, ignore=shutil.ignore_patterns(".lock"))
    return str(target)


def launch_bad(tmp_path, args) -> str:
    result = run_launch(args + ["--run-root", str(tmp_path / "runs")], cwd=str(tmp_path), timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists()
    return lines[0]


def job_file(tmp_path, assets, **sections) -> str:
    return write_job(tmp_path / "job.yaml", demo_job(assets, **sections))


def test_typo_key(tmp_path, assets_copy):
    path = job_file(tmp_path, assets_copy, train={"epochz": 3})
    line = launch_bad(tmp_path, [path])
    assert line.startswith(f"mxft-launch: error: {path}:") and "unknown key 'epochz' in train; did you mean 'epochs'?" in line


def test_wrong_type(tmp_path, assets_copy):
    path = job_file(tmp_path, assets_copy, cluster={"workers": "two"})
    assert "cluster.workers must be 'auto' or an integer from 1 to 4096, got 'two'" in launch_bad(tmp_path, [path])


def test_missing_rec(tmp_path, assets_copy):
    os.remove(os.path.join(assets_copy, "digits5to9-val.rec"))
    line = launch_bad(tmp_path, [job_file(tmp_path, assets_copy)])
    assert line == f"mxft-launch: error: {assets_copy}/digits5to9-val.rec: file not found (fix the path in the job " \
                   "file, or pack the images with mxft-prepare (or MXNet's im2rec.py), or name the image folder as " \
                   "data.images)"


def test_missing_params(tmp_path, assets_copy):
    os.remove(os.path.join(assets_copy, "pretrained-digits0to4-0000.params"))
    line = launch_bad(tmp_path, [job_file(tmp_path, assets_copy)])
    assert f"{assets_copy}/pretrained-digits0to4-0000.params: model params not found" in line


def test_corrupt_params(tmp_path, assets_copy):
    with open(os.path.join(assets_copy, "pretrained-digits0to4-0000.params"), "r+b") as handle:
        handle.write(b"garbage!")
    assert "is not an MXNet params file (bad header)" in launch_bad(tmp_path, [job_file(tmp_path, assets_copy)])


def test_truncated_params_are_refused_before_anything_starts(tmp_path, assets_copy):
    params = os.path.join(assets_copy, "pretrained-digits0to4-0000.params")
    with open(params, "r+b") as handle:  # a correct header, cut short: a download that stopped halfway
        handle.truncate(os.path.getsize(params) // 2)
    cache = tmp_path / "cache"
    line = launch_bad(tmp_path, [job_file(tmp_path, assets_copy), "--cache-dir", str(cache)])
    assert line.startswith(f"mxft-launch: error: {params}: is not an MXNet params file (cut short at byte "
                           f"{os.path.getsize(params)}: array "), line
    assert line.endswith("(the download may be incomplete; fetch it again)")
    assert not cache.exists()  # no shard, no trimmed copy: nothing was staged


def test_params_checksum_mismatch(tmp_path, assets_copy):
    path = job_file(tmp_path, assets_copy, model={"params_sha256": "0" * 64})
    assert "sha256 is" in launch_bad(tmp_path, [path])


def test_layer_not_in_graph(tmp_path, assets_copy):
    path = job_file(tmp_path, assets_copy, model={"cut_layer": "flatten9"})
    line = launch_bad(tmp_path, [path])
    assert f"{path}: model.cut_layer 'flatten9' is not a layer of" in line and "flatten0, fc1, softmax" in line


def test_labels_out_of_range(tmp_path, assets_copy):
    path = job_file(tmp_path, assets_copy, num_classes=3)
    line = launch_bad(tmp_path, [path])
    assert line == (f"mxft-launch: error: {assets_copy}/digits5to9-train.rec: labels 0..4 (5 distinct), but "
                    "num_classes 3 allows labels 0..2 only, not 3-4 (set num_classes to 5 or re-pack the data)")


def test_classes_without_training_images(tmp_path, assets_copy):
    path = job_file(tmp_path, assets_copy, num_classes=7)
    assert "2 of 7 classes have no training images: 5-6" in launch_bad(tmp_path, [path])


def test_missing_job_and_hosts_files(tmp_path):
    assert launch_bad(tmp_path, [str(tmp_path / "nope.yaml")]).endswith("nope.yaml: job file not found")
    job = write_job(tmp_path / "job.yaml", {"num_classes": 2, "model": {"prefix": "m"},
                                            "data": {"train": "t.rec", "val": "v.rec"}})
    assert launch_bad(tmp_path, ["--hosts", str(tmp_path / "h.txt"), job]).endswith("h.txt: hosts file not found")


def test_bad_hosts_line(tmp_path, assets_copy):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("localhost\nlocalhost slots=zero\n")
    line = launch_bad(tmp_path, ["--hosts", str(hosts), job_file(tmp_path, assets_copy)])
    assert line == f"mxft-launch: error: {hosts}:2: slots must be a whole number >= 1, got 'zero'"


@pytest.mark.parametrize("train, sets, expected", [
    ({}, ["train.lr=abc"], "--set train.lr=abc: learning_rate must be a number, not 'abc' (see mx.optimizer.SGD)"),
    ({}, ["train.lr=-1"], "--set train.lr=-1: learning_rate must be above 0, not -1 (see mx.optimizer.SGD)"),
    ({}, ["train.optimizer_params.bogus=1"], "--set train.optimizer_params.bogus=1: MXNet's sgd optimizer has no "
                                             "parameter 'bogus' (it takes: clip_gradient, lazy_update, learning_rate, "
                                             "momentum, multi_precision, rescale_grad, wd) (see mx.optimizer.SGD)"),
    ({}, ["train.optimizer_params.lr_scheduler=cosine"], "--set train.optimizer_params.lr_scheduler=cosine: "
                                                         "lr_scheduler cannot be given by a job (an object: a job "
                                                         "gives learning-rate warm-up with train.warmup_epochs)"),
    ({"optimizer": "adam", "optimizer_params": {"learning_rate": 0.001, "momentum": 0.9}}, [],
     "MXNet's adam optimizer has no parameter 'momentum' (it takes: beta1, beta2, clip_gradient, epsilon, "),
])
def test_optimizer_settings_are_checked_before_anything_starts(tmp_path, assets_copy, train, sets, expected):
    """Issue 27: MXNet itself refused these at the first batch, after every host had been staged; exit 2 now, from
    mxnet's own optimizer source (parsed, not imported), naming the --set item or the job file's line."""
    path = job_file(tmp_path, assets_copy, train=train)
    line = launch_bad(tmp_path, [path] + [arg for item in sets for arg in ("--set", item)])
    assert line.startswith("mxft-launch: error: ") and expected in line, line
    assert sets or line.startswith(f"mxft-launch: error: {path}:"), line


CUDA_BUILD = any((d.metadata["Name"] or "").lower().startswith("mxnet-cu") for d in metadata.distributions())


@pytest.mark.skipif(CUDA_BUILD, reason="this machine's mxnet is a CUDA build: the refusal is for a CPU build")
def test_a_gpu_job_on_this_machine_without_a_cuda_build_is_refused_before_anything_starts(tmp_path, assets_copy):
    """Issue 28: this machine is preflighted as a remote host is (its mxnet here is a CPU build): exit 2, not every
    process failing with MXNet's 'Compile with USE_CUDA=1' after they started."""
    line = launch_bad(tmp_path, [job_file(tmp_path, assets_copy, cluster={"devices": "gpu:1", "workers": 1})])
    assert line == ("mxft-launch: error: host localhost: the job puts 1 GPUs there but its mxnet has no CUDA "
                    "(install mxnet-cu* there)"), line


def test_launcher_does_not_import_mxnet():
    code = "import sys, launcher.cli; assert 'mxnet' not in sys.modules, 'mxnet imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, demo_assets):
    path = job_file(tmp_path, demo_assets)
    cache = tmp_path / "cache"
    result = run_launch([path, "--dry-run", "--run-root", str(tmp_path / "runs"), "--cache-dir", str(cache)],
                        cwd=str(tmp_path), timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert "scheduler" in result.stdout and "worker 1" in result.stdout and "DMLC_NODE_HOST=127.0.0.1" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["job.yaml"]
    assert yaml.safe_load(open(path))["cluster"]["workers"] == 2


def test_missing_ssh_config(tmp_path, assets_copy):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("10.231.77.11\n")
    line = launch_bad(tmp_path, ["--hosts", str(hosts), "--ssh-config", str(tmp_path / "nope"),
                                 job_file(tmp_path, assets_copy)])
    assert line == f"mxft-launch: error: {tmp_path}/nope: SSH config file not found (check --ssh-config)"


def test_localhost_mixed_with_remote_hosts(tmp_path, assets_copy):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("10.231.77.11\nlocalhost\n")
    line = launch_bad(tmp_path, ["--hosts", str(hosts), job_file(tmp_path, assets_copy)])
    assert line == (f"mxft-launch: error: {hosts}:2: 'localhost' cannot be mixed with remote hosts "
                    "(list this machine by an address the other hosts can reach)")
