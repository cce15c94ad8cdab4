"""Writing files that another launch may be reading or writing at the same moment.

Two rules, for the cache (shards, trimmed checkpoints, packed image folders) and run files:

* A file appears under its final name only when complete: it is written under a fresh
  temporary name in the same folder, then ``os.replace``d (a rename within one file system is
  atomic; a copy to the final name, or a fixed ``.partial`` name two writers share, is not).
* A cache entry is built by one launch at a time: ``locked`` holds an exclusive ``flock`` on
  the entry folder's ``.lock``; a second launch waits there, then finds the entry built.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from typing import IO


def file_identity(path: str) -> tuple[int, ...] | None:
    """What changes whenever ``path`` is written, renamed over or replaced: its device, inode, size, and modification
    and change times (a rewrite that sets the modification time back still moves the change time); None if there
    is no such file. Cache keys and cached labels hold it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def temp_name(path: str) -> str:
    """A fresh name beside ``path``, e.g. ``shards/k/.part-0-of-2.rec.3f9a0c1d2b4e5f60.partial``."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{secrets.token_hex(8)}.partial")


@contextlib.contextmanager
def replacing(path: str, mode: str = "wb", **open_args) -> Iterator[IO]:
    """A new file beside ``path`` (``mode`` "w" or "wb") that becomes ``path`` when the block succeeds.

    If the block raises, the temporary file is removed and ``path`` keeps what it had.
    """
    tmp = temp_name(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_args) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def locked(folder: str) -> Iterator[None]:
    """Build the cache entry ``folder`` (made if missing) alone: an exclusive ``flock`` on ``folder/.lock``.

    The lock goes with the open file, so a launch that dies releases it.
    """
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
