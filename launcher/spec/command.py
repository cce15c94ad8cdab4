"""Command mode: any ps-lite program, started the way MXNet's ``tools/launch.py`` would.

    mxft-launch -H hosts.txt -n 3 -s 2 --sync-dir ~/job -- python train.py --kv-store dist_sync

Every process (scheduler, servers, workers) runs the same command with ``DMLC_ROLE``
and the other ``DMLC_*`` variables set, exactly as launch.py does; MXNet turns a
process whose role is server or scheduler into that role when it imports mxnet. What
mxft adds is what launch.py lacks: preflight, staging of the working folder
(``--sync-dir``), ``DMLC_NODE_HOST`` per host, prefixed logs, and teardown of every
process on every host as soon as one fails (ps-lite itself would hang).

``CommandSpec`` is the parsed command line or job file; ``launcher.plan.command`` plans
it. This module finds the files ``--sync-dir`` copies and reads ``--env``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from cluster.errors import InputError
from cluster.secret import Secret
from launcher.spec.checks import ENV_NAME
from launcher.spec.command_job import CommandSpec

# Never copied by --sync-dir: version control, caches, virtual environments, run folders.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                          "runs", ".tox"})


def sync_files(folder: str) -> tuple[str, ...]:
    """Files under ``folder`` that ``--sync-dir`` copies (relative paths, sorted).

    A link to a file inside the folder is copied as that file. A link that leads outside
    the folder (``key -> ~/.ssh/id_rsa``) and a link to a folder are refused by name:
    mxft copies only what is inside, and says so rather than skip it.
    """
    found = []
    inside = os.path.realpath(folder)
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in dirs:
            if os.path.islink(os.path.join(root, name)):
                raise InputError(os.path.join(root, name), "is a link to a folder, which --sync-dir does not copy",
                                 hint="copy that folder in, or move the link out of the synced folder")
        for name in files:
            path = os.path.join(root, name)
            target = os.path.realpath(path)
            if os.path.islink(path) and os.path.commonpath([inside, target]) != inside:
                raise InputError(path, f"is a link to {target}, outside the synced folder {folder}",
                                 hint="--sync-dir copies only what is inside the folder: copy the file in, or "
                                      "remove the link")
            if os.path.isfile(path):
                found.append(os.path.relpath(path, folder))
    return tuple(sorted(found))


def sync_destinations(spec: CommandSpec) -> tuple[str, ...]:
    """The folders ``--sync-dir`` copies into on remote hosts, as given (``~`` is each host's home).

    Preflight refuses one that another user could write to or create first (``launcher.remote.folder_check``).
    """
    return (spec.sync_dir,) if spec.sync_dir else ()


def parse_env(items: Sequence[str], *, environ: Mapping[str, str], option: str) -> dict[str, str]:
    """``NAME=VALUE``, ``NAME:VALUE`` (launch.py's form) or ``NAME`` (this machine's value).

    Values are secrets: passed to the processes, never written (plans show where they came from).

    >>> env = parse_env(["A=1", "B:x=y", "HOME"], environ={"HOME": "/root"}, option="--env")
    >>> env == {'A': '1', 'B': 'x=y', 'HOME': '/root'}, env
    (True, {'A': '<given>', 'B': '<given>', 'HOME': '<from environment>'})
    """
    out = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i > 0), default=-1)
        name, value = (item[:cut], item[cut + 1:]) if cut > 0 else (item, None)
        if not ENV_NAME.fullmatch(name):  # [A-Za-z_][A-Za-z0-9_]*: never an option of the remote ``env``
            raise InputError(f"{option} {item}", f"{name!r} is not an environment variable name",
                             hint="write NAME=VALUE, NAME:VALUE or NAME")
        if value is None:
            if name not in environ:
                raise InputError(f"{option} {item}", f"{name} is not set on this machine",
                                 hint=f"set it, or write {name}=VALUE")
            out[name] = Secret(environ[name], "<from environment>")
        else:
            out[name] = Secret(value, "<given>")
    return out
