"""Where this user's runs are, wherever they were started: ``mxft-launch runs`` lists them from any folder.

Each new run's folder is appended, as an absolute path, to ``$XDG_DATA_HOME/mxft/runs.list`` (by default
``~/.local/share/mxft/runs.list``). Reading keeps the folders that are still run folders (a ``job.yaml`` in them),
once each; the list is cut to its newest ``KEEP`` lines when it grows past twice that. A run folder that cannot be
recorded (a read-only home) is still a run: ``--run-root`` lists it.
"""
from __future__ import annotations

import os

from launcher.data.cachefile import replacing

KEEP = 5000


def index_path() -> str:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data_home, "mxft", "runs.list")


def record_run(run_dir: str) -> None:
    """Add a new run's folder to the user's list (best effort: a launch does not fail for it)."""
    path = index_path()
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(os.path.abspath(run_dir) + "\n")
        if os.path.getsize(path) > 2 * KEEP * 80:  # about twice KEEP lines of a typical path: cut to the newest
            lines = _lines(path)
            if len(lines) > 2 * KEEP:
                with replacing(path, "w", encoding="utf-8") as handle:
                    handle.writelines(line + "\n" for line in lines[-KEEP:])
    except OSError:
        pass


def recorded_runs() -> list[str]:
    """The recorded folders that are still run folders, newest record first, once each."""
    seen: dict[str, None] = {}
    for line in reversed(_lines(index_path())):
        if os.path.isabs(line) and line not in seen and os.path.isfile(os.path.join(line, "job.yaml")):
            seen[line] = None
    return list(seen)


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except OSError:
        return []
