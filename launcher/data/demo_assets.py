"""The demo's embedded data and "pretrained" model, built once and cached.

``python -m launcher.data.demo_assets OUT_DIR`` makes, from scikit-learn's digits (1,797
real 8x8 scans of handwritten digits, shipped inside the package, upscaled to 32x32):

* ``pretrained-digits0to4-symbol.json`` + ``-0000.params``: a small ResNet (the layer
  names of MXNet's ResNets: ``flatten0``, ``fc1``, ``softmax``) trained on digits 0-4,
  standing in for an ImageNet checkpoint;
* ``digits5to9-train.rec/.idx``: digits 5-9 (labels 0-4), 10 images per class, the
  fine-tuning set; ``digits5to9-val.rec/.idx``: every other image of digits 5-9.

The fine-tuning task shares no class with pretraining, as Caltech-256 shares few with
ImageNet. Everything is seeded, so every machine builds the same files. A manifest
written last marks a complete build; concurrent builders wait on a lock.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time

import numpy as np

from launcher.data.cachefile import replacing

VERSION = 6
SIDE = 32
CROP = 28
PRETRAIN_DIGITS = (0, 1, 2, 3, 4)
FINETUNE_DIGITS = (5, 6, 7, 8, 9)
TRAIN_PER_CLASS = 10
SEED = 20261128
PRETRAINED = "pretrained-digits0to4"
FILES = (f"{PRETRAINED}-symbol.json", f"{PRETRAINED}-0000.params",
         "digits5to9-train.rec", "digits5to9-train.idx", "digits5to9-val.rec", "digits5to9-val.idx")


def upscale(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    """Bilinear resize of a digits image (values 0-16) to ``side`` x ``side`` uint8."""
    src = np.linspace(0, image.shape[0] - 1, side)
    rows = np.array([np.interp(src, np.arange(image.shape[1]), row) for row in image])
    out = np.array([np.interp(src, np.arange(image.shape[0]), col) for col in rows.T]).T
    return np.clip(out * (255.0 / 16.0), 0, 255).astype(np.uint8)


def mini_resnet(num_classes: int, *, widths=(16, 32, 64)):
    """A pre-activation ResNet small enough to train on 2 cores, named like MXNet's ResNets."""
    import mxnet as mx
    sym = mx.sym
    data = sym.Variable("data")
    body = sym.BatchNorm(data, fix_gamma=True, eps=2e-5, name="bn_data")
    body = sym.Convolution(body, num_filter=widths[0], kernel=(3, 3), pad=(1, 1), no_bias=True, name="conv0")
    for stage, width in enumerate(widths, 1):
        stride = (1, 1) if stage == 1 else (2, 2)
        name = f"stage{stage}_unit1"
        bn1 = sym.BatchNorm(body, fix_gamma=False, eps=2e-5, name=f"{name}_bn1")
        act1 = sym.Activation(bn1, act_type="relu", name=f"{name}_relu1")
        conv1 = sym.Convolution(act1, num_filter=width, kernel=(3, 3), stride=stride, pad=(1, 1),
                                no_bias=True, name=f"{name}_conv1")
        bn2 = sym.BatchNorm(conv1, fix_gamma=False, eps=2e-5, name=f"{name}_bn2")
        act2 = sym.Activation(bn2, act_type="relu", name=f"{name}_relu2")
        conv2 = sym.Convolution(act2, num_filter=width, kernel=(3, 3), pad=(1, 1), no_bias=True,
                                name=f"{name}_conv2")
        shortcut = body if stage == 1 else sym.Convolution(act1, num_filter=width, kernel=(1, 1), stride=stride,
                                                           no_bias=True, name=f"{name}_sc")
        body = conv2 + shortcut
    body = sym.BatchNorm(body, fix_gamma=False, eps=2e-5, name="bn1")
    body = sym.Activation(body, act_type="relu", name="relu1")
    body = sym.Pooling(body, global_pool=True, kernel=(7, 7), pool_type="avg", name="pool1")
    body = sym.Flatten(body, name="flatten0")
    body = sym.FullyConnected(body, num_hidden=num_classes, name="fc1")
    return sym.SoftmaxOutput(body, name="softmax")


