"""One launch from parsed input to a result: facts, one plan, execution, attempts.

``run`` is what ``mxft-launch`` does after parsing, for a fine-tuning job and a
command alike: it gathers the facts the plan depends on (each host's address, Python,
CPUs and folders: probed, or for a dry run cached by an earlier probe or marked
assumed), makes the plan once, checks that every host can take its part, and carries
the plan out. When the job allows restarts (``cluster.max_restarts``) a failed attempt
is followed by a new plan that resumes from the last complete epoch. Raises the errors
of ``cluster.errors``; printing is the CLI's business.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from cluster.errors import InputError, Interrupted, JobFailed
from cluster.hosts import HostSpec, Launcher, load_hosts, select_hosts
from cluster.local import LocalTransport
from cluster.slurm import hosts_from_slurm
from cluster.srun import require_allocation_nodes, require_srun
from launcher.data import cachefile, run_index, runstate
from launcher.data.attempt_result import RunResult, Verdict
from launcher.data.inputs import Inventory
from launcher.plan import Facts, Plan, Transfer, fact_changes, make_plan, public_addresses
from launcher.remote.folder_check import folder_unsafe_reason
from launcher.report.console import Console
from launcher.run import facts as facts_for
from launcher.run.backend import Backend
from launcher.run.check_table import HostRow, host_row
from launcher.run.config import Attempt, LaunchConfig
from launcher.run.execute import execute
from launcher.run.kinds import Command, FineTuning, kind_of, kind_of_plan
from launcher.run.preflight import (Requirements, basic_requirements, local_mxnet_version, probe_all, require_fit,
                                    unfit_hosts)
from launcher.run.reach import require_scheduler_reachable
from launcher.run.resume import resumed_job, resumed_where
from launcher.run.trust import read_plan, require_fair_plan, require_own_file
from launcher.spec.checks import set_by_mxft
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import JobSpec, load_job


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What ``run`` returns: the plan, and the run's result (None for a dry run)."""

    plan: Plan
    result: RunResult | None
    kind: type[FineTuning] | type[Command]   # what the CLI asks for the run's summary


def _hosts(config: LaunchConfig) -> tuple[HostSpec, ...]:
    """The hosts the configuration names (a hosts file, a Slurm allocation's nodes, this machine), less those
    ``--include``/``--exclude`` leave out."""
    return _selected(config, _listed_hosts(config), where=config.hosts_path or "")


def _selected(config: LaunchConfig, hosts: tuple[HostSpec, ...], *, where: str) -> tuple[HostSpec, ...]:
    if not (config.include or config.exclude):
        return hosts
    if hosts[0].is_local:
        raise InputError("--include" if config.include else "--exclude", "chooses among the hosts of --hosts",
                         hint="give the hosts file too")
    return select_hosts(hosts, include=config.include, exclude=config.exclude, where=where)


def _listed_hosts(config: LaunchConfig) -> tuple[HostSpec, ...]:
    if config.hosts_path is None:
        return (HostSpec("localhost"),)
    if config.hosts_path == "slurm":
        # Nodes of one allocation share a file system, so this launcher's Python is theirs too.
        if config.launcher is Launcher.SRUN:
            require_srun(os.environ)
        return tuple(dataclasses.replace(h, python=h.python or sys.executable) for h in hosts_from_slurm(os.environ))
    if config.ssh.ssh_config and not os.path.isfile(config.ssh.ssh_config):
        raise InputError(config.ssh.ssh_config, "SSH config file not found", hint="check --ssh-config")
    hosts = load_hosts(config.hosts_path)
    local = [h for h in hosts if h.is_local]
    if local and len(local) < len(hosts):
        raise InputError(f"{config.hosts_path}:{local[0].line}",
                         f"'{local[0].label}' cannot be mixed with remote hosts",
                         hint="list this machine by an address the other hosts can reach")
    if config.launcher is Launcher.SRUN:
        require_allocation_nodes(hosts, os.environ, where=config.hosts_path)
    return hosts[:1] if local else hosts


def _staging_bytes(transfers: Sequence[Transfer], known: Mapping[str, int] | None = None) -> dict[str, int]:
    """Bytes staging may write on each host; ``known`` sizes files that do not exist yet (shards)."""
    totals: dict[str, int] = {}
    for transfer in transfers:
        size = (known or {}).get(transfer.source)
        if size is None:
            size = os.path.getsize(transfer.source) if os.path.isfile(transfer.source) else 1 << 16
        totals[transfer.host] = totals.get(transfer.host, 0) + size
    return totals


