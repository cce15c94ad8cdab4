"""What a checkpoint needs besides the weights for a resumed run to be the run that never stopped (issue 27).

* The optimizer's state (momentum, Adam's moments) and its update counts (which warm-up and schedules read), in
  ``NAME-EPOCH.states``: an MXNet NDArray file like the params, with the structure and counts as JSON in one uint8
  array. Not a pickle: the file comes back from worker 0's host and is loaded on every host of a resumed run, and
  a pickle would run whatever it holds. Only where the workers update the weights themselves (shared evaluation,
  ``MXNET_UPDATE_ON_KVSTORE=0``); where the servers do, the state is theirs and MXNet cannot save it.
* Each epoch's data order and augmentation from seeds of (seed, worker, epoch) (``EpochSeeded``), rather than from
  an iterator's history that a resumed worker does not have.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

import mxnet as mx
import numpy as np

log = logging.getLogger("mxft.worker")
META = "mxft:meta"          # the key of the JSON array in a .states file


def states_path(prefix: str, epoch: int) -> str:
    return f"{prefix}-{epoch:04d}.states"


def save_optimizer_state(updater, path: str, *, batches_per_epoch: int) -> None:
    """The updater's state and its optimizer's update counts (per weight, whichever device updated it) into
    ``path`` (written whole, then renamed)."""
    arrays: dict[str, mx.nd.NDArray] = {}
    templates = {str(index): _flatten(state, f"s{index}", arrays) for index, state in updater.states.items()
                 if isinstance(index, int)}
    optimizer = updater.optimizer
    counts: dict[str, int] = {}
    for per_device in optimizer._all_index_update_counts.values():
        for index, count in per_device.items():
            if isinstance(index, int):
                counts[str(index)] = max(counts.get(str(index), 0), int(count))
    meta = {"num_update": int(optimizer.num_update), "states": templates, "counts": counts,
            "batches_per_epoch": batches_per_epoch}
    arrays[META] = mx.nd.array(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), dtype="uint8")
    mx.nd.save(path + ".partial", arrays)
    os.replace(path + ".partial", path)


def _flatten(state, key: str, arrays: dict):
    """A state as JSON: None, the key of an array (kept in ``arrays``), or {"tuple"|"list": [...]}."""
    if state is None:
        return None
    if isinstance(state, mx.nd.NDArray):
        arrays[key] = state.as_in_context(mx.cpu())
        return key
    if isinstance(state, (tuple, list)):
        return {type(state).__name__: [_flatten(part, f"{key}.{j}", arrays) for j, part in enumerate(state)]}
    raise TypeError(f"optimizer state of type {type(state).__name__} cannot be saved")


def load_optimizer_state(updater, path: str, *, batches_per_epoch: int, devices=(0,)) -> None:
    """Give ``updater`` the state saved in ``path``; ValueError if the file is not one ``save_optimizer_state`` wrote.
    The updater moves each state to its weight's device at its first update; the update counts go to every one of
    ``devices`` (the ids of this worker's contexts, which may not be the saving worker's), rescaled when an epoch
    has another number of batches now (a restart on other hosts: the schedule then goes on by epochs)."""
    arrays = mx.nd.load(path)
    if not isinstance(arrays, dict) or META not in arrays:
        raise ValueError(f"{path} holds no optimizer state")
    try:
        meta = json.loads(bytes(arrays.pop(META).asnumpy().astype(np.uint8)).decode())
        states = {int(index): _unflatten(template, arrays) for index, template in meta["states"].items()}
        scale = batches_per_epoch / int(meta["batches_per_epoch"])
        counts = {int(index): round(int(count) * scale) for index, count in meta["counts"].items()}
        num_update = round(int(meta["num_update"]) * scale)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ValueError(f"{path} is not an optimizer state mxft wrote ({type(err).__name__}: {err})") from None
    updater.states, updater.states_synced = states, dict.fromkeys(states, False)
    optimizer = updater.optimizer
    optimizer._all_index_update_counts = {device: dict(counts) for device in (*devices, 0)}
    optimizer._index_update_count = optimizer._all_index_update_counts[0]
    optimizer.num_update = num_update
    log.info("optimizer state restored from %s (%d arrays, update %d)", path, len(arrays), optimizer.num_update)


def _unflatten(template, arrays: dict):
    if template is None:
        return None
    if isinstance(template, str):
        return arrays[template]
    (kind, parts), = template.items()
    if kind not in ("tuple", "list") or not isinstance(parts, list):
        raise ValueError(f"unknown optimizer state form {kind!r}")
    rebuilt = [_unflatten(part, arrays) for part in parts]
    return tuple(rebuilt) if kind == "tuple" else rebuilt


def epoch_seed(seed: int | None, worker: int, epoch: int) -> int:
    """The seed of worker ``worker``'s data order and augmentation in ``epoch`` (0-based): a function of the three
    alone, so a resumed run reads epoch E as the run that never stopped did.

    >>> epoch_seed(7, 1, 3) == epoch_seed(7, 1, 3) != epoch_seed(7, 1, 4)
    True
    """
    digest = hashlib.sha256(f"{seed}|{worker}|{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class EpochSeeded(mx.io.DataIter):
    """A training iterator made anew for each epoch by ``make(epoch)`` (which seeds it with ``epoch_seed``): ``fit``
    resets it after every epoch, and the next epoch's iterator replaces it (none after ``last_epoch``).

    ``take_order()`` gives a digest of the labels of the batches read since it was last asked, in order: what a
    worker reports of each epoch's data order, and what ``epoch_order`` computes for one epoch anywhere."""

    def __init__(self, make, first_epoch: int, last_epoch: int) -> None:
        super().__init__()
        self.make, self.epoch, self.last_epoch = make, first_epoch, last_epoch
        self.current = make(first_epoch)
        self.batch_size = self.current.batch_size
        self._order = hashlib.sha256()

    @property
    def provide_data(self):
        return self.current.provide_data

    @property
    def provide_label(self):
        return self.current.provide_label

    def reset(self) -> None:
        self.epoch += 1
        if self.epoch < self.last_epoch:
            self.current = None  # the last epoch's reader and its threads go first
            self.current = self.make(self.epoch)

    def next(self):
        batch = self.current.next()
        self._order.update(batch.label[0].asnumpy().astype("<f4").tobytes())
        return batch

    def take_order(self) -> str:
        """The digest of the labels read since the last call (32 hex digits), and a fresh start."""
        digest, self._order = self._order.hexdigest()[:32], hashlib.sha256()
        return digest


def epoch_order(make, epoch: int) -> str:
    """The digest ``EpochSeeded.take_order`` gives for epoch ``epoch`` (counted from 0) of the reader ``make`` builds,
    read on its own: the documented order a worker's epoch has, whatever came before it."""
    reader = EpochSeeded(make, epoch, epoch + 1)
    for _ in reader:
        pass
    return reader.take_order()
