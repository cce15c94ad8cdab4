"""Run a group of processes as one job: live prefixed logs, first failure wins, full teardown.

Processes are *primary* (the job is done when all of them exit 0: the workers) or
*support* (they serve the primaries and must not stop before them: scheduler and
servers). Any non-zero exit, or a support process leaving early, fails the whole
group: every other process is stopped and the failure that came first is reported
with the last lines of its log.
"""
from __future__ import annotations

import collections
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from cluster.errors import JobFailed
from cluster.failure import FailureKind, of_exit
from cluster.lines import HEAD_BYTES, TAIL_BYTES, CappedLog


class Process(Protocol):
    pid: int
    stdout: object  # iterable of text lines

    def poll(self) -> int | None: ...
    def stop(self, *, grace_s: float) -> None: ...


class Transport(Protocol):
    """Where processes start: this machine, an SSH host, a node of a Slurm allocation."""

    label: str
    # A launcher thread of a pool may start its processes (an SSH session outlives its thread); a local child
    # (a process, or srun's step) must start in the thread that stays (PR_SET_PDEATHSIG fires when its thread ends).
    starts_in_pool: bool
    # A keepalive watch tells when the host stops answering (SSH); Slurm ends a job whose node does, itself.
    watched_by_keepalive: bool

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> Process: ...


def describe_exit(returncode: int) -> str:
    """-9 -> 'was killed by SIGKILL'; 3 -> 'exited with code 3'.

    Shells and ssh report a signal death as 128 + signal number; those are named too.
    """
    failure = of_exit(returncode)  # one reading of a return code: cluster.failure
    if failure.kind is FailureKind.SIGNALLED:
        return f"was killed by {signal.Signals(failure.signal).name}"
    if returncode == 255:
        return "exited with code 255 (what ssh reports when the connection is lost)"
    return f"exited with code {returncode}"


@dataclasses.dataclass(frozen=True)
class ProcessOutcome:
    """How one supervised process ended, as a value everything downstream reads.

    ``returncode`` is None for a process still running when the group was stopped.
    """

    name: str
    role: str
    index: int
    host: str
    returncode: int | None
    seconds: float
    tail: tuple[str, ...]
    log_path: str

    def summary(self) -> dict:
        """JSON-ready, without the output lines (attempts.jsonl, result.json)."""
        return {"name": self.name, "role": self.role, "index": self.index, "host": self.host,
                "returncode": self.returncode, "seconds": round(self.seconds, 3), "log": self.log_path}


@dataclasses.dataclass
class Member:
    """One supervised process and what we know of it."""

    name: str
    host: str
    process: Process
    primary: bool
    log_path: str
    role: str = ""
    index: int = 0
    tail: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=12))
    returncode: int | None = None
    pump: threading.Thread | None = None
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    ended_at: float | None = None

    def outcome(self) -> ProcessOutcome:
        ended = self.ended_at if self.ended_at is not None else time.monotonic()
        return ProcessOutcome(self.name, self.role, self.index, self.host, self.returncode,
                              ended - self.started_at, tuple(self.tail), self.log_path)

    def failure(self, reason: str) -> JobFailed:
        """The JobFailed that names this process as the root cause, with the last lines of its log; its kind
        from how the process ended (its connection lost is the transport's word, not an exit code's)."""
        lines = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        pid = f" (pid {self.process.pid})" if self.process.pid is not None else ""  # remote: in its pid file
        failure = of_exit(self.returncode if self.returncode is not None else 0,
                          connection_lost=getattr(self.process, "connection_lost", False), host=self.host,
                          process=self.name, tail=tuple(self.tail), log_path=self.log_path)
        return JobFailed(f"{self.name} on {self.host}{pid} {reason}\n  last lines of {self.log_path}:\n{lines}",
                         failure=failure, reason=f"{self.name} on {self.host} {reason}", process=self.outcome())


