"""Bring named files back from a host, trusting the host with nothing but their bytes.

A host (worker 0's, whose checkpoints and result.json come back) may be hostile or
broken. So the launcher asks for exactly the names the plan gives, and the host's
``launcher.remote.fetch_sender`` answers each with a header (name, size, sha256) and its bytes.
The launcher takes only the names it asked for, in the order it asked, refuses a size
above the file's cap before writing a byte, writes each file with O_CREAT|O_EXCL|O_NOFOLLOW
into a fresh private folder, checks its digest, and only when every file and the end
frame arrived renames them into place. Nothing the host sends becomes a path, a link or
a mode here. Every read has a deadline: a host that stops sending for ``stall_s``, or is
slower than ``min_rate`` over the whole fetch, fails it, named; of what the host prints on
stderr, the last few KiB are read once it has ended.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import select
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence

from cluster.backend import RemoteHost
from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.lines import ended_tail
from launcher.remote import fetch_sender

SENDER = inspect.getsource(fetch_sender)
MAX_HEADER = 4096            # bytes of a frame's JSON: a name, a size and a digest fit many times over
STALL_S = 60.0               # no byte from the host for this long ends the fetch
MIN_RATE = 1 << 20           # bytes per second over the whole fetch, beyond a first minute of grace
_CHUNK = 1 << 20


class FetchRefused(JobFailed):
    """The host's answer broke the fetch protocol, a cap or a deadline (nothing of it was put in place): a bad
    result from that host, or (``kind`` HOST_SILENT) a host that stopped sending."""

    def __init__(self, message: str, *, host: str, kind: FailureKind = FailureKind.BAD_RESULT) -> None:
        super().__init__(message, failure=Failure(kind, host=host))


class _HostStream:
    """Exact reads from the host's stdout with a deadline on each wait and on the whole fetch."""

    def __init__(self, proc: subprocess.Popen, label: str, *, stall_s: float, min_rate: float) -> None:
        self._fd, self._label = proc.stdout.fileno(), label
        self._stall_s, self._min_rate = stall_s, min_rate
        self._deadline = time.monotonic() + stall_s

    def expect_bytes(self, count: int) -> None:
        """Allow ``count`` more bytes their share of time on the whole fetch's deadline."""
        self._deadline += count / self._min_rate

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes, at least one; FetchRefused at the end of the stream or at a deadline."""
        wait = min(self._stall_s, self._deadline - time.monotonic())
        if wait <= 0 or not select.select([self._fd], [], [], wait)[0]:
            raise FetchRefused(f"{self._label}: sent nothing for {wait:.0f} s (fetch deadline)" if wait > 0 else
                               f"{self._label}: too slow (the fetch's deadline passed)", host=self._label,
                               kind=FailureKind.HOST_SILENT)
        data = os.read(self._fd, count)
        if not data:
            raise FetchRefused(f"{self._label}: the stream ended early", host=self._label)
        return data

    def read_exact(self, count: int) -> bytes:
        parts, left = [], count
        while left:
            part = self.read(min(left, _CHUNK))
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def header(self) -> dict:
        (length,) = struct.unpack(">I", self.read_exact(4))
        if length > MAX_HEADER:
            raise FetchRefused(f"{self._label}: a header of {length} bytes (at most {MAX_HEADER})", host=self._label)
        try:
            header = json.loads(self.read_exact(length))
        except (ValueError, RecursionError):
            raise FetchRefused(f"{self._label}: a header that is not JSON", host=self._label) from None
        if not isinstance(header, dict):
            raise FetchRefused(f"{self._label}: a header that is not a JSON object", host=self._label)
        return header


def _receive_file(stream: _HostStream, label: str, name: str, cap: int, folder: str) -> str:
    """Read the next file's header and bytes into FOLDER/NAME (created here, never followed); its path."""
    header = stream.header()
    if "error" in header:
        raise FetchRefused(f"{label}: {str(header['error'])[:300]}", host=label)
    size, digest = header.get("size"), header.get("sha256")
    if header.get("name") != name:
        raise FetchRefused(f"{label}: sent {str(header.get('name'))[:100]!r} where {name!r} was asked for", host=label)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= cap:
        raise FetchRefused(f"{label}: {name} has {str(size)[:40]} bytes, at most {cap} are taken", host=label)
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise FetchRefused(f"{label}: {name} came without a sha256", host=label)
    stream.expect_bytes(size)
    path = os.path.join(folder, name)
    computed = hashlib.sha256()
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as out:
        left = size
        while left:
            chunk = stream.read(min(left, _CHUNK))
            computed.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    if computed.hexdigest() != digest:
        raise FetchRefused(f"{label}: {name} does not match its sha256", host=label)
    return path


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and os.path.basename(name) == name and "\0" not in name


def fetch_files(host: RemoteHost, remote_dir: str, caps: Mapping[str, int], local_dir: str, *, python: str,
                stall_s: float = STALL_S, min_rate: float = MIN_RATE) -> list[str]:
    """Copy the files named by ``caps`` (name -> most bytes taken) from ``remote_dir`` on the host into
    ``local_dir``: all of them, verified, or none (FetchRefused or JobFailed naming the host). Their paths."""
    names: Sequence[str] = list(caps)
    if not all(_plain_name(name) for name in names):
        raise ValueError(f"fetch_files takes plain file names, not {names}")
    os.makedirs(local_dir, exist_ok=True)
    incoming = tempfile.mkdtemp(prefix=".fetch-", dir=local_dir)
    proc = host.stream_from(shlex.join([python, "-c", SENDER, remote_dir, *names]))
    try:
        stream = _HostStream(proc, host.label, stall_s=stall_s, min_rate=min_rate)
        try:
            fetched = [_receive_file(stream, host.label, name, caps[name], incoming) for name in names]
            if stream.header() != {"end": len(names)}:
                raise FetchRefused(f"{host.label}: no end frame after {len(names)} files", host=host.label)
        except FetchRefused as err:
            raise FetchRefused(f"{err}{_said(proc)}", host=host.label, kind=err.failure.kind) from None
        if _ended(proc) != 0:
            raise FetchRefused(f"{host.label}: fetching {', '.join(names)} failed (exit {proc.returncode})"
                               f"{_said(proc)}", host=host.label)
        for path in fetched:
            os.replace(path, os.path.join(local_dir, os.path.basename(path)))
        return [os.path.join(local_dir, name) for name in names]
    finally:
        if proc.poll() is None:  # an error on this side (a full disk): the host's stream is not wanted any more
            proc.kill()
        proc.wait()
        shutil.rmtree(incoming, ignore_errors=True)


def _ended(proc: subprocess.Popen, grace_s: float = 5.0) -> int:
    """The transfer's exit code, once it has ended by itself within ``grace_s`` or been killed."""
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _said(proc: subprocess.Popen) -> str:
    """What the host said on stderr (its last bytes), for the error message; the transfer is ended first."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    text = ended_tail(proc.stderr)[-300:]
    return f": {text}" if text else ""