def new_run_id(job: JobSpec | CommandSpec) -> str:
    """``NAME-YYYYmmdd-HHMMSS-`` and 8 random hex digits: launches in the same second differ."""
    return f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def _new_attempt(config: LaunchConfig, spec: JobSpec | CommandSpec) -> Attempt:
    run_id = new_run_id(spec)
    return Attempt(run_id, os.path.abspath(os.path.join(config.run_root, run_id)))


def _claim_run_dir(run_dir: str) -> bool:
    """Create a new run's folder; False if it exists (another launch has that run id: never share it)."""
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    try:
        os.mkdir(run_dir)
    except FileExistsError:
        return False
    run_index.record_run(run_dir)  # mxft-launch runs lists it from any folder
    return True


def _requirements(config: LaunchConfig, plan: Plan, inventory: Inventory | None) -> Requirements:
    """What the plan puts on each host: GPUs and bytes to stage (shards counted before they exist)."""
    known, gpu_ids = kind_of_plan(plan).demands(plan, inventory)
    return Requirements(local_mxnet_version(), {label: len(ids) for label, ids in gpu_ids.items()},
                        _staging_bytes(plan.transfers, known), config.remote_dir, gpu_ids_per_host=gpu_ids)


def plan_attempt(config: LaunchConfig, spec: JobSpec | CommandSpec, hosts: Sequence[HostSpec], attempt: Attempt,
                 *, echo: Callable[[str], None] | None = None, saved: Plan | None = None,
                 backend: Backend | None = None) -> Plan:
    """Facts first, then the one plan, then whether every host can take its part of it (all hosts at once).

    ``saved``: a plan read back (``--plan``), with its ports; InputError unless the facts gathered now are the ones
    it was made from and planning again gives that very plan."""
    kind, backend = kind_of(spec), backend or Backend(config.launcher, config.ssh)
    inventory = kind.inputs(spec, config)
    for note in inventory.notes if inventory and echo else ():
        echo(f"[mxft] {note}")
    facts = facts_for.run_facts(config, spec, attempt, remote=not hosts[0].is_local)
    probed = None
    if hosts[0].is_local:
        facts = facts_for.local_facts(facts, hosts[0], kind.local_workers(spec, hosts))
    elif config.dry_run and not config.probe:
        facts = facts_for.known_facts(config, facts, hosts, backend)
    else:
        facts, probed = facts_for.probed_facts(config, facts, hosts, backend, echo,
                                               other_folders=kind.other_folders(spec))
    if saved is not None:
        facts = dataclasses.replace(facts, scheduler_port=saved.scheduler_port, worker_ports=saved.facts.worker_ports)
    plan = make_plan(spec, hosts, facts, inventory=inventory)
    if saved is not None:
        _require_same_plan(saved, plan, config.plan_path)
    if hosts[0].is_local and not config.dry_run:
        _require_this_machine_fits(config, plan, inventory)
    if probed is not None:
        require_fit(probed, _requirements(config, plan, inventory))
        if not config.dry_run:  # a dry run starts nothing, not even the check's listener
            require_scheduler_reachable(plan, backend)  # on the training network, before any ps-lite starts
    public = public_addresses(dict.fromkeys(p.env_dict["DMLC_NODE_HOST"] for p in plan.processes))
    if public and echo and not config.dry_run:  # a dry run's plan says so itself
        echo(f"[mxft] warning: ps-lite will listen on public address(es) {', '.join(public)} with no "
             "authentication or encryption; use a private network (addr= in the hosts file, or cluster.interface)")
    for note in kind.notes(spec, hosts) if echo else ():
        echo(f"[mxft] {note}")
    return plan


def _require_this_machine_fits(config: LaunchConfig, plan: Plan, inventory: Inventory | None) -> None:
    """A job that puts GPUs on this machine: its own mxnet and GPUs checked as preflight checks a remote host's
    (a CPU build fails here, exit 2, instead of in every process after they started)."""
    need = _requirements(config, plan, inventory)
    if any(need.gpus_per_host.values()):
        here = HostSpec("localhost", python=sys.executable)
        require_fit(probe_all([(here, LocalTransport())], config.cache_dir), need)


