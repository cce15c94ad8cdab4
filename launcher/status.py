"""``mxft-launch status RUN_DIR`` and ``mxft-launch runs``: where runs stand, from their run folders.

Reads only files the launcher keeps there (no SSH): who runs it (launcher.json), its
attempts, the processes it started and on which host (processes.json), the last epoch
each worker reported (events.jsonl), the last metrics row and result.json.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os

import psutil

from cluster.errors import InputError
from cluster.failure import Failure
from launcher.data import run_index, runstate
from launcher.data.attempt_result import RunResult, Verdict
from launcher.report.console import clock_text
from launcher.report.metrics import read_events


@dataclasses.dataclass(frozen=True)
class RunState:
    """Where a run stands, from its folder: ``kind`` for code (running, succeeded, missed: below the job's
    ``expect.min_accuracy``, failed, stopped, unknown), the
    failure's kind when it failed (``cluster.failure``), and ``text`` for people."""

    kind: str
    text: str
    failure: Failure | None = None
    reason: str = ""


def run_state(run_dir: str, attempts: list[dict]) -> RunState:
    """``running (launcher pid P, attempt N)``, ``succeeded``, ``failed: REASON``, ``stopped (interrupted)``, ..."""
    launcher = runstate.running_launcher(run_dir)
    last = attempts[-1] if attempts else {}
    if launcher is not None:
        return RunState("running", f"running (launcher pid {launcher.pid}, attempt {last.get('attempt', 1)})")
    ended = RunResult.from_record(last)
    if ended is None:
        return RunState("unknown", "ended without a record (launcher died)")
    if ended.verdict is Verdict.INTERRUPTED:
        return RunState("stopped", "stopped (interrupted)")
    why = f": {ended.reason or '?'}" if ended.verdict in (Verdict.MISSED, Verdict.FAILED) else ""
    return RunState(ended.verdict.value, ended.verdict.value + why, ended.failure, ended.reason)


TAIL_LINES = 8  # lines of the failed process's log that status shows


def run_status(run_dir: str) -> dict:
    """Where a run stands, as one JSON-ready value (``status --json``; ``status_lines`` says it in lines)."""
    if not os.path.isfile(os.path.join(run_dir, "job.yaml")):
        raise InputError(run_dir, "is not an mxft run directory (no job.yaml)", hint="give the folder a launch printed")
    attempts = runstate.read_attempts(run_dir)
    state = run_state(run_dir, attempts)
    epochs: dict[str, int] = {}
    for event in read_events(run_dir):
        if event.get("event") == "epoch" and isinstance(event.get("epoch"), int):
            epochs[str(event.get("process"))] = max(epochs.get(str(event.get("process")), 0), event["epoch"])
    rows = _metrics_rows(run_dir)
    log = state.failure.log_path if state.failure else None
    resumable = state.kind in ("failed", "stopped") and runstate.latest_checkpoint(run_dir) is not None
    return {"run": os.path.basename(os.path.normpath(run_dir)), "state": state.kind, "text": state.text,
            "reason": state.reason or None, "cause": state.failure.kind.value if state.failure else None,
            "attempts": [{"attempt": a["attempt"], "outcome": a["outcome"]} for a in attempts
                         if a.get("outcome") not in ("started", None) and "attempt" in a],
            "processes": _processes(run_dir, running=state.kind == "running"), "epochs_done": epochs,
            "last_epoch": rows[-1] if rows else None, "result": _result(run_dir),
            "log": log, "log_tail": log_tail(log, TAIL_LINES) if log and os.path.isfile(log) else None,
            "resume": f"mxft-launch --resume {os.path.abspath(run_dir)}" if resumable else None}


def status_lines(run_dir: str) -> list[str]:
    shown = run_status(run_dir)
    lines = [f"run {shown['run']}: {shown['text']}"]
    if len(shown["attempts"]) > 1:
        lines.append("  attempts: " + ", ".join(f"{a['attempt']} {a['outcome']}" for a in shown["attempts"]))
    by_host: dict[str, list[str]] = {}
    for proc in shown["processes"]:
        by_host.setdefault(proc["host"], []).append(f"{proc['name']} ({proc['state']})")
    lines += [f"  {host}: {', '.join(names)}" for host, names in by_host.items()]
    if shown["epochs_done"]:
        lines.append("  epochs done: " + ", ".join(f"{name} {epoch}" for name, epoch in
                                                   sorted(shown["epochs_done"].items())))
    row = shown["last_epoch"]
    if row:
        top_k = [key for key in row if key.startswith("val_top")]  # the job's train.top_k, when reported
        numbers = ", ".join(f"{key} {float(row[key]):.4f}" for key in ("train_accuracy", "val_accuracy", *top_k,
                                                                      "val_loss") if row.get(key))
        lines.append(f"  last epoch {row['epoch']}: {numbers}, {float(row['images_per_s_total']):.1f} images/s "
                     "in total")
    result = shown["result"]
    if result and "val_accuracy" in result:
        lines.append(f"  result: validation accuracy {result['val_accuracy']:.4f} ({result['val_images']} images), "
                     f"checkpoint {os.path.join(run_dir, 'checkpoint')}")
    elif result:
        lines.append("  result: exit codes " + ", ".join(f"{p['name']} {p['returncode']}"
                                                         for p in result.get("processes", [])))
    if shown["log_tail"] is not None:
        lines += [f"  last lines of {shown['log']}:"] + [f"    {line}" for line in shown["log_tail"] or ["(empty)"]]
    if shown["resume"]:
        lines.append(f"  continue with: {shown['resume']}")
    return lines


