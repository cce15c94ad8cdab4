"""``mxft-launch status RUN_DIR``: where a running or finished run stands, from its run directory.

Reads only files the launcher keeps there (no SSH): who runs it (launcher.json), its
attempts, the processes it started and on which host (processes.json), the last epoch
each worker reported (events.jsonl), the last metrics row and result.json.
"""
from __future__ import annotations

import csv
import json
import os

import psutil

from cluster.errors import InputError
from launcher import runstate
from launcher.metrics import read_events


def status_lines(run_dir: str) -> list[str]:
    if not os.path.isfile(os.path.join(run_dir, "job.yaml")):
        raise InputError(run_dir, "is not an mxft run directory (no job.yaml)", hint="give the folder a launch printed")
    attempts = runstate.read_attempts(run_dir)
    launcher = runstate.running_launcher(run_dir)
    last = attempts[-1] if attempts else {}
    if launcher is not None:
        state = f"running (launcher pid {launcher.pid}, attempt {last.get('attempt', 1)})"
    else:
        state = {"succeeded": "succeeded", "failed": f"failed: {last.get('reason', '?')}",
                 "interrupted": "stopped (interrupted)"}.get(last.get("outcome"), "ended without a record (launcher died)")
    lines = [f"run {os.path.basename(os.path.normpath(run_dir))}: {state}"]
    ends = [a for a in attempts if a.get("outcome") not in ("started", None)]
    if len(ends) > 1:
        lines.append("  attempts: " + ", ".join(f"{a['attempt']} {a['outcome']}" for a in ends))
    lines += _process_lines(run_dir, running=launcher is not None)
    events = read_events(run_dir)
    epochs: dict[str, int] = {}
    for event in events:
        if event.get("event") == "epoch":
            epochs[event["process"]] = max(epochs.get(event["process"], 0), int(event["epoch"]))
    if epochs:
        lines.append("  epochs done: " + ", ".join(f"{name} {epoch}" for name, epoch in sorted(epochs.items())))
    rows = _metrics_rows(run_dir)
    if rows:
        row = rows[-1]
        shown = ", ".join(f"{key} {float(row[key]):.4f}" for key in ("train_accuracy", "val_accuracy", "val_top5",
                                                                    "val_loss") if row.get(key))
        lines.append(f"  last epoch {row['epoch']}: {shown}, {float(row['images_per_s_total']):.1f} images/s in total")
    result_path = os.path.join(run_dir, "result.json")
    if os.path.isfile(result_path):
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
        if "val_accuracy" in result:
            lines.append(f"  result: validation accuracy {result['val_accuracy']:.4f} ({result['val_images']} images), "
                         f"checkpoint {os.path.join(run_dir, 'checkpoint')}")
        else:
            lines.append("  result: exit codes " + ", ".join(f"{p['name']} {p['returncode']}"
                                                             for p in result.get("processes", [])))
    return lines


def _process_lines(run_dir: str, *, running: bool) -> list[str]:
    path = os.path.join(run_dir, "processes.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        processes = json.load(handle)
    by_host: dict[str, list[str]] = {}
    for proc in processes:
        if not running:
            state = "ended"
        elif proc.get("pid") is not None:  # started on this machine: look
            state = "running" if psutil.pid_exists(proc["pid"]) else "exited"
        else:
            state = "started over SSH"
        by_host.setdefault(proc["host"], []).append(f"{proc['name']} ({state})")
    return [f"  {host}: {', '.join(names)}" for host, names in by_host.items()]


def _metrics_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
