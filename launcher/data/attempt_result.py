"""How one attempt of a run ended, as a value: ``RunResult``. The restart loop makes it, ``attempts.jsonl`` keeps it
(``record``), and ``status``, ``runs`` and the CLI read it back (``from_record``) by its verdict and its failure's
kind, never by a sentence.

>>> exited = Failure.from_record({"kind": "exited", "host": "h2", "process": "worker 1", "exit_code": 1, "time": 5})
>>> ended = RunResult(2, Verdict.FAILED, "worker 1 exited 1", exited, epochs_done=3)
>>> ended.record()
{'attempt': 2, 'outcome': 'failed', 'reason': 'worker 1 exited 1', 'failure': {'kind': 'exited', 'host': 'h2', \
'process': 'worker 1', 'exit_code': 1, 'time': 5.0}, 'epochs_done': 3}
>>> RunResult.from_record(ended.record()) == ended
True
>>> RunResult.from_record({"attempt": 1, "outcome": "started"}) is None
True
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from cluster.failure import Failure


class Verdict(str, enum.Enum):
    """How an attempt ended; its value is what ``attempts.jsonl``, ``result.json``, ``status`` and ``runs`` say."""

    SUCCEEDED = "succeeded"
    MISSED = "missed"            # it went through, but below the job's expect.min_accuracy (exit 1)
    FAILED = "failed"            # a process, a host, staging or the result failed (``failure`` says which)
    INTERRUPTED = "interrupted"  # SIGINT, SIGTERM or SIGUSR1: stopped, resumable


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One attempt's end: its verdict, one line of why, the failure as a value when it failed, the summary of the
    process that failed first, how many epochs its checkpoints hold, where an early stop ended it, and the kind's own
    report (worker 0's checked result for fine-tuning, the processes' outcomes for a command; not in the record)."""

    attempt: int
    verdict: Verdict
    reason: str = ""
    failure: Failure | None = None
    process: Mapping | None = None
    epochs_done: int | None = None
    stopped_early: int | None = None
    report: Mapping = dataclasses.field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the launch exits 0 for it."""
        return self.verdict is Verdict.SUCCEEDED

    def record(self) -> dict:
        """The line ``attempts.jsonl`` gets (JSON-ready; what is unset is left out)."""
        record = {"attempt": self.attempt, "outcome": self.verdict.value, "reason": self.reason or None,
                  "failure": self.failure.to_record() if self.failure else None, "process": self.process,
                  "epochs_done": self.epochs_done, "stopped_early": self.stopped_early}
        return {key: value for key, value in record.items() if value is not None}

    @classmethod
    def from_record(cls, entry: Mapping) -> "RunResult | None":
        """An attempt's merged lines as a value; None while it runs (``started``) or for a line no launcher wrote."""
        try:
            verdict = Verdict(entry.get("outcome"))
        except ValueError:
            return None
        failure = Failure.from_record(entry["failure"]) if isinstance(entry.get("failure"), dict) else None
        return cls(_int(entry.get("attempt")) or 0, verdict, _text(entry.get("reason")), failure,
                   entry["process"] if isinstance(entry.get("process"), dict) else None,
                   _int(entry.get("epochs_done")), _int(entry.get("stopped_early")))


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value) -> str:
    return value if isinstance(value, str) else ""
