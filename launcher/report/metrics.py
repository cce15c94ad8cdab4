"""Per-epoch metrics of a run: ``metrics.csv``, ``metrics.png`` and TensorBoard event files from the epoch events.

Every worker reports each epoch (time, images/s, training accuracy, top-k and loss on
its shard); worker 0 adds validation accuracy, top-k and loss. Top-k is there only when
the job's ``train.top_k`` is below ``num_classes`` (with k classes it is 1.0 by
construction), as ``train_topK``/``val_topK`` for that K. An epoch's row is written
once every worker has reported it; a resumed attempt's rows replace the earlier ones.
``MetricsWriter`` keeps the files current during a run.

The TensorBoard files (``RUN_DIR/events.out.tfevents.*``, one TensorBoard run per run
folder: ``tensorboard --logdir runs/``) are optional: they need tensorboardX
(``pip install -e '.[tensorboard]'`` in the checkout, or ``pip install tensorboardX``); without it they are
silently not written.
"""
from __future__ import annotations

import csv
import functools
import io
import itertools
import os
import re
import struct
import threading
import time
import types
from collections.abc import Iterable, Sequence

from launcher.data import cachefile
from launcher.data.runstate import json_lines
from launcher.report.plot import COLORS, TOTAL, TRAIN, VAL, WORKER_COLORS, Mark, Panel, Series, render

CSV_NAME, PNG_NAME = "metrics.csv", "metrics.png"
TENSORBOARD_PREFIX = "events.out.tfevents."  # TensorBoard reads the files whose names hold "tfevents"


def lead_fields(lead: dict) -> tuple[str, ...]:
    """Worker 0's columns of a row: accuracy, top-k (only those it reported) and loss, for train then val.

    >>> lead_fields({"train_accuracy": 0.5, "train_top3": 0.9, "val_top3": 0.8, "rank": 0})
    ('train_accuracy', 'train_top3', 'train_loss', 'val_accuracy', 'val_top3', 'val_loss')
    >>> lead_fields({"train_accuracy": 0.5})
    ('train_accuracy', 'train_loss', 'val_accuracy', 'val_loss')
    """
    fields: list[str] = []
    for split in ("train", "val"):
        top_k = sorted(name for name in lead if re.fullmatch(rf"{split}_top\d+", name))
        fields += [f"{split}_accuracy", *top_k, f"{split}_loss"]
    return tuple(fields)


def epoch_rows(events: Iterable[dict], num_workers: int) -> list[dict]:
    """One row per epoch that every worker finished, in epoch order.

    >>> ev = [{"event": "epoch", "index": i, "rank": i, "epoch": 1, "epoch_s": 2.0 + i, "images_per_s": 10.0,
    ...        "train_accuracy": 0.5} for i in range(2)]
    >>> epoch_rows(ev, 2)[0]["images_per_s_total"], epoch_rows(ev, 2)[0]["epoch_s"]
    (20.0, 3.0)
    """
    by_epoch: dict[int, dict[int, dict]] = {}
    for event in events:
        if event.get("event") == "epoch":
            by_epoch.setdefault(int(event["epoch"]), {})[int(event["index"])] = event
    rows = []
    for epoch in sorted(by_epoch):
        reports = by_epoch[epoch]
        if len(reports) < num_workers:
            continue
        lead = reports.get(0, reports[min(reports)])
        row = {"epoch": epoch, "epoch_s": max(float(r["epoch_s"]) for r in reports.values())}
        row.update({field: lead.get(field, "") for field in lead_fields(lead)})
        row["images_per_s_total"] = round(sum(float(r["images_per_s"]) for r in reports.values()), 2)
        row.update({f"images_per_s_worker_{i}": reports[i]["images_per_s"] for i in sorted(reports)})
        rows.append(row)
    return rows


def read_events(run_dir: str) -> list[dict]:
    """The events of events.jsonl; a line that is not a JSON object (torn by a crash mid-write) is skipped."""
    return json_lines(os.path.join(run_dir, "events.jsonl"))


