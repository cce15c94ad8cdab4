"""Evaluation after each epoch, shared by every worker (``train.evaluation: shared``, the default).

BatchNorm's moving statistics are not parameters: dist_sync never reduces them, so each
worker's model used to evaluate differently and worker 0 alone read the whole
validation set while the others waited. Here, after each epoch:

1. every worker pushes each of its auxiliary states (moving mean and variance) divided
   by the number of workers and pulls the sum: all workers now hold the same model,
   whose statistics are the average of theirs (the checkpoint saves it);
2. each worker evaluates its own part of the validation set (ImageRecordIter's
   ``num_parts``/``part_index``: every image in exactly one part);
3. the counts (correct, correct in top-k, summed loss, images) are pushed and the sum
   pulled: every worker knows the accuracy of the whole set, which equals worker 0
   evaluating the whole set with the averaged statistics.

Summing through the kvstore needs servers that store what is pushed, not an optimizer
applied to it: the workers update their weights themselves (``MXNET_UPDATE_ON_KVSTORE=0``,
every worker applies the same summed gradient) after starting from the same weights (
``same_start``: ps-lite's rank 0's, which the kvstore kept at init).

``train.evaluation: worker0`` keeps the former way: servers update the weights and
worker 0 evaluates the whole set with its own statistics.
"""
from __future__ import annotations

import hashlib

import mxnet as mx
import numpy as np

from trainer.config import WorkerConfig

AUX_KEY = "mxft-aux:"          # kvstore keys of the averaged auxiliary states
COUNTS_KEY = "mxft-eval-counts"  # correct, correct in top-k, summed loss, images
START_KEY = "mxft-start:"      # kvstore keys that carry worker 0's weights to every worker


def take_worker0_weights(mod: mx.mod.Module, kv, index: int) -> None:
    """Every worker's weights become worker 0's (the plan's, not ps-lite's rank 0): each pushes its weights under keys
    of their own, worker 0 as they are and every other worker zeros, and pulls the sum. Run before the optimizer is
    set, while a synchronous kvstore's servers still store the sum of what is pushed (the plan never asks it of an
    asynchronous one); a key's pull follows its push (MXNet merges both through one buffer). Workers whose params
    file held only BatchNorm statistics (the model sent once, issue 26) start from these. The keys stay on the
    servers for the run: one more copy of the weights there, spread over them."""
    args, aux = mod.get_params()
    names = sorted(args)
    keys = [START_KEY + name for name in names]
    kv.init(keys, [mx.nd.zeros(args[name].shape, dtype=args[name].dtype) for name in names])
    for key, name in zip(keys, names):
        if index != 0:
            args[name][:] = 0
        kv.push(key, args[name])
        kv.pull(key, out=args[name])
    mod.set_params(args, aux, force_init=True)


def weights_digest(mod: mx.mod.Module) -> str:
    """A sha256 of the weights (names and bytes, in name order): equal on two workers exactly when they hold the same
    weights."""
    digest = hashlib.sha256()
    args, _ = mod.get_params()
    for name in sorted(args):
        digest.update(name.encode() + b"\0" + args[name].asnumpy().tobytes())
    return digest.hexdigest()[:32]


def same_start(mod: mx.mod.Module, kv) -> None:
    """Make every worker's weights the kvstore's (ps-lite rank 0's, stored by ``init``) before any push."""
    args, aux = mod.get_params()
    for name in sorted(args):
        kv.pull(name, out=args[name])
    mod.set_params(args, aux, force_init=True)


