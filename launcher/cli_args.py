"""mxft-launch's command lines, parsed: a job launch (``parse_args``), command mode with the options of MXNet's
``tools/launch.py`` (``parse_command_args``), the options every launching subcommand shares, and the help texts."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re

from cluster.errors import InputError
from cluster.hosts import Launcher
from cluster.srun import default_launcher
from cluster.ssh import SSHOptions
from launcher.run.config import LaunchConfig
from launcher.spec.checks import MAX_PROCESSES, RUN_NAME
from launcher.spec.command import parse_env
from launcher.spec.command_job import CommandSpec
from launcher.spec.defaults import read_defaults


EXIT_CODES = """\
exit codes:
  0    success
  1    the job failed, or its accuracy is below the job's expect.min_accuracy
  2    bad input (a job file, hosts file, option or host that cannot work); nothing was started
  130  stopped by Ctrl-C (SIGINT); 143 stopped by SIGTERM (mxft-launch stop);
  138  stopped by SIGUSR1 (Slurm's warning before a time limit: sbatch --signal=B:USR1@120)"""


COMMAND_EXIT_CODES = EXIT_CODES.replace(", or its accuracy is below the job's expect.min_accuracy",
                                        " (a process exited non-zero, was killed or its host was lost)")


OVERVIEW = f"""\
usage: mxft-launch [launch] JOB [options]          fine-tune: run a job file
       mxft-launch command -n WORKERS [options] -- PROGRAM [ARGS ...]
       mxft-launch check --hosts FILE [JOB]
       mxft-launch status RUN_DIR
       mxft-launch stop RUN_DIR
       mxft-launch runs [--run-root DIR]
       mxft-launch evaluate RUN_DIR [--data REC] [--epoch best|last|N]
       mxft-launch clean --hosts FILE [--older-than DAYS] [--dry-run]

Fine-tune a pretrained MXNet image model on one machine or many: mxft-launch plans
the ps-lite scheduler, servers and workers, copies data and code to the hosts over SSH,
starts every process, shows one line per epoch and brings back the validation score and
the checkpoint.

commands:
  launch    run a job file (the default: 'mxft-launch jobs/demo.yaml' is 'mxft-launch launch jobs/demo.yaml')
  command   run any ps-lite program as scheduler, servers and workers (the options of MXNet's
            tools/launch.py; 'mxft-launch -n 2 -- python train.py' works too)
  check     probe hosts as a launch would (SSH, Python, mxnet, GPUs, disk) and print a table
  status    where a run stands: state, processes, last epoch, result
  stop      stop a running run (every process on every host)
  runs      list recent runs: state, accuracy, duration, cause of a failure, folder
  evaluate  a run's fine-tuned model on a .rec: accuracy, top-k, each class's accuracy
  clean     free the hosts' work folders: finished runs, unused cached data, interrupted copies

examples:
  mxft-launch jobs/demo.yaml                                 the demo, on this machine
  mxft-launch --hosts hosts.txt jobs/resnet152.yaml --dry-run   the plan, without starting anything
  mxft-launch --hosts hosts.txt jobs/resnet152.yaml          the tutorial's job on several hosts
  mxft-launch --resume runs/resnet152-caltech256-20261128-120000-ab12

'mxft-launch COMMAND --help' shows a command's options.

{EXIT_CODES}"""


LAUNCH_DESCRIPTION = """\
Run a fine-tuning job file: plan it on this machine (--local, the default) or on the hosts
of a hosts file, copy what each host needs, start the ps-lite scheduler, servers and
workers, and bring back the validation score and the checkpoint. The console shows one
line per epoch (and a progress bar on a terminal); every process's output is in the run
folder's logs/."""


LAUNCH_EPILOG = f"""\
examples:
  mxft-launch jobs/demo.yaml --set train.epochs=4
  mxft-launch --hosts hosts.txt jobs/resnet152.yaml --dry-run --probe
  mxft-launch --resume runs/resnet152-caltech256-20261128-120000-ab12

{EXIT_CODES}"""


@dataclasses.dataclass(frozen=True)
class Invocation:
    """A launch or command, parsed: what to run, how many restarts, how much to show."""

    config: LaunchConfig
    max_restarts: int | None
    verbose: bool
    notes: tuple[str, ...] = ()    # what the console says first (options taken from the defaults file)


def parse_args(argv: list[str] | None) -> Invocation:
    parser = argparse.ArgumentParser(prog="mxft-launch [launch]", description=LAUNCH_DESCRIPTION, epilog=LAUNCH_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", nargs="?", help="job file (YAML), e.g. jobs/demo.yaml")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last complete epoch")
    parser.add_argument("--plan", metavar="FILE", help="run a plan saved by --dry-run --probe --save-plan FILE, "
                        "after checking that its hosts and files are as they were (exit 2 naming what changed)")
    parser.add_argument("--max-restarts", type=int, metavar="N",
                        help="resume automatically after up to N failures (default: the job's cluster.max_restarts)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--hosts", metavar="FILE", help="hosts file: HOST[:PORT] [slots=N] [user=NAME] [python=PATH] "
                       "[addr=IP] per line; 'slurm': the nodes of this Slurm allocation (the default inside one)")
    where.add_argument("--local", action="store_true", help="run every process on this machine (the default)")
    _add_dry_run_options(parser)
    add_shared_options(parser, os.environ)
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", dest="overrides",
                        help="override a job file value, e.g. --set train.epochs=4 --set train.lr=0.005 "
                             "(checked like the file; the effective job is saved as RUN_DIR/job.yaml)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="set for every process; NAME alone passes this machine's value; never written (a "
                             "resume passes this machine's value again, or needs NAME=VALUE again)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show every process's output on the console (it is always in RUN_DIR/logs)")
    args = parser.parse_args(argv)
    if sum(given is not None for given in (args.job, args.resume, args.plan)) != 1:
        parser.error("give a job file, --resume RUN_DIR or --plan FILE")
    if args.plan and (args.hosts or args.local or args.overrides or args.env or args.include or args.exclude):
        parser.error("--plan runs the plan's own job on its own hosts: no --hosts, --local, --include, --exclude, "
                     "--set or --env with it")
    _check_dry_run_options(parser, args)
    if args.max_restarts is not None and args.max_restarts < 0:
        parser.error("--max-restarts must be >= 0")
    if args.local and args.launcher == "srun":
        parser.error("--launcher srun reaches the nodes of a Slurm allocation; --local runs on this machine")
    given = _given_settings(parser, args)  # before the defaults below: --resume keeps the run's own otherwise
    notes = with_defaults(parser, args, os.environ, hosts=not (args.plan or args.resume))
    if args.hosts is None and not args.local and (os.environ.get("SLURM_JOB_NODELIST") or args.launcher == "srun"):
        args.hosts = "slurm"  # inside an allocation: its nodes are the hosts
    config = LaunchConfig(args.job, args.hosts, args.dry_run, args.run_root, args.cache_dir, args.remote_dir,
                          ssh_options(args), args.resume, tuple(args.overrides), probe=args.probe,
                          launcher=Launcher(args.launcher or default_launcher(args.hosts, os.environ)),
                          plan_path=args.plan or "",
                          save_plan=args.save_plan or "", given=given,
                          env=parse_env(args.env, environ=os.environ, option="--env"), **host_selection(args))
    return Invocation(config, args.max_restarts, args.verbose, notes)


