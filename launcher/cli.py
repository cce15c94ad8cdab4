"""``mxft-launch``: the only module that prints to the user and chooses exit codes.

    mxft-launch --local jobs/demo.yaml
    mxft-launch --hosts hosts.txt jobs/resnet152.yaml --dry-run

Exit codes: 0 success; 1 the job failed or missed ``expect.min_accuracy``; 2 bad
input (nothing was started); 130/143 stopped by SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import sys
import time

from cluster.errors import InputError, Interrupted, JobFailed, MxftError
from cluster.hosts import HostSpec, load_hosts
from cluster.local import free_port
from launcher import assets
from launcher.execute import execute
from launcher.inputs import check_inputs
from launcher.jobspec import JobSpec, load_job
from launcher.plan import Facts, Plan, make_plan

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
    args = parser.parse_args(argv)
    return LaunchConfig(args.job, args.hosts, args.dry_run, args.run_root, args.cache_dir)


def _hosts(config: LaunchConfig) -> tuple[HostSpec, ...]:
    if config.hosts_path is None:
        return (HostSpec("localhost"),)
    hosts = load_hosts(config.hosts_path)
    remote = [h for h in hosts if not h.is_local]
    if remote:
        raise InputError(f"{config.hosts_path}:{remote[0].line}",
                         f"host '{remote[0].label}' is remote; this version of mxft-launch runs on localhost only",
                         hint="use --local, or a hosts file holding only localhost")
    return hosts[:1]


def _plan(config: LaunchConfig, job: JobSpec, hosts: tuple[HostSpec, ...]):
    inventory = check_inputs(job)
    run_id = f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    train_stat = os.stat(job.data.train)
    facts = Facts(
        run_id=run_id,
        run_dir=os.path.abspath(os.path.join(config.run_root, run_id)),
        cache_dir=os.path.abspath(config.cache_dir),
        scheduler_port=free_port(),
        python=sys.executable,
        code_dir=CODE_DIR,
        cpu_count=os.cpu_count() or 1,
        train_fingerprint=f"{os.path.abspath(job.data.train)}|{train_stat.st_size}|{train_stat.st_mtime_ns}",
    )
    return make_plan(job, inventory, hosts, facts), inventory


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
        plan, inventory = _plan(config, job, hosts)
        if config.dry_run:
            _echo(plan.describe())
            return EXIT_OK
        _echo(f"[mxft] run {plan.run_id}: {len(plan.processes)} processes, logs in {plan.run_dir}/logs")
        outcome = execute(plan, inventory, echo=_echo)
        return _report(plan, outcome.result)
    except InputError as err:
        print(f"mxft-launch: error: {err}", file=sys.stderr, flush=True)
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
