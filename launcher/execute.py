"""Carry out a Plan on this machine: stage files, start every process, wait, collect.

All processes of a run are owned by one Supervisor, so every way out (success, a
failed process, Ctrl-C, SIGTERM) goes through its teardown.
"""
from __future__ import annotations

import concurrent.futures
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
import yaml

from launcher import recfile, runstate
from launcher.checkpoint import trim_params, used_variables
from launcher.command import CommandPlan
from launcher.inputs import Inventory
from launcher.metrics import MetricsWriter
from launcher.plan import Plan, Role
from launcher.stage import fetch_dir, stage_all
from trainer import events


def write_plan_and_job(plan: Plan | CommandPlan, job: dict, comment: str) -> None:
    """RUN_DIR/plan.txt (plan-attempt-N.txt for later attempts) as --dry-run prints it, and job.yaml."""
    suffix = f"-attempt-{plan.attempt}" if plan.attempt > 1 else ""
    with open(os.path.join(plan.run_dir, f"plan{suffix}.txt"), "w", encoding="utf-8") as handle:
        handle.write(plan.describe() + "\n")
    with open(os.path.join(plan.run_dir, "job.yaml"), "w", encoding="utf-8") as handle:
        handle.write(f"# {comment}\n")
        yaml.safe_dump(job, handle, sort_keys=False)


def stage_local(plan: Plan, inventory: Inventory) -> None:
    """Write the run directory, the worker configs and (unless cached) the training shards."""
    for sub in ("config", "workers"):
        os.makedirs(os.path.join(plan.run_dir, sub), exist_ok=True)
    os.makedirs(os.path.dirname(plan.processes[0].log_path), exist_ok=True)
    write_plan_and_job(plan, plan.job.to_job_dict(),
                       f"The effective job of this run (from {plan.job.source}); --resume reads it.")
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
    """The workers' structured events: appended to ``events.jsonl`` and tracked for the watchdogs.

    Runs in the log pump threads; ``on_checkpoint`` (worker 0 finished an epoch checkpoint)
    is called there too, so fetching it delays only worker 0's log lines.
    """

    def __init__(self, path: str, on_checkpoint: Callable[[dict], None] | None = None, *,
                 num_workers: int = 0) -> None:
        self.path = path
        self.on_checkpoint = on_checkpoint
        self.metrics = MetricsWriter(os.path.dirname(path), num_workers) if num_workers else None
        self.first_batch_at: float | None = None  # wall-clock time of the first batch any worker finished
        self.rank_of: dict[int, int] = {}
        self.last_seen: dict[int, float] = {}
        self.position: dict[int, tuple[int, int]] = {}
        self.done: set[int] = set()
        self.unreachable: dict[str, str] = {}  # process name -> why it cannot reach the scheduler

    def on_line(self, member: Member, line: str) -> bool:
        event = events.parse(line)
        if event is None:
            return False
        if event["event"] != "progress":  # one per batch: tracked, not stored
            event["process"] = member.name
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event, sort_keys=True) + "\n")
        if event["event"] == "scheduler_unreachable":
            self.unreachable[member.name] = (f"on {member.host} cannot connect to the scheduler at "
                                             f"{event['address']}: {event['error']}")
        elif event["event"] == "scheduler_reachable":
            self.unreachable.pop(member.name, None)
        index = int(member.name.split()[-1]) if member.name.startswith("worker ") else None
        if index is None:
            return True
        self.last_seen[index] = time.monotonic()
        kind = event["event"]
        if kind == "joined":
            self.rank_of[index] = int(event["rank"])
        elif kind == "progress":
            self.position[index] = (int(event["epoch"]), int(event["batch"]))
        elif kind == "done":
            self.done.add(index)
        elif kind == "first_batch":
            self.first_batch_at = min(self.first_batch_at or event["time"], event["time"])
        elif kind == "epoch" and self.metrics is not None:
            self.metrics.add(event)
        elif kind == "checkpoint" and self.on_checkpoint is not None:
            self.on_checkpoint(event)
        return True

    def lead_joined(self) -> bool:
        """Whether worker 0 (which evaluates and writes the result) joined ps-lite."""
        return 0 in self.rank_of