def with_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace, environ, *,
                  hosts: bool) -> tuple[str, ...]:
    """Options the command line left unset, filled from the defaults file (``launcher.spec.defaults``; ``hosts``:
    whether this command takes its hosts from there too); the console's note naming each and the file."""
    path, values = read_defaults(environ)
    taken = []
    for key, value in values.items():
        if not hasattr(args, key) or getattr(args, key) != parser.get_default(key):
            continue  # the command line's own, or an option this command does not have
        if key == "hosts" and (not hosts or getattr(args, "local", False)):
            continue
        setattr(args, key, value)
        taken.append(f"--{key.replace('_', '-')} {value}")
    return (f"[mxft] from {path}: {', '.join(taken)}",) if taken else ()


def _given_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> frozenset[str]:
    """Which of the settings a run records the command line gives (a value other than the default)."""
    return frozenset(name for name, given in (
        ("hosts", args.hosts is not None or args.local), ("launcher", args.launcher is not None),
        ("ssh_config", args.ssh_config is not None),
        ("remote_dir", args.remote_dir != parser.get_default("remote_dir")),
        ("cache_dir", args.cache_dir != parser.get_default("cache_dir"))) if given)


def _check_dry_run_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.probe and not args.dry_run:
        parser.error("--probe goes with --dry-run (a launch always probes its hosts)")
    if args.save_plan and not args.dry_run:
        parser.error("--save-plan goes with --dry-run (add --probe for a plan --plan can run)")


