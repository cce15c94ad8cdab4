"""What ``mxft-launch clean`` removes from a host's work folder, and the removing, on the host itself.

A work folder (``--remote-dir``, default ``~/.mxft``; ``launcher.plan.HostLayout``) holds::

    code/HASH/trainer/...               the trainer package of one version of mxft
    data/KEY/NAME, .NAME.verified       content-addressed data: shards, validation set, checkpoint
    runs/RUN_ID/config/worker-N.json    what each worker of the run here was told (it names data/KEY/...)
    runs/RUN_ID/pids/NAME.pid           each process of the run here (``trainer.remote`` writes it)
    .incoming.XXXXXXXX/                 a staging receiver's private folder (``launcher.run.stage``)

``choose_removals`` decides from a listing of that folder (a pure function, tested with literal
listings):

- a run goes when none of its processes is alive here and nothing in its folder changed for
  ``older_than_s`` (the launcher fetched its results when it ended);
- a data folder goes when no run that stays names it in a worker config and nothing in it changed
  for ``older_than_s``; a code folder when nothing in it changed for ``older_than_s`` and no run
  is running here (which version a running process uses is not recorded on the host);
- an ``.incoming.*`` folder goes when nothing in it changed for an hour: a copy killed halfway;
- nothing that changed within the last hour (``RECENT_S``) goes, whatever ``older_than_s`` says
  (a launch may be staging it or starting its processes right now), and while a stage runs here
  (it holds a shared lock on the work folder, or its ``.incoming.*`` folder is recent) data and
  code stay.

The script holds the work folder's lock exclusively while it lists and removes, so a stage that
starts meanwhile waits and then answers "present" only for files still there. A process counts as
alive when its pid runs here with the run's ``MXFT_RUN_ID`` in its environment (a pid reused by
another program does not keep a run).

This file's source is sent to each host by ``launcher.run.clean`` and runs there on the host's
Python: standard library only, no annotations (Python 3.6 and newer), nothing from mxft::

    python -c SOURCE ROOT OLDER_THAN_S dry-run|remove   ->  one JSON line (what goes, bytes freed)
"""
import errno
import fcntl
import json
import os
import shutil
import stat
import sys
import time

RECENT_S = 3600
FOLDERS = {"run": "runs", "data": "data", "code": "code", "incoming": ""}  # where each kind lives under ROOT


def choose_removals(listing, now, older_than_s):
    """The entries of ``listing`` to remove, each ``{"kind", "name", "bytes", "why"}``: runs, data, code, incoming.

    >>> listing = {"runs": [{"name": "r1", "mtime": 0, "bytes": 10, "running": False, "data": ["k1"]},
    ...                     {"name": "r2", "mtime": 0, "bytes": 20, "running": True, "data": ["k2"]}],
    ...            "data": [{"name": "k1", "mtime": 0, "bytes": 100}, {"name": "k2", "mtime": 0, "bytes": 200}],
    ...            "code": [{"name": "c1", "mtime": 0, "bytes": 5}], "incoming": [], "staging": False}
    >>> [(r["kind"], r["name"], r["why"]) for r in choose_removals(listing, 3 * 86400, older_than_s=86400)]
    [('run', 'r1', 'finished, unchanged for 3.0 days'), ('data', 'k1', 'used by no run kept, unchanged for 3.0 days')]
    """
    cutoff = now - max(older_than_s, RECENT_S)
    removals, kept_data = [], set()
    for run in listing["runs"]:
        if run["running"] or run["mtime"] > cutoff:
            kept_data.update(run["data"])
        else:
            removals.append(_removal("run", run, "finished, unchanged for " + _age(now - run["mtime"])))
    if not stage_running(listing, now):
        removals += [_removal("data", entry, "used by no run kept, unchanged for " + _age(now - entry["mtime"]))
                     for entry in listing["data"] if entry["name"] not in kept_data and entry["mtime"] <= cutoff]
        if not any(run["running"] for run in listing["runs"]):
            removals += [_removal("code", entry, "unchanged for " + _age(now - entry["mtime"]))
                         for entry in listing["code"] if entry["mtime"] <= cutoff]
    removals += [_removal("incoming", entry, "a copy interrupted " + _age(now - entry["mtime"]) + " ago")
                 for entry in listing["incoming"] if entry["mtime"] <= now - RECENT_S]
    return removals


def stage_running(listing, now):
    """Whether a stage runs here now: one holds the lock, or an ``.incoming.*`` folder changed within the hour."""
    return listing["staging"] or any(entry["mtime"] > now - RECENT_S for entry in listing["incoming"])