class Watchdog:
    """Turns ps-lite's silent hangs into errors: a start-up deadline and a progress timeout."""

    def __init__(self, plan: Plan, run_events: RunEvents) -> None:
        self.plan, self.events = plan, run_events
        self.started = time.monotonic()
        cluster = plan.job.cluster
        self.startup_timeout_s, self.progress_timeout_s = cluster.startup_timeout_s, cluster.progress_timeout_s

    def check(self) -> None:
        now = time.monotonic()
        workers = range(len(self.plan.workers))
        missing = [i for i in workers if i not in self.events.rank_of]
        if missing:
            if now - self.started > self.startup_timeout_s:
                causes = "".join(f"{name} {why}; " for name, why in sorted(self.events.unreachable.items()))
                names = ", ".join(f"worker {i} on {self.plan.worker_hosts[i]}" for i in missing)
                raise JobFailed(
                    f"{causes}{names} did not join ps-lite within {self.startup_timeout_s} s "
                    f"(cluster.startup_timeout_s); the scheduler is at {self.plan.scheduler_uri}:"
                    f"{self.plan.scheduler_port}: check that every host can reach it and that DMLC_NODE_HOST is "
                    "an address the other hosts can reach")
            return
        active = [i for i in workers if i not in self.events.done]
        silent = [i for i in active if now - self.events.last_seen.get(i, self.started) > self.progress_timeout_s]
        if silent:
            behind = min(self.events.position.get(i, (-1, 0)) for i in active)
            stuck = [i for i in active if self.events.position.get(i, (-1, 0)) == behind] or silent
            where = ", ".join(f"worker {i} on {self.plan.worker_hosts[i]}" for i in stuck)
            epoch, batch = behind
            raise JobFailed(f"{where} reported no progress for {self.progress_timeout_s} s "
                            f"(cluster.progress_timeout_s); stuck at epoch {epoch + 1} batch {batch}, "
                            "the other workers wait for it")


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
    began = time.time()
    stage_local(plan, inventory)
    stage_remote(plan, ssh_hosts, echo=echo)
    started = time.time()
    run_events = RunEvents(os.path.join(plan.run_dir, "events.jsonl"),
                           on_checkpoint=lambda event: keep_checkpoint(plan, ssh_hosts, event),
                           num_workers=len(plan.workers))
    run_processes(plan, ssh_hosts, echo=echo, on_line=run_events.on_line, check=Watchdog(plan, run_events).check)
    ended = time.time()
    first = run_events.first_batch_at or started
    timing = {"staging_s": round(started - began, 3), "startup_s": round(first - started, 3),
              "training_s": round(ended - first, 3)}
    return collect(plan, run_events, ssh_hosts, timing=timing)


def stage_remote(plan: Plan | CommandPlan, ssh_hosts: Mapping[str, SSHHost], *, echo: Callable[[str], None]) -> None:
    """Send every remote host what the plan puts there, reporting per host."""
    if not plan.transfers:
        return
    started = time.monotonic()
    reports = stage_all(ssh_hosts, plan.transfers, root_of=plan.remote_roots.__getitem__,
                        python_of=plan.remote_pythons.__getitem__, progress=lambda text: echo(f"[stage] {text}"))
    for report in reports:
        echo(f"[stage] {report.host}: sent {report.files_sent} files ({report.data_bytes_sent} bytes of data, "
             f"{report.code_bytes_sent} of code), "
             f"{report.files_present} already there ({report.bytes_present} bytes) in {report.seconds:.1f} s")
    echo(f"[stage] {sum(r.data_bytes_sent for r in reports)} bytes of data sent in total "
         f"({time.monotonic() - started:.1f} s)")


def run_processes(plan: Plan | CommandPlan, ssh_hosts: Mapping[str, SSHHost], *, echo: Callable[[str], None],
                  on_line: Callable[[Member, str], bool] | None = None,
                  check: Callable[[], None] | None = None) -> list[Member]:
    """Start every process of the plan under one Supervisor and wait for the workers."""
    transports: dict[str, Transport] = {label: LocalTransport() for label in (h.label for h in plan.hosts)}
    transports.update(ssh_hosts)
    with Supervisor(echo=echo, on_line=on_line) as group:
        def start(proc):
            return group.start(proc.name, transports[proc.host], proc.argv, env=proc.env_dict,
                               log_path=proc.log_path, primary=proc.role is Role.WORKER, cwd=proc.cwd)

        # Remote starts all at once: each is an SSH connection of its own (~0.3 s of handshake).
        # Local ones stay in this thread: PR_SET_PDEATHSIG fires when the thread that started
        # the child ends, so a pool thread would take its children with it.
        remote = [proc for proc in plan.processes if proc.host in ssh_hosts]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(remote)))) as pool:
            futures = {proc.name: pool.submit(start, proc) for proc in remote}
            local = {proc.name: start(proc) for proc in plan.processes if proc.host not in ssh_hosts}
        started = [local[proc.name] if proc.name in local else futures[proc.name].result()
                   for proc in plan.processes]
        with open(os.path.join(plan.run_dir, "processes.json"), "w", encoding="utf-8") as handle:  # for status
            json.dump([{"name": proc.name, "role": proc.role.value, "host": proc.host, "log": proc.log_path,
                        "pid": member.process.pid if proc.host not in ssh_hosts else None}
                       for proc, member in zip(plan.processes, started)], handle, indent=1)
        group.wait(check=check)
    return list(group.members)


