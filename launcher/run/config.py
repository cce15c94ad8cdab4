"""What a launch is asked to do (``LaunchConfig``: the command line, parsed once) and which attempt of which run a
plan is for (``Attempt``)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cluster.hosts import Launcher
from cluster.ssh import SSHOptions
from launcher.data import runstate
from launcher.spec.command_job import CommandSpec


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
    probe: bool = False                        # --dry-run --probe: ask the hosts instead of assuming
    launcher: Launcher = Launcher.SSH          # how remote hosts are reached (ssh, or srun: cluster.srun)
    plan_path: str = ""                        # --plan FILE: run this saved plan (its job, hosts and facts)
    save_plan: str = ""                        # --dry-run --save-plan FILE: where the CLI writes the plan
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # --env: secret values for every process
    include: tuple[str, ...] = ()              # --include: only these hosts of the hosts file
    exclude: tuple[str, ...] = ()              # --exclude: not these
    # Which of hosts, launcher, ssh_config, remote_dir and cache_dir the command line gave: --resume takes the
    # others from the run's own record.
    given: frozenset[str] = frozenset({"hosts", "launcher", "ssh_config", "remote_dir", "cache_dir"})


@dataclasses.dataclass(frozen=True)
class Attempt:
    """Which run a plan is for and where it starts: a new run, a resumed one, a restart."""

    run_id: str
    run_dir: str
    number: int = 1
    checkpoint: runstate.Checkpoint | None = None

