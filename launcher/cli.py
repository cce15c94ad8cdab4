"""The ``mxft-launch`` command line: the only module that prints to the user and chooses exit codes.

Subcommands: launch (the default), command (launch.py's options), check, status, stop,
runs, clean. Each has its own ``--help``, written for users; OVERVIEW is ``mxft-launch --help``.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import json
import os
import re
import signal
import sys
import time

import psutil

from cluster.errors import InputError, Interrupted, JobFailed, MxftError
from cluster.hosts import Launcher
from cluster.srun import default_launcher
from launcher.cli_args import (OVERVIEW, Invocation, add_shared_options, add_ssh_options, is_command_mode,
                               host_selection, parse_args, parse_command_args, ssh_options, with_defaults)
from launcher.data import cachefile, run_index, runstate
from launcher.evaluate_cli import evaluate
from launcher.report.console import Console, printable
from launcher.run.check_table import table
from launcher.run.clean import clean_hosts, cleanup_lines, load_clean_hosts
from launcher.run.launch import LaunchConfig, check_hosts, run
from launcher.status import run_rows, run_status, runs_lines, status_lines

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _echo(line: str) -> None:
    print(printable(line), flush=True)


def _say_error(text: str) -> None:
    """A line on stderr; what a host sent in it (an error, a log tail) is shown as text (``printable``)."""
    print(printable(text), file=sys.stderr, flush=True)


def _report(outcome) -> int:
    """The run's summary, as its job kind gives it; exit 1 unless its verdict is ``succeeded`` (``missed``: the
    verdict result.json, status and runs give too)."""
    for line in outcome.kind.summary(outcome.plan, outcome.result.report):
        _echo(line)
    if not outcome.result.ok:
        _say_error(f"mxft-launch: job failed: {outcome.result.reason}")
        return EXIT_FAILED
    return EXIT_OK


def _save_plan(plan, path: str) -> None:
    """The dry run's plan as JSON at ``path`` (``--plan`` runs it), written whole or not at all."""
    try:
        with cachefile.replacing(path, "w", encoding="utf-8") as handle:
            handle.write(plan.to_json() + "\n")
    except OSError as err:
        raise InputError(f"--save-plan {path}", f"cannot write the plan: {err.strerror or err}") from None
    _echo(f"[mxft] plan saved to {path}; run it with: mxft-launch --plan {path}")


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _launcher_process_settings():
    """The launcher's process-wide settings for one call of ``main``, and the caller's back after it.

    The umask makes run folders, logs, plans, the cache and clean's reports the user's alone (0700
    folders, 0600 files), for every command; what the imports made is frozen out of the cycle collector
    (it lives as long as the launcher: no full collection walks it again). A caller of ``main`` in its
    own process (a test, a script) keeps its own settings.
    """
    was_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    umask = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(umask)
        if not was_frozen:
            gc.unfreeze()