def execute_command(plan: CommandPlan, *, echo: Callable[[str], None],
                    ssh_hosts: Mapping[str, SSHHost] | None = None) -> dict:
    """Run a command-mode plan; returns a summary (exit code and seconds per process)."""
    ssh_hosts = dict(ssh_hosts or {})
    os.makedirs(os.path.dirname(plan.processes[0].log_path), exist_ok=True)
    write_plan_and_job(plan, plan.spec.to_job_dict(),
                       f"The effective command job of this run (from {plan.spec.source}).")
    started = time.monotonic()
    stage_remote(plan, ssh_hosts, echo=echo)
    staged = time.monotonic()
    members = run_processes(plan, ssh_hosts, echo=echo)
    summary = {"run_id": plan.run_id, "command": list(plan.spec.argv), "staging_s": round(staged - started, 3),
               "running_s": round(time.monotonic() - staged, 3),
               "processes": [{"name": m.name, "host": m.host, "returncode": m.returncode} for m in members]}
    with open(os.path.join(plan.run_dir, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def keep_checkpoint(plan: Plan, ssh_hosts: Mapping[str, SSHHost], event: dict) -> None:
    """Bring an epoch checkpoint of worker 0 into RUN_DIR/checkpoints (the marker last)."""
    host, files = plan.worker_hosts[int(event["index"])], list(event["files"])
    if host in ssh_hosts:
        incoming = os.path.join(plan.run_dir, "checkpoints", ".incoming")
        fetch_dir(ssh_hosts[host], event["out_dir"], incoming, names=files)
        runstate.install_checkpoint(incoming, files, plan.run_dir, link=False)
    else:
        runstate.install_checkpoint(event["out_dir"], files, plan.run_dir, link=True)


def collect(plan: Plan, run_events: RunEvents, ssh_hosts: Mapping[str, SSHHost], *,
            timing: Mapping[str, float] | None = None) -> RunResult:
    """Bring worker 0's result.json and checkpoint to the top of the run directory."""
    index = 0
    if not run_events.lead_joined():
        raise JobFailed("the workers finished but worker 0 never reported joining; see the worker logs in "
                        f"{os.path.join(plan.run_dir, 'logs')}")
    out_dir = plan.workers[index].out_dir
    host = plan.worker_hosts[index]
    remote_out = out_dir if host in ssh_hosts else None
    if remote_out is not None:
        out_dir = os.path.join(plan.run_dir, "workers", f"worker-{index}")
        fetch_dir(ssh_hosts[host], remote_out, out_dir, names=["result.json"])  # the checkpoint came per epoch
    source = os.path.join(out_dir, "result.json")
    if not os.path.isfile(source):
        raise JobFailed(f"worker {index} exited 0 but wrote no {source}")
    with open(source, encoding="utf-8") as handle:
        result = json.load(handle)
    result["rank_of_worker_0"] = run_events.rank_of[0]
    result["run_id"] = plan.run_id
    result["timing"] = dict(timing or {})
    rows = run_events.metrics.write() if run_events.metrics else []
    result["images_per_s_per_worker"] = {
        str(i): round(sum(float(r[f"images_per_s_worker_{i}"]) for r in rows) / len(rows), 2)
        for i in range(len(plan.workers)) if rows}
    earlier = runstate.latest_checkpoint(plan.run_dir)
    done = {record["epoch"] for record in result["epochs"]}
    result["epochs"] = [r for r in (earlier.records if earlier else ()) if r["epoch"] not in done] + result["epochs"]
    with open(plan.result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    checkpoint_dir = os.path.join(plan.run_dir, "checkpoint")
    os.makedirs(checkpoint_dir, exist_ok=True)
    name, epoch = result["checkpoint"]["prefix"], result["checkpoint"]["epoch"]
    files = [f"{name}-symbol.json", f"{name}-{epoch:04d}.params"]
    kept = runstate.latest_checkpoint(plan.run_dir)
    if kept is not None and kept.epoch == epoch:
        source_dir = runstate.checkpoint_dir(plan.run_dir)  # fetched (or linked) when the epoch ended
    elif remote_out is not None:
        fetch_dir(ssh_hosts[host], remote_out, out_dir, names=files)
        source_dir = out_dir
    else:
        source_dir = out_dir
    for filename in files:
        runstate.link_or_copy(os.path.join(source_dir, filename), os.path.join(checkpoint_dir, filename))
    return RunResult(result, plan.result_path, os.path.join(checkpoint_dir, name))