def _result(run_dir: str) -> dict | None:
    """result.json: the run's numbers (fine-tuning) or its processes' exit codes (a command), if it ended so."""
    try:
        with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return None
    return result if isinstance(result, dict) else None


def log_tail(path: str, count: int, *, most_bytes: int = 64 * 1024) -> list[str]:
    """The last ``count`` lines of a log, from at most its last ``most_bytes`` (a log may be large)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - most_bytes))
        return handle.read().decode("utf-8", errors="replace").splitlines()[-count:]


def _processes(run_dir: str, *, running: bool) -> list[dict]:
    """Each process of the run's last attempt: its name, host and state (ended; while running, a local one is looked
    at: running or exited; a remote one was started on that host)."""
    path = os.path.join(run_dir, "processes.json")
    try:
        with open(path, encoding="utf-8") as handle:
            processes = json.load(handle)
    except (OSError, ValueError, RecursionError):
        return []
    shown = []
    for proc in processes:
        if not running:
            state = "ended"
        elif proc.get("pid") is not None:  # started on this machine: look
            state = "running" if psutil.pid_exists(proc["pid"]) else "exited"
        else:
            state = "started on that host"
        shown.append({"name": proc["name"], "host": proc["host"], "state": state})
    return shown


def _metrics_rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_rows(run_root: str | None, *, limit: int = 20) -> tuple[list[dict], int]:
    """The newest ``limit`` runs under ``run_root`` (None: every run this user started, wherever:
    ``launcher.data.run_index``) as values (started, state, accuracy, duration, cause, reason, folder), and how many
    older ones were left out."""
    if run_root is None:
        folders = run_index.recorded_runs()
    elif not os.path.isdir(run_root):
        raise InputError(run_root, "no such folder", hint="give --run-root the folder runs are kept in, or leave it "
                         "out for every run you started")
    else:
        folders = [os.path.join(run_root, name) for name in os.listdir(run_root)
                   if os.path.isfile(os.path.join(run_root, name, "job.yaml"))]
    folders.sort(key=lambda path: os.path.getmtime(os.path.join(path, "job.yaml")), reverse=True)
    rows = []
    for folder in folders[:limit]:
        attempts = runstate.read_attempts(folder)
        state = run_state(folder, attempts)
        rows.append({"started": _started_at(attempts), "state": state.kind, "accuracy": _accuracy(folder),
                     "duration": _duration(attempts, running=state.kind == "running"),
                     "cause": state.failure.kind.value if state.failure else None, "reason": state.reason or None,
                     "folder": folder})
    return rows, max(len(folders) - limit, 0)


def runs_lines(run_root: str | None, *, limit: int = 20) -> list[str]:
    """The newest ``limit`` runs (see ``run_rows``): state, accuracy, duration, the kind of failure, folder, and the
    reason a run failed or missed (a table)."""
    rows, older = run_rows(run_root, limit=limit)
    if not rows:
        return [f"no runs in {run_root}" if run_root else f"no runs recorded in {run_index.index_path()}"]
    lines = [f"{'started':<19}  {'state':<9}  {'accuracy':>8}  {'duration':>8}  {'cause':<16}  folder  reason"]
    lines += [f"{row['started']:<19}  {row['state']:<9}  {row['accuracy'] or '-':>8}  {row['duration'] or '-':>8}  "
              f"{row['cause'] or '-':<16}  {row['folder']}  {row['reason'] or '-'}" for row in rows]
    if older:
        lines.append(f"({older} older runs not shown; --limit N shows more)")
    return lines


def _started_at(attempts: list[dict]) -> str:
    return attempts[0].get("time", "?").replace("T", " ") if attempts else "?"


def _duration(attempts: list[dict], *, running: bool) -> str | None:
    """From the first attempt's start to the last line (or now, while running): ``1:02:05``."""
    try:
        first = datetime.datetime.fromisoformat(attempts[0]["time"])
        last = datetime.datetime.now() if running else datetime.datetime.fromisoformat(attempts[-1]["time"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return clock_text((last - first).total_seconds())


def _accuracy(run_dir: str) -> str | None:
    accuracy = (_result(run_dir) or {}).get("val_accuracy")
    try:
        return f"{float(accuracy):.4f}" if accuracy is not None else None
    except (ValueError, TypeError, OverflowError):
        return None
