"""The options a user types on every launch, kept once: ``$XDG_CONFIG_HOME/mxft/defaults.yaml`` (by default
``~/.config/mxft/defaults.yaml``)::

    hosts: ~/clusters/a100/hosts.txt
    remote_dir: /scratch/me/mxft
    run_root: ~/runs
    ssh_config: ~/.ssh/config-cluster

Each key is a long option's name (``--remote-dir`` is ``remote_dir``) and takes the option's place when the command
line does not give it; the launch says which it took and from where. Keys are checked like a job file's (an unknown
key or a value that is not text is exit 2 naming the line). What decides trust (``--accept-new-host-keys``) or what
runs (the job, ``--set``, ``--env``) is never a default.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from cluster.errors import InputError
from launcher.spec.yamlfields import Fields, compose_with_lines

KEYS = ("hosts", "remote_dir", "run_root", "cache_dir", "ssh_config", "launcher")
MAX_BYTES = 64 * 1024


def defaults_path(environ: Mapping[str, str]) -> str:
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config_home, "mxft", "defaults.yaml")


def read_defaults(environ: Mapping[str, str], *, allowed: tuple[str, ...] = KEYS) -> tuple[str, dict[str, str]]:
    """(the file, its values by key) — ``{}`` when there is no file; InputError naming the line of a bad one.
    ``allowed``: the keys the command at hand takes (``check`` has no ``--launcher`` of command mode's kind, say)."""
    path = defaults_path(environ)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return path, {}
    except OSError as err:
        raise InputError(path, f"cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:
        raise InputError(path, f"is over {MAX_BYTES // 1024} KiB; a defaults file is a few lines")
    raw, lines = compose_with_lines(data.decode("utf-8", errors="replace"), path)
    fields = Fields(path, lines, raw if raw != {} else {}, (), KEYS)
    values = {key: fields.get(key, _text) for key in KEYS if key in fields.raw and fields.raw[key] is not None}
    if "launcher" in values and values["launcher"] not in ("ssh", "srun"):
        fields.fail(("launcher",), f"launcher must be ssh or srun, got {values['launcher']!r}")
    return path, {key: os.path.expanduser(value) if key != "launcher" else value
                  for key, value in values.items() if key in allowed}


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 4096:
        raise ValueError("a path or name (text)")
    return value
