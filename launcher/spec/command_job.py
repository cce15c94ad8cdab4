"""A command job: a ps-lite program to run in command mode, from a job file that names ``command:`` (or from the
command line, ``launcher.cli_args``)."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from launcher.spec import checks as ok
from launcher.spec.checks import ENV_NAME
from launcher.spec.schema import plain
from launcher.spec.yamlfields import Fields


ROLE_NAMES = ("scheduler", "server", "worker")


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """A ps-lite program to run in command mode (``launcher.spec.command``): argv, counts, env, folders."""

    name: str
    source: str                                        # the job file, or "the command line"
    argv: tuple[str, ...]
    workers: int
    servers: int
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)               # every role
    role_env: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)  # role -> env
    workdir: str = ""                                  # local folder the command runs in (and --sync-dir copies)
    sync_dir: str | None = None                        # where remote hosts get a copy of workdir
    plain_python: bool = False                         # True: python programs run as given (no trainer/pyrun.py)

    def env_for(self, role: str) -> dict[str, str]:
        return {**self.env, **self.role_env.get(role, {})}

    def to_job_dict(self) -> dict[str, Any]:
        """This command as a job file says it: ``parse_job`` of it gives it back."""
        out: dict[str, Any] = {"name": self.name, "command": list(self.argv), "workdir": self.workdir,
                               "cluster": {"workers": self.workers, "servers": self.servers}}
        if self.env or self.role_env:  # names only: the values are secrets (plain() shows where they came from)
            out["env"] = plain({**self.env, **{role: dict(values) for role, values in self.role_env.items()}})
        if self.sync_dir:
            out["sync_dir"] = self.sync_dir
        if self.plain_python:
            out["plain_python"] = True
        return out


def parse_command_job(raw: dict, lines: Mapping[tuple, Any], source: str) -> CommandSpec:
    """A job that names ``command:`` (argv list or one shell-like string) instead of the recipe::

        command: [python, train.py, --kv-store, dist_sync]
        cluster: {workers: 3, servers: 2}
        env: {OMP_NUM_THREADS: 1, worker: {MXNET_ENGINE_TYPE: NaiveEngine}}
        sync_dir: ~/jobs/train        # copy workdir (default: the job file's folder) there on each host
        plain_python: true            # run `python ...` as given (default: it ends at once after an exception)
    """
    top = Fields(source, lines, raw, (), ("name", "command", "cluster", "env", "workdir", "sync_dir", "plain_python"))
    argv = top.get("command", ok.argv)
    # No startup_timeout_s: a command emits no join events to time (the recipe's workers do).
    cluster_f = top.section("cluster", ("workers", "servers"))
    env_raw = top.raw.get("env") or {}
    env_f = top.section("env", tuple(k for k in env_raw if isinstance(k, str)) if isinstance(env_raw, dict) else ())
    common, by_role = {}, {}
    for key, value in env_f.raw.items():
        if key in ROLE_NAMES:
            by_role[key] = env_f.get(key, ok.env_mapping)
        else:
            if not ENV_NAME.fullmatch(key):  # [A-Za-z_][A-Za-z0-9_]*: never an option of the remote ``env``
                env_f.fail(env_f.path + (key,), f"{key!r} is not an environment variable name")
            common[key] = env_f.get(key, ok.env_value)
    base_dir = os.path.dirname(os.path.abspath(source))
    workdir = top.get("workdir", ok.text, base_dir)
    return CommandSpec(
        name=top.get("name", ok.job_name, os.path.splitext(os.path.basename(source))[0]),
        source=os.path.abspath(source),
        argv=argv,
        workers=cluster_f.get("workers", ok.count, 1),
        servers=cluster_f.get("servers", ok.count, 1),
        env=common,
        role_env=by_role,
        workdir=os.path.normpath(os.path.join(base_dir, os.path.expanduser(workdir))),
        sync_dir=top.get("sync_dir", ok.text, None),
        plain_python=top.get("plain_python", ok.boolean, False),
    )