def _require_same_plan(saved: Plan, plan: Plan, where: str) -> None:
    """The facts gathered now are those the saved plan was made from, and so is the plan they give."""
    changes = fact_changes(saved.facts, plan.facts)
    if changes:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise InputError(where, f"a fact this plan was made from has changed: {changes[0]}{more}",
                         hint="make the plan again: mxft-launch ... --dry-run --probe --save-plan FILE")
    differ = [f.name for f in dataclasses.fields(Plan) if getattr(saved, f.name) != getattr(plan, f.name)]
    if differ:
        raise InputError(where, f"is not the plan its own job and facts give ({', '.join(differ)} "
                         f"{'differs' if len(differ) == 1 else 'differ'}: edited since it was saved, or saved by "
                         "another version of mxft)",
                         hint="make the plan again: mxft-launch ... --dry-run --probe --save-plan FILE")


def saved_plan(path: str, *, accept_new_host_keys: bool = False) -> Plan:
    """The plan at ``path`` (``--save-plan``), the user's own file, read and checked field by field and as the job,
    hosts and run it stands for would be (``launcher.run.trust``)."""
    require_own_file(path)
    plan = read_plan(path)
    if plan.assumed:
        label = sorted(plan.assumed)[0]
        raise InputError(path, f"host {label} was never probed when this plan was made (a dry run without --probe)",
                         hint="make it with --dry-run --probe --save-plan FILE")
    if plan.attempt != 1:
        raise InputError(path, f"is the plan of attempt {plan.attempt} of run {plan.run_id}",
                         hint=f"continue that run with: mxft-launch --resume {plan.run_dir}")
    if os.path.lexists(plan.run_dir):
        raise InputError(path, f"this plan has run already (its run folder {plan.run_dir} exists); a saved plan "
                         "runs once", hint="make a new one with --dry-run --probe --save-plan FILE, or continue that "
                         f"run: mxft-launch --resume {plan.run_dir}")
    kind_of_plan(plan).spec_of(plan, path)  # refuses a plan whose processes need values it never holds
    require_fair_plan(plan, path, accept_new_host_keys=accept_new_host_keys)
    return plan


def check_hosts(config: LaunchConfig) -> list[HostRow]:
    """Probe every host (``mxft-launch check``); with a job, against what the job puts on each."""
    hosts = _hosts(config)
    if hosts[0].is_local:
        raise InputError(config.hosts_path or "--hosts", "lists this machine only; check probes remote hosts")
    spec, inventory = None, None
    if config.job_path:  # the job's own mistakes first, before any host is contacted
        spec = load_job(config.job_path, overrides=config.overrides)
        looking = dataclasses.replace(config, dry_run=True)  # nothing remembered (the demo's files, images packed)
        spec = kind_of(spec).prepared(spec, looking, lambda text: None)
        inventory = kind_of(spec).inputs(spec, looking)
    attempt = Attempt("check", "/nonexistent/check")
    base = facts_for.run_facts(config, spec, attempt, remote=not hosts[0].is_local) if spec is not None else Facts(
        run_id=attempt.run_id, run_dir=attempt.run_dir, cache_dir=config.cache_dir, scheduler_port=0,
        code_dir=facts_for.CODE_DIR, train_fingerprint="", hosts={}, remote_dir=config.remote_dir, ssh=config.ssh)
    backend = Backend(config.launcher, config.ssh)
    try:
        facts, probed = facts_for.probed_facts(config, base, hosts, backend, None)
    finally:
        backend.close()
    need = basic_requirements(config.remote_dir)
    if spec is not None:
        need = _requirements(config, make_plan(spec, hosts, facts, inventory=inventory), inventory)
    return [host_row(label, probed, need) for label in probed.hosts]


