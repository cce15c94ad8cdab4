"""A worker of a fine-tuning run: join ps-lite, edit the graph, train, evaluate, report.

Every worker trains on its own shard with ``Module.fit`` on the distributed kvstore.
After each epoch the workers evaluate together (``trainer.evaluation``: averaged
BatchNorm statistics, a part of the validation set each, the counts summed), or with
``train.evaluation: worker0`` worker 0 alone while the others wait at a ps-lite
barrier. Worker 0 (the plan's, whatever rank ps-lite gives it: ps-lite ranks nodes by
address and a random port) saves each epoch's checkpoint and at the end writes
``result.json`` into its ``out_dir``. No worker's epoch time (and images/s) includes
the evaluation.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings

import mxnet as mx
import numpy as np

from trainer import events
from trainer.config import WorkerConfig
from trainer.evaluation import (SharedEvaluation, count_part, same_start, summary, take_worker0_weights,
                                weights_digest)
from trainer.graph import NEW_LAYER, fine_tune_symbol
from trainer.resume_state import (EpochSeeded, epoch_seed, load_optimizer_state, save_optimizer_state,
                                  states_path)

log = logging.getLogger("mxft.worker")


def _contexts(cfg: WorkerConfig) -> list:
    """The worker's GPUs, or its ``cpu:N`` CPU contexts: Module splits each batch over them."""
    if cfg.devices is not None:
        return [mx.gpu(i) for i in cfg.devices]
    return [mx.cpu(i) for i in range(cfg.cpu_contexts)]


def _batch_size(cfg: WorkerConfig) -> int:
    return cfg.batch_size


def train_reader(cfg: WorkerConfig):
    """``reader(epoch)``: the worker's reader of epoch ``epoch`` (from 0), seeded by (seed, worker, epoch) alone, so
    a resumed run reads epoch E as an unstopped one did, and a run restarted on W workers reads it as any run of W
    workers does: worker i's part i of W of the training file, in the order of that seed."""
    # A part of the training file read in place, or a whole shard: either way through its .idx, so MXNet shuffles
    # every record anew each epoch (without an index it shuffles only within the chunks it reads).
    part = dict(part_index=cfg.train_part[0], num_parts=cfg.train_part[1], path_imgidx=cfg.train_part[2]) \
        if cfg.train_part else dict(path_imgidx=os.path.splitext(cfg.train_rec)[0] + ".idx")

    def epoch_reader(epoch: int) -> mx.io.DataIter:
        seed = epoch_seed(cfg.train.seed, cfg.index, epoch)
        base = mx.io.ImageRecordIter(
            path_imgrec=cfg.train_rec, data_shape=tuple(cfg.data.shape), batch_size=_batch_size(cfg),
            rand_crop=cfg.data.rand_crop, rand_mirror=cfg.data.rand_mirror, shuffle=True, seed=seed, seed_aug=seed,
            preprocess_threads=cfg.data.preprocess_threads, round_batch=True, **part)
        # Every worker must run the same number of batches per epoch: in dist_sync the
        # servers wait for a push from every worker at each step.
        return mx.io.ResizeIter(base, cfg.batches_per_epoch)
    return epoch_reader


def reported_top_k(cfg: WorkerConfig) -> int | None:
    """``train.top_k`` when it is below ``num_classes``; None otherwise (top-k of k classes is 1.0 by construction)."""
    top_k = cfg.train.top_k
    return top_k if top_k < cfg.num_classes else None


def _train_metric(cfg: WorkerConfig):
    """Training accuracy, top-k (when reported) and cross-entropy: train_accuracy, train_topK, train_loss."""
    top_k = reported_top_k(cfg)
    return mx.metric.create(["acc", *([mx.metric.TopKAccuracy(top_k=top_k)] if top_k else []), "ce"])