class MetricsWriter:
    """Keeps RUN_DIR's metrics.csv and TensorBoard files (each epoch) and metrics.png (now and then) current.

    Fed the workers' epoch events as they arrive (from several log pump threads); starts
    from the events earlier attempts left in events.jsonl, so a resumed run's files cover
    every epoch. The plot is redrawn at most every ``png_every_s``: on 2 cores, drawing it
    for every epoch of a fast job took CPU from training.
    """

    def __init__(self, run_dir: str, num_workers: int, *, png_every_s: float = 30.0) -> None:
        self.run_dir, self.num_workers, self.png_every_s = run_dir, num_workers, png_every_s
        self.title = os.path.basename(os.path.normpath(run_dir))  # the run's id
        self._reports: dict[int, dict[int, dict]] = {}  # epoch -> worker index -> its event (the last one)
        for event in read_events(run_dir):
            if event.get("event") == "epoch" and isinstance(event.get("epoch"), int) and \
                    isinstance(event.get("index"), int):
                self._reports.setdefault(event["epoch"], {})[event["index"]] = event
        self._lock = threading.Lock()  # the reports
        self._write_lock = threading.Lock()  # the files
        self._png_at = 0.0
        self._tensorboard = TensorBoardScalars(run_dir)
        self._batches: dict[int, dict[str, float]] = {}  # step -> scalars, not yet written

    def add_batch(self, event: dict, *, batches_per_epoch: int) -> None:
        """Worker 0's progress event: its running training loss and learning rate, kept for TensorBoard's per-batch
        curves (step: the batch counted from the run's start); written with the next ``write``, off the pump. A batch
        the plan has not (beyond ``batches_per_epoch``) is not kept, and a repeat replaces the first: what waits for
        the next write stays within one entry per batch of the run, whatever a worker sends."""
        scalars = {f"batch/{name}": float(event[name]) for name in ("train_loss", "lr") if name in event}
        if scalars and 1 <= event["batch"] <= batches_per_epoch:
            with self._lock:
                self._batches[event["epoch"] * batches_per_epoch + event["batch"]] = scalars

    def add(self, event: dict) -> bool:
        """Record one worker's epoch event; True when every worker has reported that epoch.

        Only records (it runs in a log pump): the caller writes the files off the pump. A worker's second report
        of an epoch replaces its first; the cost does not grow with the events seen.
        """
        with self._lock:
            reports = self._reports.setdefault(event["epoch"], {})
            reports[event["index"]] = event
            return len(reports) >= self.num_workers

    def _events(self) -> list[dict]:
        with self._lock:
            return [event for reports in self._reports.values() for event in reports.values()]

    def rows(self) -> list[dict]:
        """The rows of every epoch all workers have reported so far (see ``epoch_rows``)."""
        return epoch_rows(self._events(), self.num_workers)

    def write(self, *, final: bool = True) -> list[dict]:
        """Rewrite the CSV, add new epochs to the TensorBoard files (and redraw the plot when ``final`` or due).

        Returns the rows. The events are copied under the lock ``add`` takes and drawn
        outside it, so a log pump never waits for a plot. ``final`` also closes the
        TensorBoard file (a later write opens another).
        """
        events = self._events()
        with self._lock:
            batches, self._batches = sorted(self._batches.items()), {}
        with self._write_lock:
            self._tensorboard.add_steps(batches)
            rows = epoch_rows(events, self.num_workers)
            if not rows:
                return rows
            _replace(os.path.join(self.run_dir, CSV_NAME), _csv_bytes(rows))
            self._tensorboard.add(rows)
            if final:
                self._tensorboard.close()
            if final or time.monotonic() - self._png_at >= self.png_every_s:
                self._png_at = time.monotonic()
                _replace(os.path.join(self.run_dir, PNG_NAME), render(panels(rows), title=self.title,
                                                                      marks=resume_marks(self.run_dir)))
            return rows


def _csv_bytes(rows: Sequence[dict]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, list(dict.fromkeys(key for row in rows for key in row)), restval="")
    writer.writeheader()
    writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)
    return out.getvalue().encode()


def _cell(value):
    """A number as it is; any text that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first) with
    a ``'`` before it, so that it opens as text.

    >>> [_cell(0.5), _cell(-1), _cell(""), _cell("=HYPERLINK(1)"), _cell("@SUM(A1)")]
    [0.5, -1, '', "'=HYPERLINK(1)", "'@SUM(A1)"]
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _replace(path: str, data: bytes) -> None:
    with cachefile.replacing(path) as handle:
        handle.write(data)


def panels(rows: Sequence[dict]) -> list[Panel]:
    """metrics.png's panels: accuracy (with val top-k when reported), loss, images/s."""
    def series(name: str, field: str, color) -> Series:
        return Series(name, tuple((row["epoch"], float(row[field])) for row in rows if row.get(field, "") != ""),
                      color)

    top_k = sorted({field for row in rows for field in row if re.fullmatch(r"val_top\d+", field)})
    workers = [k for k in rows[-1] if k.startswith("images_per_s_worker_")]
    return [
        Panel("accuracy", (series("train (worker 0)", "train_accuracy", TRAIN), series("val", "val_accuracy", VAL),
                           *(series(f"val top-{field[len('val_top'):]}", field, COLORS[2 + i % 4])
                             for i, field in enumerate(top_k))), (0.0, 1.0)),
        Panel("loss", (series("train (worker 0)", "train_loss", TRAIN), series("val", "val_loss", VAL))),
        Panel("images/s", (series("all workers", "images_per_s_total", TOTAL),
                           *(series(f"worker {k.rsplit('_', 1)[1]}", k, WORKER_COLORS[i % len(WORKER_COLORS)])
                             for i, k in enumerate(workers)))),
    ]


def resume_marks(run_dir: str) -> list[Mark]:
    """A mark where each later attempt began: between its begin epoch and the next (attempts.jsonl)."""
    begins = {entry["attempt"]: entry["begin_epoch"] for entry in json_lines(os.path.join(run_dir, "attempts.jsonl"))
              if entry.get("outcome") == "started" and isinstance(entry.get("attempt"), int) and entry["attempt"] > 1
              and isinstance(entry.get("begin_epoch"), int)}
    return [Mark(begin + 0.5, f"attempt {attempt}") for attempt, begin in sorted(begins.items())]


