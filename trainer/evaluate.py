"""Evaluate a checkpoint on a ``.rec``: ``python -m trainer.evaluate PREFIX EPOCH REC --shape C,H,W ...``.

``mxft-launch evaluate`` runs this on this machine, or on each of N hosts with ``--part I --parts N`` (through the
``.idx``), and it prints what it counted: one JSON line with, per class, the images seen, those right at top-1 and
those right in the top k, and the summed cross-entropy; every image counted once (one pass of a fresh reader, its
padding left out; no augmentation, no shuffling). The launcher adds the parts and turns the sums into scores.
A fine-tuned checkpoint holds the BatchNorm statistics the run evaluated with, so its own validation set gives
the accuracy the run reported for that epoch.
"""
from __future__ import annotations

import argparse
import json
import os

# MXNet 1.9.1's fused CPU inference (its MKLDNN subgraph backend, used when a module is bound for inference) gives
# the fine-tuned ResNets other outputs than the forward pass the workers evaluate with (the demo: 0.59 against the
# run's 0.83); without it the numbers are the run's own. Read when the module is bound, so set before.
os.environ["MXNET_SUBGRAPH_BACKEND"] = "NONE"

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

from trainer.evaluation import batch_scores  # noqa: E402


def checkpoint_counts(prefix: str, epoch: int, rec: str, *, shape: tuple[int, int, int], num_classes: int,
                      top_k: int, part: tuple[int, int] = (0, 1), batch_size: int = 32, threads: int = 2) -> dict:
    """Per class: images seen, right at top-1, right in the top ``top_k``; and the summed cross-entropy, of
    checkpoint ``prefix``/``epoch`` on part ``part[0]`` of ``part[1]`` of ``rec``."""
    symbol, args, aux = mx.model.load_checkpoint(prefix, epoch)
    parts = dict(part_index=part[0], num_parts=part[1], path_imgidx=os.path.splitext(rec)[0] + ".idx") \
        if part[1] > 1 else {}
    reader = mx.io.ImageRecordIter(path_imgrec=rec, data_shape=shape, batch_size=batch_size, shuffle=False,
                                   rand_crop=False, rand_mirror=False, round_batch=True,
                                   preprocess_threads=threads, **parts)
    mod = mx.mod.Module(symbol, context=mx.cpu(), label_names=["softmax_label"])
    mod.bind(data_shapes=reader.provide_data, label_shapes=reader.provide_label, for_training=False)
    mod.set_params(args, aux, allow_missing=False, allow_extra=True)
    correct, correct_k, loss = np.zeros(num_classes), np.zeros(num_classes), 0.0
    seen = np.zeros(num_classes)
    for batch in reader:
        mod.forward(batch, is_train=False)
        real = batch.data[0].shape[0] - batch.pad
        probs = mod.get_outputs()[0].asnumpy()[:real]
        labels = batch.label[0].asnumpy()[:real].astype(np.int64)
        hit, hit_k, losses = batch_scores(probs, labels, top_k)
        np.add.at(seen, labels, 1)
        np.add.at(correct, labels, hit)
        np.add.at(correct_k, labels, hit_k)
        loss += float(losses.sum())
    return {"seen": seen.astype(int).tolist(), "correct": correct.astype(int).tolist(),
            "correct_k": correct_k.astype(int).tolist(), "loss_sum": loss, "top_k": top_k}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate")
    parser.add_argument("prefix")
    parser.add_argument("epoch", type=int)
    parser.add_argument("rec")
    parser.add_argument("--shape", required=True, help="C,H,W")
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--part", type=int, default=0, help="which part (through the .idx)")
    parser.add_argument("--parts", type=int, default=1, help="of how many")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    counts = checkpoint_counts(args.prefix, args.epoch, args.rec, shape=shape, num_classes=args.classes,
                               top_k=max(1, min(args.top_k, args.classes)), part=(args.part, args.parts))
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
