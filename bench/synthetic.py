"""Stand-ins of the real shapes for the tutorial's checkpoints and Caltech-256 ``.rec`` files.

mxft checks a job's files before it plans (``launcher/data/inputs.py``: the params file's structure,
the cut layer in the symbol, every label of the ``.rec`` through its ``.idx``), so a dry run of
``jobs/resnet152.yaml`` or ``jobs/resnet50.yaml`` needs files that pass those checks. The real
ones (data.mxnet.io) cannot be downloaded everywhere; these have their exact shapes:

* ``resnet-DEPTH-symbol.json`` + ``resnet-DEPTH-0000.params``: the pre-activation ResNet that
  MXNet's ``example/image-classification/symbols/resnet.py`` builds (the published checkpoints
  were made with it; same layer names, bottleneck units), with random weights of every array's
  real shape. Default classes: 11221 for 152 layers (ImageNet-11k), 1000 for 50 (ImageNet-1k).
* ``caltech-256-60-train.rec/.idx`` (60 records for each of the 257 labels 0-256: 15,420) and
  ``caltech-256-60-val.rec/.idx`` (the rest of the 30,607 images: 15,187, spread evenly over the
  labels), written with mxft's own RecordIO writer; each record is a tiny 8x8 JPEG with its label.

The files are useless for training (random weights, one-colour images) and their byte sizes are
not the real ones, except the params file's, which is.

    python -m bench.synthetic OUT_DIR [--depth 50|152] [--classes N]   # the checkpoint
    python -m bench.synthetic --caltech OUT_DIR                         # the .rec/.idx files
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys

from launcher.data.cachefile import temp_name
from launcher.data.recfile import RecordWriter

UNITS_BY_DEPTH = {50: (3, 4, 6, 3), 152: (3, 8, 36, 3)}
FILTERS = (64, 256, 512, 1024, 2048)
CLASSES_BY_DEPTH = {50: 1000, 152: 11221}
INPUT_SHAPE = (1, 3, 224, 224)
BN_EPS = 2e-5
BN_MOMENTUM = 0.9

CALTECH_LABELS = 257            # 256 object classes and 257.clutter, labels 0-256
CALTECH_TRAIN_PER_CLASS = 60
CALTECH_IMAGES = 30607
CALTECH_PREFIX = "caltech-256-60"


def bottleneck_unit(data, num_filter: int, stride: int, *, dim_match: bool, name: str):
    """One pre-activation bottleneck unit: BN-ReLU-conv 1x1, 3x3 (strided), 1x1, plus the shortcut."""
    import mxnet as mx
    sym = mx.sym
    inner = num_filter // 4
    bn1 = sym.BatchNorm(data, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_bn1")
    act1 = sym.Activation(bn1, act_type="relu", name=f"{name}_relu1")
    conv1 = sym.Convolution(act1, num_filter=inner, kernel=(1, 1), stride=(1, 1), pad=(0, 0), no_bias=True,
                            name=f"{name}_conv1")
    bn2 = sym.BatchNorm(conv1, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_bn2")
    act2 = sym.Activation(bn2, act_type="relu", name=f"{name}_relu2")
    conv2 = sym.Convolution(act2, num_filter=inner, kernel=(3, 3), stride=(stride, stride), pad=(1, 1),
                            no_bias=True, name=f"{name}_conv2")
    bn3 = sym.BatchNorm(conv2, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name=f"{name}_bn3")
    act3 = sym.Activation(bn3, act_type="relu", name=f"{name}_relu3")
    conv3 = sym.Convolution(act3, num_filter=num_filter, kernel=(1, 1), stride=(1, 1), pad=(0, 0), no_bias=True,
                            name=f"{name}_conv3")
    if dim_match:
        shortcut = data
    else:
        shortcut = sym.Convolution(act1, num_filter=num_filter, kernel=(1, 1), stride=(stride, stride),
                                   no_bias=True, name=f"{name}_sc")
    return conv3 + shortcut


def preact_resnet(depth: int, num_classes: int):
    """The ImageNet pre-activation ResNet of ``depth`` layers (50 or 152) ending in ``fc1`` + ``softmax``.

    Unnamed layers get MXNet's automatic names (``pooling0``, ``flatten0``, ``_plus0``...) from a
    fresh name manager, as in the process that saved the published checkpoints.
    """
    import mxnet as mx
    sym = mx.sym
    with mx.name.NameManager():
        data = sym.Variable("data")
        body = sym.BatchNorm(data, fix_gamma=True, eps=BN_EPS, momentum=BN_MOMENTUM, name="bn_data")
        body = sym.Convolution(body, num_filter=FILTERS[0], kernel=(7, 7), stride=(2, 2), pad=(3, 3),
                               no_bias=True, name="conv0")
        body = sym.BatchNorm(body, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name="bn0")
        body = sym.Activation(body, act_type="relu", name="relu0")
        body = sym.Pooling(body, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
        for stage, units in enumerate(UNITS_BY_DEPTH[depth], 1):
            for unit in range(1, units + 1):
                stride = 2 if stage > 1 and unit == 1 else 1
                body = bottleneck_unit(body, FILTERS[stage], stride, dim_match=unit > 1,
                                       name=f"stage{stage}_unit{unit}")
        body = sym.BatchNorm(body, fix_gamma=False, eps=BN_EPS, momentum=BN_MOMENTUM, name="bn1")
        body = sym.Activation(body, act_type="relu", name="relu1")
        body = sym.Pooling(body, global_pool=True, kernel=(7, 7), pool_type="avg", name="pool1")
        body = sym.Flatten(body)
        body = sym.FullyConnected(body, num_hidden=num_classes, name="fc1")
        return sym.SoftmaxOutput(body, name="softmax")


def random_arrays(symbol, *, seed: int) -> dict:
    """``arg:NAME`` / ``aux:NAME`` arrays of every parameter's inferred shape, as a checkpoint holds them.

    Weights are He-normal; BatchNorm gammas and moving variances 1, betas, biases and moving means 0.
    """
    import mxnet as mx
    mx.random.seed(seed)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=INPUT_SHAPE)
    arrays = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes):
        if name in ("data", "softmax_label"):
            continue
        if name.endswith("_weight"):
            arrays[f"arg:{name}"] = mx.nd.random.normal(0, math.sqrt(2 / math.prod(shape[1:])), shape=shape)
        else:
            arrays[f"arg:{name}"] = (mx.nd.ones if name.endswith("_gamma") else mx.nd.zeros)(shape)
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes):
        arrays[f"aux:{name}"] = (mx.nd.ones if name.endswith("_moving_var") else mx.nd.zeros)(shape)
    return arrays


@dataclasses.dataclass(frozen=True)
class CheckpointSize:
    """What a written checkpoint holds: parameter counts and bytes."""

    params_path: str
    arg_parameters: int          # learnt: weights, biases, BatchNorm gamma/beta
    aux_parameters: int          # BatchNorm moving mean/variance
    file_bytes: int

    @property
    def float32_bytes(self) -> int:
        return 4 * (self.arg_parameters + self.aux_parameters)

    def describe(self) -> str:
        total = self.arg_parameters + self.aux_parameters
        return (f"{self.params_path}: {self.arg_parameters:,} learnt + {self.aux_parameters:,} BatchNorm "
                f"statistics = {total:,} float32 parameters, {self.float32_bytes:,} bytes of data "
                f"({self.float32_bytes / 1e6:.1f} MB); file {self.file_bytes:,} bytes")


def write_checkpoint(out_dir: str, *, depth: int, num_classes: int | None = None, seed: int = 0) -> CheckpointSize:
    """Write ``OUT_DIR/resnet-DEPTH-symbol.json`` and ``-0000.params`` (each renamed into place when whole)."""
    import mxnet as mx
    classes = num_classes or CLASSES_BY_DEPTH[depth]
    symbol = preact_resnet(depth, classes)
    arrays = random_arrays(symbol, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, f"resnet-{depth}")
    symbol_path, params_path = f"{prefix}-symbol.json", f"{prefix}-0000.params"
    for path, save in ((symbol_path, symbol.save), (params_path, lambda tmp: mx.nd.save(tmp, arrays))):
        tmp = temp_name(path)
        save(tmp)
        os.replace(tmp, path)
    return CheckpointSize(
        params_path=params_path,
        arg_parameters=sum(a.size for name, a in arrays.items() if name.startswith("arg:")),
        aux_parameters=sum(a.size for name, a in arrays.items() if name.startswith("aux:")),
        file_bytes=os.path.getsize(params_path),
    )


def caltech_labels(*, seed: int = 0) -> tuple[list[int], list[int]]:
    """Shuffled train and val labels with the public files' counts: 60 per label, the rest spread evenly.

    >>> train, val = caltech_labels()
    >>> len(train), len(val), len(set(train)), len(set(val))
    (15420, 15187, 257, 257)
    """
    train = [label for label in range(CALTECH_LABELS) for _ in range(CALTECH_TRAIN_PER_CLASS)]
    val_count = CALTECH_IMAGES - len(train)
    val = [position % CALTECH_LABELS for position in range(val_count)]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def tiny_jpegs() -> list[bytes]:
    """One 8x8 JPEG per label, each its own colour (OpenCV, as mxft-prepare encodes)."""
    import cv2
    import numpy as np
    images = []
    for label in range(CALTECH_LABELS):
        colour = ((label * 37) % 256, (label * 101) % 256, (label * 197) % 256)
        ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), colour, dtype=np.uint8))
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the image for label {label}")
        images.append(data.tobytes())
    return images


def write_records(prefix: str, labels: list[int], images: list[bytes]) -> int:
    """``PREFIX.rec`` + ``.idx`` of one record per label (key = position); returns the .rec's size."""
    writer = RecordWriter(prefix)
    try:
        for key, label in enumerate(labels):
            writer.write(images[label], float(label), key)
        size_bytes = writer.size_bytes
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return size_bytes