# --------------------------------------------------------------------------- TensorBoard

def scalar_tags(row: dict) -> dict[str, float]:
    """A row's scalars as TensorBoard tags, grouped like metrics.png's panels; empty cells left out.

    >>> scalar_tags({"epoch": 2, "epoch_s": 3.0, "train_accuracy": 0.5, "val_top3": 0.9, "val_loss": ""})
    {'time/epoch_s': 3.0, 'accuracy/train': 0.5, 'accuracy/val_top3': 0.9}
    >>> scalar_tags({"val_loss": 1.5, "images_per_s_total": 20.0, "images_per_s_worker_1": 9.5})
    {'loss/val': 1.5, 'images_per_s/total': 20.0, 'images_per_s/worker_1': 9.5}
    """
    scalars = {}
    for column, value in row.items():
        if column == "epoch" or value == "":
            continue
        split, _, name = column.partition("_")
        if column.startswith("images_per_s_"):
            tag = "images_per_s/" + column[len("images_per_s_"):]
        elif name == "loss":
            tag = f"loss/{split}"
        elif split in ("train", "val"):
            tag = f"accuracy/{split}" if name == "accuracy" else f"accuracy/{split}_{name}"
        else:
            tag = f"time/{column}"
        scalars[tag] = float(value)
    return scalars


@functools.cache
def _tensorboardx() -> types.SimpleNamespace | None:
    """tensorboardX's synchronous event file writer and protos; None when it is not installed (it is optional)."""
    try:
        from google.protobuf.message import DecodeError
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
    except ImportError:
        return None
    return types.SimpleNamespace(EventsWriter=EventsWriter, Event=Event, Summary=Summary, DecodeError=DecodeError)


_EVENT_FILES = itertools.count(1)


class TensorBoardScalars:
    """Rows as TensorBoard scalars in RUN_DIR (step = epoch; worker 0's per-batch ``batch/*`` scalars: step = the
    batch counted from the run's start), each (tag, step) written once.

    The scalars already in the folder's event files (an earlier attempt of a resumed run)
    are read back before the first write, so no epoch is written twice. Each writer makes
    one file, ``events.out.tfevents.TIME.HOST.mxft-eEEEE-PID-N`` (EEEE: its first epoch), with
    tensorboardX's synchronous writer (no thread of its own); without tensorboardX, nothing.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._written: set[tuple[str, int]] | None = None  # (tag, epoch), read from the files on the first add
        self._file = None

    def add(self, rows: Sequence[dict]) -> int:
        """Write (and flush) the scalars of ``rows`` that are not in the files yet; returns how many."""
        return self.add_steps([(row["epoch"], scalar_tags(row)) for row in rows])

    def add_steps(self, steps: Sequence[tuple[int, dict[str, float]]]) -> int:
        """Write (and flush) the (step, {tag: value}) scalars that are not in the files yet; returns how many."""
        tbx = _tensorboardx()
        if tbx is None:
            return 0
        if self._written is None:
            self._written = scalars_in_event_files(self.run_dir)
        new = [(step, {tag: value for tag, value in scalars.items() if (tag, step) not in self._written})
               for step, scalars in steps]
        new = [(step, scalars) for step, scalars in new if scalars]
        if not new:
            return 0
        if self._file is None:
            # The name holds the time to the second: the suffix keeps two writers of one second apart.
            suffix = f".mxft-e{new[0][0]:04d}-{os.getpid()}-{next(_EVENT_FILES)}"
            self._file = tbx.EventsWriter(os.path.join(self.run_dir, "events"), suffix)
        for epoch, scalars in new:
            summary = tbx.Summary(value=[tbx.Summary.Value(tag=tag, simple_value=value)
                                         for tag, value in scalars.items()])
            self._file.write_event(tbx.Event(wall_time=time.time(), step=epoch, summary=summary))
            self._written.update((tag, epoch) for tag in scalars)
        self._file.flush()
        return sum(len(scalars) for _, scalars in new)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def scalars_in_event_files(run_dir: str) -> set[tuple[str, int]]:
    """(tag, step) of every scalar in RUN_DIR's TensorBoard files (TFRecord framing: length, crc, event, crc).

    A record cut short (the launcher killed mid-write) ends its file's reading.
    """
    tbx, written = _tensorboardx(), set()
    if tbx is None:
        return written
    for name in sorted(os.listdir(run_dir)):
        if not name.startswith(TENSORBOARD_PREFIX):
            continue
        with open(os.path.join(run_dir, name), "rb") as handle:
            data = handle.read()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            if at + 16 + length > len(data):
                break
            try:
                event = tbx.Event.FromString(data[at + 12:at + 12 + length])
            except tbx.DecodeError:
                break
            written.update((value.tag, event.step) for value in event.summary.value)
            at += 16 + length
    return written
