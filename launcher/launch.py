"""One launch from parsed input to a result: attempts, preflight, planning, execution.

``run`` is what ``mxft-launch JOB`` does after parsing: it plans the run, carries it
out and, when the job allows restarts (``cluster.max_restarts``), resumes a failed
attempt from the last complete epoch checkpoint. Raises the errors of
``cluster.errors``; printing is the CLI's business.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from cluster.errors import InputError, Interrupted, JobFailed
from cluster.hosts import HostSpec, load_hosts
from cluster.local import free_ports
from cluster.slurm import hosts_from_slurm
from cluster.ssh import SSHHost, SSHOptions
from launcher import assets, recfile, runstate
from launcher.check import row as check_row, table
from launcher.command import CommandPlan, make_command_plan, sync_files
from launcher.execute import RunResult, execute, execute_command
from launcher.inputs import Inventory, check_inputs
from launcher.jobspec import CommandSpec, JobSpec, load_job
from launcher.plan import Facts, HostFacts, Plan, Transfer, make_plan
from launcher.preflight import Requirements, local_mxnet_version, preflight, probe_all

CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """The command line, parsed once."""

    job_path: str
    hosts_path: str | None
    dry_run: bool
    run_root: str
    cache_dir: str
    remote_dir: str
    ssh: SSHOptions
    resume_dir: str | None = None
    overrides: tuple[str, ...] = ()            # --set KEY.PATH=VALUE, applied to the job file
    command: CommandSpec | None = None         # command mode from the command line (no job file)


def _hosts(config: LaunchConfig) -> tuple[HostSpec, ...]:
    if config.hosts_path is None:
        return (HostSpec("localhost"),)
    if config.hosts_path == "slurm":
        # Nodes of one allocation share a file system, so this launcher's Python is theirs too.
        return tuple(dataclasses.replace(h, python=h.python or sys.executable) for h in hosts_from_slurm(os.environ))
    if config.ssh.ssh_config and not os.path.isfile(config.ssh.ssh_config):
        raise InputError(config.ssh.ssh_config, "SSH config file not found", hint="check --ssh-config")
    hosts = load_hosts(config.hosts_path)
    local = [h for h in hosts if h.is_local]
    if local and len(local) < len(hosts):
        raise InputError(f"{config.hosts_path}:{local[0].line}",
                         f"'{local[0].label}' cannot be mixed with remote hosts",
                         hint="list this machine by an address the other hosts can reach")
    return hosts[:1] if local else hosts


def _fingerprint(*paths: str) -> str:
    """A key that changes whenever any of the files changes (path, size, mtime)."""
    parts = []
    for path in paths:
        stat = os.stat(path)
        parts.append(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _code_files() -> tuple[tuple[str, ...], str]:
    """The trainer package's files (relative to CODE_DIR) and a hash of their contents."""
    files = tuple(sorted(os.path.relpath(path, CODE_DIR)
                         for path in glob.glob(os.path.join(CODE_DIR, "trainer", "*.py"))))
    digest = hashlib.sha256()
    for rel in files:
        with open(os.path.join(CODE_DIR, rel), "rb") as handle:
            digest.update(rel.encode() + b"\0" + handle.read() + b"\0")
    return files, digest.hexdigest()[:16]


def _file_keys(job: JobSpec) -> dict[str, str]:
    """Content keys of the files every worker host needs; pairs share a key (and a folder)."""
    model = _fingerprint(job.model.symbol_path, job.model.params_path)
    keys = {job.model.symbol_path: model, job.model.params_path: model}
    val_idx = recfile.idx_path_for(job.data.val)
    val_files = [job.data.val] + ([val_idx] if os.path.isfile(val_idx) else [])
    val = _fingerprint(*val_files)
    keys.update({path: val for path in val_files})
    return keys


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
    return f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _first_facts(hosts: tuple[HostSpec, ...], workers: int) -> tuple[dict[str, HostFacts], int, tuple[int, ...]]:
    """Host facts before preflight, the scheduler's port and (locally) each worker's port."""
    if not hosts[0].is_local:
        host_facts = {h.label: HostFacts(h.name, h.python or "python3", 1) for h in hosts}
        return host_facts, 20000 + secrets.randbelow(20000), ()  # cannot probe remote ports from here
    # Ascending worker ports make worker i ps-lite's rank i here, so a seeded job trains the same every run.
    port, *worker_ports = free_ports(1 + workers)
    return {hosts[0].label: HostFacts("127.0.0.1", sys.executable, os.cpu_count() or 1)}, port, tuple(worker_ports)


