"""Carry out a Plan on this machine: stage files, start every process, wait, collect.

All processes of a run are owned by one Supervisor, so every way out (success, a
failed process, Ctrl-C, SIGTERM) goes through its teardown.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable

from cluster.errors import JobFailed
from cluster.local import LocalTransport
from cluster.supervise import Member, Supervisor
from launcher import recfile
from launcher.inputs import Inventory
from launcher.plan import Plan, Role
from trainer import events


def stage_local(plan: Plan, inventory: Inventory) -> None:
    """Write the run directory, the worker configs and (unless cached) the training shards."""
    for sub in ("config", "logs", "workers"):
        os.makedirs(os.path.join(plan.run_dir, sub), exist_ok=True)
    with open(os.path.join(plan.run_dir, "plan.txt"), "w", encoding="utf-8") as handle:
        handle.write(plan.describe() + "\n")
    with open(os.path.join(plan.run_dir, "job.json"), "w", encoding="utf-8") as handle:
        json.dump(plan.job.to_dict(), handle, indent=2)
    for config in plan.workers:
        with open(plan.config_path(config.index), "w", encoding="utf-8") as handle:
            handle.write(config.to_json())
    for shard in plan.shards:
        if os.path.isfile(shard.rec_path) and os.path.isfile(shard.prefix + ".idx"):
            continue  # shards are written atomically, so a present one is complete
        os.makedirs(os.path.dirname(shard.prefix), exist_ok=True)
        spans = [inventory.train_records[i] for i in shard.positions]
        recfile.write_shard(plan.job.data.train, spans, shard.prefix)


class RunEvents:
    """Collects the workers' structured events and appends them to ``events.jsonl``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rank_of: dict[int, int] = {}
        self.last_progress_at = time.monotonic()

    def on_line(self, member: Member, line: str) -> bool:
        event = events.parse(line)
        if event is None:
            return False
        event["process"] = member.name
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")
        if event["event"] == "joined":
            self.rank_of[int(event["index"])] = int(event["rank"])
        self.last_progress_at = time.monotonic()
        return True

    def rank0_worker(self) -> int | None:
        return next((index for index, rank in self.rank_of.items() if rank == 0), None)


@dataclasses.dataclass(frozen=True)
class RunResult:
    result: dict
    result_path: str
    checkpoint_prefix: str


def execute(plan: Plan, inventory: Inventory, *, echo: Callable[[str], None]) -> RunResult:
    """Run the plan to completion; raises JobFailed (root cause first) if any process fails."""
    stage_local(plan, inventory)
    run_events = RunEvents(os.path.join(plan.run_dir, "events.jsonl"))
    transport = LocalTransport()
    with Supervisor(echo=echo, on_line=run_events.on_line) as group:
        for proc in plan.processes:
            group.start(proc.name, transport, proc.argv, env=proc.env_dict, log_path=proc.log_path,
                        primary=proc.role is Role.WORKER)
        group.wait()
    return collect(plan, run_events)


def collect(plan: Plan, run_events: RunEvents) -> RunResult:
    """Bring rank 0's result.json and checkpoint to the top of the run directory."""
    index = run_events.rank0_worker()
    if index is None:
        raise JobFailed("the workers finished but none reported joining as rank 0; see the worker logs in "
                        f"{os.path.join(plan.run_dir, 'logs')}")
    out_dir = plan.workers[index].out_dir
    source = os.path.join(out_dir, "result.json")
    if not os.path.isfile(source):
        raise JobFailed(f"worker {index} (rank 0) exited 0 but wrote no {source}")
    with open(source, encoding="utf-8") as handle:
        result = json.load(handle)
    result["rank0_worker"] = index
    result["run_id"] = plan.run_id
    with open(plan.result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    checkpoint_dir = os.path.join(plan.run_dir, "checkpoint")
    os.makedirs(checkpoint_dir, exist_ok=True)
    name, epoch = result["checkpoint"]["prefix"], result["checkpoint"]["epoch"]
    for filename in (f"{name}-symbol.json", f"{name}-{epoch:04d}.params"):
        shutil.copy2(os.path.join(out_dir, filename), os.path.join(checkpoint_dir, filename))
    return RunResult(result, plan.result_path, os.path.join(checkpoint_dir, name))
