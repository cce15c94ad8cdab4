"""Per-epoch metrics of a run: ``metrics.csv`` and ``metrics.png`` from the workers' epoch events.

Every worker reports each epoch (time, images/s, training accuracy, top-5 and loss on
its shard); worker 0 adds validation accuracy, top-5 and loss. An epoch's row is written
once every worker has reported it; a resumed attempt's rows replace the earlier ones.
``MetricsWriter`` keeps both files current during a run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence

from launcher.plot import Panel, Series, render

CSV_NAME, PNG_NAME = "metrics.csv", "metrics.png"
LEAD_FIELDS = ("train_accuracy", "train_top5", "train_loss", "val_accuracy", "val_top5", "val_loss")


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
        row.update({field: lead.get(field, "") for field in LEAD_FIELDS})
        row["images_per_s_total"] = round(sum(float(r["images_per_s"]) for r in reports.values()), 2)
        row.update({f"images_per_s_worker_{i}": reports[i]["images_per_s"] for i in sorted(reports)})
        rows.append(row)
    return rows


def read_events(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "events.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class MetricsWriter:
    """Keeps RUN_DIR/metrics.csv (each completed epoch) and metrics.png (now and then, and at the end) current.

    Fed the workers' epoch events as they arrive (from several log pump threads); starts
    from the events earlier attempts left in events.jsonl, so a resumed run's files cover
    every epoch. The plot is redrawn at most every ``png_every_s``: on 2 cores, drawing it
    for every epoch of a fast job took CPU from training.
    """

    def __init__(self, run_dir: str, num_workers: int, *, png_every_s: float = 30.0) -> None:
        self.run_dir, self.num_workers, self.png_every_s = run_dir, num_workers, png_every_s
        self._events = [e for e in read_events(run_dir) if e.get("event") == "epoch"]
        self._lock = threading.Lock()  # the events
        self._write_lock = threading.Lock()  # the files
        self._png_at = 0.0

    def add(self, event: dict) -> bool:
        """Record one worker's epoch event; True when every worker has reported that epoch.

        Only records (it runs in a log pump): the caller writes the files off the pump.
        """
        with self._lock:
            self._events.append(event)
            return sum(e["epoch"] == event["epoch"] for e in self._events) >= self.num_workers

    def rows(self) -> list[dict]:
        """The rows of every epoch all workers have reported so far (see ``epoch_rows``)."""
        with self._lock:
            events = list(self._events)
        return epoch_rows(events, self.num_workers)

    def write(self, *, final: bool = True) -> list[dict]:
        """Rewrite the CSV (and the plot when ``final`` or due); returns the rows.

        The events are copied under the lock ``add`` takes and drawn outside it, so a log
        pump never waits for a plot.
        """
        with self._lock:
            events = list(self._events)
        with self._write_lock:
            rows = epoch_rows(events, self.num_workers)
            if not rows:
                return rows
            _replace(os.path.join(self.run_dir, CSV_NAME), _csv_bytes(rows))
            if final or time.monotonic() - self._png_at >= self.png_every_s:
                self._png_at = time.monotonic()
                _replace(os.path.join(self.run_dir, PNG_NAME), render(panels(rows)))
            return rows


def _csv_bytes(rows: Sequence[dict]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, list(dict.fromkeys(key for row in rows for key in row)), restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _replace(path: str, data: bytes) -> None:
    with open(path + ".partial", "wb") as handle:
        handle.write(data)
    os.replace(path + ".partial", path)


def panels(rows: Sequence[dict]) -> list[Panel]:
    def series(name: str, field: str) -> Series:
        return Series(name, tuple((row["epoch"], float(row[field])) for row in rows if row.get(field) != ""))

    return [
        Panel("accuracy", (series("train (worker 0)", "train_accuracy"), series("val", "val_accuracy"),
                           series("val top-5", "val_top5")), (0.0, 1.0)),
        Panel("loss", (series("train (worker 0)", "train_loss"), series("val", "val_loss"))),
        Panel("images/s", (series("all workers", "images_per_s_total"),
                           *(series(f"worker {k.rsplit('_', 1)[1]}", k) for k in rows[-1]
                             if k.startswith("images_per_s_worker_")))),
    ]
