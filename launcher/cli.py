"""``mxft-launch``: the only module that prints to the user and chooses exit codes.

    mxft-launch --local jobs/demo.yaml
    mxft-launch --hosts hosts.txt jobs/resnet152.yaml --dry-run

Exit codes: 0 success; 1 the job failed or missed ``expect.min_accuracy``; 2 bad
input (nothing was started); 130/143 stopped by SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import os
import secrets
import signal
import sys
import time

from cluster.errors import InputError, Interrupted, JobFailed, MxftError
from cluster.hosts import HostSpec, load_hosts
from cluster.local import free_port
from cluster.ssh import SSHHost, SSHOptions
from launcher import assets, recfile
from launcher.execute import execute
from launcher.inputs import Inventory, check_inputs
from launcher.jobspec import JobSpec, load_job
from launcher.plan import Facts, HostFacts, Plan, make_plan
from launcher.preflight import Requirements, local_mxnet_version, preflight

CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


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


def parse_args(argv: list[str] | None) -> LaunchConfig:
    parser = argparse.ArgumentParser(prog="mxft-launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="job file (YAML), e.g. jobs/demo.yaml")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--hosts", metavar="FILE", help="hosts file: HOST[:PORT] [slots=N] [user=NAME] per line")
    where.add_argument("--local", action="store_true", help="run every process on this machine (the default)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit; starts and writes nothing")
    parser.add_argument("--run-root", default="runs", metavar="DIR",
                        help="each run gets a directory under DIR (default: ./runs)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        default=os.environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft"),
                        help="where training shards are cached (default: $MXFT_CACHE or ~/.cache/mxft)")
    parser.add_argument("--remote-dir", default="~/.mxft", metavar="DIR",
                        help="work folder on remote hosts: code, data, runs (default: ~/.mxft)")
    parser.add_argument("--ssh-config", metavar="FILE", help="SSH config to use instead of ~/.ssh/config")
    parser.add_argument("--accept-new-host-keys", action="store_true",
                        help="trust and record host keys seen for the first time (a changed key is still refused)")
    args = parser.parse_args(argv)
    return LaunchConfig(args.job, args.hosts, args.dry_run, args.run_root, args.cache_dir, args.remote_dir,
                        SSHOptions(args.ssh_config, args.accept_new_host_keys, connect_timeout_s=8.0))


def _hosts(config: LaunchConfig) -> tuple[HostSpec, ...]:
    if config.hosts_path is None:
        return (HostSpec("localhost"),)
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


def _staging_bytes(plan: Plan, inventory: Inventory) -> dict[str, int]:
    """Bytes staging may write on each host (shards counted from the index, before they exist)."""
    shard_bytes = {shard.rec_path: sum(inventory.train_records[i].size_bytes for i in shard.positions)
                   for shard in plan.shards}
    totals: dict[str, int] = {}
    for transfer in plan.transfers:
        size = shard_bytes.get(transfer.source)
        if size is None:
            size = os.path.getsize(transfer.source) if os.path.isfile(transfer.source) else 1 << 16
        totals[transfer.host] = totals.get(transfer.host, 0) + size
    return totals


def _plan(config: LaunchConfig, job: JobSpec, hosts: tuple[HostSpec, ...], *, echo=None):
    """Check inputs, preflight remote hosts (unless a dry run), and make the plan."""
    inventory = check_inputs(job)
    run_id = f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    remote = not hosts[0].is_local
    code_files, code_hash = _code_files()
    if remote:
        host_facts = {h.label: HostFacts(h.name, h.python or "python3", 1) for h in hosts}
        port = 20000 + secrets.randbelow(20000)  # cannot probe remote ports from here
    else:
        host_facts = {hosts[0].label: HostFacts("127.0.0.1", sys.executable, os.cpu_count() or 1)}
        port = free_port()
    facts = Facts(
        run_id=run_id,
        run_dir=os.path.abspath(os.path.join(config.run_root, run_id)),
        cache_dir=os.path.abspath(config.cache_dir),
        scheduler_port=port,
        code_dir=CODE_DIR,
        train_fingerprint=_fingerprint(job.data.train),
        hosts=host_facts,
        remote_dir=config.remote_dir,
        code_files=code_files,
        code_hash=code_hash,
        file_keys=_file_keys(job),
    )
    plan = make_plan(job, inventory, hosts, facts)
    ssh_hosts = {h.label: SSHHost(h, config.ssh) for h in hosts} if remote else {}
    if remote and not config.dry_run:
        need = Requirements(
            mxnet_version=local_mxnet_version(),
            gpus_per_host={label: plan.worker_hosts.count(label) * len(job.cluster.devices or ())
                           for label in set(plan.worker_hosts)},
            bytes_per_host=_staging_bytes(plan, inventory),
            work_dir=config.remote_dir,
        )
        if echo:
            echo(f"[mxft] preflight: checking {len(hosts)} hosts")
        facts = dataclasses.replace(facts, hosts=preflight([(h, ssh_hosts[h.label]) for h in hosts], need))
        plan = make_plan(job, inventory, hosts, facts)
    return plan, inventory, ssh_hosts


def _echo(line: str) -> None:
    print(line, flush=True)


def _report(plan: Plan, result: dict) -> int:
    accuracy = result["val_accuracy"]
    top = next((k for k in result if k.startswith("val_top")), None)
    _echo(f"[mxft] run dir {plan.run_dir}: result.json, checkpoint/{result['checkpoint']['prefix']}-"
          f"{result['checkpoint']['epoch']:04d}.params, logs/")
    _echo(f"[mxft] {result['num_workers']} workers, {result['train_s']:.1f} s training, "
          f"{result['images_per_s_rank0']:.1f} images/s per worker")
    code = EXIT_OK
    if plan.job.min_accuracy is not None and accuracy < plan.job.min_accuracy:
        print(f"mxft-launch: job failed: validation accuracy {accuracy:.4f} is below expect.min_accuracy "
              f"{plan.job.min_accuracy} ({plan.job.source})", file=sys.stderr, flush=True)
        code = EXIT_FAILED
    topk = f", {top.replace('val_', '')} {result[top]:.4f}" if top else ""
    _echo(f"validation accuracy: {accuracy:.4f}{topk} ({result['val_images']} images, rank 0)")
    return code


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        job = load_job(config.job_path)
        hosts = _hosts(config)
        if job.builtin_assets and not config.dry_run:
            assets.ensure_built(job, echo=_echo)
        plan, inventory, ssh_hosts = _plan(config, job, hosts, echo=_echo)
        if config.dry_run:
            _echo(plan.describe())
            return EXIT_OK
        _echo(f"[mxft] run {plan.run_id}: {len(plan.processes)} processes on {len(plan.hosts)} host(s), "
              f"logs in {plan.run_dir}/logs")
        outcome = execute(plan, inventory, echo=_echo, ssh_hosts=ssh_hosts)
        return _report(plan, outcome.result)
    except InputError as err:
        for line in str(err).splitlines():  # one line per problem (preflight: per host)
            print(f"mxft-launch: error: {line}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except JobFailed as err:
        print(f"mxft-launch: job failed: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("mxft-launch: interrupted (SIGINT); every process of the run was stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    except Interrupted as err:
        print(f"mxft-launch: {err}", file=sys.stderr, flush=True)
        return 128 + err.signum
    except MxftError as err:
        print(f"mxft-launch: error: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