def _split(images: np.ndarray, digits: np.ndarray, rng: np.random.Generator):
    """Fine-tuning train/val split: TRAIN_PER_CLASS random images per class for training."""
    train, val = [], []
    for label, digit in enumerate(FINETUNE_DIGITS):
        members = rng.permutation(np.flatnonzero(digits == digit))
        train += [(images[i], label) for i in members[:TRAIN_PER_CLASS]]
        val += [(images[i], label) for i in members[TRAIN_PER_CLASS:]]
    return [train[i] for i in rng.permutation(len(train))], [val[i] for i in rng.permutation(len(val))]


def _write_rec(prefix: str, samples) -> None:
    import mxnet as mx
    from launcher.data.png import encode
    writer = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for key, (image, label) in enumerate(samples):
        header = mx.recordio.IRHeader(0, float(label), key, 0)
        writer.write_idx(key, mx.recordio.pack(header, encode(image)))
    writer.close()


def _crops(images: np.ndarray, rng: np.random.Generator, copies: int) -> np.ndarray:
    """``copies`` random CROP x CROP crops of each image, as 3-channel float batches."""
    out = []
    for _ in range(copies):
        ys, xs = rng.integers(0, SIDE - CROP + 1, size=(2, len(images)))
        out.append(np.stack([img[y:y + CROP, x:x + CROP] for img, y, x in zip(images, ys, xs)]))
    crops = np.concatenate(out).astype(np.float32)
    return np.repeat(crops[:, None], 3, axis=1)


def _pretrain(images: np.ndarray, digits: np.ndarray, prefix: str, rng: np.random.Generator) -> dict:
    """Train mini_resnet on digits 0-4; returns its held-out accuracy."""
    import mxnet as mx
    mx.random.seed(SEED)
    np.random.seed(SEED % 2**32)  # NDArrayIter shuffles with numpy's global generator
    mask = np.isin(digits, PRETRAIN_DIGITS)
    order = rng.permutation(np.flatnonzero(mask))
    held_out, fit_on = order[:100], order[100:]
    copies = 4
    train_x = _crops(images[fit_on], rng, copies)
    train_y = np.tile(digits[fit_on], copies).astype(np.float32)
    centre = (SIDE - CROP) // 2
    val_x = np.repeat(images[held_out][:, None, centre:centre + CROP, centre:centre + CROP], 3, axis=1)
    train_iter = mx.io.NDArrayIter(train_x, train_y, batch_size=64, shuffle=True)
    val_iter = mx.io.NDArrayIter(val_x.astype(np.float32), digits[held_out].astype(np.float32), batch_size=50)
    mod = mx.mod.Module(mini_resnet(len(PRETRAIN_DIGITS)), context=mx.cpu())
    mod.fit(train_iter, num_epoch=12, optimizer="sgd",  # 4 epochs: fine-tuning varied 0.75-0.88 by seed
            optimizer_params={"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4},
            initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    accuracy = dict(mod.score(val_iter, "acc"))["accuracy"]
    mod.save_checkpoint(prefix, 0)
    return {"pretrain_heldout_accuracy": round(float(accuracy), 4)}


def is_built(out_dir: str) -> bool:
    try:
        with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    return manifest.get("version") == VERSION and all(os.path.isfile(os.path.join(out_dir, f)) for f in FILES)


def build(out_dir: str) -> dict:
    """Build the assets into ``out_dir`` unless a complete build is there; returns the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest_path = os.path.join(out_dir, "manifest.json")
        if is_built(out_dir):
            with open(manifest_path, encoding="utf-8") as handle:
                return json.load(handle)
        from sklearn.datasets import load_digits
        started = time.time()
        digits = load_digits()
        images = np.stack([upscale(image) for image in digits.images])
        rng = np.random.default_rng(SEED)
        train, val = _split(images, digits.target, rng)
        _write_rec(os.path.join(out_dir, "digits5to9-train"), train)
        _write_rec(os.path.join(out_dir, "digits5to9-val"), val)
        stats = _pretrain(images, digits.target, os.path.join(out_dir, PRETRAINED), rng)
        manifest = {"version": VERSION, "train_images": len(train), "val_images": len(val),
                    "build_s": round(time.time() - started, 1), **stats}
        with replacing(manifest_path, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
        return manifest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m launcher.data.demo_assets OUT_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(build(argv[0])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
