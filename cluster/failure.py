"""Why a run failed, as a value: what restarts, ``attempts.jsonl``, ``status`` and ``runs`` read.

A failure has a kind, and what the kind needs: the host, the process, its exit code or
signal, the last lines of its log and where that log is. Code that decides something (leave
a host out of a restart, say the run's state) reads the kind, never a sentence, and never
guesses from an exit code: a program may exit 255 on its own, which is not a lost host.
"""
from __future__ import annotations

import dataclasses
import enum
import signal
import time


class FailureKind(str, enum.Enum):
    EXITED = "exited"                    # a process exited non-zero (its own code)
    SIGNALLED = "signalled"              # a process was killed by a signal
    CONNECTION_LOST = "connection lost"  # the SSH connection of a process died: its host is lost
    HOST_SILENT = "host silent"          # a host stopped answering (keepalives, a copy, a fetch)
    STARTUP_TIMEOUT = "start-up timeout"  # workers did not join ps-lite in time
    STALLED = "stalled"                  # workers reported no progress in time
    STAGING = "staging"                  # copying files to hosts failed
    BAD_RESULT = "bad result"            # worker 0's result or files could not be taken
    INPUT_CHANGED = "input changed"      # an input changed between the checks and its use
    HOST_REFUSED = "host refused"        # a host did not do its part of a check or a clean (its Python failing)
    UNREACHABLE = "unreachable"          # a check could not connect to a host at all
    HOST_KEY = "host key"                # a host's key is unknown, changed or revoked: not connected to

    @property
    def loses_the_host(self) -> bool:
        """Whether the host as a whole failed (a restart with ``cluster.min_hosts`` leaves it out)."""
        return self in (FailureKind.CONNECTION_LOST, FailureKind.HOST_SILENT)


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: FailureKind
    host: str | None = None
    process: str | None = None           # "worker 1", "server 0", "scheduler"
    exit_code: int | None = None
    signal: int | None = None
    tail: tuple[str, ...] = ()
    log_path: str | None = None
    time: float = dataclasses.field(default_factory=time.time)

    @property
    def lost_host(self) -> str | None:
        return self.host if self.kind.loses_the_host else None

    def to_record(self) -> dict:
        """JSON-ready, without the log lines (they are in the log)."""
        record = {"kind": self.kind.value, "host": self.host, "process": self.process, "exit_code": self.exit_code,
                  "signal": self.signal, "log": self.log_path, "time": round(self.time, 3)}
        return {key: value for key, value in record.items() if value is not None}

    @classmethod
    def from_record(cls, record: dict) -> "Failure | None":
        """A failure as ``to_record`` wrote it, or None for a record that is not one (an older run's)."""
        try:
            kind = FailureKind(record["kind"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(kind, record.get("host"), record.get("process"), record.get("exit_code"), record.get("signal"),
                   (), record.get("log"), float(record.get("time", 0.0)))


def of_exit(returncode: int, *, connection_lost: bool = False, **where) -> Failure:
    """The failure of a process that ended with ``returncode`` (negative, or 129-159 from a shell: a signal).

    >>> of_exit(-9, process="worker 1").kind, of_exit(137).signal, of_exit(255).kind
    (<FailureKind.SIGNALLED: 'signalled'>, 9, <FailureKind.EXITED: 'exited'>)
    >>> of_exit(255, connection_lost=True, host="h3").lost_host
    'h3'
    """
    if connection_lost:
        return Failure(FailureKind.CONNECTION_LOST, **where)
    signum = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if signum is not None and signum in {s.value for s in signal.Signals}:
        return Failure(FailureKind.SIGNALLED, signal=signum, **where)
    return Failure(FailureKind.EXITED, exit_code=returncode, **where)