def evaluate(mod: mx.mod.Module, cfg: WorkerConfig) -> dict:
    """Top-1, top-k (``reported_top_k``) and mean cross-entropy over every validation image, each counted once,
    by this worker alone with its own statistics (``train.evaluation: worker0``)."""
    top_k = reported_top_k(cfg)
    return summary(*count_part(mod, cfg, top_k=top_k), cfg, top_k)  # val_part is None: the whole set


def _optimizer_params(cfg: WorkerConfig) -> dict:
    """The job's optimizer settings at the plan's learning rate, ramped up over train.warmup_epochs, then falling as
    train.lr_schedule says."""
    params = dict(cfg.train.optimizer_params)
    if cfg.learning_rate is not None:
        params["learning_rate"] = cfg.learning_rate
    if cfg.begin_epoch:  # the updates done before: what warm-up and schedules count (a saved state's count wins)
        params["begin_num_update"] = cfg.begin_epoch * cfg.batches_per_epoch
    if "learning_rate" in params:
        scheduler = lr_scheduler(cfg, params["learning_rate"])
        if scheduler is not None:
            params["lr_scheduler"] = scheduler
    return params


def lr_scheduler(cfg: WorkerConfig, rate: float):
    """MXNet's scheduler for the job, counting updates (one per batch): the same on every worker, and continued
    on resume from the update count the checkpoint's optimizer state holds; None when the rate stays ``rate``."""
    per_epoch, schedule = cfg.batches_per_epoch, cfg.train.lr_schedule or {}
    common = dict(base_lr=rate, warmup_steps=cfg.train.warmup_epochs * per_epoch, warmup_mode="linear",
                  warmup_begin_lr=min(cfg.train.optimizer_params.get("learning_rate", rate), rate))
    kind = schedule.get("type")
    if kind == "step":
        return mx.lr_scheduler.FactorScheduler(step=schedule["every_epochs"] * per_epoch, factor=schedule["factor"],
                                               stop_factor_lr=0.0, **common)
    if kind == "multistep":
        return mx.lr_scheduler.MultiFactorScheduler(step=[e * per_epoch for e in schedule["at_epochs"]],
                                                    factor=schedule["factor"], **common)
    if kind == "cosine":
        return mx.lr_scheduler.CosineScheduler(max_update=cfg.train.epochs * per_epoch, final_lr=schedule["final_lr"],
                                               **common)
    if common["warmup_steps"]:
        return mx.lr_scheduler.FactorScheduler(step=10 ** 9, factor=1.0, **common)
    return None


def _rate_at(cfg: WorkerConfig):
    """``rate(update)``: the learning rate of update ``update`` (from 1) as the optimizer applies it (a scheduler of
    its own: MXNet's step schedulers keep state), for worker 0's per-batch report; None without a set rate."""
    rate = _optimizer_params(cfg).get("learning_rate")
    if rate is None:
        return None
    scheduler = lr_scheduler(cfg, rate)
    return scheduler if scheduler is not None else (lambda update: rate)


def _initializer(cfg: WorkerConfig):
    kinds = {"xavier": mx.init.Xavier, "msraprelu": mx.init.MSRAPrelu, "normal": mx.init.Normal,
             "uniform": mx.init.Uniform}
    params = dict(cfg.train.initializer)  # the job file's form: {type: xavier, magnitude: 2, ...}
    return kinds[params.pop("type")](**params)


