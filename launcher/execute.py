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
from collections.abc import Callable, Mapping

from cluster.errors import JobFailed
from cluster.local import LocalTransport
from cluster.ssh import SSHHost
from cluster.supervise import Member, Supervisor, Transport
from launcher import recfile
from launcher.checkpoint import trim_params, used_variables
from launcher.inputs import Inventory
from launcher.plan import Plan, Role
from launcher.stage import fetch_dir, stage_all
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
    if plan.trimmed_params and not os.path.isfile(plan.trimmed_params):
        os.makedirs(os.path.dirname(plan.trimmed_params), exist_ok=True)
        model = plan.job.model
        if trim_params(model.params_path, used_variables(model.symbol_path, model.cut_layer),
                       plan.trimmed_params) is None:
            shutil.copyfile(model.params_path, plan.trimmed_params)  # a form we cannot trim: send it whole
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


def execute(plan: Plan, inventory: Inventory, *, echo: Callable[[str], None],
            ssh_hosts: Mapping[str, SSHHost] | None = None) -> RunResult:
    """Run the plan to completion; raises JobFailed (root cause first) if any process fails.

    ``ssh_hosts`` maps the label of every remote host of the plan to its SSHHost; hosts
    not in it run their processes on this machine.
    """
    ssh_hosts = dict(ssh_hosts or {})
    stage_local(plan, inventory)
    if plan.transfers:
        started = time.monotonic()
        reports = stage_all(ssh_hosts, plan.transfers, root_of=plan.remote_roots.__getitem__,
                            python_of=lambda label: next(p.argv[0] for p in plan.processes if p.host == label),
                            progress=lambda text: echo(f"[stage] {text}"))
        for report in reports:
            echo(f"[stage] {report.host}: sent {report.files_sent} files ({report.data_bytes_sent} bytes of data), "
                 f"{report.files_present} already there ({report.bytes_present} bytes) in {report.seconds:.1f} s")
        echo(f"[stage] {sum(r.data_bytes_sent for r in reports)} bytes of data sent in total "
             f"({time.monotonic() - started:.1f} s)")
    transports: dict[str, Transport] = {label: LocalTransport() for label in (h.label for h in plan.hosts)}
    transports.update(ssh_hosts)
    run_events = RunEvents(os.path.join(plan.run_dir, "events.jsonl"))
    with Supervisor(echo=echo, on_line=run_events.on_line) as group:
        for proc in plan.processes:
            group.start(proc.name, transports[proc.host], proc.argv, env=proc.env_dict, log_path=proc.log_path,
                        primary=proc.role is Role.WORKER)
        group.wait()
    return collect(plan, run_events, ssh_hosts)


def collect(plan: Plan, run_events: RunEvents, ssh_hosts: Mapping[str, SSHHost]) -> RunResult:
    """Bring rank 0's result.json and checkpoint to the top of the run directory."""
    index = run_events.rank0_worker()
    if index is None:
        raise JobFailed("the workers finished but none reported joining as rank 0; see the worker logs in "
                        f"{os.path.join(plan.run_dir, 'logs')}")
    out_dir = plan.workers[index].out_dir
    host = plan.worker_hosts[index]
    if host in ssh_hosts:
        local_out = os.path.join(plan.run_dir, "workers", f"worker-{index}")
        fetch_dir(ssh_hosts[host], out_dir, local_out)
        out_dir = local_out
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