class Supervisor:
    """Starts processes, pumps their output, waits for the job, and always tears down.

    Use as a context manager so that ``close`` runs whatever happens::

        with Supervisor(echo=print) as group:
            group.start("worker 0", LocalTransport(), argv, env={}, log_path="w0.log", primary=True)
            group.wait()
    """

    def __init__(self, *, echo: Callable[[str], None], on_line: Callable[[Member, str], bool] | None = None,
                 relay: Callable[[str, str], None] | None = None, stop_grace_s: float = 5.0,
                 log_caps: tuple[int, int] = (HEAD_BYTES, TAIL_BYTES)) -> None:
        self._echo = echo
        self._log_caps = log_caps  # bytes of each log kept from its start and from its end (cluster.lines)
        self._on_line = on_line
        self._relay = relay  # (name, line) -> shows it or not; default: every line, prefixed with the name
        self._stop_grace_s = stop_grace_s
        self._echo_lock = threading.Lock()
        self.members: list[Member] = []

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, name: str, transport: Transport, argv: Sequence[str], *, env: Mapping[str, str],
              log_path: str, primary: bool, cwd: str | None = None, role: str = "", index: int = 0) -> Member:
        """Start one process and its log pump (callable from several threads at once).

        ``role`` and ``index`` are the caller's names for it (``worker``, 3), kept in its outcome.
        """
        process = transport.start(argv, env=env, cwd=cwd)
        member = Member(name, transport.label, process, primary, log_path, role, index)
        member.pump = threading.Thread(target=self._pump, args=(member,), name=f"log {name}", daemon=True)
        self.members.append(member)
        member.pump.start()
        return member

    def _pump(self, member: Member) -> None:
        """The process's lines (each of bounded length) into its log (of bounded size), its events to
        ``on_line``, the rest to the console."""
        prefix = f"[{member.name}] "
        log = CappedLog(member.log_path, head=self._log_caps[0], tail=self._log_caps[1])
        try:
            for line in member.process.stdout:
                log.write(line)
                if self._on_line is not None and self._consumed(member, line):
                    continue  # consumed (a structured event): kept in the log, off the console
                member.tail.append(line)
                if self._relay is not None:
                    self._relay(member.name, line)
                    continue
                with self._echo_lock:
                    self._echo(prefix + line)
        finally:
            log.close()

    def wait(self, *, support_grace_s: float = 15.0, poll_s: float = 0.1,
             check: Callable[[], None] | None = None) -> None:
        """Return when every primary exited 0; raise JobFailed at the first failure.

        A support process may exit 0 a little before the primaries (ps-lite's scheduler
        leaves as soon as every node has said goodbye), so its clean exit only fails
        the group if some primary is still running ``support_grace_s`` later. Support
        processes still running that long after the primaries finished are stopped.
        ``check`` is called each poll and may raise (a deadline, a watchdog).
        """
        primaries_done_at = None
        first_support_exit: tuple[Member, float] | None = None
        while True:
            for member in self.members:
                if member.returncode is None:
                    member.returncode = member.process.poll()
                    if member.returncode is not None:
                        self._on_exit(member)
                        if not member.primary and first_support_exit is None:
                            first_support_exit = (member, time.monotonic())
            now = time.monotonic()
            if primaries_done_at is None and all(m.returncode == 0 for m in self.members if m.primary):
                primaries_done_at = now
            if primaries_done_at is not None:
                running = [m for m in self.members if m.returncode is None]
                if not running:
                    return
                if now - primaries_done_at > support_grace_s:
                    self._say(f"stopping {', '.join(m.name for m in running)}: still running "
                              f"{support_grace_s:.0f} s after the workers finished")
                    return
            elif first_support_exit is not None and now - first_support_exit[1] > support_grace_s:
                left = ", ".join(m.name for m in self.members if m.primary and m.returncode is None)
                raise first_support_exit[0].failure(
                    f"exited before the workers finished ({left} still running {support_grace_s:.0f} s later)")
            if check is not None:
                check()
            time.sleep(poll_s)

    def _consumed(self, member: Member, line: str) -> bool:
        """``on_line``, but a failure in it is said and survived: a dead pump would stall the process."""
        try:
            return bool(self._on_line(member, line))
        except Exception as err:  # noqa: BLE001 - any bug in a handler must not stop the log stream
            self._say(f"could not handle a line of {member.name} ({type(err).__name__}: {err}); continuing")
            return False

    def _on_exit(self, member: Member) -> None:
        member.ended_at = time.monotonic()
        if member.pump is not None:
            member.pump.join(timeout=2.0)  # the rest of its output, for the report
        if member.returncode != 0:
            raise member.failure(describe_exit(member.returncode))

    def outcomes(self) -> list[ProcessOutcome]:
        """How every process of the group ended (or stood, if still running), in start order."""
        return [member.outcome() for member in self.members]

    def _say(self, text: str) -> None:
        with self._echo_lock:
            self._echo(f"[mxft] {text}")

    def close(self) -> None:
        """Stop every process still running (TERM, grace, KILL) and join the log pumps."""
        running = [m for m in self.members if m.returncode is None and m.process.poll() is None]
        threads = [threading.Thread(target=m.process.stop, kwargs={"grace_s": self._stop_grace_s})
                   for m in running]
        for thread in threads:  # stop first: saying so must not wait on a console that blocks
            thread.start()
        if running:
            self._say(f"stopping {', '.join(m.name for m in running)}")
        for thread in threads:
            thread.join()
        unconfirmed = [m for m in running if not getattr(m.process, "confirmed_stopped", True)]
        if unconfirmed:  # a host that does not answer: its session is closed, trainer.remote ends them on return
            self._say("no answer from " + ", ".join(f"{m.name} on {m.host}" for m in unconfirmed)
                      + " while stopping; their sessions are closed, so they end when the host is reachable again")
        for member in self.members:
            if member.returncode is None:
                member.returncode = member.process.poll()
            if member.pump is not None:
                member.pump.join(timeout=5.0)