class _Throughput:
    """batch_end_callback: a progress event per batch, images/s logged every ``every`` batches. Worker 0's
    (``lead_batches_per_epoch`` set, for TensorBoard's per-batch curves) adds the epoch's running training loss and
    the learning rate of the batch's update (``rate_at(update)``; none when the optimizer's default rate is used)."""

    def __init__(self, batch_size: int, every: int, *, lead_batches_per_epoch: int = 0, rate_at=None) -> None:
        self.batch_size, self.every = batch_size, every
        self.lead_batches_per_epoch, self.rate_at = lead_batches_per_epoch, rate_at
        self.epoch_start = self.window_start = time.time()
        self.window_batches = 0
        self.seen_first = False

    def start_epoch(self) -> None:
        self.epoch_start = self.window_start = time.time()
        self.window_batches = 0

    def _lead_numbers(self, param) -> dict:
        if not self.lead_batches_per_epoch:
            return {}
        numbers = {"train_" + name.replace("cross-entropy", "loss"): value
                   for name, value in param.eval_metric.get_name_value() if name == "cross-entropy"}
        if self.rate_at is not None:
            numbers["lr"] = float(self.rate_at(param.epoch * self.lead_batches_per_epoch + param.nbatch + 1))
        return numbers

    def __call__(self, param) -> None:
        if not self.seen_first:  # start-up ends here (bench/launch_overhead.py measures it)
            self.seen_first = True
            events.emit("first_batch", epoch=param.epoch)
        self.window_batches += 1
        # One per batch: the watchdog names the worker that is behind, so positions must be exact
        # (throttled to one a second, a stuck worker and a waiting one looked alike).
        events.emit("progress", epoch=param.epoch, batch=param.nbatch + 1, **self._lead_numbers(param))
        if (param.nbatch + 1) % self.every == 0:
            now = time.time()
            speed = self.window_batches * self.batch_size / max(now - self.window_start, 1e-9)
            metrics = ", ".join(f"{name}={value:.4f}" for name, value in param.eval_metric.get_name_value())
            log.info("epoch %d batch %d: %.1f images/s, train %s", param.epoch, param.nbatch + 1, speed, metrics)
            self.window_start, self.window_batches = now, 0


def _network(cfg: WorkerConfig):
    """The graph to train and its starting weights: the pretrained net cut and extended, or a resumed run's."""
    if cfg.resume_prefix:
        net, arg_params, aux_params = mx.model.load_checkpoint(cfg.resume_prefix, cfg.begin_epoch)
        fixed = ([name for name in net.list_arguments() if name not in ("data", "softmax_label")
                  and not name.startswith(f"{NEW_LAYER}_")] if cfg.model.variant == "frozen" else [])
        log.info("resuming after epoch %d from %s", cfg.begin_epoch, cfg.resume_prefix)
        return net, arg_params, aux_params, fixed
    symbol = mx.sym.load(f"{cfg.model_prefix}-symbol.json")
    saved = mx.nd.load(f"{cfg.model_prefix}-{cfg.model.epoch:04d}.params")
    saved = saved if isinstance(saved, dict) else {}  # a file of no arrays loads as a list
    net, arg_params, aux_params, fixed = fine_tune_symbol(
        symbol, {k[4:]: v for k, v in saved.items() if k.startswith("arg:")},
        {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}, num_classes=cfg.num_classes,
        cut_layer=cfg.model.cut_layer, variant=cfg.model.variant)
    log.info("graph cut at %s, new %s with %d classes; %d pretrained arrays kept (%s)%s", cfg.model.cut_layer,
             NEW_LAYER, cfg.num_classes, len(arg_params) + len(aux_params), cfg.model.variant,
             "; the weights come from worker 0" if cfg.start_weights == "worker0" and cfg.index else "")
    return net, arg_params, aux_params, fixed


def _prepared_module(cfg: WorkerConfig, net, fixed: list[str], train, kv, arg_params, aux_params, *,
                     same_weights: bool) -> mx.mod.Module:
    """The Module bound, initialised and with its optimizer on ``kv`` (``fit`` then only trains).

    With ``same_weights`` (workers that update their own weights) every worker then takes
    the weights the kvstore kept at init, so a new layer initialised differently on each
    worker (no seed) still starts the same everywhere.
    """
    contexts = _contexts(cfg)
    log.info("worker %d computes on %d context(s): %s, %d images per step", cfg.index, len(contexts),
             ", ".join(map(str, contexts)), _batch_size(cfg))
    mod = mx.mod.Module(net, context=contexts, fixed_param_names=fixed or None)
    mod.bind(data_shapes=train.provide_data, label_shapes=train.provide_label, for_training=True)
    mod.init_params(initializer=_initializer(cfg), arg_params=arg_params, aux_params=aux_params, allow_missing=True)
    if cfg.start_weights == "worker0":
        take_worker0_weights(mod, kv, cfg.index)
    mod.init_optimizer(kvstore=kv, optimizer=cfg.train.optimizer, optimizer_params=_optimizer_params(cfg))
    saved = states_path(cfg.resume_prefix, cfg.begin_epoch) if cfg.resume_prefix else None
    if saved and os.path.isfile(saved) and mod._updater is not None:  # the workers update: the state is theirs
        load_optimizer_state(mod._updater, saved, batches_per_epoch=cfg.batches_per_epoch,
                             devices=[context.device_id for context in _contexts(cfg)])
    if same_weights and cfg.start_weights != "worker0":
        same_start(mod, kv)
    events.emit("start", index=cfg.index, weights=weights_digest(mod))  # after the first pull: equal on all workers
    return mod