def _add_dry_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and exit; starts nothing, and writes only to the cache (the demo's "
                             "files, a packed data.images folder) (remote hosts: facts from the last probe of each "
                             "host, or assumed and marked so)")
    parser.add_argument("--probe", action="store_true",
                        help="with --dry-run: probe the hosts first over SSH (and remember what they said, for later "
                             "dry runs), so the plan shown is the one a launch runs")
    parser.add_argument("--save-plan", metavar="FILE",
                        help="with --dry-run: also write the plan as JSON to FILE (mxft-launch --plan FILE runs it)")


def add_shared_options(parser: argparse.ArgumentParser, environ, *, launcher_option: bool = True) -> None:
    """Folders and SSH settings every launching subcommand takes, with the same defaults."""
    cache = environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft")
    parser.add_argument("--run-root", default="runs", metavar="DIR",
                        help="each run gets a directory under DIR (default: ./runs)")
    parser.add_argument("--cache-dir", metavar="DIR", default=cache,
                        help="where training shards are cached (default: $MXFT_CACHE or ~/.cache/mxft)")
    parser.add_argument("--remote-dir", default="~/.mxft", metavar="DIR",
                        help="work folder on remote hosts: code, data, runs (default: ~/.mxft)")
    parser.add_argument("--include", action="append", default=[], metavar="HOST[,HOST...]",
                        help="use only these hosts of the hosts file (by name, or NAME:PORT)")
    parser.add_argument("--exclude", action="append", default=[], metavar="HOST[,HOST...]",
                        help="leave these hosts of the hosts file out")
    if launcher_option:  # command mode has its own (with local)
        parser.add_argument("--launcher", choices=("ssh", "srun"),
                            help="how remote hosts are reached: ssh, or srun (each process a job step of this Slurm "
                                 "allocation; the default for its own nodes when srun exists)")
    add_ssh_options(parser)


def add_ssh_options(parser: argparse.ArgumentParser) -> None:
    """How hosts are reached over SSH (``ssh_options`` reads them back)."""
    parser.add_argument("--ssh-config", metavar="FILE", help="SSH config to use instead of ~/.ssh/config")
    parser.add_argument("--accept-new-host-keys", action="store_true",
                        help="trust and record host keys seen for the first time (a changed key is still refused)")