def write_caltech(out_dir: str, *, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Write the train and val ``.rec``/``.idx`` pairs; returns each ``.rec`` path's records and bytes."""
    os.makedirs(out_dir, exist_ok=True)
    train, val = caltech_labels(seed=seed)
    images = tiny_jpegs()
    written = {}
    for part, labels in (("train", train), ("val", val)):
        prefix = os.path.join(out_dir, f"{CALTECH_PREFIX}-{part}")
        written[prefix + ".rec"] = (len(labels), write_records(prefix, labels, images))
    return written


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.synthetic",
        description="Write stand-ins of the real shapes for the tutorial's ResNet checkpoint and Caltech-256 "
                    ".rec files (random weights, tiny images), so mxft's input checks and dry runs work offline.")
    parser.add_argument("out_dir", nargs="?", help="write resnet-DEPTH-symbol.json and -0000.params here")
    parser.add_argument("--depth", type=int, choices=sorted(UNITS_BY_DEPTH), default=152)
    parser.add_argument("--classes", type=int, help="fc1's outputs (default: 11221 for 152, 1000 for 50)")
    parser.add_argument("--caltech", metavar="OUT_DIR", help="write caltech-256-60-{train,val}.rec/.idx here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.out_dir and not args.caltech:
        parser.error("give OUT_DIR (the checkpoint), --caltech OUT_DIR (the .rec files), or both")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.out_dir:
        print(write_checkpoint(args.out_dir, depth=args.depth, num_classes=args.classes, seed=args.seed).describe())
    if args.caltech:
        for path, (count, size_bytes) in write_caltech(args.caltech, seed=args.seed).items():
            print(f"{path}: {count:,} records, {size_bytes:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
