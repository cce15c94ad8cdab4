"""What a person sees while a launch runs: the launcher's own lines, one line per epoch, progress.

Every process's full output goes to its log file (``logs/`` in the run folder); the
console shows, by default:

- the launcher's own lines (``[mxft] ...``, ``[stage] ...``), errors and warnings;
- one line per epoch for the whole job: worker 0's training accuracy and loss, the
  validation accuracy, images/s of all workers together, time elapsed and left;
- progress within an epoch, while staging and while packing images: a live bar on a
  terminal (tqdm), and on anything else (CI, nohup, a pipe) a plain line at most every
  ``plain_every_s``, so a long epoch still shows it is moving.

A process's own lines reach the console only when they look like a warning or an error,
or with ``verbose`` (``mxft-launch -v``); command mode shows them all, as launch.py did.
"""
from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm

from cluster.srun import STEP_ENDED  # Slurm's echo of a step's end (--launcher srun)

# A process line shown without -v: it reads like a warning or an error (Python's, MXNet's, ps-lite's): one of the
# words, or a word ending in error or warning (ValueError, UserWarning). Linear in the line's length: a pattern that
# backtracks over a word (\w+Error) took seconds for each 16 KiB line of letters a process printed.
ALARM = re.compile(r"(?i)\b(exception|traceback|fatal|critical|killed|abort(ed)?)\b|(warning|error)\b")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab shown as ``\\xNN``: a host's bytes (a log line,
    an error) reach the terminal as text, never as an escape sequence that moves, hides or retitles anything.

    >>> printable("ok\\tdone\\n\\x1b]0;owned\\x07\\x9b2J")
    'ok\\tdone\\n\\\\x1b]0;owned\\\\x07\\\\x9b2J'
    """
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def looks_like_alarm(line: str) -> bool:
    """Whether a process's line must reach the console even when it is quiet.

    >>> looks_like_alarm("[21:02:26] ../src/executor/graph_executor.cc:1991: Subgraph backend MKLDNN is activated.")
    False
    >>> looks_like_alarm("mxnet.base.MXNetError: Invalid NDArray file format")
    True
    >>> looks_like_alarm("UserWarning: the optimizer state is not saved")
    True
    >>> looks_like_alarm("srun: error: h1: task 0: Exited with exit code 143")
    False
    >>> [looks_like_alarm(line) for line in ("no errors", "terrorism", "error:", "x" * 65536)]
    [False, False, True, False]
    """
    return ALARM.search(line) is not None and STEP_ENDED.match(line) is None


def clock_text(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``.

    >>> clock_text(75), clock_text(3725)
    ('1:15', '1:02:05')
    """
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def epoch_line(row: dict, epochs: int, elapsed_s: float, left_s: float | None) -> str:
    """The console's one line for a completed epoch of the whole job.

    >>> epoch_line({"epoch": 3, "train_accuracy": 0.8125, "train_loss": 0.958, "val_accuracy": 0.69,
    ...             "images_per_s_total": 523.6}, 8, 4.2, 7.0)
    'epoch 3/8: train accuracy 0.8125, loss 0.9580 (worker 0); val accuracy 0.6900; 524 images/s; 0:04, ~0:07 left'
    """
    parts = [f"epoch {row['epoch']}/{epochs}: train accuracy {_number(row.get('train_accuracy'))}, "
             f"loss {_number(row.get('train_loss'))} (worker 0)"]
    if row.get("val_accuracy", "") != "":
        parts.append(f"val accuracy {_number(row['val_accuracy'])}")
    parts.append(f"{float(row.get('images_per_s_total') or 0):.0f} images/s")
    parts.append(clock_text(elapsed_s) + (f", ~{clock_text(left_s)} left" if left_s is not None else ""))
    return "; ".join(parts)


def _number(value) -> str:
    return f"{float(value):.4f}" if value not in (None, "") else "-"


