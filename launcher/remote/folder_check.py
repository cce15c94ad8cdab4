"""Whether a folder on a host is safe to copy programs into and run them from.

mxft copies code into its work folder (``--remote-dir``) and, in command mode, the
working folder into ``--sync-dir``/``--sync-dst-dir``, then runs it there as the
launching user. A user who can write to that folder, replace a folder on its path or
create it before mxft does can plant a ``numpy.py`` or a new ``train.py`` that runs as
you. So preflight refuses a folder unless, like OpenSSH's StrictModes for ``~/.ssh``:

- the folder and every existing folder above it (up to ``/``) is owned by you or root;
- none of them is writable by group or others, except
  - a folder above with the sticky bit (``/tmp``: others may add entries but not
    replace yours) when the entry below it on the path exists (it is then yours or
    root's, by the first rule); a folder still to be created in such a place is refused,
    as another user could create it first;
  - group-writable when the group is your own private group (its only member is you:
    Debian's OpenSSH allows the same);
- a symlink on the path counts as its owner's, and the folder it leads to is checked too;
- the destination, when it exists, is a folder.

This file's source is sent to every host as part of ``launcher.run.preflight._PROBE`` and runs
there on the host's Python: standard library only, no annotations (Python 3.6 and newer).
"""
import grp
import os
import pwd
import stat


def folder_unsafe_reason(folder):
    """None when ``folder`` (``~`` allowed) is safe by the rules above, else why not, e.g.
    ``/tmp/job is owned by nobody (uid 65534), not by you (alice) or root``."""
    path = os.path.abspath(os.path.expanduser(folder))
    reason = _path_unsafe_reason(path, os.geteuid())
    real = os.path.realpath(path)
    if reason is None and real != path:
        reason = _path_unsafe_reason(real, os.geteuid())
    return reason


def _path_unsafe_reason(path, uid):
    """The first rule ``path`` (absolute) breaks, from the destination up to ``/``."""
    below_exists = None  # whether the entry below ``current`` on the path exists (None: current is the destination)
    current = path
    while True:
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            info = None
        except OSError as err:
            return "%s cannot be checked: %s" % (current, err.strerror)
        if info is not None:
            reason = _entry_unsafe_reason(current, info, uid, below_exists)
            if reason is not None:
                return reason
        parent = os.path.dirname(current)
        if parent == current:
            return None
        below_exists, current = info is not None, parent


def _entry_unsafe_reason(path, info, uid, below_exists):
    if info.st_uid not in (uid, 0):
        return "%s is owned by %s, not by you (%s) or root" % (path, _user(info.st_uid), _user(uid))
    if stat.S_ISLNK(info.st_mode):
        return None  # its owner is fine; the folder it leads to is checked on the real path
    if not stat.S_ISDIR(info.st_mode):
        return "%s is not a folder" % path if below_exists is None else None
    others = info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and not _own_group(info.st_gid, uid))
    if not others:
        return None
    mode = "mode %04o" % stat.S_IMODE(info.st_mode)
    if below_exists is None or not info.st_mode & stat.S_ISVTX:
        return "%s is writable by %s (%s)" % (path, "others" if info.st_mode & stat.S_IWOTH else "its group", mode)
    if not below_exists:
        return ("the folder would be created in %s, which others can write (%s): another user could create it "
                "first" % (path, mode))
    return None


def _own_group(gid, uid):
    """Whether group ``gid`` is ``uid``'s private group: its primary group, no other member listed, and no
    other account's primary group (``gr_mem`` does not list those: a shared ``users`` group is not private)."""
    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    if gid != user.pw_gid or not set(group.gr_mem) <= {user.pw_name}:
        return False
    return not any(other.pw_gid == gid and other.pw_uid != uid for other in pwd.getpwall())


def _user(uid):
    try:
        return "%s (uid %d)" % (pwd.getpwuid(uid).pw_name, uid) if uid else "root"
    except KeyError:
        return "uid %d" % uid
