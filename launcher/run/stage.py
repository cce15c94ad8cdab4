"""Put a plan's files on its hosts (``launcher.run.fetch`` brings worker 0's results back).

Per host, one ``ssh HOST python -c RECEIVER`` first answers which of the offered
content-addressed files it already holds, then reads a stream of framed files: for each
file a length-prefixed JSON header (destination, size, sha256) and then its bytes, and
an end frame with the count. The sender hashes each file from the page cache and hands
its bytes to the ssh pipe with ``sendfile``; the receiver moves them into a private
incoming folder with ``splice``, so no file byte is copied through Python on either end
(Python's tarfile did, and halved throughput), and both ends widen their pipe to 1 MiB.
Only when every file's sha256 matches and the end frame arrived does the receiver
rename the files into place, so a copy that dies halfway leaves nothing a later launch
would trust. A receiver removes the ``.incoming.*`` folders of earlier copies that were
killed (nothing in them changed for an hour: another launch may be staging right now), and
holds a shared lock on the work folder while it runs, so ``mxft-launch clean``
(``launcher.remote.cleanup``) never removes data or code a stage is answering for.

Code and data land at content-addressed paths (their key is in the path), so a file
that is present is identical, and an unchanged relaunch sends no data at all. Present
means the receiver itself put the file there after checking its sha256: it then writes
``.NAME.verified`` beside it (the sha256 and the file's inode, size and mtime), and
answers an offer only with files whose mark matches them. A file copied there any other
way, cut short or changed since is sent again; nothing is hashed again to decide.
"""
from __future__ import annotations

import dataclasses
import fcntl
import inspect
import json
import os
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cluster.backend import RemoteHost
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.fanout import on_each_host
from cluster.lines import SilenceWatch, ended_tail
from launcher.data.pieces import CHUNK, ShardIndex, ShardRecords, SourceShrank, file_sha256, frame, send_range
from launcher.plan import Relayed, Transfer
from launcher.plan.model import RELAY_CHAINS, RELAY_FROM_BYTES
from launcher.remote import stage_receiver
from launcher.run.relay import Common, RelayOutcome, relay

# Runs on the host with its own Python: launcher/remote/stage_receiver.py, sent as source.
_RECEIVER = inspect.getsource(stage_receiver)
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Python 3.10+ names it; Linux only)


@dataclasses.dataclass(frozen=True)
class HostStaging:
    host: str
    files_sent: int
    bytes_sent: int                       # the whole stream: files and their headers
    data_bytes_sent: int                  # content of "data" files (shards, validation set, checkpoint)
    code_bytes_sent: int
    files_present: int
    bytes_present: int
    seconds: float


_DIGESTS: dict[tuple, str] = {}
_DIGEST_LOCKS: dict[tuple, threading.Lock] = {}
_DIGESTS_LOCK = threading.Lock()


