"""One operation on many hosts at once, and what came of it on each: ``HostResults`` (what worked, by host, and what
did not, each failure a value with its kind), the one shape every fan-out of the launcher returns.

>>> def square(label: str) -> int:
...     if label == "h2":
...         raise OSError("no route to host")
...     return int(label[1:]) ** 2
>>> done = on_each_host(square, ["h1", "h2", "h3"], name="square", kind=FailureKind.STAGING)
>>> done.ok, [(f.host, f.reason, f.failure.kind.value) for f in done.failed.values()]
({'h1': 1, 'h3': 9}, [('h2', 'no route to host', 'staging')])
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.ssh import on_hosts

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class HostFailed:
    """One host's part that did not work: the host, one line of why, the failure as a value, and what to do."""

    host: str
    reason: str
    failure: Failure
    hint: str = ""


class HostProblem(Exception):
    """What a host's part raises when it knows why it cannot go on: one line, the failure's kind, what to do."""

    def __init__(self, reason: str, *, kind: FailureKind, hint: str = "") -> None:
        super().__init__(reason)
        self.kind, self.hint = kind, hint


@dataclasses.dataclass(frozen=True)
class HostResults(Generic[T]):
    """Every host's outcome of one fan-out, in the order the hosts were given: results and failures by host."""

    hosts: tuple[str, ...]          # every host asked, in order
    ok: Mapping[str, T]
    failed: Mapping[str, HostFailed]

    def raise_failed(self, what: str, *, kind: FailureKind) -> None:
        """Nothing if every host did its part; else one JobFailed naming each host that did not (a line each). Its
        failure is that host's when one failed (a silent host is lost), else one of ``kind`` for ``what`` as a whole."""
        if not self.failed:
            return
        failures = list(self.failed.values())
        lines = "\n".join(f"  {f.host}: {f.reason}" for f in failures)
        failure = failures[0].failure if len(failures) == 1 else Failure(kind)
        raise JobFailed(f"{what} failed:\n{lines}", failure=failure)


def on_each_host(work: Callable[[str], T], labels: Sequence[str], *, name: str, kind: FailureKind,
                 reason: Callable[[BaseException], str] = str) -> HostResults[T]:
    """``work(label)`` on every host, ``HOSTS_AT_ONCE`` at a time (``cluster.ssh.on_hosts``). Whatever a host's work
    raises is that host's failure: a JobFailed keeps its own failure, a HostProblem gives its kind and hint, anything
    else becomes one of ``kind``; a line of ``reason(error)`` says why (one line: ssh's stderr may span several)."""
    def one(label: str) -> T | HostFailed:
        try:
            return work(label)
        except JobFailed as err:
            return HostFailed(label, _one_line(str(err)), err.failure)
        except HostProblem as err:
            return HostFailed(label, _one_line(str(err)), Failure(err.kind, host=label), err.hint)
        except Exception as err:  # noqa: BLE001 - whatever stopped this host's part is its failure
            return HostFailed(label, _one_line(reason(err)), Failure(kind, host=label))

    outcomes = dict(zip(labels, on_hosts(one, list(labels), name=name)))
    failed = {label: out for label, out in outcomes.items() if isinstance(out, HostFailed)}
    return HostResults(tuple(labels), {label: out for label, out in outcomes.items() if label not in failed}, failed)


def _one_line(text: str) -> str:
    """The error on one line (the report puts the host's name in front)."""
    return " ".join(text.split())
