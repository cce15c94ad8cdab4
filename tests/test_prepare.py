"""mxft-prepare on generated image folders, and against MXNet's own im2rec.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest

from launcher.data.recfile import read_index, read_labels
from testing.processes import run_id_from
from tests.helpers import REPO, demo_job, run_launch, write_job

PREPARE = [sys.executable, "-m", "launcher.prepare_cli"]
COLORS = {"a_rgb_jpeg": (200, 40, 40), "b_gray_png": (120, 120, 120), "c_few": (40, 200, 40),
          "d_with_corrupt": (40, 40, 200), "zz_clutter": (0, 0, 0)}


def make_folder(root, *, counts=None, corrupt=("d_with_corrupt/broken.jpg",)) -> str:
    """Classes of flat-coloured noisy images of several sizes; PNG and JPEG, gray and RGB."""
    counts = counts or {"a_rgb_jpeg": 9, "b_gray_png": 8, "c_few": 3, "d_with_corrupt": 7, "zz_clutter": 5}
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            height, width = int(rng.integers(20, 90)), int(rng.integers(20, 90))
            image = np.clip(np.array(COLORS[name]) + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)
            if name.startswith("b_"):
                cv2.imwrite(os.path.join(root, name, f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
            else:
                cv2.imwrite(os.path.join(root, name, f"{i:03d}.jpg"), image)
    for rel in corrupt:
        with open(os.path.join(root, rel), "wb") as handle:
            handle.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return str(root)


def run_prepare(*args) -> subprocess.CompletedProcess:
    return subprocess.run(PREPARE + [str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=300)


def records(prefix: str) -> list[tuple[float, bytes]]:
    reader = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "r")
    out = []
    for key in reader.keys:
        header, payload = mx.recordio.unpack(reader.read_idx(key))
        out.append((header.label, payload))
    return out


def test_counts_labels_sizes_and_corrupt_files(tmp_path):
    images = make_folder(tmp_path / "images")
    out = tmp_path / "out" / "set"
    result = run_prepare(images, out, "--train-per-class", 4, "--resize", 32, "--exclude", "zz_clutter",
                         "--workers", 2)
    assert result.returncode == 0, result.stderr
    assert "skipped unreadable image" in result.stdout and "broken.jpg" in result.stdout
    assert "class c_few has only 3 images" in result.stdout
    assert (tmp_path / "out" / "set-labels.txt").read_text() == \
        "0\ta_rgb_jpeg\n1\tb_gray_png\n2\tc_few\n3\td_with_corrupt\n"
    summary = json.loads((tmp_path / "out" / "set-summary.json").read_text())
    train, val = records(str(out) + "-train"), records(str(out) + "-val")
    # 8 images in d (7 + broken): the broken one is in train or val, never packed.
    assert len(train) + len(val) == 9 + 8 + 3 + 7
    assert summary["train"]["images"] == len(train) and summary["val"]["images"] == len(val)
    assert summary["train"]["unreadable"] + summary["val"]["unreadable"] == ["d_with_corrupt/broken.jpg"]
    per_class = {label: sum(1 for lab, _ in train if lab == label) for label in range(4)}
    assert per_class[0] == 4 and per_class[1] == 4 and per_class[2] == 3 and per_class[3] in (3, 4)
    assert sorted({lab for lab, _ in val}) == [0, 1, 3]
    for _, payload in train + val:
        image = mx.image.imdecode(payload)
        assert min(image.shape[:2]) == 32 and image.shape[2] == 3
    lst = (tmp_path / "out" / "set-train.lst").read_text().splitlines()
    assert len(lst) == len(train) and lst[0].count("\t") == 2
    # ImageRecordIter reads every record; the pure-Python index agrees.
    it = mx.io.ImageRecordIter(path_imgrec=str(out) + "-val.rec", data_shape=(3, 28, 28), batch_size=1,
                               preprocess_threads=1)
    assert sum(1 for _ in it) == len(val) == len(read_index(str(out) + "-val.rec"))
    assert sorted(read_labels(str(out) + "-train.rec", read_index(str(out) + "-train.rec"))) == \
        sorted(lab for lab, _ in train)


def test_deterministic_for_a_seed(tmp_path):
    images = make_folder(tmp_path / "images")
    for name in ("one", "two"):
        assert run_prepare(images, tmp_path / name, "--train-per-class", 4, "--resize", 32).returncode == 0
    for part in ("train.rec", "train.idx", "val.rec", "val.lst"):
        assert (tmp_path / f"one-{part}").read_bytes() == (tmp_path / f"two-{part}").read_bytes()
    assert run_prepare(images, tmp_path / "three", "--train-per-class", 4, "--resize", 32, "--seed", 1).returncode == 0
    assert (tmp_path / "three-train.lst").read_text() != (tmp_path / "one-train.lst").read_text()


def test_a_class_without_readable_training_images_is_an_error(tmp_path):
    images = make_folder(tmp_path / "images", counts={"a_rgb_jpeg": 4, "c_few": 2},
                         corrupt=("c_few/000.jpg", "c_few/001.jpg"))
    result = run_prepare(images, tmp_path / "out", "--train-per-class", 2, "--resize", 32)
    assert result.returncode == 1
    assert "no readable training image in class(es) c_few" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["nope", "out"], "nope: image folder not found"),
    (["IMAGES", "out", "--exclude", "zz"], "--exclude names no class folder: zz"),
])
def test_bad_input(tmp_path, args, message):
    images = make_folder(tmp_path / "images", counts={"a_rgb_jpeg": 2}, corrupt=())
    args = [images if a == "IMAGES" else str(tmp_path / a) if a in ("nope", "out") else a for a in args]
    result = run_prepare(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_im2rec_and_mxft_prepare_files_train_the_same_job(tmp_path, demo_assets):
    images = make_folder(tmp_path / "images", counts={"a_rgb_jpeg": 12, "b_gray_png": 12, "c_few": 12,
                                                      "d_with_corrupt": 12}, corrupt=())
    im2rec = os.path.join(os.path.dirname(mx.__file__), "tools", "im2rec.py")
    prefix = str(tmp_path / "im2rec")
    subprocess.run([sys.executable, im2rec, "--list", "--recursive", "--train-ratio", "0.5", prefix, images],
                   check=True, capture_output=True)
    for part in ("train", "val"):
        subprocess.run([sys.executable, im2rec, "--resize", "32", "--quality", "90", "--num-thread", "1",
                        f"{prefix}_{part}", images], check=True, capture_output=True)
    assert run_prepare(images, tmp_path / "mxft", "--train-per-class", 6, "--resize", 32).returncode == 0
    accuracies = {}
    for name, train, val in (("im2rec", f"{prefix}_train.rec", f"{prefix}_val.rec"),
                             ("mxft", f"{tmp_path}/mxft-train.rec", f"{tmp_path}/mxft-val.rec")):
        job = demo_job(demo_assets, num_classes=4, data={"train": train, "val": val},
                       train={"epochs": 8}, cluster={"workers": 2, "servers": 1})
        result = run_launch([write_job(tmp_path / f"{name}.yaml", job), "--run-root", str(tmp_path / "runs")],
                            cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr
        accuracies[name] = float(result.stdout.strip().splitlines()[-1].split()[2].rstrip(","))
        assert result.stdout.strip().endswith("(24 images, 2 workers)")  # every validation image, once
    # Flat colours per class, 24 training images: both packings train well above chance (0.25);
    # runs differ by up to ~0.25 from one to the next with so few images.
    assert accuracies["im2rec"] > 0.6 and accuracies["mxft"] > 0.6, accuracies

    # The other way round: im2rec.py packs from mxft-prepare's .lst, and reads back the same labels.
    subprocess.run([sys.executable, im2rec, "--resize", "32", "--num-thread", "1", f"{tmp_path}/mxft-val", images],
                   check=True, capture_output=True)
    repacked = records(f"{tmp_path}/mxft-val")
    listed = [line.split("\t") for line in (tmp_path / "mxft-val.lst").read_text().splitlines()]
    assert [label for label, _ in repacked] == [float(fields[1]) for fields in listed]


@pytest.mark.integration
def test_a_job_can_name_an_image_folder(tmp_path, demo_assets):
    images = make_folder(tmp_path / "images", counts={"a_rgb_jpeg": 10, "b_gray_png": 10, "c_few": 10}, corrupt=())
    job = demo_job(demo_assets, num_classes=3, train={"epochs": 2}, cluster={"workers": 1})
    job["data"] = {"images": {"folder": images, "train_per_class": 5, "resize": 32}, "shape": [3, 28, 28],
                   "preprocess_threads": 1}
    path = write_job(tmp_path / "job.yaml", job)
    args = [path, "--run-root", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    dry = run_launch([*args, "--dry-run"], cwd=str(tmp_path))  # packs into the cache (issue 28: it refused)
    assert dry.returncode == 0, dry.stderr
    assert "packed 15 training and 15 validation images of 3 classes" in dry.stdout and "15 records" in dry.stdout
    assert not (tmp_path / "runs").exists()
    first = run_launch(args, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "[mxft] packing" not in first.stdout  # the dry run's packing is the launch's
    assert first.stdout.strip().endswith("(15 images, 1 worker)")
    run_dir = tmp_path / "runs" / run_id_from(first.stdout)  # the class names beside the model (issue 27)
    assert (run_dir / "checkpoint" / "demo-labels.txt").read_text() == "0\ta_rgb_jpeg\n1\tb_gray_png\n2\tc_few\n"
    assert json.loads((run_dir / "result.json").read_text())["class_names_file"] == "checkpoint/demo-labels.txt"
    second = run_launch(args, cwd=str(tmp_path))
    assert second.returncode == 0 and "[mxft] packing" not in second.stdout


# The launcher's own path to packing (its SIGTERM handler installed, as mxft-launch runs it), 30 times.
_PACK_THIRTY = """
import os, signal, sys
from launcher import cli
from launcher.data import images
from launcher.spec.jobspec import load_job
signal.signal(signal.SIGTERM, cli._raise_interrupted)
job = load_job(sys.argv[1])
for i in range(30):
    images.pack_image_folder(job, os.path.join(sys.argv[2], str(i)), echo=lambda text: None)
print("packed 30 times")
"""


@pytest.mark.integration  # a stress test: 30 process pools
def test_packing_thirty_times_through_the_launch_path_never_hangs(tmp_path):
    images = make_folder(tmp_path / "images", counts={"a_rgb_jpeg": 4, "b_gray_png": 4}, corrupt=())
    job = write_job(tmp_path / "job.yaml", {"num_classes": 2, "model": {"prefix": "/nonexistent/m"},
                                            "data": {"images": {"folder": images, "train_per_class": 2}}})
    done = subprocess.run([sys.executable, "-c", _PACK_THIRTY, job, str(tmp_path / "cache")], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=240)
    assert done.returncode == 0 and "packed 30 times" in done.stdout, done.stderr[-3000:]