class Console:
    """The launch's console; ``console(text)`` says a launcher line (it is the ``echo`` of the launcher).

    Called from several threads (log pumps, staging, the main loop): every write holds one lock.
    """

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False, interactive: bool | None = None,
                 plain_every_s: float = 30.0) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.verbose = verbose
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.plain_every_s = plain_every_s
        self.started = time.monotonic()
        self._lock = threading.RLock()
        self._bars: dict[str, tqdm] = {}
        self._plain_at = time.monotonic()
        self._epochs = _EpochClock()

    def __call__(self, text: str) -> None:
        text = printable(text)
        with self._lock:
            if self._bars:
                tqdm.write(text, file=self.stream)
            else:
                print(text, file=self.stream, flush=True)

    def relay(self, name: str, line: str) -> None:
        """A line of a process's output (already in its log file): shown with -v, or if it is an alarm."""
        if self.verbose or looks_like_alarm(line):
            self(f"[{name}] {line}")

    def progress(self, what: str, done: int, total: int, *, unit: str = "") -> None:
        """``what`` is ``done`` of ``total`` along: a bar on a terminal, else a line now and then."""
        with self._lock:
            if self.interactive:
                self._advance_bar(what, done, total, unit)
            elif time.monotonic() - self._plain_at >= self.plain_every_s and total:
                self._plain_at = time.monotonic()
                amount = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if unit == "B" else f"{done}/{total} {unit}".rstrip()
                self(f"[mxft] {what}: {amount} ({100 * min(done, total) // total}%), "
                     f"{clock_text(time.monotonic() - self.started)} since the start")

    def _advance_bar(self, what: str, done: int, total: int, unit: str) -> None:
        bar = self._bars.get(what)
        if bar is None:
            size = shutil.get_terminal_size((100, 24))  # a terminal that reports no size gets the fallback
            bar = self._bars[what] = tqdm(total=total, desc=what, unit=unit or "it", unit_scale=unit == "B",
                                          leave=False, file=self.stream, ncols=size.columns, nrows=size.lines)
        bar.update(min(done, total) - bar.n)
        if done >= total:
            self.end_progress(what)

    def end_progress(self, what: str) -> None:
        with self._lock:
            bar = self._bars.pop(what, None)
            if bar is not None:
                bar.close()

    def run_started(self) -> None:
        """An attempt's run begins: the epoch lines' clock counts from here (not from building the demo's files or
        packing images before it)."""
        self.started = time.monotonic()

    def start_training(self, first_epoch: int, epochs: int, batches_per_epoch: int) -> None:
        """Training of epochs ``first_epoch + 1 .. epochs`` begins (an attempt may resume mid-run)."""
        with self._lock:
            self._epochs = _EpochClock(first_epoch, epochs, batches_per_epoch)

    def batch(self, epoch: int, batch: int) -> None:
        """Worker 0 finished ``batch`` (1-based) of ``epoch`` (0-based, as MXNet counts). One epoch's bar at a
        time: a bar of another epoch still open is closed first, whatever order the events came in."""
        clock = self._epochs
        clock.saw_batch()
        if clock.batches_per_epoch:
            what = f"epoch {epoch + 1}/{clock.epochs}"
            with self._lock:
                for other in [name for name in self._bars if name.startswith("epoch ") and name != what]:
                    self.end_progress(other)
                self.progress(what, batch, clock.batches_per_epoch, unit="batch")

    def epoch(self, row: dict) -> None:
        """Every worker finished epoch ``row['epoch']``: its one line."""
        clock = self._epochs
        with self._lock:
            self.end_progress(f"epoch {row['epoch']}/{clock.epochs}")
            self(epoch_line(row, clock.epochs, time.monotonic() - self.started, clock.left_after(int(row["epoch"]))))

    def close(self) -> None:
        with self._lock:
            for what in list(self._bars):
                self.end_progress(what)


class _EpochClock:
    """When this attempt's training began, to estimate the time left from the epochs done so far."""

    def __init__(self, first_epoch: int = 0, epochs: int = 0, batches_per_epoch: int = 0) -> None:
        self.first_epoch, self.epochs, self.batches_per_epoch = first_epoch, epochs, batches_per_epoch
        self.began: float | None = None

    def saw_batch(self) -> None:
        if self.began is None:
            self.began = time.monotonic()

    def left_after(self, epoch: int) -> float | None:
        done = epoch - self.first_epoch
        if self.began is None or done <= 0 or epoch >= self.epochs:
            return None
        return (time.monotonic() - self.began) / done * (self.epochs - epoch)
