"""A process's output as text lines of bounded length, whatever the process sends.

A host or a program may write a line of any length, or never a newline at all; reading
whole lines would hold all of it in the launcher's memory (300 MB without a newline once
cost 986 MB of RSS). ``bounded_lines`` reads in chunks and cuts a line at ``MAX_LINE``
bytes: its first piece is a line, and the rest follows as lines that start with
``CONTINUED``, so that no piece of a long line is ever taken for the start of another
(an ``@mxft`` event, say). Memory stays within one line and one chunk. ``CappedLog`` keeps
what reaches a process's log file within a head and a tail; ``ended_tail`` keeps the end of
a host's stderr; ``SilenceWatch`` ends a copy whose host stopped answering.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

MAX_LINE = 64 * 1024
CONTINUED = "[...] "
_CHUNK = 64 * 1024


def bounded_lines(read: Callable[[int], bytes], *, max_line: int = MAX_LINE) -> Iterator[str]:
    """Lines (without their newline) from ``read(n)``, which returns at most n bytes and b"" at the end.

    >>> chunks = [b"one\\ntw", b"o\\n" + b"x" * 10, b"y\\nlast"]
    >>> list(bounded_lines(lambda n: chunks.pop(0) if chunks else b"", max_line=4))
    ['one', 'two', 'xxxx', '[...] xxxx', '[...] xxy', 'last']
    """
    pending = bytearray()
    continued = False
    while True:
        data = read(_CHUNK)
        if not data:
            break
        pending += data
        while True:
            cut = pending.find(b"\n", 0, max_line + 1)
            if cut == -1 and len(pending) <= max_line:
                break
            end, skip = (cut, 1) if cut != -1 else (max_line, 0)
            yield (CONTINUED if continued else "") + pending[:end].decode("utf-8", errors="replace")
            continued = cut == -1
            del pending[:end + skip]
    if pending:
        yield (CONTINUED if continued else "") + pending.decode("utf-8", errors="replace")


HEAD_BYTES = 32 << 20   # of each process's log kept from its start
TAIL_BYTES = 32 << 20   # and from its end: a log never holds more than the two (and the note between them)


class CappedLog:
    """A process's log file that keeps its first ``head`` bytes and its last ``tail`` bytes, whatever it is sent.

    Lines past the head go to two tail files beside the log, each up to half the tail, the older one emptied
    when the newer fills; ``close`` appends a note of what was left out and then the tail. Disk use stays
    within head + tail; a line is flushed as it is written, so the head can be read live.
    """

    def __init__(self, path: str, *, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self._path, self._head, self._half = path, head, max(tail // 2, 1)
        self._log = open(path, "a", encoding="utf-8", errors="replace")
        self._written = self._log.tell()  # a restarted attempt appends to the same log
        self._segments: list[list] = []  # [path, handle, bytes, lines], oldest first
        self._left_out = [0, 0]  # bytes, lines

    def write(self, line: str) -> None:
        data = line + "\n"
        size = len(data.encode("utf-8", errors="replace"))
        if self._written + size <= self._head and not self._segments:
            self._log.write(data)
            self._log.flush()
            self._written += size
            return
        if not self._segments or self._segments[-1][2] + size > self._half:
            self._next_segment()
        segment = self._segments[-1]
        segment[1].write(data)
        segment[1].flush()
        segment[2] += size
        segment[3] += 1

    def _next_segment(self) -> None:
        if len(self._segments) == 2:  # the older half of the tail is left out: its file takes the newest lines
            oldest = self._segments.pop(0)
            self._left_out[0] += oldest[2]
            self._left_out[1] += oldest[3]
            oldest[1].seek(0)
            oldest[1].truncate()
            self._segments.append([oldest[0], oldest[1], 0, 0])
            return
        path = f"{self._path}.tail-{len(self._segments)}"
        self._segments.append([path, open(path, "w+", encoding="utf-8", errors="replace"), 0, 0])

    def close(self) -> None:
        if self._left_out[1]:
            self._log.write(f"[mxft] {self._left_out[1]} lines ({self._left_out[0]} bytes) of this log were left "
                            f"out here: it keeps its first {self._head >> 20} MiB and its last "
                            f"{2 * self._half >> 20} MiB\n")
        for path, handle, _, _ in self._segments:
            handle.seek(0)
            shutil.copyfileobj(handle, self._log)
            handle.close()
            os.remove(path)
        self._segments = []
        self._log.close()


def ended_tail(pipe, *, keep: int = 4096) -> str:
    """The last ``keep`` bytes of what a process that has ended left in its pipe (a host's stderr), on one line.

    Read after the end, not while the process runs: no thread per host. A host that writes without end fills
    the pipe and blocks, which its ``SilenceWatch`` or deadline then ends; what is read is the pipe's
    capacity at the most.
    """
    os.set_blocking(pipe.fileno(), False)
    data = bytearray()
    for _ in range(256):  # 256 reads of 64 KiB: more than any pipe holds
        try:
            chunk = os.read(pipe.fileno(), 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        data += chunk
        del data[:-keep]
    return " ".join(bytes(data).decode(errors="replace").split())


RUN_OUTPUT_CAP = 4 << 20   # bytes of a command's stdout a host may answer with (a probe's answer is a few KB)
RUN_ERROR_KEPT = 64 << 10  # the end of its stderr, kept


class HostSaidTooMuch(Exception):
    """A host answered a command with more than ``RUN_OUTPUT_CAP`` bytes: not read further, the command ended."""


class BoundedOutput:
    """A command's stdout, taken up to ``RUN_OUTPUT_CAP`` bytes (HostSaidTooMuch beyond), and the last
    ``RUN_ERROR_KEPT`` bytes of its stderr: what a host sends is bounded in memory, whatever it sends.

    >>> taken = BoundedOutput("h1", cap=4)
    >>> taken.out(b"abc"); taken.err(b"x" * 10)
    >>> taken.out(b"de")
    Traceback (most recent call last):
    cluster.lines.HostSaidTooMuch: answered with more than 4 bytes; not read further
    """

    def __init__(self, label: str, *, cap: int = RUN_OUTPUT_CAP, kept: int = RUN_ERROR_KEPT) -> None:
        self.label, self.cap, self.kept = label, cap, kept
        self.stdout, self.stderr = bytearray(), bytearray()

    def out(self, data: bytes) -> None:
        self.stdout += data
        if len(self.stdout) > self.cap:
            size = f"{self.cap >> 20} MiB" if self.cap >= 1 << 20 else f"{self.cap} bytes"
            raise HostSaidTooMuch(f"answered with more than {size}; not read further")

    def err(self, data: bytes) -> None:
        self.stderr += data
        del self.stderr[:-self.kept]

    def texts(self) -> tuple[str, str]:
        return self.stdout.decode(errors="replace"), self.stderr.decode(errors="replace")

    def read(self, proc, *, timeout_s: float, end: Callable | None = None) -> int:
        """Both pipes of ``proc`` (a local process: srun's step) into this until they end; its exit code.
        TimeoutError past ``timeout_s``; HostSaidTooMuch past the cap. Either way ``proc`` is ended first
        (``end(proc)``; killed by default)."""
        deadline = time.monotonic() + timeout_s
        pipes = {proc.stdout.fileno(): self.out, proc.stderr.fileno(): self.err}
        try:
            while pipes:
                left = deadline - time.monotonic()
                ready = select.select(list(pipes), [], [], max(left, 0))[0] if left > 0 else []
                if not ready:
                    raise TimeoutError(f"{self.label}: no answer within {timeout_s:.0f} s")
                for fd in ready:
                    data = os.read(fd, 65536)
                    if data:
                        pipes[fd](data)
                    else:
                        del pipes[fd]
            return proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except (TimeoutError, subprocess.TimeoutExpired, HostSaidTooMuch):
            if end is not None:
                end(proc)
            else:
                proc.kill()
                proc.wait()
            raise


class SilenceWatch:
    """Kills ``proc`` (a copy to or from a host) once it has made no progress for ``silence_s``: a host that
    accepted the connection and then says nothing must not hold the launcher. Call ``progress`` whenever bytes
    move and ``stop`` at the end; ``expired`` says whether it fired. One thread watches every copy."""

    _watching: set = set()
    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    def __init__(self, proc, *, silence_s: float) -> None:
        self._proc, self._silence_s = proc, silence_s
        self._last = time.monotonic()
        self.expired = False
        with SilenceWatch._lock:
            SilenceWatch._watching.add(self)
            if SilenceWatch._thread is None or not SilenceWatch._thread.is_alive():
                SilenceWatch._thread = threading.Thread(target=SilenceWatch._watch_all, name="silence watch",
                                                        daemon=True)
                SilenceWatch._thread.start()

    def progress(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        with SilenceWatch._lock:
            SilenceWatch._watching.discard(self)

    @staticmethod
    def _watch_all() -> None:
        idle_since = None
        while True:
            time.sleep(0.25)
            with SilenceWatch._lock:
                if SilenceWatch._watching:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 5.0:  # not at every gap between copies: one thread, not many
                    SilenceWatch._thread = None
                    return
                silent = [w for w in SilenceWatch._watching if time.monotonic() - w._last >= w._silence_s]
                SilenceWatch._watching.difference_update(silent)
            for watch in silent:
                if watch._proc.poll() is None:
                    watch.expired = True
                    watch._proc.kill()