def _compress_pushes(kv, compression: dict) -> None:
    """``cluster.gradient_compression``, set before any key exists: every push after a key's init is quantised.

    MXNet 1.9's distributed kvstore refuses ``pushpull`` with compression ("Compression not
    supported with PushPull") and Module updates through ``pushpull``; a push then a pull of the
    same key does the same (the pull waits for the servers' merged value) and compresses.
    """
    kv.set_gradient_compression({"type": compression["type"], "threshold": compression["threshold"]})

    def push_then_pull(key, value, out=None, priority=0):
        kv.push(key, value, priority=priority)
        kv.pull(key, out=value if out is None else out, priority=priority)
    kv.pushpull = push_then_pull


def _shared_evaluation(cfg: WorkerConfig) -> bool:
    """``train.evaluation: shared`` (the default): every worker evaluates a part, with averaged statistics."""
    shared = cfg.train.evaluation == "shared"
    if shared:  # the servers keep what is pushed (sums); every worker applies the summed gradient itself
        os.environ["MXNET_UPDATE_ON_KVSTORE"] = "0"
    return shared


def _joined(cfg: WorkerConfig, started: float):
    """The seeds set, then the kvstore (which joins ps-lite; compressed pushes set before any key), reported."""
    if cfg.train.seed is not None:
        mx.random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
    kv = mx.kv.create(cfg.kvstore)
    if cfg.gradient_compression:
        _compress_pushes(kv, cfg.gradient_compression)
    log.info("worker %d joined ps-lite as rank %d of %d (kvstore %s)", cfg.index, kv.rank, kv.num_workers,
             cfg.kvstore)
    events.emit("joined", index=cfg.index, rank=kv.rank, num_workers=kv.num_workers,
                join_s=round(time.time() - started, 2))
    return kv


