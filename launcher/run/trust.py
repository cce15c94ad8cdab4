"""What a launch reads back from disk and then acts on (a saved plan for ``--plan``, a run folder for ``--resume``) is
checked as the inputs it stands for would be: the file and its folder must be the user's own, and the hosts, the run's
id and folder, the launcher and the job must pass the same rules as a hosts file, a job file and a new run's id.

A plan decides which programs start where: a file another user could write is a program they could run as you.
"""
from __future__ import annotations

import os
import re
import stat

import yaml

from cluster.errors import InputError
from cluster.hosts import HostSpec, parse_hosts
from launcher.plan import Plan, plan_from_json
from launcher.remote.folder_check import folder_unsafe_reason
from launcher.spec.jobspec import parse_job

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")   # NAME-YYYYmmdd-HHMMSS-hex: one plain folder name


PLAN_CAP = 64 << 20   # bytes of a saved plan (a 128-host plan is a few MiB)


def read_plan(path: str) -> Plan:
    """The plan in ``path``, read within bounds and checked field by field (``launcher.plan.plan_from_json``)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(PLAN_CAP + 1)
    except OSError as err:
        raise InputError(path, f"cannot read the plan: {err.strerror or err}") from None
    if len(data) > PLAN_CAP:
        raise InputError(path, f"is larger than {PLAN_CAP >> 20} MiB: not a plan mxft wrote")
    try:
        return plan_from_json(data.decode("utf-8"), path)
    except UnicodeDecodeError:
        raise InputError(path, "is not a plan mxft wrote (not UTF-8 JSON of a plan)") from None


def require_own_file(path: str) -> None:
    """InputError unless ``path`` and its folder are the user's (or root's) and no one else may write them."""
    folder = os.path.dirname(os.path.abspath(path))
    reason = folder_unsafe_reason(folder)
    if reason is None:
        try:
            info = os.stat(path)
        except OSError as err:
            raise InputError(path, f"cannot read it: {err.strerror}") from None
        if info.st_uid not in (os.geteuid(), 0) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            reason = f"{path} may be written by others (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)})"
    if reason is not None:
        raise InputError(path, reason, hint="a plan or a run folder decides what runs where, as you: keep it yours")


def host_line(host: HostSpec) -> str:
    """The hosts-file line that says ``host``."""
    name = f"[{host.name}]" if ":" in host.name else host.name
    fields = [f"{name}:{host.port}" if host.port else name]
    fields += [f"{key}={value}" for key, value in (("slots", host.slots), ("user", host.user),
                                                    ("python", host.python), ("addr", host.addr)) if value]
    return " ".join(fields)


def require_fair_hosts(hosts: tuple[HostSpec, ...], where: str) -> None:
    """The recorded hosts pass the hosts file's rules (names, ports, users, python= paths, addresses)."""
    text = "".join(host_line(host) + "\n" for host in hosts)
    parsed = parse_hosts(text, where)
    fields = [(h.name, h.port, h.slots, h.user, h.python, h.addr) for h in parsed]
    if fields != [(h.name, h.port, h.slots, h.user, h.python, h.addr) for h in hosts]:
        raise InputError(where, "its hosts are not what a hosts file can say")


def require_fair_plan(plan: Plan, where: str, *, accept_new_host_keys: bool) -> None:
    """A plan read from a file holds nothing a launch could not have made: its run id and folder, launcher, hosts
    and job pass their own rules, and it turns on no trust the command line did not."""
    facts = plan.facts
    if not RUN_ID.fullmatch(facts.run_id) or not os.path.isabs(facts.run_dir) or \
            os.path.basename(os.path.normpath(facts.run_dir)) != facts.run_id:
        raise InputError(where, f"its run id {facts.run_id!r} and folder {facts.run_dir!r} are not a run's")
    if not os.path.isabs(facts.cache_dir):  # its launcher is a Launcher: plan_from_json refuses any other value
        raise InputError(where, f"its cache folder {facts.cache_dir!r} is not one a launch uses")
    if facts.ssh.accept_new_host_keys and not accept_new_host_keys:
        raise InputError(where, "it would accept new host keys, which only the command line may ask for",
                         hint="add --accept-new-host-keys if you mean it")
    require_fair_hosts(plan.hosts, where)
    try:
        again = parse_job(yaml.safe_dump(plan.job_dict(), sort_keys=False), plan.source, environ={})
    except InputError as err:
        raise InputError(where, f"its job is not one a job file can say: {err}") from None
    if again.to_job_dict() != plan.job_dict():
        raise InputError(where, "its job is not one a job file can say")