def _preflight(hosts: tuple[HostSpec, ...], ssh_hosts: Mapping[str, SSHHost], need: Requirements,
               echo: Callable[[str], None] | None) -> dict[str, HostFacts]:
    if echo:
        echo(f"[mxft] preflight: checking {len(hosts)} hosts")
    return preflight([(h, ssh_hosts[h.label]) for h in hosts], need)


def prepare(config: LaunchConfig, job: JobSpec, hosts: tuple[HostSpec, ...], *, run_id: str, run_dir: str,
            attempt: int = 1, resume: runstate.Checkpoint | None = None,
            echo: Callable[[str], None] | None = None) -> tuple[Plan, Inventory, dict[str, SSHHost]]:
    """Check inputs, preflight remote hosts (unless a dry run), and make the plan."""
    inventory = check_inputs(job)
    remote = not hosts[0].is_local
    code_files, code_hash = _code_files()
    host_facts, port, worker_ports = _first_facts(hosts, job.cluster.workers)
    facts = Facts(
        worker_ports=worker_ports,
        run_id=run_id,
        run_dir=run_dir,
        cache_dir=os.path.abspath(config.cache_dir),
        scheduler_port=port,
        code_dir=CODE_DIR,
        train_fingerprint=_fingerprint(job.data.train),
        hosts=host_facts,
        remote_dir=config.remote_dir,
        code_files=code_files,
        code_hash=code_hash,
        file_keys=_file_keys(job),
        attempt=attempt,
        resume_epoch=resume.epoch if resume else 0,
        resume_prefix=resume.prefix if resume else None,
    )
    plan = make_plan(job, inventory, hosts, facts)
    ssh_hosts = {h.label: SSHHost(h, config.ssh) for h in hosts} if remote else {}
    if remote and not config.dry_run:
        facts = dataclasses.replace(facts, hosts=_preflight(hosts, ssh_hosts, _requirements(config, plan, inventory),
                                                            echo))
        plan = make_plan(job, inventory, hosts, facts)
    return plan, inventory, ssh_hosts


def _requirements(config: LaunchConfig, plan: Plan, inventory: Inventory) -> Requirements:
    return Requirements(
        mxnet_version=local_mxnet_version(),
        gpus_per_host={label: plan.worker_hosts.count(label) * len(plan.job.cluster.devices or ())
                       for label in set(plan.worker_hosts)},
        bytes_per_host=_staging_bytes(plan.transfers, {  # shards, counted from the index before they exist
            shard.rec_path: sum(inventory.train_records[i].size_bytes for i in shard.positions)
            for shard in plan.shards}),
        work_dir=config.remote_dir,
    )


def check_hosts(config: LaunchConfig) -> tuple[list[str], bool]:
    """Probe every host (``mxft-launch check``); with a job, against what the job puts on each.

    Returns the table's lines and whether every host passed.
    """
    hosts = _hosts(config)
    if hosts[0].is_local:
        raise InputError(config.hosts_path or "--hosts", "lists this machine only; check probes remote hosts")
    need = Requirements(local_mxnet_version(), {}, {}, config.remote_dir)
    if config.job_path:
        job = load_job(config.job_path, overrides=config.overrides)
        if isinstance(job, CommandSpec):
            plan, _ = plan_command(config, job, hosts, run_id="check")
            need = dataclasses.replace(need, bytes_per_host=_staging_bytes(plan.transfers))
        else:
            job = ensure_prepared(job, config.cache_dir, echo=lambda text: None, dry_run=True)
            plan, inventory, _ = prepare(config, job, hosts, run_id="check", run_dir="/nonexistent/check")
            need = _requirements(config, plan, inventory)
    ssh_hosts = [(h, SSHHost(h, config.ssh)) for h in hosts]
    reports = probe_all(ssh_hosts, config.remote_dir)
    rows = [check_row(report, need) for report in reports]
    return table(rows), all(r[-1].startswith("ok") for r in rows)


