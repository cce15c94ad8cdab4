"""Helpers for the tests that start real processes."""
from __future__ import annotations

import copy
import re
import os
import signal
import subprocess
import sys
import time

import psutil
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft")
LAUNCH = [sys.executable, "-m", "launcher.cli"]


def demo_job(assets_dir: str, **sections) -> dict:
    """jobs/demo.yaml with absolute asset paths and ``sections`` merged in (one level deep)."""
    with open(os.path.join(REPO, "jobs", "demo.yaml"), encoding="utf-8") as handle:
        job = yaml.safe_load(handle)
    job["model"]["prefix"] = os.path.join(assets_dir, "pretrained-digits0to4")
    job["data"]["train"] = os.path.join(assets_dir, "digits5to9-train.rec")
    job["data"]["val"] = os.path.join(assets_dir, "digits5to9-val.rec")
    job.pop("expect", None)
    job.pop("builtin_assets", None)  # the tests name the built files directly
    for key, value in sections.items():
        if isinstance(value, dict):
            job[key] = {**copy.deepcopy(job.get(key, {})), **value}
        else:
            job[key] = value
    return job


def write_job(path, job: dict) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(job, handle, sort_keys=False)
    return str(path)


def run_launch(args: list[str], *, cwd: str, timeout_s: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR, **(env or {}))
    return subprocess.run(LAUNCH + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def processes_of_run(run_id: str) -> list[psutil.Process]:
    """Every live process started for ``run_id`` (the launcher tags each with MXFT_RUN_ID)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("MXFT_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_gone(run_id: str, timeout_s: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = processes_of_run(run_id)
        if not left:
            return []
        time.sleep(0.1)
    return processes_of_run(run_id)


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in RUN_DIR as TensorBoard itself reads the folder: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def run_id_from(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("[mxft] run ") and ":" in line:
            return line.split()[2].rstrip(":")
    raise AssertionError(f"no '[mxft] run ID:' line in:\n{stdout[-2000:]}")


def _ctrl_c_as_at_a_terminal() -> None:
    """SIGINT back to its default in the launcher: a test suite started in the background (``cmd &`` in a script,
    which ignores SIGINT, and every child inherits that) must still see the launcher take a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_launch(args: list[str], *, cwd: str, until: str | None = "epoch 1 done",
                 timeout_s: float = 120) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``mxft-launch ARGS`` and read its output until a line holds ``until``.

    With ``until=None``, returns as soon as the run id is known. Returns the process (its
    stdout still open), the run id and the lines read so far. The launch runs with ``-v``
    (every process's lines on the console), so ``until`` can be a worker's line.
    """
    env = dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR)
    proc = subprocess.Popen(LAUNCH + ["-v"] + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_ctrl_c_as_at_a_terminal)
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if (until is None and line.startswith("[mxft] run ")) or (until is not None and until in line):
            return proc, run_id_from("".join(seen)), seen
    proc.kill()
    raise AssertionError(f"the launch never printed {until!r}:\n" + "".join(seen[-30:]) + proc.stderr.read())


def plan_lines(text: str, run_id: str) -> list[str]:
    """A printed or saved plan with its run id and ports made neutral (they differ run to run)."""
    text = text[text.index(f"run {run_id}"):]
    return re.sub(r":\d{4,5}\b", ":PORT", text.replace(run_id, "RUN")).strip().splitlines()


def assert_dry_run_is_the_plan(dry_stdout: str, run_dir: str) -> None:
    """``--dry-run``'s output is the launch's plan.txt, line for line (run id and ports aside)."""
    dry_id = next(line.split()[1] for line in dry_stdout.splitlines() if line.startswith("run "))
    with open(os.path.join(run_dir, "plan.txt"), encoding="utf-8") as handle:
        saved = handle.read()
    assert plan_lines(dry_stdout, dry_id) == plan_lines(saved, os.path.basename(run_dir))