def run_worker(cfg: WorkerConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", message="Parameters already initialized")  # fit() after init_params()
    started = time.time()
    shared = _shared_evaluation(cfg)
    kv = _joined(cfg, started)
    rank, num_workers = kv.rank, kv.num_workers
    lead = cfg.index == 0  # checkpoints and writes the result (and evaluates alone with evaluation: worker0)

    net, arg_params, aux_params, fixed = _network(cfg)
    batch_size = _batch_size(cfg)
    train = EpochSeeded(train_reader(cfg), cfg.begin_epoch, cfg.train.epochs)
    mod = _prepared_module(cfg, net, fixed, train, kv, arg_params, aux_params, same_weights=shared)
    shared_evaluation = SharedEvaluation(mod, kv, cfg, top_k=reported_top_k(cfg)) if shared else None
    metric = _train_metric(cfg)
    speed = _Throughput(batch_size, cfg.train.log_every_batches,
                        lead_batches_per_epoch=cfg.batches_per_epoch if lead else 0, rate_at=_rate_at(cfg))
    epochs: list[dict] = []

    timing = StepTiming(mod) if cfg.train.step_timing else None

    def on_epoch_end(epoch, _symbol, _args, _aux) -> None:
        record = _epoch_record(cfg, epoch, time.time() - speed.epoch_start, batch_size, metric, timing)
        evaluating = time.time()
        if shared_evaluation is not None:
            record.update(shared_evaluation())  # every worker: averaged statistics, its part, the sums
        elif lead:
            record.update(evaluate(mod, cfg))
        if "val_accuracy" in record:
            record["val_s"] = round(time.time() - evaluating, 3)
        epochs.append(record)
        log.info("epoch %d done: %s", epoch + 1, json.dumps(record))
        events.emit("epoch", index=cfg.index, rank=rank, order=train.take_order(), **record)
        if lead:
            save_epoch_checkpoint(cfg, mod, net, epoch + 1, record)
        if kv.type.startswith("dist"):
            kv._barrier()  # all wait for worker 0's evaluation and checkpoint here, outside the next epoch's clock
        patience.after(epoch + 1, record.get("val_accuracy"))  # every worker knows the accuracy: all stop here
        speed.start_epoch()

    fit_started = time.time()
    speed.start_epoch()
    patience = Patience(cfg)
    try:
        mod.fit(train, begin_epoch=cfg.begin_epoch, num_epoch=cfg.train.epochs, kvstore=kv, eval_metric=metric,
                batch_end_callback=speed, epoch_end_callback=on_epoch_end)
    except StopEarly as stop:
        log.info("%s", stop)
    train_s = time.time() - fit_started

    if lead:
        _write_result(cfg, epochs, num_workers=num_workers, train_s=train_s, total_s=time.time() - started,
                      stopped_early=patience.stopped)
    events.emit("done", index=cfg.index, rank=rank, train_s=round(train_s, 3))
    return 0


def _epoch_record(cfg: WorkerConfig, epoch: int, elapsed: float, batch_size: int, metric, timing) -> dict:
    """An epoch's numbers: its time and images/s, the training metrics, and with ``timing`` its step split."""
    return {"epoch": epoch + 1, "epoch_s": round(elapsed, 3),
            "images_per_s": round(cfg.batches_per_epoch * batch_size / max(elapsed, 1e-9), 2),
            **{"train_" + name.replace("top_k_accuracy_", "top").replace("cross-entropy", "loss"): value
               for name, value in metric.get_name_value()},
            **(timing.take() if timing is not None else {})}


class StepTiming:
    """``train.step_timing`` (``bench.end_to_end``): each step's compute and communication, from this worker.

    Compute is ``forward_backward`` until its gradients are finished; communication is ``update``
    (push, pull and applying the result) until the weights are finished. Waiting for each part
    takes away the overlap MXNet's engine gives them, so a timed run is a measurement, not a run.
    """

    def __init__(self, mod: mx.mod.Module) -> None:
        self.compute_s = self.communication_s = 0.0
        forward_backward, update = mod.forward_backward, mod.update

        def timed_forward_backward(batch) -> None:
            started = time.perf_counter()
            forward_backward(batch)
            mx.nd.waitall()
            self.compute_s += time.perf_counter() - started

        def timed_update() -> None:
            started = time.perf_counter()
            update()
            mx.nd.waitall()
            self.communication_s += time.perf_counter() - started
        mod.forward_backward, mod.update = timed_forward_backward, timed_update

    def take(self) -> dict:
        """The epoch's totals (then zero again)."""
        taken = {"compute_s": round(self.compute_s, 3), "communication_s": round(self.communication_s, 3)}
        self.compute_s = self.communication_s = 0.0
        return taken


KEEP_CHECKPOINTS = 2  # epochs of checkpoints kept on the host; the launcher keeps its own copies


def save_epoch_checkpoint(cfg: WorkerConfig, mod: mx.mod.Module, net, epoch: int, record: dict) -> None:
    """Write ``NAME-EPOCH.params`` (and, where the workers update the weights, the optimizer's state in
    ``NAME-EPOCH.states``) atomically, then the marker ``checkpoint-EPOCH.json`` that says it is whole."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    prefix = os.path.join(cfg.out_dir, cfg.checkpoint_name)
    symbol_path = f"{prefix}-symbol.json"
    if not os.path.exists(symbol_path):
        net.save(symbol_path + ".partial")
        os.replace(symbol_path + ".partial", symbol_path)
    args, aux = mod.get_params()
    params_path = f"{prefix}-{epoch:04d}.params"
    arrays = {f"arg:{name}": value for name, value in args.items()}
    arrays.update({f"aux:{name}": value for name, value in aux.items()})
    mx.nd.save(params_path + ".partial", arrays)
    os.replace(params_path + ".partial", params_path)
    files = {"symbol": os.path.basename(symbol_path), "params": os.path.basename(params_path)}
    if mod._updater is not None:
        save_optimizer_state(mod._updater, states_path(prefix, epoch), batches_per_epoch=cfg.batches_per_epoch)
        files["states"] = os.path.basename(states_path(prefix, epoch))
    marker = os.path.join(cfg.out_dir, f"checkpoint-{epoch:04d}.json")
    with open(marker + ".partial", "w", encoding="utf-8") as handle:
        json.dump({"epoch": epoch, **files, "record": record}, handle)
    os.replace(marker + ".partial", marker)
    events.emit("checkpoint", index=cfg.index, epoch=epoch, out_dir=cfg.out_dir,
                files=[*files.values(), os.path.basename(marker)])
    for old in range(cfg.begin_epoch + 1, epoch - KEEP_CHECKPOINTS + 1):
        for path in (f"{prefix}-{old:04d}.params", states_path(prefix, old),
                     os.path.join(cfg.out_dir, f"checkpoint-{old:04d}.json")):
            if os.path.exists(path):
                os.remove(path)


class StopEarly(Exception):
    """Raised by every worker after the same epoch: ``train.early_stop``'s patience ran out."""


class Patience:
    """``train.early_stop``: the best validation accuracy so far (a resumed run's from before it too) and the epochs
    since; ``after`` raises StopEarly once ``patience`` epochs brought nothing better (not after the last epoch)."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.patience = (cfg.train.early_stop or {}).get("patience")
        self.best_epoch, self.best = cfg.best_so_far or (0, -1.0)
        self.last_epoch, self.stopped = cfg.train.epochs, None

    def after(self, epoch: int, accuracy: float | None) -> None:
        if accuracy is not None and accuracy > self.best:
            self.best_epoch, self.best = epoch, accuracy
        if self.patience and epoch - self.best_epoch >= self.patience and epoch < self.last_epoch:
            self.stopped = {"epoch": epoch, "best_epoch": self.best_epoch, "patience": self.patience}
            raise StopEarly(f"stopping after epoch {epoch}: no better validation accuracy than epoch "
                            f"{self.best_epoch}'s {self.best:.4f} for {self.patience} epoch(s) (train.early_stop)")


def _write_result(cfg: WorkerConfig, epochs: list[dict], *, num_workers: int,
                  train_s: float, total_s: float, stopped_early: dict | None = None) -> None:
    os.makedirs(cfg.out_dir, exist_ok=True)
    final = epochs[-1]
    result = {
        "val_accuracy": final["val_accuracy"],
        **{key: value for key, value in final.items() if key.startswith("val_top")},
        "val_images": final["val_images"],
        "epochs": epochs,
        "num_workers": num_workers,
        "batch_size_per_worker": _batch_size(cfg),
        "images_per_s_worker0": round(sum(e["images_per_s"] for e in epochs) / len(epochs), 2),
        "train_s": round(train_s, 3),
        "total_s": round(total_s, 3),
        "checkpoint": {"prefix": cfg.checkpoint_name, "epoch": final["epoch"]},
        **({"stopped_early": stopped_early} if stopped_early else {}),
        "job": cfg.job,
    }
    tmp = os.path.join(cfg.out_dir, "result.json.partial")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, os.path.join(cfg.out_dir, "result.json"))
    log.info("worker 0 wrote %s", os.path.join(cfg.out_dir, "result.json"))
