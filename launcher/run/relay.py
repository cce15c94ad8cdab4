"""What every host needs, sent once: the launcher feeds the head of each chain of hosts, each host forwards the
stream to the next as it arrives (``launcher.remote.relay_host``), so the launcher's links carry ``RELAY_CHAINS``
copies of the common files whatever the host count (issue 26; a star through the launcher carried one per host).

The hosts' relay programs run over the same SSH (or srun) as staging, and talk to the launcher in frames on stdin
and JSON lines on stdout, each checked here (``relay_line``); host-to-host the stream goes over TCP to the address
the run's processes use, with a secret the launcher gives every relay host on stdin. Every file is checked against
the launcher's sha256 on the host that keeps it. The launcher watches each host's progress and routes around a host
whose program ended (at once) or that stopped forwarding (after ``DEADLINE_S``; ``launcher.run.relay_routes``). A
host the relay did not serve is named in ``RelayOutcome.missed``: staging then sends it its files itself.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import secrets
import selectors
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cluster.backend import RemoteHost
from launcher.data.pieces import frame, send_range
from launcher.plan.model import RELAY_CHAINS
from launcher.remote import relay_host, stage_receiver
from launcher.report.console import printable
from launcher.run.relay_routes import LAUNCHER, HostState, Reroute, chains, next_hosts, reroute, stepped

# The receiver's functions, then the relay's own: one script, run with the host's Python.
RELAY_SOURCE = (inspect.getsource(stage_receiver).split('\nif __name__ == "__main__":')[0] + "\n"
                + inspect.getsource(relay_host))
DEADLINE_S = 5.0      # a host that got nothing this long while its feed had more: its feed stopped forwarding
LINE_MAX = 4096       # a relay program's line is shorter (but for its answer, which names what it has)
FRAME_BYTES = 1 << 20
SEND_WAIT_S = 10.0    # a frame to a host whose input a feed holds that long is not sent (the host is stuck)


@dataclasses.dataclass(frozen=True)
class Common:
    """A file for several hosts at the same path there, sent once through the relay."""

    source: str
    dest: str
    size: int
    sha256: str
    mode: int
    keep: bool            # content-addressed: the host marks it, and later launches find it present


@dataclasses.dataclass(frozen=True)
class RelayOutcome:
    placed: dict[str, int]          # host -> files the relay placed there
    missed: dict[str, str]          # host -> why the relay did not serve it (staging sends it its files itself)
    stream_bytes: int               # the stream: the common files some host lacked
    launcher_bytes: int             # of it, bytes the launcher itself sent (RELAY_CHAINS streams, more after reroutes)
    reroutes: tuple[Reroute, ...]
    reroute_s: tuple[float, ...]    # when each reroute was made, seconds after the relay began
    began: float                    # time.monotonic() when it began
    seconds: float

    def summary(self) -> str:
        hosts = len(self.placed) + len(self.missed)
        moved = "".join(f"; {r.host} dropped ({r.why})" if r.now is None else
                        f"; {r.host} fed by {r.now or 'the launcher'} ({r.why})" for r in self.reroutes)
        return (f"relay: {self.stream_bytes} bytes to {hosts} hosts, {self.launcher_bytes} of them sent from here, "
                f"in {self.seconds:.1f} s{moved}")


def relay_line(text: str, *, total: int | None) -> dict:
    """One line of a relay program, checked: its only shapes (ValueError naming what is wrong).

    >>> relay_line('{"have": 10}', total=100), relay_line('{"present": ["/w/a"], "port": 4000}', total=None)
    ({'have': 10}, {'present': ['/w/a'], 'port': 4000})
    >>> relay_line('{"have": 101}', total=100)
    Traceback (most recent call last):
    ValueError: a line the relay does not write: '{"have": 101}'
    """
    try:
        line = json.loads(text)
    except (ValueError, RecursionError):
        line = None
    if isinstance(line, dict) and _fits(line, total):
        return line
    raise ValueError(f"a line the relay does not write: {text[:200]!r}")


def _fits(line: dict, total: int | None) -> bool:
    def count(value, most=None) -> bool:
        return type(value) is int and 0 <= value and (most is None or value <= most)

    if set(line) == {"present", "port"}:
        return isinstance(line["present"], list) and all(isinstance(d, str) for d in line["present"]) \
            and count(line["port"], 65535) and line["port"] > 0
    if set(line) == {"have"}:
        return total is not None and count(line["have"], total)
    if set(line) == {"placed"}:
        return count(line["placed"])
    return set(line) == {"failed"} and isinstance(line["failed"], str)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Host:
    """The launcher's end of one host's relay program: its pipes, and what it last said."""

    def __init__(self, label: str, remote: RemoteHost, *, root: str, python: str, address: str) -> None:
        self.label, self.address, self.line_max = label, address, LINE_MAX
        self.proc = remote.stream_to(shlex.join([python, "-c", RELAY_SOURCE, root]))
        self.lock = threading.Lock()           # one writer of frames at a time (the loop, or a feed)
        self.pending, self.stderr = bytearray(), bytearray()
        self.have, self.total = 0, None
        self.grew = self.heard = time.monotonic()
        self.grew_from = 0                     # what it had when ``grew`` was last set
        self.moved = False                     # moved once because it got nothing
        self.answer: dict | None = None        # its first line: present and port
        self.outcome: str | int | None = None  # files placed, or why it failed
        self.ended = self.closed = False
        self.token = ""                        # the secret of its current feed (a new one with each feed)

    def send(self, header: dict) -> bool:
        """A frame to its program (False: it ended, or its input took nothing for SEND_WAIT_S, which ends it)."""
        if not self.lock.acquire(timeout=SEND_WAIT_S):
            self.end(f"its input took nothing for {SEND_WAIT_S:.0f} s")  # the feed holding it fails, and lets go
            return False
        stuck = threading.Timer(SEND_WAIT_S, self.proc.terminate)  # a host that reads nothing cannot hold the loop
        stuck.start()
        try:
            if self.closed:
                return False
            _write_all(self.proc.stdin.fileno(), frame(header))
            return True
        except OSError:
            return False
        finally:
            stuck.cancel()
            self.lock.release()

    def feed(self, offset: int, path: str, at: int, length: int, sent: Callable[[int], None]) -> None:
        """The stream's bytes [offset, offset+length), which are ``path``'s from ``at``, into its stdin."""
        with self.lock, open(path, "rb") as source:
            if self.closed:
                raise BrokenPipeError("its input is closed")
            _write_all(self.proc.stdin.fileno(), frame({"data": offset, "size": length}))
            send_range(self.proc.stdin.fileno(), source.fileno(), at, length, sent)

    def close_input(self) -> None:
        """Its stdin closed, never while a frame is being written (a feed writes by fd number: a number closed under
        it could be another file's by its next write)."""
        if not self.lock.acquire(timeout=SEND_WAIT_S):
            self.proc.kill()  # the feed's write fails, and it lets go
            self.lock.acquire()
        try:
            self.closed = True
            self.proc.stdin.close()
        except OSError:
            pass
        finally:
            self.lock.release()

    def take(self, data: bytes) -> None:
        """What its stdout said: every whole line acted on; a line too long or of a shape the relay does not write
        ends its part."""
        self.pending += data
        *lines, rest = self.pending.split(b"\n")
        self.pending = bytearray(rest)
        for raw in lines:
            self._act(relay_line(raw.decode(errors="replace"), total=self.total))
        if len(self.pending) > self.line_max:
            raise ValueError(f"a line of more than {self.line_max} bytes")

    def _act(self, line: dict) -> None:
        self.heard = time.monotonic()
        if "present" in line and self.answer is None:
            self.answer = line
        elif "have" in line and line["have"] > self.have:
            self.have = line["have"]
            if stepped(self.grew_from, self.have, self.total):
                self.grew, self.grew_from = time.monotonic(), self.have
        elif "placed" in line or "failed" in line:
            self.outcome = line["placed"] if "placed" in line else printable(line["failed"][:400])

    def end(self, why: str) -> None:
        if not self.ended:
            self.ended = True
            self.outcome = why if self.outcome is None else self.outcome  # what it placed before stays placed
            self.proc.terminate()  # srun ends its step on SIGTERM (a killed srun cannot); ssh closes either way

    def why_ended(self) -> str:
        tail = " ".join(self.stderr[-400:].decode(errors="replace").split())
        return printable(f"its relay program ended (exit {self.proc.poll()})" + (f": {tail}" if tail else ""))


class _Relay:
    """One relay: the hosts' programs, the stream's files, who feeds whom."""

    def __init__(self, handles: dict[str, _Host], *, deadline_s: float,
                 progress: Callable[[str, int, int], None]) -> None:
        self.handles, self.files, self.total = handles, (), 0
        self.deadline_s, self.progress = deadline_s, progress
        self.selector = selectors.DefaultSelector()
        for handle in handles.values():
            for pipe in (handle.proc.stdout, handle.proc.stderr):
                os.set_blocking(pipe.fileno(), False)
                self.selector.register(pipe, selectors.EVENT_READ, handle)
        self.launcher_bytes, self.count_lock = 0, threading.Lock()
        self.feeds: dict[str, str] = {}
        self.bad: frozenset[str] = frozenset()
        self.reroutes: list[Reroute] = []
        self.reroute_s: list[float] = []
        self.began = time.monotonic()

    def listen(self, until: Callable[[], bool], *, within_s: float) -> None:
        """Read every host's lines until ``until()`` or ``within_s`` without any host's progress."""
        quiet_since = time.monotonic()
        while not until() and time.monotonic() - quiet_since < within_s:
            before = self._progress_mark()
            for key, _ in self.selector.select(0.2):
                self._read(key.fileobj, key.data)
            self.tick()
            if self._progress_mark() != before:
                quiet_since = time.monotonic()

    def _progress_mark(self) -> tuple[int, int]:
        """What the hosts have and how many answered: it changes only when some host moved on."""
        return (sum(h.have for h in self.handles.values()),
                sum(h.answer is not None for h in self.handles.values()))

    def _read(self, pipe, handle: _Host) -> None:
        try:
            data = os.read(pipe.fileno(), 65536)
        except BlockingIOError:
            return
        if pipe is handle.proc.stderr:
            handle.stderr = (handle.stderr + data)[-4096:]
            if not data:
                self.selector.unregister(pipe)
            return
        if not data:
            self.selector.unregister(pipe)
            handle.end(handle.why_ended())
            return
        try:
            handle.take(data)
        except ValueError as err:
            handle.end(f"answered the relay wrongly ({err})")

    def tick(self) -> None:
        """Route around what ended or stopped forwarding (nothing before the stream started)."""
        if not self.feeds:
            return
        now = time.monotonic()
        states = {label: HostState(h.have, now - h.grew, now - h.heard, h.ended or isinstance(h.outcome, str),
                                   h.moved) for label, h in self.handles.items() if label in self.feeds}
        routes = reroute(self.feeds, states, self.bad, total=self.total, deadline_s=self.deadline_s)
        for change in routes.changes:
            if change.now is None:
                self.handles[change.host].end(f"dropped from the relay: it {change.why}")
        if routes.changes:
            self.feeds, self.bad = routes.feeds, routes.bad
            self.reroutes += routes.changes
            self.reroute_s += [now - self.began] * len(routes.changes)
            moved = {c.host for c in routes.changes if c.now is not None}
            for change in routes.changes:
                self.handles[change.host].moved |= change.stalled
            self.route({c.now for c in routes.changes if c.now is not None} | {c.was for c in routes.changes},
                       moved=moved)
        self.progress("relay", min((s.have for s in states.values() if not s.ended), default=self.total),
                      self.total)

    def start(self, chain: Sequence[str], files: Sequence[Common], chain_count: int) -> None:
        self.files, self.total = files, sum(f.size for f in files)
        for label in chain:
            self.handles[label].total = self.total
        self.feeds = chains(list(chain), chain_count)
        self.progress("relay", 0, self.total)
        self.route(set(self.feeds.values()), moved=set(chain))

    def route(self, feeders: set[str], *, moved: set[str]) -> None:
        """Tell each of ``feeders`` whom it feeds now; the launcher starts feeding the hosts it took over."""
        fed = next_hosts({h: f for h, f in self.feeds.items() if not self.handles[h].ended})
        for label in moved:  # a new secret for its new feed (the old feed's is refused), and its deadlines anew
            handle = self.handles[label]
            handle.grew, handle.heard, handle.grew_from = time.monotonic(), time.monotonic(), handle.have
            handle.token = secrets.token_hex(16)
            handle.send({"accept": handle.token})
        for feeder in feeders - {LAUNCHER}:
            self.handles[feeder].send({"next": [[self.handles[h].address, self.handles[h].answer["port"],
                                                 self.handles[h].token] for h in fed.get(feeder, [])]})
        for label in fed.get(LAUNCHER, []):
            if label in moved:
                threading.Thread(target=self._feed_from_here, args=(self.handles[label],), daemon=True,
                                 name=f"relay-feed-{label}").start()

    def _feed_from_here(self, handle: _Host) -> None:
        def sent(count: int) -> None:
            with self.count_lock:
                self.launcher_bytes += count
        offset, start = handle.have, 0
        try:
            for common in self.files:
                end = start + common.size
                while offset < end:
                    length = min(FRAME_BYTES, end - offset)
                    handle.feed(offset, common.source, offset - start, length, sent)
                    offset += length
                start = end
        except OSError:
            pass  # its program ended: the loop sees its pipe close
        except Exception as err:  # noqa: BLE001 - a frame cut short: the host's stream is no longer framed
            handle.end(f"the launcher's feed failed ({type(err).__name__}: {err})")


def relay(hosts: Mapping[str, RemoteHost], files: Sequence[Common], wants: Mapping[str, Sequence[int]], *,
          root_of: Callable[[str], str], python_of: Callable[[str], str], address_of: Callable[[str], str],
          progress: Callable[[str, int, int], None], silence_s: float = 60.0,
          deadline_s: float = DEADLINE_S, chain_count: int = RELAY_CHAINS) -> RelayOutcome:
    """Bring each host of ``wants`` the files it lists (indices into ``files``) that it does not hold yet, through
    ``chain_count`` chains."""
    started = time.monotonic()
    manifest = [{"dest": f.dest, "size": f.size, "sha256": f.sha256, "keep": f.keep, "mode": f.mode} for f in files]
    handles: dict[str, _Host] = {}
    run = None
    try:
        for label in wants:
            handles[label] = _Host(label, hosts[label], root=root_of(label), python=python_of(label),
                                   address=address_of(label))
            handles[label].line_max += len(json.dumps([f.dest for f in files]))  # its answer may name every file
            handles[label].send({"manifest": manifest, "bind": handles[label].address})
        run = _Relay(handles, deadline_s=deadline_s, progress=progress)
        run.listen(lambda: all(h.answer is not None or h.ended for h in handles.values()), within_s=silence_s)
        stream, want = _what_each_lacks(handles, files, wants)
        for label, handle in handles.items():
            handle.send({"stream": stream if want.get(label) else [],
                         "want": want.get(label, [])})
        chain = [label for label in handles if want.get(label)]
        complete = {label for label, h in handles.items()  # it lacked nothing
                    if h.answer is not None and not h.ended and label not in want}
        if chain:
            run.start(chain, [files[index] for index in stream], chain_count)
            run.listen(lambda: all(handles[h].outcome is not None or handles[h].ended for h in chain),
                       within_s=silence_s)
        placed = {label for label in chain if handles[label].outcome == len(want[label])}
        missed = {label: _why_missed(h, silence_s) for label, h in handles.items()
                  if label not in complete | placed}  # ended early, failed, dropped or too slow: staged from here
        return RelayOutcome({label: len(want[label]) for label in placed}, missed, run.total,
                            run.launcher_bytes, tuple(run.reroutes), tuple(run.reroute_s), run.began,
                            time.monotonic() - started)
    finally:
        if run is not None:
            run.selector.close()
        _close(handles)


def _what_each_lacks(handles: Mapping[str, _Host], files: Sequence[Common],
                     wants: Mapping[str, Sequence[int]]) -> tuple[list[int], dict[str, list[int]]]:
    """The stream (indices of the files some host lacks, in order) and each host's indices into it."""
    lacks = {label: [i for i in wants[label] if not files[i].keep or files[i].dest not in h.answer["present"]]
             for label, h in handles.items() if h.answer is not None and not h.ended}
    stream = sorted({i for indices in lacks.values() for i in indices})
    return stream, {label: [stream.index(i) for i in indices] for label, indices in lacks.items() if indices}


def _why_missed(handle: _Host, silence_s: float) -> str:
    if isinstance(handle.outcome, str):
        return handle.outcome
    return handle.why_ended() if handle.ended else f"the relay stopped (nothing for {silence_s:.0f} s)"


def _close(handles: Mapping[str, _Host]) -> None:
    """The end frame to every program still running, then each waited for (ended past a few seconds) and its
    pipes closed."""
    for handle in handles.values():
        if not handle.ended:
            handle.send({"end": True})
        handle.close_input()
    deadline = time.monotonic() + 10
    for handle in handles.values():  # one told to end has 10 s; one ended already (terminated) 2 s
        try:
            handle.proc.wait(timeout=2 if handle.ended else max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - a host that does not end is killed, whatever held it
            handle.proc.kill()
            handle.proc.wait()
        for pipe in (handle.proc.stdout, handle.proc.stderr):
            pipe.close()