def sha256_of(path: str) -> str:
    """The file's sha256 (``file_sha256``: one block of memory, whatever the file's size).

    Remembered per (path, size, mtime) for the life of the process: a launch sends the
    validation set and the checkpoint to every host, and hashing each once instead of
    once per host is what kept 3-host staging under OpenSSH's speed on 2 cores.
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    with _DIGESTS_LOCK:
        lock = _DIGEST_LOCKS.setdefault(key, threading.Lock())
    with lock:  # a second host's thread waits for the first one's hash instead of repeating it
        if key not in _DIGESTS:
            _DIGESTS[key] = file_sha256(path)
        return _DIGESTS[key]


def forget_digests() -> None:
    """Drop remembered hashes (benchmarks time each copy as a fresh launch would)."""
    with _DIGESTS_LOCK:
        _DIGESTS.clear()
        _DIGEST_LOCKS.clear()


class FilePiece:
    """A file on this machine, sent as it is (its mode kept: 0600 stays 0600)."""

    def __init__(self, path: str) -> None:
        info = os.stat(path)
        self.path, self.size, self.mode = path, info.st_size, stat.S_IMODE(info.st_mode)

    def sha256(self) -> str:
        return sha256_of(self.path)

    def write_to(self, pipe: int, on_bytes: Callable[[int], None]) -> None:
        with open(self.path, "rb") as handle:
            send_range(pipe, handle.fileno(), 0, self.size, on_bytes)


Piece = FilePiece | ShardRecords | ShardIndex


def _piece(transfer: Transfer, pieces: Mapping[str, Piece]) -> Piece:
    """What is sent for ``transfer``: a piece the job kind made for its source (a shard cut as it is sent), else the
    file there."""
    return pieces.get(transfer.source) or FilePiece(transfer.source)


HASH_RATE = 100 << 20  # bytes a host checks per second, at the least: its silence while it hashes is allowed


def stage_host(host: RemoteHost, transfers: Sequence[Transfer], *, root: str, python: str,
               progress: Callable[[str, int, int], None], progress_every_s: float = 0.5,
               silence_s: float = 60.0, pieces: Mapping[str, Piece] | None = None) -> HostStaging:
    """Send the host what it lacks: content-addressed files once, run files always.

    One SSH connection does both: the receiver first answers which of the offered
    content-addressed files it has, then reads the missing ones. A host that sends or takes
    nothing for ``silence_s`` (plus the time to hash its largest file) fails the copy, named.
    ``pieces``: what to send for a source that is not a file here (``launcher.data.pieces``), by source.
    """
    started = time.monotonic()
    missing: list[Transfer] = []
    sent = [0]
    last_report = [started]
    sent_as = {t.source: _piece(t, pieces or {}) for t in transfers}
    size = {source: piece.size for source, piece in sent_as.items()}
    largest = max(size.values(), default=0)
    proc = host.stream_to(shlex.join([python, "-c", _RECEIVER, root]))
    watch = SilenceWatch(proc, silence_s=silence_s + largest / HASH_RATE)

    def on_bytes(count: int) -> None:
        watch.progress()
        sent[0] += count
        now = time.monotonic()
        if now - last_report[0] >= progress_every_s and total:
            last_report[0] = now
            progress(host.label, sent[0], total)

    total = 0
    try:
        present = _ask_present(proc, [t.dest for t in transfers if t.kind != "run"])
        if present is not None:  # else the receiver died: its exit code and stderr say why, below
            missing = [t for t in transfers if t.kind == "run" or t.dest not in present]
            total = sum(size[t.source] for t in missing)
            _send(proc, [(t, sent_as[t.source]) for t in missing], on_bytes=on_bytes)
            if total:
                progress(host.label, total, total)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        watch.stop()
    code = _receiver_exit(proc, after_s=silence_s + total / HASH_RATE)
    if watch.expired or code is None:
        raise JobFailed(f"the host stopped answering while its files were copied (nothing for "
                        f"{silence_s:.0f} s; cluster.host_silence_s)",
                        failure=Failure(FailureKind.HOST_SILENT, host=host.label))
    if present is None or code != 0:
        raise JobFailed(f"copying {len(missing) or len(transfers)} files failed "
                        f"(exit {code}): {ended_tail(proc.stderr)[-400:]}",
                        failure=Failure(FailureKind.STAGING, host=host.label))
    kept = [t for t in transfers if t not in missing]
    return HostStaging(host.label, len(missing), sent[0], sum(size[t.source] for t in missing if t.kind == "data"),
                       sum(size[t.source] for t in missing if t.kind == "code"),
                       len(kept), sum(size[t.source] for t in kept), time.monotonic() - started)


def _receiver_exit(proc, *, after_s: float) -> int | None:
    """The receiver's exit code once it has checked and placed every file, or None (it was killed) if it takes
    longer than ``after_s``. Its stdin is closed first: the end of the stream."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        return proc.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def _ask_present(proc, dests: Sequence[str]) -> set[str] | None:
    """Offer the receiver ``dests``; it answers with those it already holds (None: it died first, or answered
    with more than an offer's worth of bytes, or nothing parseable)."""
    offer = frame({"offer": list(dests)})
    try:
        proc.stdin.write(offer)
    except BrokenPipeError:
        return None
    answer = _line_of_at_most(proc.stdout.fileno(), len(offer) + 1024)
    try:
        present = json.loads(answer)["present"] if answer else None
    except (ValueError, RecursionError, TypeError, KeyError):
        return None
    return set(present) & set(dests) if isinstance(present, list) and all(isinstance(d, str) for d in present) \
        else None


def _line_of_at_most(fd: int, limit: int) -> bytes:
    """One line from ``fd`` (without reading past it), or b"" at its end or past ``limit`` bytes."""
    line = bytearray()
    while len(line) <= limit:
        byte = os.read(fd, 1)
        if not byte:
            return b""
        if byte == b"\n":
            return bytes(line)
        line += byte
    return b""


