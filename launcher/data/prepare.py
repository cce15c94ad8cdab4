"""From a folder of images (one sub-folder per class) to split, packed ``.rec`` files.

The tutorial's recipe as one deterministic step: take ``train_per_class`` random
images of each class for training and the rest for validation, resize so the shorter
edge is ``resize``, re-encode as JPEG of ``quality``, and pack ``PREFIX-train`` and
``PREFIX-val`` (``.rec`` + ``.idx`` + ``.lst``, MXNet's formats), a labels file and a
JSON summary. Images are decoded and encoded in a pool of processes (OpenCV, as
MXNet's im2rec.py does); records are written in list order by this process as they
come back, so memory stays bounded whatever the dataset's size. Unreadable images are
listed and skipped; a class left without training images is an error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence

from cluster.errors import InputError
from launcher.data.cachefile import replacing
from launcher.data.recfile import RecordWriter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class PrepareSpec:
    image_dir: str
    out_prefix: str
    train_per_class: int = 60
    seed: int = 0
    resize: int = 256               # shorter edge in pixels; 0 keeps the size
    quality: int = 90               # JPEG quality
    exclude: tuple[str, ...] = ()   # class folders to leave out, e.g. 257.clutter
    workers: int = os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Item:
    index: int                      # key in the .idx / .lst
    label: int
    path: str                       # relative to the image folder


def list_classes(image_dir: str, exclude: Sequence[str]) -> list[str]:
    """Sorted class folder names (labels 0..K-1 in this order)."""
    if not os.path.isdir(image_dir):
        raise InputError(image_dir, "image folder not found")
    unknown = sorted(set(exclude) - set(os.listdir(image_dir)))
    if unknown:
        raise InputError(image_dir, f"--exclude names no class folder: {', '.join(unknown)}")
    classes = sorted(name for name in os.listdir(image_dir)
                     if os.path.isdir(os.path.join(image_dir, name)) and name not in exclude)
    if not classes:
        raise InputError(image_dir, "holds no class folders", hint="expected IMAGE_DIR/CLASS/IMAGE files")
    return classes


def split(spec: PrepareSpec, classes: Sequence[str]) -> tuple[list[Item], list[Item], dict[str, int]]:
    """Train and validation items, and the classes with no more than ``train_per_class`` images.

    Each class is shuffled with its own generator (seed and class name), so adding a
    class does not change the split of the others; each list is then shuffled.
    """
    train: list[tuple[int, str]] = []
    val: list[tuple[int, str]] = []
    short: dict[str, int] = {}
    for label, name in enumerate(classes):
        folder = os.path.join(spec.image_dir, name)
        files = sorted(os.path.join(name, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
        random.Random(f"{spec.seed}:{name}").shuffle(files)
        if len(files) <= spec.train_per_class:
            short[name] = len(files)
        train += [(label, path) for path in files[: spec.train_per_class]]
        val += [(label, path) for path in files[spec.train_per_class:]]
    order = random.Random(spec.seed)
    order.shuffle(train)
    order.shuffle(val)
    items = [Item(i, label, path) for i, (label, path) in enumerate(train + val)]
    return items[: len(train)], items[len(train):], short


def write_lst(path: str, items: Sequence[Item]) -> None:
    """MXNet's .lst: ``INDEX<TAB>LABEL<TAB>RELATIVE_PATH`` per line."""
    with replacing(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(f"{item.index}\t{item.label:.6f}\t{item.path}\n")


def _encode(job: tuple[str, Item, int, int]) -> tuple[Item, bytes | None]:
    """Decode, resize (shorter edge), JPEG-encode one image; None when it cannot be read."""
    import cv2  # in the pool's processes only
    image_dir, item, resize, quality = job
    image = cv2.imread(os.path.join(image_dir, item.path), cv2.IMREAD_COLOR)
    if image is None:
        return item, None
    if resize:
        height, width = image.shape[:2]
        scale = resize / min(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return item, data.tobytes() if ok else None


def pack(spec: PrepareSpec, items: Sequence[Item], prefix: str, pool,
         progress: Callable[[int], None]) -> tuple[int, int, list[str]]:
    """Encode ``items`` in the pool and write them in order; returns (records, bytes, unreadable paths)."""
    writer = RecordWriter(prefix)
    unreadable: list[str] = []
    try:
        jobs = ((spec.image_dir, item, spec.resize, spec.quality) for item in items)
        for item, data in pool.imap(_encode, jobs, chunksize=8):
            if data is None:
                unreadable.append(item.path)
            else:
                writer.write(data, item.label, item.index)
            progress(1)
        size = writer.size_bytes
        writer.close()
    except BaseException:
        writer.abort()
        raise
    skipped = set(unreadable)
    write_lst(prefix + ".lst", [item for item in items if item.path not in skipped])
    return writer.count, size, unreadable


def _leave_signals_to_the_parent() -> None:
    """In each pool process: SIGTERM kills it (the default), Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _encoder_pool(workers: int) -> Iterator:
    """A process pool that is closed and joined when its work is done, terminated only on error.

    Why not ``with multiprocessing.get_context("fork").Pool()``: ``Pool.__exit__`` always
    terminates, which takes the task queue's lock and relies on SIGTERM's default action to
    end the workers. Workers forked from mxft-launch inherited its SIGTERM handler (it raises
    instead of exiting), so a worker could outlive the signal blocked on that lock, and
    terminate's join waited for it forever (seen as a hung launch that packs an image folder;
    tests/test_prepare.py packs 30 times through the launcher's path). Spawned workers share
    nothing with the launcher's signal handling, and a finished pool is joined, not killed.
    """
    pool = multiprocessing.get_context("spawn").Pool(max(1, workers), initializer=_leave_signals_to_the_parent)
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def pack_images(spec: PrepareSpec, *, progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Run the whole preparation; returns the summary (also written as PREFIX-summary.json)."""
    started = time.time()
    classes = list_classes(spec.image_dir, spec.exclude)
    train, val, short = split(spec, classes)
    total = len(train) + len(val)
    if not total:
        raise InputError(spec.image_dir, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
    os.makedirs(os.path.dirname(os.path.abspath(spec.out_prefix)), exist_ok=True)
    with replacing(f"{spec.out_prefix}-labels.txt", "w", encoding="utf-8") as handle:
        handle.writelines(f"{label}\t{name}\n" for label, name in enumerate(classes))
    done = [0]

    def step(count: int) -> None:
        done[0] += count
        progress(done[0], total)

    summary: dict = {"image_dir": os.path.abspath(spec.image_dir), "classes": len(classes),
                     "settings": {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("image_dir",
                                                                                              "out_prefix")}}
    with _encoder_pool(spec.workers) as pool:
        for name, items in (("train", train), ("val", val)):
            records, size, unreadable = pack(spec, items, f"{spec.out_prefix}-{name}", pool, step)
            summary[name] = {"images": records, "bytes": size, "unreadable": unreadable}
    skipped = set(summary["train"]["unreadable"])
    trained = {item.label for item in train if item.path not in skipped}
    summary["short_classes"] = short
    summary["classes_without_training_images"] = [classes[i] for i in range(len(classes)) if i not in trained]
    summary["seconds"] = round(time.time() - started, 2)
    summary["images_per_s"] = round(total / max(summary["seconds"], 1e-9), 1)
    with replacing(f"{spec.out_prefix}-summary.json", "w", encoding="utf-8") as handle:  # last: marks it complete
        json.dump(summary, handle, indent=2)
    return summary
