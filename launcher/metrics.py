"""Per-epoch metrics of a run: ``metrics.csv`` and ``metrics.png`` from the workers' epoch events.

Every worker reports each epoch (time, images/s, training accuracy, top-5 and loss on
its shard); rank 0 adds validation accuracy, top-5 and loss. An epoch's row is written
once every worker has reported it; a resumed attempt's rows replace the earlier ones.
"""
from __future__ import annotations

import csv
import json
import os
import threading
from collections.abc import Iterable, Sequence

from launcher.plot import Panel, Series, render

CSV_NAME, PNG_NAME = "metrics.csv", "metrics.png"
RANK0_FIELDS = ("train_accuracy", "train_top5", "train_loss", "val_accuracy", "val_top5", "val_loss")


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
        rank0 = next((r for r in reports.values() if r.get("rank") == 0), reports[min(reports)])
        row = {"epoch": epoch, "epoch_s": max(float(r["epoch_s"]) for r in reports.values())}
        row.update({field: rank0.get(field, "") for field in RANK0_FIELDS})
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


_LOCK = threading.Lock()  # the log pumps of several workers report epochs at once


def write_metrics(run_dir: str, num_workers: int) -> list[dict]:
    """Rewrite RUN_DIR/metrics.csv and metrics.png from events.jsonl; returns the rows."""
    with _LOCK:
        rows = epoch_rows(read_events(run_dir), num_workers)
        if not rows:
            return rows
        fields = list(dict.fromkeys(key for row in rows for key in row))
        tmp = os.path.join(run_dir, CSV_NAME + ".partial")
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, os.path.join(run_dir, CSV_NAME))
        with open(tmp, "wb") as handle:
            handle.write(render(panels(rows)))
        os.replace(tmp, os.path.join(run_dir, PNG_NAME))
        return rows


def panels(rows: Sequence[dict]) -> list[Panel]:
    def series(name: str, field: str) -> Series:
        return Series(name, tuple((row["epoch"], float(row[field])) for row in rows if row.get(field) != ""))

    return [
        Panel("accuracy", (series("train (rank 0)", "train_accuracy"), series("val", "val_accuracy"),
                           series("val top-5", "val_top5")), (0.0, 1.0)),
        Panel("loss", (series("train (rank 0)", "train_loss"), series("val", "val_loss"))),
        Panel("images/s", (series("all workers", "images_per_s_total"),
                           *(series(f"worker {k.rsplit('_', 1)[1]}", k) for k in rows[-1]
                             if k.startswith("images_per_s_worker_")))),
    ]