def _send(proc, pieces: Sequence[tuple[Transfer, Piece]], *, on_bytes: Callable[[int], None]) -> None:
    """Write each piece's frame and bytes, then the end frame, into the receiver's stdin."""
    pipe = proc.stdin.fileno()
    try:
        fcntl.fcntl(pipe, _F_SETPIPE_SZ, CHUNK // 4)  # fewer, larger hand-offs to ssh: +20% here
    except OSError:
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default still works
    try:
        for transfer, piece in pieces:
            header = frame({"dest": transfer.dest, "size": piece.size, "sha256": piece.sha256(),
                             "keep": transfer.kind != "run", "mode": piece.mode})
            proc.stdin.write(header)
            on_bytes(len(header))
            piece.write_to(pipe, on_bytes)
        end = frame({"end": len(pieces)})
        proc.stdin.write(end)
        on_bytes(len(end))
    except SourceShrank as err:
        raise shrank(transfer.source, err) from None
    except BrokenPipeError:
        pass  # the receiver failed; its exit code and stderr say why


def shrank(source: str, err: SourceShrank) -> JobFailed:
    """The failure of a staging whose source file ended early: it changed after the inputs were checked."""
    return JobFailed(f"{source} shrank while it was being sent ({err})", failure=Failure(FailureKind.INPUT_CHANGED))


@dataclasses.dataclass(frozen=True)
class Staged:
    hosts: list[HostStaging]              # what each host's own copy sent, in the order of the transfers
    relay: RelayOutcome | None            # what the relay sent every host (None: not used)


def stage_all(hosts: Mapping[str, RemoteHost], transfers: Sequence[Transfer], *, root_of: Callable[[str], str],
              python_of: Callable[[str], str], progress: Callable[[str, int, int], None],
              silence_s: float = 60.0, pieces: Mapping[str, Piece] | None = None, relayed: Sequence[Relayed] = (),
              address_of: Callable[[str], str] | None = None, relay_from: int = RELAY_FROM_BYTES) -> Staged:
    """Stage every host: the plan's ``relayed`` files through the relay (``launcher.run.relay``), hosts reaching each
    other at ``address_of``, when that keeps ``relay_from`` bytes off the launcher's links; then each host's own files,
    and the relayed ones the relay did not bring it, in parallel, ``HOSTS_AT_ONCE`` at a time. Raises JobFailed naming
    each host that failed (every host is tried)."""
    outcome = None
    relayed = [file for file in relayed if file.source not in (pieces or {}) and os.path.isfile(file.source)]
    if relayed and address_of is not None and relay_saves(relayed) >= relay_from:
        outcome = _relay_shared(hosts, relayed, root_of=root_of, python_of=python_of, address_of=address_of,
                                progress=progress, silence_s=silence_s)
        served = {label for file in relayed for label in file.hosts} - set(outcome.missed)
        through = {(file.source, file.dest, file.kind) for file in relayed}
        transfers = [t for t in transfers if t.host not in served or (t.source, t.dest, t.kind) not in through]
    labels = list(dict.fromkeys(t.host for t in transfers))
    done = on_each_host(lambda label: stage_host(hosts[label], [t for t in transfers if t.host == label],
                                                 root=root_of(label), python=python_of(label), progress=progress,
                                                 silence_s=silence_s, pieces=pieces),
                        labels, name="stage", kind=FailureKind.STAGING)
    done.raise_failed("staging", kind=FailureKind.STAGING)  # every host was tried; each that failed is named
    return Staged([done.ok[label] for label in labels], outcome)


def relay_saves(relayed: Sequence[Relayed], size_of: Callable[[str], int] = os.path.getsize) -> int:
    """Bytes the relay keeps off the launcher's links: each file's size for each of its hosts beyond the chains.

    >>> relay_saves([Relayed("/c/a", "/w/a", "code", ("h1", "h2", "h3")),
    ...              Relayed("/s/b", "/w/b", "run", ("h1", "h2", "h3", "h4"))], {"/c/a": 10, "/s/b": 100}.get)
    210
    """
    return sum(size_of(file.source) * (len(file.hosts) - RELAY_CHAINS) for file in relayed)


def _relay_shared(hosts: Mapping[str, RemoteHost], relayed: Sequence[Relayed], **options) -> RelayOutcome:
    """The relayed files, each to the hosts that get it (``options``: ``relay``'s)."""
    common, wants = [], {}
    for file in relayed:
        piece = FilePiece(file.source)
        for label in file.hosts:
            wants.setdefault(label, []).append(len(common))
        try:
            digest = piece.sha256()
        except SourceShrank as err:
            raise shrank(file.source, err) from None
        common.append(Common(file.source, file.dest, piece.size, digest, piece.mode, keep=file.kind != "run"))
    try:
        return relay(hosts, common, wants, **options)
    except OSError as err:  # the relay could not start (a host's ssh or srun): every host is staged from here
        why = f"the relay could not start ({type(err).__name__}: {err})"
        return RelayOutcome({}, dict.fromkeys(wants, why), 0, 0, (), (), time.monotonic(), 0.0)