@contextlib.contextmanager
def _stop_signals_interrupt():
    """SIGTERM and SIGUSR1 (Slurm ahead of a time limit: sbatch --signal=B:USR1@120) tear a launch down as
    Ctrl-C does, for the length of the launch; the caller's handlers are back after it."""
    handlers = {signum: signal.signal(signum, _raise_interrupted) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    with _launcher_process_settings():
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        if argv[:1] == ["help"] and argv[1:2] and argv[1] in (*TOOLS, "launch", "command"):
            return _main([argv[1], "--help"])  # help CHECK: that command's help
        print(OVERVIEW, file=sys.stdout if argv else sys.stderr)
        return EXIT_OK if argv else EXIT_BAD_INPUT
    mistyped = _mistyped_command(argv[0])
    if mistyped is not None:
        return _bad_input(InputError(f"mxft-launch {argv[0]}", "is neither a command nor a job file",
                                     hint=f"did you mean 'mxft-launch {mistyped}'? (mxft-launch --help lists them)"))
    if argv[0] == "--version":
        _echo(f"mxft-launch {_version()}")
        return EXIT_OK
    if argv[0] in TOOLS:
        try:
            return TOOLS[argv[0]](argv[1:])
        except InputError as err:
            return _bad_input(err)
        except KeyboardInterrupt:
            return 128 + signal.SIGINT
        except (MxftError, OSError, ValueError) as err:  # a run folder's file unreadable or torn, a host gone
            _say_error(f"mxft-launch: error: {err}")
            return EXIT_FAILED
    if argv[0] in ("launch", "command"):
        return launch(argv[1:], command_mode=argv[0] == "command")
    return launch(argv, command_mode=is_command_mode(argv))


def _mistyped_command(word: str) -> str | None:
    """The command ``word`` was probably meant as (``lanch`` -> ``launch``), when it is no file, no option and no
    path: None for anything that may be a job file.

    >>> _mistyped_command("lanch"), _mistyped_command("staus"), _mistyped_command("stop"), _mistyped_command("x.yaml")
    ('launch', 'status', None, None)
    """
    commands = [*TOOLS, "launch", "command", "help"]
    if word in commands or word.startswith("-") or os.path.exists(word) or not re.fullmatch(r"[a-z]{2,12}", word):
        return None
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    return close[0] if close else None


def launch(argv: list[str], *, command_mode: bool) -> int:
    """Plan and run a job file or a command; prints the outcome and returns the exit code."""
    with _stop_signals_interrupt():
        return _launch(argv, command_mode=command_mode)


def _launch(argv: list[str], *, command_mode: bool) -> int:
    console = None
    try:
        if command_mode:  # the program's own output is what the user came for
            invocation = Invocation(parse_command_args(argv), 0, verbose=True)
        else:
            invocation = parse_args(argv)
        console = Console(verbose=invocation.verbose)
        for note in invocation.notes:
            console(note)
        outcome = run(invocation.config, console=console, max_restarts=invocation.max_restarts)
        if outcome.result is None:
            _echo(outcome.plan.describe())
            if invocation.config.save_plan:
                _save_plan(outcome.plan, invocation.config.save_plan)
            return EXIT_OK
        return _report(outcome)
    except InputError as err:
        return _bad_input(err)
    except JobFailed as err:
        _say_error(f"mxft-launch: job failed: {err}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("mxft-launch: interrupted (SIGINT); every process of the run was stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    except Interrupted as err:
        _say_error(f"mxft-launch: {err}")
        return 128 + err.signum
    except MxftError as err:
        _say_error(f"mxft-launch: error: {err}")
        return EXIT_FAILED
    finally:
        if console is not None:
            console.close()


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("mxft")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _bad_input(err: InputError) -> int:
    for line in str(err).splitlines():  # one line per problem (preflight: per host)
        _say_error(f"mxft-launch: error: {line}")
    return EXIT_BAD_INPUT


def _tool_parser(name: str, description: str, epilog: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"mxft-launch {name}", description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def check(argv: list[str]) -> int:
    """``mxft-launch check --hosts FILE [JOB]``: preflight only, a table per host; exit 2 if a host fails."""
    parser = _tool_parser(
        "check", "Probe every host as a launch would (SSH, host key, Python, mxnet with ps-lite, GPUs, disk, clock) "
        "and print a table, one row per host. With a job file, also whether each host can take its part of that "
        "job. Starts nothing and copies nothing.",
        "example:\n  mxft-launch check --hosts hosts.txt jobs/resnet152.yaml\n\n"
        "exit codes:\n  0    every host can take its part\n  2    some host cannot (its row says why), "
        "or bad input")
    parser.add_argument("job", nargs="?", help="also check that each host can take its part of this job")
    parser.add_argument("--hosts", required=True, metavar="FILE", help="hosts file, or 'slurm'")
    add_shared_options(parser, os.environ)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY.PATH=VALUE",
                        help="override a job file value, as for a launch")
    parser.add_argument("--json", action="store_true", help="one JSON object: a row per host (its table's columns, "
                        "and whether it can take its part)")
    args = parser.parse_args(argv)
    for note in with_defaults(parser, args, os.environ, hosts=False):  # check's --hosts is required
        _say_error(note)  # on stderr: stdout is the table (or its JSON)
    config = LaunchConfig(args.job or "", args.hosts, True, args.run_root, args.cache_dir, args.remote_dir,
                          ssh_options(args), overrides=tuple(args.overrides),
                          launcher=Launcher(args.launcher or default_launcher(args.hosts, os.environ)),
                          **host_selection(args))
    rows = check_hosts(config)
    for line in [json.dumps({"hosts": [row.as_json() for row in rows]})] if args.json else table(rows):
        _echo(line)
    return EXIT_OK if all(row.fit for row in rows) else EXIT_BAD_INPUT


def status(argv: list[str]) -> int:
    """``mxft-launch status RUN_DIR``: state, processes per host, epoch, last metrics, result."""
    parser = _tool_parser(
        "status", "Show where a run stands, from its run folder alone (no SSH): running, succeeded, failed (and "
        "why) or stopped; its attempts; its processes per host; the last epoch each worker finished; the last "
        "metrics; the result.",
        "example:\n  mxft-launch status runs/demo-20261128-210222-8250\n\n"
        "exit codes:\n  0    shown\n  2    not a run folder")
    parser.add_argument("run_dir", help="the run folder a launch printed (RUN_ROOT/RUN_ID)")
    parser.add_argument("--json", action="store_true", help="one JSON object: run, state, text, reason, cause, "
                        "attempts, processes, epochs_done, last_epoch, result, log, log_tail, resume")
    args = parser.parse_args(argv)
    if args.json:
        _echo(json.dumps(run_status(args.run_dir)))
        return EXIT_OK
    for line in status_lines(args.run_dir):
        _echo(line)
    return EXIT_OK


def runs(argv: list[str]) -> int:
    """``mxft-launch runs [--run-root DIR]``: the newest runs, one line each."""
    parser = _tool_parser(
        "runs", "List your newest runs, wherever they were started (or those of one run root), newest first: when "
        "each started, its state, its validation accuracy, how long it took (or has been running), the kind of "
        "failure that ended it (exited, signalled, connection lost, host silent, start-up timeout, stalled, "
        "staging, bad result, ...), its folder, and why it failed or missed.",
        "exit codes:\n  0    listed\n  2    no such run root")
    parser.add_argument("--run-root", metavar="DIR", help="only the runs in this folder (default: every run you "
                        f"started, from any folder: the list {run_index.index_path()})")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="how many runs to show (default 20)")
    parser.add_argument("--json", action="store_true", help="one JSON object: the runs (a list of objects with "
                        "started, state, accuracy, duration, cause, reason, folder) and how many older ones were "
                        "left out")
    args = parser.parse_args(argv)
    if args.json:
        rows, older = run_rows(args.run_root, limit=max(args.limit, 1))
        _echo(json.dumps({"runs": rows, "older": older}))
        return EXIT_OK
    for line in runs_lines(args.run_root, limit=max(args.limit, 1)):
        _echo(line)
    return EXIT_OK


def stop(argv: list[str]) -> int:
    """``mxft-launch stop RUN_DIR``: stop exactly that run (its launcher tears down every process)."""
    parser = _tool_parser(
        "stop", "Stop a running run: its launcher is sent SIGTERM and stops every process of the run on every "
        "host, then records the run as stopped (resume it later with mxft-launch --resume RUN_DIR).",
        "exit codes:\n  0    stopped\n  1    no launcher of this run is running, or it did not stop in time")
    parser.add_argument("run_dir", help="the run folder a launch printed (RUN_ROOT/RUN_ID)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long to wait (default 60)")
    args = parser.parse_args(argv)
    launcher = runstate.running_launcher(args.run_dir)
    if launcher is None:
        print(f"mxft-launch: {args.run_dir}: no launcher of this run is running", file=sys.stderr)
        return EXIT_FAILED
    launcher.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _alive(launcher):  # psutil's wait() never returns for a zombie whose parent is not us
        if time.monotonic() > deadline:
            print(f"mxft-launch: {args.run_dir}: the launcher (pid {launcher.pid}) did not stop within "
                  f"{args.timeout:.0f} s", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.1)
    _echo(f"stopped {args.run_dir}")
    return EXIT_OK


def clean(argv: list[str]) -> int:
    """``mxft-launch clean --hosts FILE [--older-than DAYS] [--dry-run]``: free the hosts' work folders."""
    parser = _tool_parser(
        "clean", "Free space in each host's work folder (--remote-dir): remove the folders of finished runs, "
        "cached data and code no run that stays uses, and copies interrupted halfway. A run with a process "
        "still alive on the host is never removed, nor anything changed within the last hour (a launch may be "
        "staging or starting it), nor data and code while a launch is staging there. This machine's run "
        "folders (results, checkpoints, logs) are not touched.",
        "examples:\n  mxft-launch clean --hosts hosts.txt --dry-run          what would go, and how much it frees\n"
        "  mxft-launch clean --hosts hosts.txt --older-than 7     keep what runs used in the last week\n\n"
        "exit codes:\n  0    every host cleaned (or, with --dry-run, listed)\n"
        "  1    some host could not be reached or cleaned fully (its line says why)\n"
        "  2    bad input (hosts file, option)")
    parser.add_argument("--hosts", required=True, metavar="FILE", help="hosts file, or 'slurm'")
    parser.add_argument("--older-than", type=float, default=0.0, metavar="DAYS",
                        help="remove only runs, data and code unchanged for DAYS days (default 0: everything "
                             "finished; never less than an hour)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument("--remote-dir", default="~/.mxft", metavar="DIR",
                        help="work folder on the hosts, as given to launches (default: ~/.mxft)")
    add_ssh_options(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.older_than < 100_000:  # also refuses nan and inf
        parser.error("--older-than must be a number of days from 0")
    ssh = ssh_options(args)
    reports = clean_hosts(load_clean_hosts(args.hosts, ssh), ssh, args.remote_dir,
                          older_than_s=args.older_than * 86400, dry_run=args.dry_run)
    for line in cleanup_lines(reports, dry_run=args.dry_run):
        _echo(line)
    return EXIT_FAILED if reports.failed or any(report.unremoved for report in reports.ok.values()) else EXIT_OK


TOOLS = {"check": check, "status": status, "runs": runs, "stop": stop, "clean": clean, "evaluate": evaluate}


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    sys.exit(main())
