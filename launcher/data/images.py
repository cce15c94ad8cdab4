"""``data.images``: a folder of images packed into the cache once, keyed by its files and the packing settings."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable

from cluster.errors import InputError
from launcher.data import cachefile, extras
from launcher.spec.jobspec import JobSpec


def _folder_key(job: JobSpec) -> str:
    """Changes whenever the image folder's files or the packing settings change."""
    images = job.data.images
    digest = hashlib.sha256(repr(dataclasses.astuple(images)).encode())
    for root, dirs, files in os.walk(images.folder):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            digest.update(f"{os.path.relpath(os.path.join(root, name), images.folder)}|{stat.st_size}|"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def pack_image_folder(job: JobSpec, cache_dir: str, *, echo: Callable[[str], None],
                      progress: Callable[[int, int], None] = lambda done, total: None) -> JobSpec:
    """For ``data.images``: pack the folder into the cache once (a dry run too: its plan needs the records, and the
    cache is the cache); the job then names those .rec files."""
    images = job.data.images
    if images is None:
        return job
    if not os.path.isdir(images.folder):
        raise InputError(images.folder, "image folder not found", hint=f"check data.images.folder in {job.source}")
    prefix = os.path.join(cache_dir, "prepared", _folder_key(job), "set")
    if not os.path.isfile(prefix + "-summary.json"):  # written last: the packing is complete
        with cachefile.locked(os.path.dirname(prefix)):  # a launch packing it now goes first; then it is there
            if not os.path.isfile(prefix + "-summary.json"):
                _pack(job, prefix, echo, progress)
    data = dataclasses.replace(job.data, train=prefix + "-train.rec", val=prefix + "-val.rec")
    return dataclasses.replace(job, data=data)


def _pack(job: JobSpec, prefix: str, echo: Callable[[str], None], progress: Callable[[int, int], None]) -> None:
    extras.require("cv2", package="opencv-python-headless", extra="prepare", needed_for="packing data.images",
                   source=job.source)
    from launcher.data.prepare import PrepareSpec, pack_images
    images = job.data.images
    echo(f"[mxft] packing {images.folder} into {os.path.dirname(prefix)} (once; cached)")
    summary = pack_images(PrepareSpec(images.folder, prefix, images.train_per_class, images.seed, images.resize,
                                      images.quality, images.exclude, os.cpu_count() or 1), progress=progress)
    if summary["classes_without_training_images"]:
        os.remove(prefix + "-summary.json")
        raise InputError(images.folder, "no readable training image in class(es) "
                         + ", ".join(summary["classes_without_training_images"]))
    echo(f"[mxft] packed {summary['train']['images']} training and {summary['val']['images']} validation "
         f"images of {summary['classes']} classes in {summary['seconds']:.1f} s")

