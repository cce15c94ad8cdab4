"""Run one mxft process on a remote host, tied to the SSH session that started it.

    python -m trainer.remote --pid-file PIDS/worker-0.pid [--env-from-stdin] -- python -m trainer --config C.json

A process started over SSH without a terminal outlives its SSH client. This wrapper
closes that gap: it starts the command in a process group of its own, records the
group id, and ends the whole group (SIGTERM, then SIGKILL after a grace period) as
soon as its stdin reaches EOF (the launcher closed the session, died, or lost the
connection) or it receives SIGTERM/SIGHUP/SIGINT. Its exit code is the command's
(128 + N for a command killed by signal N). With ``--env-from-stdin`` the first line of
stdin is a JSON object of environment values for the command (the user's ``--env``
values: secrets, kept off every command line). Files it and its command create are
private to the user (umask 077). Standard library only.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 5.0


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Group:
    """The command in a process group of its own. The command is reaped only after its group was signalled for
    the last time: until then its pid, which is the group's id, cannot be given to another process, so a signal
    meant for the group never reaches a stranger that took the number over."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        self._lock = threading.Lock()
        self._stopped = False

    def exited(self, *, block: bool = False) -> bool:
        """Whether the command has exited, leaving it unreaped (``block``: wait for that)."""
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        try:
            return os.waitid(os.P_PID, self.popen.pid, flags) is not None
        except ChildProcessError:
            return True

    def stop(self) -> None:
        """TERM to the group, KILL to what is left after GRACE_S (a second caller waits for the first)."""
        with self._lock:
            if self._stopped:
                return
            for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline and not self.exited():
                    time.sleep(0.05)
            self._stopped = True

    def reap(self) -> int:
        return self.popen.wait()


def _watch_stdin(group: Group) -> None:
    try:
        while os.read(0, 65536):
            pass
    except OSError:
        pass
    group.stop()


def _env_from_stdin() -> dict[str, str]:
    """The first line of stdin, a JSON object of names and values (read byte by byte: the rest is the watch's)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            sys.exit("trainer.remote: the environment line never arrived on stdin")
        line += byte
    values = json.loads(line)
    if not (isinstance(values, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())):
        sys.exit("trainer.remote: the environment line is not a JSON object of strings")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.remote")
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--env-from-stdin", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    os.umask(0o077)
    # Slurm's warning ahead of a time limit (--signal=USR1@120) goes to every step; the launcher stops the run
    # for it (sbatch --signal=B:USR1@120). Ignored here and inherited by the command, it kills nothing on its own.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if args.env_from_stdin:
        os.environ.update(_env_from_stdin())
    group = Group(command)
    os.makedirs(os.path.dirname(os.path.abspath(args.pid_file)), exist_ok=True)
    with open(args.pid_file, "w", encoding="ascii") as handle:
        handle.write(f"{group.popen.pid}\n")
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: threading.Thread(target=group.stop, daemon=True).start())
    threading.Thread(target=_watch_stdin, args=(group,), daemon=True).start()
    group.exited(block=True)
    group.stop()  # anything the command left in its group
    code = group.reap()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