class SharedEvaluation:
    """Averages the workers' BatchNorm statistics and sums their counts over the validation parts."""

    def __init__(self, mod: mx.mod.Module, kv, cfg: WorkerConfig, *, top_k: int | None) -> None:
        self.mod, self.kv, self.cfg, self.top_k = mod, kv, cfg, top_k
        self.keys_ready = False

    def _init_keys(self, aux: dict) -> None:
        """New kvstore keys, once, by every worker at the same point (one init call: one barrier)."""
        names = sorted(aux)
        self.kv.init([AUX_KEY + name for name in names] + [COUNTS_KEY],
                     [mx.nd.zeros(aux[name].shape, dtype=aux[name].dtype) for name in names] + [mx.nd.zeros((4,))])
        self.keys_ready = True

    def average_statistics(self) -> None:
        """Every worker ends up with the mean of all workers' auxiliary states."""
        args, aux = self.mod.get_params()
        if not self.keys_ready:
            self._init_keys(aux)
        names, workers = sorted(aux), self.kv.num_workers
        keys = [AUX_KEY + name for name in names]
        self.kv.push(keys, [aux[name] / workers for name in names])
        self.kv.pull(keys, out=[aux[name] for name in names])
        self.mod.set_params(args, aux, force_init=True)

    def __call__(self) -> dict:
        """The whole validation set's accuracy, top-k and loss, each worker evaluating its part."""
        self.average_statistics()
        mine = count_part(self.mod, self.cfg, top_k=self.top_k)  # its part (cfg.val_part), or the copy of it here
        self.kv.push(COUNTS_KEY, mx.nd.array(mine))
        total = mx.nd.zeros((4,))
        self.kv.pull(COUNTS_KEY, out=total)
        correct, correct_k, loss, seen = total.asnumpy().tolist()
        return summary(correct, correct_k, loss, int(round(seen)), self.cfg, self.top_k)


def val_iter(cfg: WorkerConfig):
    """A fresh iterator over the worker's part of the validation set (``cfg.val_part``: through the ``.idx`` when
    it names one, else MXNet's byte ranges; None: all of ``val_rec``, which may be a copy of that part), for each
    evaluation.

    After its first pass, ImageRecordIter with round_batch=True starts the next pass where
    the padding left off and skips images, and with round_batch=False it repeats images
    without reporting them as padding.
    """
    part, parts, index = cfg.val_part or (0, 1, "")
    return mx.io.ImageRecordIter(
        path_imgrec=cfg.val_rec, data_shape=tuple(cfg.data.shape), batch_size=cfg.batch_size,
        rand_crop=False, rand_mirror=False, shuffle=False, num_parts=parts, part_index=part,
        preprocess_threads=cfg.data.preprocess_threads, round_batch=True, **({"path_imgidx": index} if index else {}))


def count_part(mod: mx.mod.Module, cfg: WorkerConfig, *, top_k: int | None) -> list[float]:
    """[correct, correct in top-k, summed cross-entropy, images] over the worker's part of the validation set."""
    correct = correct_k = seen = 0
    loss = 0.0
    for batch in val_iter(cfg):
        mod.forward(batch, is_train=False)
        probs = mod.get_outputs()[0].asnumpy()
        labels = batch.label[0].asnumpy().astype(np.int64)
        real = len(labels) - batch.pad
        hit, hit_k, losses = batch_scores(probs[:real], labels[:real], top_k)
        correct += int(hit.sum())
        correct_k += int(hit_k.sum())
        loss += float(losses.sum())
        seen += real
    return [correct, correct_k, loss, seen]


def batch_scores(probs: np.ndarray, labels: np.ndarray, top_k: int | None):
    """Per image of a batch (its padding cut off): right at top-1, right within the top ``top_k``, and its
    cross-entropy."""
    ranked = np.argsort(-probs, axis=1)[:, :top_k or 1]
    return (ranked[:, 0] == labels, (ranked == labels[:, None]).any(axis=1),
            -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)))


def summary(correct: float, correct_k: float, loss: float, seen: int, cfg: WorkerConfig, top_k: int | None) -> dict:
    """The record fields of an evaluation; every validation image must have been counted exactly once."""
    if seen != cfg.num_val_images:
        raise RuntimeError(f"evaluated {seen} validation images, expected {cfg.num_val_images}")
    return {"val_accuracy": correct / seen, **({f"val_top{top_k}": correct_k / seen} if top_k else {}),
            "val_loss": loss / seen, "val_images": seen, "val_correct": int(round(correct))}