def _folder_key(job: JobSpec) -> str:
    """Changes whenever the image folder's files or the packing settings change."""
    images = job.data.images
    digest = hashlib.sha256(repr(dataclasses.astuple(images)).encode())
    for root, dirs, files in os.walk(images.folder):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            digest.update(f"{os.path.relpath(os.path.join(root, name), images.folder)}|{stat.st_size}|"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def ensure_prepared(job: JobSpec, cache_dir: str, *, echo: Callable[[str], None], dry_run: bool) -> JobSpec:
    """For ``data.images``: pack the folder into the cache once; the job then names those .rec files."""
    images = job.data.images
    if images is None:
        return job
    if not os.path.isdir(images.folder):
        raise InputError(images.folder, "image folder not found", hint=f"check data.images.folder in {job.source}")
    prefix = os.path.join(cache_dir, "prepared", _folder_key(job), "set")
    if not os.path.isfile(prefix + "-summary.json"):  # written last: the packing is complete
        if dry_run:
            raise InputError(images.folder, "is not packed yet", hint="launch once without --dry-run, "
                             "or pack it with mxft-prepare and name the .rec files in the job")
        import importlib.util
        if importlib.util.find_spec("cv2") is None:
            raise InputError(job.source, "data.images needs OpenCV on this machine",
                             hint="pip install opencv-python-headless (the 'prepare' extra)")
        from launcher.prepare import PrepareSpec, prepare
        echo(f"[mxft] packing {images.folder} into {os.path.dirname(prefix)} (once; cached)")
        summary = prepare(PrepareSpec(images.folder, prefix, images.train_per_class, images.seed, images.resize,
                                      images.quality, images.exclude, os.cpu_count() or 1))
        if summary["classes_without_training_images"]:
            os.remove(prefix + "-summary.json")
            raise InputError(images.folder, "no readable training image in class(es) "
                             + ", ".join(summary["classes_without_training_images"]))
        echo(f"[mxft] packed {summary['train']['images']} training and {summary['val']['images']} validation "
             f"images of {summary['classes']} classes in {summary['seconds']:.1f} s")
    data = dataclasses.replace(job.data, train=prefix + "-train.rec", val=prefix + "-val.rec")
    return dataclasses.replace(job, data=data)


def load_resume(run_dir: str) -> tuple[JobSpec, str, int, runstate.Checkpoint | None]:
    """The job, run id, next attempt number and checkpoint of a stopped run, for --resume."""
    job_path = os.path.join(run_dir, "job.yaml")
    if not os.path.isfile(job_path):
        raise InputError(run_dir, "is not an mxft run directory (no job.yaml)", hint="give the folder a launch printed")
    if runstate.running_launcher(run_dir) is not None:
        raise InputError(run_dir, "this run is still running", hint=f"stop it first: mxft-launch stop {run_dir}")
    job = load_job(job_path)
    attempts = runstate.read_attempts(run_dir)
    run_id = next((a["run_id"] for a in attempts if "run_id" in a), os.path.basename(os.path.normpath(run_dir)))
    checkpoint = runstate.latest_checkpoint(run_dir)
    if checkpoint is not None and checkpoint.epoch >= job.train.epochs:
        raise InputError(run_dir, f"all {job.train.epochs} epochs are done already", hint="see result.json")
    return job, run_id, max((a.get("attempt", 0) for a in attempts), default=0) + 1, checkpoint


def _record_end(run_dir: str, attempt: int, outcome: str, **details) -> runstate.Checkpoint | None:
    """Record how an attempt ended and how far it got; returns the checkpoint to resume from."""
    checkpoint = runstate.latest_checkpoint(run_dir)
    runstate.record_attempt(run_dir, {"attempt": attempt, "outcome": outcome, **details,
                                      "epochs_done": checkpoint.epoch if checkpoint else 0})
    return checkpoint


@dataclasses.dataclass(frozen=True)
class Outcome:
    plan: Plan
    result: RunResult


def run(config: LaunchConfig, *, echo: Callable[[str], None],
        max_restarts: int | None = None) -> Outcome | Plan | CommandOutcome | CommandPlan:
    """Launch (or resume) the job; returns the Plan alone for a dry run.

    After a failed attempt, and while restarts are left, tears down (done by then),
    resumes from the newest complete checkpoint, and records each attempt in the run dir.
    """
    if config.command is not None:
        return run_command(config, config.command, echo=echo)
    if config.resume_dir:
        run_dir = os.path.abspath(config.resume_dir)
        job, run_id, attempt, checkpoint = load_resume(run_dir)
        if isinstance(job, CommandSpec):
            raise InputError(run_dir, "command-mode runs cannot be resumed", hint="launch the command again")
    else:
        job = load_job(config.job_path, overrides=config.overrides)
        if isinstance(job, CommandSpec):
            return run_command(config, job, echo=echo)
        run_id, attempt, checkpoint = new_run_id(job), 1, None
        run_dir = os.path.abspath(os.path.join(config.run_root, run_id))
    hosts = _hosts(config)
    if job.builtin_assets and not config.dry_run:
        assets.ensure_built(job, echo=echo)
    job = ensure_prepared(job, config.cache_dir, echo=echo, dry_run=config.dry_run)
    restarts_left = job.cluster.max_restarts if max_restarts is None else max_restarts
    while True:
        plan, inventory, ssh_hosts = prepare(config, job, hosts, run_id=run_id, run_dir=run_dir, attempt=attempt,
                                             resume=checkpoint, echo=echo)
        if config.dry_run:
            return plan
        os.makedirs(run_dir, exist_ok=True)
        runstate.write_launcher(run_dir, run_id)
        begin = checkpoint.epoch if checkpoint else 0
        runstate.record_attempt(run_dir, {"attempt": attempt, "run_id": run_id, "begin_epoch": begin,
                                          "outcome": "started"})
        echo(f"[mxft] run {run_id}: {len(plan.processes)} processes on {len(plan.hosts)} host(s), "
             f"logs in {os.path.dirname(plan.processes[0].log_path)}"
             + (f"; attempt {attempt}, from epoch {begin}" if attempt > 1 else ""))
        try:
            result = execute(plan, inventory, echo=echo, ssh_hosts=ssh_hosts)
        except (Interrupted, KeyboardInterrupt):
            _record_end(run_dir, attempt, "interrupted")
            raise
        except JobFailed as err:
            checkpoint = _record_end(run_dir, attempt, "failed", reason=str(err).splitlines()[0])
            if restarts_left <= 0:
                raise
            restarts_left -= 1
            attempt += 1
            echo(f"[mxft] attempt {attempt - 1} failed: {str(err).splitlines()[0]}")
            echo(f"[mxft] restarting from epoch {checkpoint.epoch if checkpoint else 0} "
                 f"({restarts_left} restart(s) left)")
            continue
        runstate.record_attempt(run_dir, {"attempt": attempt, "outcome": "succeeded"})
        result = dataclasses.replace(result, result=runstate.add_attempts_to_result(run_dir))
        return Outcome(plan, result)


@dataclasses.dataclass(frozen=True)
class CommandOutcome:
    plan: CommandPlan
    summary: dict


def plan_command(config: LaunchConfig, spec: CommandSpec, hosts: tuple[HostSpec, ...], *, run_id: str,
                 echo: Callable[[str], None] | None = None) -> tuple[CommandPlan, dict[str, SSHHost]]:
    """Preflight remote hosts (unless a dry run) and plan a command-mode run."""
    if not os.path.isdir(spec.workdir):
        raise InputError(spec.workdir, "working folder not found", hint=f"check workdir in {spec.source}")
    synced = sync_files(spec.workdir) if spec.sync_dir else ()
    code_files, code_hash = _code_files()
    remote = not hosts[0].is_local
    if remote and spec.sync_dir is None and echo:
        echo(f"[mxft] no --sync-dir: remote processes run in {spec.workdir}, which must exist on every host")
    host_facts, port, _ = _first_facts(hosts, 0)  # no worker ports: a command's ranks are its own business
    facts = Facts(run_id=run_id, run_dir=os.path.abspath(os.path.join(config.run_root, run_id)),
                  cache_dir=os.path.abspath(config.cache_dir), scheduler_port=port, code_dir=CODE_DIR,
                  train_fingerprint="", hosts=host_facts, remote_dir=config.remote_dir, code_files=code_files,
                  code_hash=code_hash)
    plan = make_command_plan(spec, hosts, facts, synced=synced)
    ssh_hosts = {h.label: SSHHost(h, config.ssh) for h in hosts} if remote else {}
    if remote and not config.dry_run:
        need = Requirements(mxnet_version=local_mxnet_version(), gpus_per_host={},
                            bytes_per_host=_staging_bytes(plan.transfers), work_dir=config.remote_dir)
        facts = dataclasses.replace(facts, hosts=_preflight(hosts, ssh_hosts, need, echo))
        plan = make_command_plan(spec, hosts, facts, synced=synced)
    return plan, ssh_hosts


def run_command(config: LaunchConfig, spec: CommandSpec, *, echo: Callable[[str], None]) -> CommandOutcome | CommandPlan:
    """Command mode: run ``spec.argv`` as every ps-lite process; JobFailed names the root cause."""
    run_id = new_run_id(spec)
    plan, ssh_hosts = plan_command(config, spec, _hosts(config), run_id=run_id, echo=echo)
    if config.dry_run:
        return plan
    os.makedirs(plan.run_dir, exist_ok=True)
    runstate.write_launcher(plan.run_dir, run_id)
    runstate.record_attempt(plan.run_dir, {"attempt": 1, "run_id": run_id, "outcome": "started"})
    echo(f"[mxft] run {run_id}: {len(plan.processes)} processes on {len(plan.hosts)} host(s) running "
         f"{spec.argv[0]}, logs in {os.path.dirname(plan.processes[0].log_path)}")
    try:
        summary = execute_command(plan, echo=echo, ssh_hosts=ssh_hosts)
    except (Interrupted, KeyboardInterrupt):
        _record_end(plan.run_dir, 1, "interrupted")
        raise
    except JobFailed as err:
        _record_end(plan.run_dir, 1, "failed", reason=str(err).splitlines()[0])
        raise
    runstate.record_attempt(plan.run_dir, {"attempt": 1, "outcome": "succeeded"})
    return CommandOutcome(plan, summary)