def host_selection(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """``--include`` and ``--exclude`` as LaunchConfig's ``include`` and ``exclude`` (comma-separated, repeatable)."""
    return {option: tuple(name.strip() for value in getattr(args, option) for name in value.split(",") if name.strip())
            for option in ("include", "exclude")}


def ssh_options(args: argparse.Namespace) -> SSHOptions:
    # Absolute: a run records it, and --resume may start from another folder.
    return SSHOptions(os.path.abspath(args.ssh_config) if args.ssh_config else None, args.accept_new_host_keys,
                      connect_timeout_s=8.0)


# tools/launch.py options mxft does not take, and why.
UNSUPPORTED = {
    "--p3": "P3 (priority-based parameter propagation) needs MXNet's P3 kvstore build; not supported",
    "--launcher mpi": "use --hosts (SSH), or --launcher srun inside a Slurm allocation",
    "--launcher sge": "use --hosts (SSH) with the hosts SGE gave you",
    "--launcher yarn": "not supported",
}


def is_command_mode(argv: list[str]) -> bool:
    """launch.py-style arguments: ``-n N`` (or ``--num-workers``) before the command."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    return any(a in ("-n", "--num-workers") or a.startswith("--num-workers=") or
               (a.startswith("-n") and a[2:].isdigit()) for a in head)


def parse_command_args(argv: list[str], environ=os.environ) -> LaunchConfig:
    """``mxft-launch [-H FILE] -n W [-s S] [--sync-dir D] [--env ...] -- COMMAND ...`` (launch.py's options)."""
    parser = argparse.ArgumentParser(
        prog="mxft-launch command",
        usage="mxft-launch [command] [-H HOSTS] -n WORKERS [-s SERVERS] [options] [--] PROGRAM [ARGS ...]",
        description="Run any ps-lite program (your own train.py with kvstore='dist_sync', say) as scheduler,\n"
                    "servers and workers, on this machine or the hosts of a hosts file, with the options of\n"
                    "MXNet's tools/launch.py. Every process's output is shown, prefixed with its role and rank.",
        epilog="example:\n  mxft-launch -H hosts.txt -n 2 -s 2 --sync-dir ~/job -- python train.py --epochs 4"
               f"\n\n{COMMAND_EXIT_CODES}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--num-workers", type=int, required=True, help="number of workers")
    parser.add_argument("-s", "--num-servers", type=int, help="number of servers (default: as many as workers)")
    parser.add_argument("-H", "--hostfile", "--hosts", dest="hosts", metavar="FILE",
                        help="hosts file, or 'slurm' for the hosts of this Slurm allocation")
    parser.add_argument("--launcher", default=None, help="local, ssh or srun (default: srun for the nodes of this "
                        "Slurm allocation when srun exists, ssh with a hosts file, else local)")
    parser.add_argument("--sync-dir", "--sync-dst-dir", dest="sync_dir", metavar="DIR",
                        help="copy the current folder to DIR on every host and run there")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="set for every process; NAME alone passes this machine's value (repeatable)")
    for role in ("worker", "server", "scheduler"):
        parser.add_argument(f"--env-{role}", action="append", default=[], metavar="NAME[=VALUE]",
                            help=f"set for {role} processes only (launch.py's NAME:VALUE also works)")
    parser.add_argument("--name", default=None, help="run name (default: the program's name)")
    parser.add_argument("--plain-python", action="store_true",
                        help="run 'python SCRIPT' / 'python -m MODULE' as given; by default an uncaught exception "
                             "ends such a process at once (code 1) rather than in MXNet's finalisation, which waits "
                             "for the other workers and hangs the run")
    parser.add_argument("--p3", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)  # always, in command mode
    add_shared_options(parser, environ, launcher_option=False)
    _add_dry_run_options(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="PROGRAM", help="the program and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.p3:
        raise InputError("--p3", UNSUPPORTED["--p3"])
    if args.hosts is None and args.launcher in (None, "srun") and (environ.get("SLURM_JOB_NODELIST")
                                                                   or args.launcher == "srun"):
        args.hosts = "slurm"  # inside an allocation: its nodes are the hosts
    launcher = args.launcher or (default_launcher(args.hosts, environ) if args.hosts else "local")
    if f"--launcher {launcher}" in UNSUPPORTED:
        raise InputError(f"--launcher {launcher}", "not supported by mxft", hint=UNSUPPORTED[f"--launcher {launcher}"])
    if launcher not in ("local", "ssh", "srun"):
        raise InputError(f"--launcher {launcher}", "unknown launcher", hint="use local, ssh or srun")
    if launcher == "ssh" and not args.hosts:
        raise InputError("--launcher ssh", "needs a hosts file", hint="add -H hosts.txt")
    _check_command_args(parser, args, command)
    roles = {role: parse_env(getattr(args, f"env_{role}"), environ=environ, option=f"--env-{role}")
             for role in ("worker", "server", "scheduler")}
    spec = CommandSpec(
        name=args.name or _name_of(command), source="the command line", argv=tuple(command),
        workers=args.num_workers, servers=args.num_servers or args.num_workers,
        env=parse_env(args.env, environ=environ, option="--env"),
        role_env={role: env for role, env in roles.items() if env}, workdir=os.getcwd(), sync_dir=args.sync_dir,
        plain_python=args.plain_python)
    return LaunchConfig("", None if launcher == "local" else args.hosts, args.dry_run, args.run_root, args.cache_dir,
                        args.remote_dir, ssh_options(args), command=spec, probe=args.probe,
                        save_plan=args.save_plan or "",
                        launcher=Launcher.SSH if launcher == "local" else Launcher(launcher), **host_selection(args))


def _check_command_args(parser: argparse.ArgumentParser, args: argparse.Namespace, command: list[str]) -> None:
    """What argparse cannot check itself: a command, counts within bounds, a name that is one folder name."""
    if not command:
        parser.error("no command given (put it after --)")
    _check_dry_run_options(parser, args)
    servers = args.num_workers if args.num_servers is None else args.num_servers
    if not (1 <= args.num_workers <= MAX_PROCESSES and 1 <= servers <= MAX_PROCESSES):
        parser.error(f"-n and -s must be from 1 to {MAX_PROCESSES}")
    if args.name is not None and not RUN_NAME.fullmatch(args.name):  # it names a folder under --run-root
        raise InputError(f"--name {args.name}", "is not a run name",
                         hint="letters, digits, '.', '_' or '-', at most 64, starting with a letter or digit")


def _name_of(command: list[str]) -> str:
    """``python train.py`` -> ``train``: the first argument that looks like a program file."""
    program = next((a for a in command if a.endswith(".py")), command[0])
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.splitext(os.path.basename(program))[0]).strip("-.")
    return (name or "command")[:40]