def _what_and_where(config: LaunchConfig, console: Console) -> tuple[LaunchConfig, JobSpec | CommandSpec, Attempt,
                                                                      tuple[HostSpec, ...], Plan | None]:
    """(the settings, the job, its attempt, its hosts, the saved plan to run if one was given)."""
    if config.plan_path:
        saved = saved_plan(config.plan_path, accept_new_host_keys=config.ssh.accept_new_host_keys)
        facts = saved.facts
        config = dataclasses.replace(config, run_root=os.path.dirname(saved.run_dir), cache_dir=facts.cache_dir,
                                     remote_dir=facts.remote_dir, ssh=facts.ssh, launcher=facts.launcher)
        spec = kind_of_plan(saved).spec_of(saved, config.plan_path)
        return config, spec, Attempt(saved.run_id, saved.run_dir), saved.hosts, saved
    if config.resume_dir:
        run_dir = os.path.abspath(config.resume_dir)
        spec, attempt = resumed_job(run_dir, config.overrides, given_env=config.env)
        config, hosts, note = resumed_where(config, run_dir, _listed_hosts)
        if note:
            console(note)
        return config, spec, attempt, _selected(config, tuple(hosts), where=config.hosts_path or run_dir), None
    spec = config.command or load_job(config.job_path, overrides=config.overrides)
    if config.env:  # --env NAME[=VALUE]: secrets, never written (the job's own env: is part of the job)
        taken = next((name for name in config.env if set_by_mxft(name)), None)
        if taken is not None:
            raise InputError(f"--env {taken}", "is set by mxft for every process", hint="leave it to mxft")
        spec = dataclasses.replace(spec, env={**(spec.env or {}), **config.env})
    return config, spec, _new_attempt(config, spec), _hosts(config), None


def failed_host(failure: JobFailed) -> str | None:
    """The host a failure took down as a whole: it stopped answering, or a process's connection died (its kind
    says so; a program that exits 255 on its own has not lost its host)."""
    return failure.failure.lost_host


def _hosts_for_restart(config: LaunchConfig, spec: JobSpec | CommandSpec, hosts: Sequence[HostSpec],
                       failure: JobFailed, console: Console) -> tuple[HostSpec, ...]:
    """The next attempt's hosts: without a failed host, and without any that fails preflight now, while at
    least ``cluster.min_hosts`` remain (unset: the same hosts)."""
    least = kind_of(spec).min_hosts(spec)
    if least is None or hosts[0].is_local:
        return tuple(hosts)
    lost = failed_host(failure)
    keep = [h for h in hosts if h.label != lost]
    backend = Backend(config.launcher, config.ssh)  # a new attempt's hosts, as they answer now
    try:
        probed = backend.probe(keep, config.remote_dir)
    finally:
        backend.close()
    basic = basic_requirements(config.remote_dir)
    unfit = {label: why for label, (why, _) in unfit_hosts(probed, basic).items()}
    keep = [h for h in keep if h.label not in unfit]
    for label, why in ([(lost, "failed")] if lost else []) + list(unfit.items()):
        console(f"[mxft] leaving out host {label} ({why}; cluster.min_hosts {least})")
    if len(keep) < least:
        raise JobFailed(f"{failure}\n  no restart: {len(keep)} usable host(s) left, cluster.min_hosts is {least}",
                        reason=failure.reason, process=failure.process, failure=failure.failure)
    return tuple(keep)


def _record_end(run_dir: str, attempt: int, verdict: Verdict,
                failure: JobFailed | None = None) -> runstate.Checkpoint | None:
    """Record how an attempt ended and how far it got; returns the checkpoint to resume from."""
    checkpoint = runstate.latest_checkpoint(run_dir)
    ended = RunResult(attempt, verdict, failure.reason if failure else "", failure.failure if failure else None,
                      failure.process.summary() if failure and failure.process else None,
                      epochs_done=checkpoint.epoch if checkpoint else 0)
    runstate.record_attempt(run_dir, ended.record())
    return checkpoint


def _started(plan: Plan, attempt: Attempt, console: Console, *, hosts_from: str | None) -> None:
    console.run_started()
    os.makedirs(plan.run_dir, exist_ok=True)
    runstate.write_launcher(plan.run_dir, plan.run_id)
    begin = attempt.checkpoint.epoch if attempt.checkpoint else 0
    record, what = kind_of_plan(plan).started(plan, begin)
    runstate.record_attempt(plan.run_dir, {"attempt": attempt.number, "run_id": plan.run_id, "outcome": "started",
                                           "hosts": [h.label for h in plan.hosts], "hosts_from": hosts_from,
                                           **record})
    console(f"[mxft] run {plan.run_id}: {len(plan.processes)} processes on {len(plan.hosts)} host(s){what}, "
         f"logs in {os.path.dirname(plan.processes[0].log_path)}"
         + (f"; attempt {attempt.number}, from epoch {begin}" if attempt.number > 1 else ""))


