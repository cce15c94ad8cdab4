"""Carry out a Plan: write the run folder, stage files, start every process, wait, and hand back the result.

``execute(plan, kind, backend)`` takes the plan, the job kind that made it (``launcher.run.kinds``)
and the attempt's backend (``launcher.run.backend``): which hosts, every process and every file
copy are in the plan; the backend stages, watches and starts them; the kind adds its local files
and an observer the supervisor calls with each line of output and at each poll. All processes of
a run are owned by one Supervisor, so every way out (success, a failed process, Ctrl-C, SIGTERM)
goes through its teardown.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import yaml

from cluster.backend import RemoteHost
from cluster.supervise import Member, ProcessOutcome
from launcher.plan import Plan
from launcher.report.console import Console
from launcher.run.backend import Backend
from launcher.run.stage import Piece


class Observer(Protocol):
    """What a job kind watches while its processes run (``RecipeWatch``; a command's is ``CommandWatch``)."""

    on_line: Callable[[Member, str], bool] | None   # a process's line; True: consumed (kept off the console)

    def check(self) -> None: ...                    # each poll; raises JobFailed to end the run

    def close(self) -> None: ...                    # the processes ended, however

    def result(self, outcomes: list[ProcessOutcome], *, staging_s: float) -> dict: ...


class Kind(Protocol):
    """The job kind's part in execution (``launcher.run.kinds``)."""

    def make_local_files(self, plan: Plan) -> Mapping[str, Piece]: ...   # what staging sends that is no file here

    def observer(self, plan: Plan, remote_hosts: Mapping[str, RemoteHost], *, console: Console) -> Observer: ...


def write_run_files(plan: Plan) -> None:
    """The run's folders, plan.txt (plan-attempt-N.txt later) as --dry-run prints it, plan.json and job.yaml."""
    for sub in ("config", "workers"):
        os.makedirs(os.path.join(plan.run_dir, sub), exist_ok=True)
    os.makedirs(os.path.dirname(plan.processes[0].log_path), exist_ok=True)
    suffix = f"-attempt-{plan.attempt}" if plan.attempt > 1 else ""
    with open(os.path.join(plan.run_dir, f"plan{suffix}.txt"), "w", encoding="utf-8") as handle:
        handle.write(plan.describe() + "\n")
    with open(os.path.join(plan.run_dir, f"plan{suffix}.json"), "w", encoding="utf-8") as handle:
        handle.write(plan.to_json() + "\n")
    with open(os.path.join(plan.run_dir, "job.yaml"), "w", encoding="utf-8") as handle:
        handle.write(f"# The effective job of this run (from {plan.source}); --resume reads it.\n")
        yaml.safe_dump(plan.job_dict(), handle, sort_keys=False)


def execute(plan: Plan, kind: Kind, backend: Backend, *, console: Console) -> dict:
    """Run the plan to completion and return its result (the observer's); raises JobFailed (root cause first).

    The caller writes the result to RUN_DIR/result.json.
    """
    began = time.time()
    write_run_files(plan)
    pieces = kind.make_local_files(plan)
    backend.stage(plan, console=console, pieces=pieces)
    staging_s = time.time() - began
    observer = kind.observer(plan, backend.remotes(plan.hosts), console=console)
    try:
        with backend.watch(plan) as hosts_answer:
            outcomes = backend.start(plan, console=console, on_line=observer.on_line,
                                     check=lambda: (hosts_answer(), observer.check()))
    finally:
        observer.close()
    return observer.result(outcomes, staging_s=staging_s)
