"""What a run directory remembers between attempts: checkpoints, attempts, the launcher's pid.

    RUN_DIR/checkpoints/NAME-symbol.json, NAME-EEEE.params, checkpoint-EEEE.json
    RUN_DIR/attempts.jsonl     one line per attempt: number, begin epoch, outcome
    RUN_DIR/launcher.json      pid and start time of the launcher running the run now

A checkpoint counts only when its marker ``checkpoint-EEEE.json`` exists and names
files that exist, the params a complete params file: the marker is always written
(renamed into place) last.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import time

import psutil

from launcher.data import paramsfile
from launcher.data.cachefile import temp_name

KEEP_PARAMS = 2
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a file name in the checkpoints folder, no path


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    epoch: int
    prefix: str                  # local: PREFIX-symbol.json + PREFIX-EEEE.params
    records: tuple[dict, ...]    # the epoch records of epochs 1..epoch, as worker 0 reported them
    states: bool = False         # PREFIX-EEEE.states holds the optimizer's state too


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def _markers(folder: str) -> dict[int, dict]:
    """The checkpoint markers in ``folder`` by epoch (each with its epoch's record)."""
    markers = {}
    for path in glob.glob(os.path.join(folder, "checkpoint-*.json")):
        match = re.fullmatch(r"checkpoint-(\d+)\.json", os.path.basename(path))
        try:
            with open(path, encoding="utf-8") as handle:
                marker = json.load(handle)
        except (ValueError, OSError, RecursionError):
            continue
        if match and isinstance(marker, dict) and isinstance(marker.get("record"), dict):
            markers[int(match.group(1))] = marker  # anything else is not a marker this launcher wrote
    return markers


def best_epoch(records) -> int | None:
    """The epoch of the highest validation accuracy among epoch ``records`` (the earliest of equals), or None.

    >>> best_epoch([{"epoch": 1, "val_accuracy": 0.6}, {"epoch": 2, "val_accuracy": 0.9}, {"epoch": 3,
    ...             "val_accuracy": 0.9}, {"epoch": 4}])
    2
    """
    scored = [(r["val_accuracy"], -r["epoch"]) for r in records
              if isinstance(r.get("val_accuracy"), (int, float)) and isinstance(r.get("epoch"), int)]
    return -max(scored)[1] if scored else None


def latest_checkpoint(run_dir: str) -> Checkpoint | None:
    """The newest complete checkpoint of the run, or None."""
    folder = checkpoint_dir(run_dir)
    markers = _markers(folder)
    for epoch in sorted(markers, reverse=True):
        marker = markers[epoch]
        if not all(isinstance(marker.get(key), str) and _PLAIN_NAME.fullmatch(marker[key])
                   for key in ("symbol", "params")):
            continue  # a marker naming a path elsewhere (or nothing) is not a checkpoint of this run
        if all(os.path.isfile(os.path.join(folder, marker[key])) for key in ("symbol", "params")) and isinstance(
                paramsfile.read_layout(os.path.join(folder, marker["params"])), paramsfile.ParamsLayout):
            prefix = os.path.join(folder, marker["symbol"][: -len("-symbol.json")])
            records = tuple(markers[e]["record"] for e in sorted(markers) if e <= epoch)
            states = marker.get("states")
            return Checkpoint(epoch, prefix, records, states == f"{os.path.basename(prefix)}-{epoch:04d}.states"
                              and os.path.isfile(os.path.join(folder, states)) and isinstance(
                                  paramsfile.read_layout(os.path.join(folder, states)), paramsfile.ParamsLayout))
    return None


def install_checkpoint(source_dir: str, files: list[str], run_dir: str, *, link: bool) -> None:
    """Move or link a checkpoint's files (marker last) into the run's checkpoints folder."""
    folder = checkpoint_dir(run_dir)
    os.makedirs(folder, exist_ok=True)
    ordered = sorted(files, key=lambda name: name.startswith("checkpoint-"))  # the marker goes last
    for name in ordered:
        source, target = os.path.join(source_dir, name), os.path.join(folder, name)
        if os.path.exists(target) and os.path.samefile(source, target):
            continue  # the symbol, linked at an earlier epoch
        if link:
            link_or_copy(source, target)
        else:
            os.replace(source, target)  # fetched into a folder beside this one: a rename, whole or not at all
    _prune(folder)


def link_or_copy(source: str, target: str) -> None:
    """Put ``source`` at ``target`` atomically: a hard link where the file system allows (no second
    copy of a large params file), else a copy."""
    tmp = temp_name(target)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _prune(folder: str) -> None:
    """Keep the params (and optimizer states) of the newest KEEP_PARAMS epochs, and the params of the best
    validation accuracy so far; markers stay (they hold the records)."""
    best = best_epoch([marker["record"] for marker in _markers(folder).values()])
    for suffix in ("params", "states"):
        for path in sorted(glob.glob(os.path.join(folder, f"*-[0-9][0-9][0-9][0-9].{suffix}")))[:-KEEP_PARAMS]:
            if not (suffix == "params" and best is not None and path.endswith(f"-{best:04d}.params")):
                os.remove(path)


def record_attempt(run_dir: str, entry: dict) -> None:
    with open(os.path.join(run_dir, "attempts.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}) + "\n")


def read_attempts(run_dir: str) -> list[dict]:
    """The lines of attempts.jsonl (several per attempt: started, then failed or succeeded).

    A line that is not a JSON object (torn by a crash mid-write) is skipped.
    """
    return [entry for entry in json_lines(os.path.join(run_dir, "attempts.jsonl"))
            if isinstance(entry.get("attempt", 0), int)]


def json_lines(path: str) -> list[dict]:
    """The JSON objects of a file of one per line; a line that is not one (torn by a crash) is skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.append(entry)
    return found


def attempt_summary(run_dir: str) -> list[dict]:
    """One dict per attempt, its lines merged (the later line wins: outcome, reason, ...)."""
    merged: dict[int, dict] = {}
    for line in read_attempts(run_dir):
        merged.setdefault(line["attempt"], {}).update({k: v for k, v in line.items() if k != "time"})
    return [merged[number] for number in sorted(merged)]


# launcher.json of the run this process launches, held open while it runs (see running_launcher).
_held_launcher_file: list = []


def write_launcher(run_dir: str, run_id: str) -> None:
    """Record this process as the run's launcher, and keep the record open as proof of it."""
    me = psutil.Process()
    path = os.path.join(run_dir, "launcher.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"pid": me.pid, "create_time": me.create_time(), "run_id": run_id}, handle)
    for held in _held_launcher_file:  # one run at a time per process: the previous run's is done
        held.close()
    _held_launcher_file[:] = [open(path, "rb")]  # open until this process exits or launches another run


def running_launcher(run_dir: str) -> psutil.Process | None:
    """The launcher process of this run if it still runs, else None.

    launcher.json only claims a pid: the process must also have started at the recorded
    time and hold this very launcher.json open (``write_launcher`` keeps it open), so a
    forged or stale file never gets another process signalled by ``mxft-launch stop``.
    """
    path = os.path.join(run_dir, "launcher.json")
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info["create_time"]) >= 0.01:
            return None
        held = {opened.path for opened in proc.open_files()}
        return proc if os.path.realpath(path) in held else None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