def _finish(plan: Plan, attempt: Attempt, report: dict) -> RunResult:
    """Record the attempt's verdict and write RUN_DIR/result.json, once, with every attempt in it."""
    verdict, reason = kind_of_plan(plan).verdict(plan, report)
    stopped = report.get("stopped_early")  # checked with worker 0's result: {epoch, best_epoch, patience} of ints
    ended = RunResult(attempt.number, verdict, reason, stopped_early=stopped["epoch"] if stopped else None,
                      report=report)
    runstate.record_attempt(plan.run_dir, ended.record())
    written = dict(report, outcome=verdict.value, **({"reason": reason} if reason else {}),
                   attempts=runstate.attempt_summary(plan.run_dir))
    with cachefile.replacing(os.path.join(plan.run_dir, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(written, handle, indent=2)
    return dataclasses.replace(ended, report=written)


def _require_own_folders(config: LaunchConfig) -> None:
    """The run root and the cache hold what the launcher later reads back, stages and runs (checkpoints, plans,
    shards): each must be the user's (or root's), with no folder on its path that others can write to, as preflight
    asks of a host's work folder (``launcher.remote.folder_check``)."""
    for option, folder in (("--run-root", config.run_root), ("--cache-dir", config.cache_dir)):
        reason = folder_unsafe_reason(folder)
        if reason is not None:
            raise InputError(f"{option} {folder}", reason, hint="choose a folder of your own (another user could "
                             "plant or change what the launcher reads back there)")


def run(config: LaunchConfig, *, console: Console, max_restarts: int | None = None) -> Outcome:
    """Launch (or resume) the job; a dry run returns its plan without a result.

    After a failed attempt, and while restarts are left, tears down (done by then),
    plans again from the newest complete checkpoint, and records each attempt in the run dir.
    """
    config, spec, attempt, hosts, saved = _what_and_where(config, console)
    _require_own_folders(config)
    kind = kind_of(spec)
    spec = kind.prepared(spec, config, console)
    restarts_left = kind.restarts(spec, given=max_restarts)
    fresh = config.resume_dir is None  # a new run: its folder is made now, and must not exist yet
    while True:
        backend = Backend(config.launcher, config.ssh)  # how this attempt reaches its hosts, chosen once
        plan = plan_attempt(config, spec, hosts, attempt, echo=console, saved=saved, backend=backend)
        if config.dry_run:
            backend.close()  # a probe's connections
            return Outcome(plan, None, kind)
        if fresh and not _claim_run_dir(plan.run_dir):  # the id is taken: plan again under a new one
            if saved is not None:  # made between the check when it was read and now
                raise InputError(config.plan_path, f"another launch took this plan's run folder {plan.run_dir}")
            attempt = _new_attempt(config, spec)
            continue
        fresh, saved = False, None  # a restart plans again, from the hosts and facts of then
        _started(plan, attempt, console, hosts_from=config.hosts_path)  # --resume reads the hosts' source
        try:
            result = execute(plan, kind, backend, console=console)
        except (Interrupted, KeyboardInterrupt) as stop:
            _record_end(plan.run_dir, attempt.number, Verdict.INTERRUPTED)
            signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
            raise Interrupted(signum, resume_dir=plan.run_dir if kind.resumable else None) from None
        except JobFailed as failure:
            checkpoint = _record_end(plan.run_dir, attempt.number, Verdict.FAILED, failure)
            if restarts_left <= 0:
                raise
            restarts_left -= 1
            console(f"[mxft] attempt {attempt.number} failed: {failure.reason}")
            hosts = _hosts_for_restart(config, spec, hosts, failure, console)
            console(f"[mxft] restarting from epoch {checkpoint.epoch if checkpoint else 0} on {len(hosts)} host(s) "
                    f"({restarts_left} restart(s) left)")
            attempt = dataclasses.replace(attempt, number=attempt.number + 1, checkpoint=checkpoint)
            continue
        finally:
            backend.close()  # the attempt's processes are stopped by now
        return Outcome(plan, _finish(plan, attempt, result), kind)