def _removal(kind, entry, why):
    return {"kind": kind, "name": entry["name"], "bytes": entry["bytes"], "why": why}


def _age(seconds):
    """3 days -> '3.0 days'; under a day in hours."""
    if seconds >= 86400:
        return "%.1f days" % (seconds / 86400.0)
    return "%.1f hours" % (seconds / 3600.0)


def newest_and_size(path):
    """(newest mtime of the folder and everything in it, bytes it occupies on disk), links not followed."""
    info = os.lstat(path)
    newest, seen, size = info.st_mtime, {(info.st_dev, info.st_ino)}, info.st_blocks * 512
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            newest = max(newest, info.st_mtime)
            if (info.st_dev, info.st_ino) not in seen:  # a hard link is counted once
                seen.add((info.st_dev, info.st_ino))
                size += info.st_blocks * 512
    return newest, size


def _folders(path, prefix=""):
    """Names of the real folders (no links) in ``path`` starting with ``prefix``, sorted; none if it is absent."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []
    return [name for name in names
            if name.startswith(prefix) and stat.S_ISDIR(os.lstat(os.path.join(path, name)).st_mode)]


def process_alive(pid, run_id):
    """Whether ``pid`` runs here as a process of ``run_id``."""
    if pid <= 0:  # 0 and -1 would name a process group or every process
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False  # gone, or another user's: never one of ours
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            return ("MXFT_RUN_ID=" + run_id).encode() in handle.read().split(b"\0")
    except OSError:
        return True  # no /proc: alive is all that is known


def run_is_running(run_path, run_id, alive):
    for name in _names(os.path.join(run_path, "pids")):
        try:
            with open(os.path.join(run_path, "pids", name)) as handle:
                pid = int(handle.read(32).strip())
        except (OSError, ValueError):
            continue
        if alive(pid, run_id):
            return True
    return False


def data_keys(run_path, root):
    """The data folders (KEY of ROOT/data/KEY/...) the run's worker configs name."""
    prefix, keys = os.path.join(root, "data") + "/", set()
    for name in _names(os.path.join(run_path, "config")):
        try:
            with open(os.path.join(run_path, "config", name)) as handle:
                config = json.loads(handle.read(1 << 20))
        except (OSError, ValueError):
            continue
        values = list(config.values()) if isinstance(config, dict) else []
        keys.update(value[len(prefix):].split("/")[0] for value in values
                    if isinstance(value, str) and value.startswith(prefix))
    return sorted(key for key in keys if key)


def _names(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def list_work_folder(root, alive, staging):
    """The listing ``choose_removals`` takes; ``alive(pid, run_id)`` says whether a process runs."""
    def entry(path, name):
        mtime, size = newest_and_size(path)
        return {"name": name, "mtime": mtime, "bytes": size}

    runs = []
    for name in _folders(os.path.join(root, "runs")):
        path = os.path.join(root, "runs", name)
        runs.append(dict(entry(path, name), running=run_is_running(path, name, alive), data=data_keys(path, root)))
    return {"runs": runs, "staging": staging,
            "data": [entry(os.path.join(root, "data", name), name) for name in _folders(os.path.join(root, "data"))],
            "code": [entry(os.path.join(root, "code", name), name) for name in _folders(os.path.join(root, "code"))],
            "incoming": [entry(os.path.join(root, name), name) for name in _folders(root, ".incoming.")]}


def remove(root, removals):
    """Remove what was chosen; (bytes freed, errors)."""
    freed, errors = 0, []
    for removal in removals:
        path = os.path.join(root, FOLDERS[removal["kind"]], removal["name"])
        try:
            shutil.rmtree(path)
        except OSError as err:
            errors.append("%s: %s" % (path, err.strerror or err))
            continue
        freed += removal["bytes"]
    return freed, errors


def main(argv):
    root, older_than_s, mode = os.path.abspath(os.path.expanduser(argv[0])), float(argv[1]), argv[2]
    if mode not in ("dry-run", "remove"):
        sys.exit("usage: ROOT OLDER_THAN_S dry-run|remove")
    report = {"root": root, "removals": [], "freed_bytes": 0, "errors": [], "running": [], "staging": False}
    if os.path.isdir(root):
        held = os.open(root, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # stages wait; or one runs now: data and code stay
            staging = False
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            staging = True
        listing, now = list_work_folder(root, process_alive, staging), time.time()
        report["removals"] = choose_removals(listing, now, older_than_s)
        report["running"] = [run["name"] for run in listing["runs"] if run["running"]]
        report["staging"] = stage_running(listing, now)
        if mode == "remove":
            report["freed_bytes"], report["errors"] = remove(root, report["removals"])
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
