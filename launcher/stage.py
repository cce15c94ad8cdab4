"""Put a plan's files on its hosts, and bring rank 0's results back.

Per host, one ``ssh HOST python -c RECEIVER`` reads a tar stream that Python writes on
the fly, so many files cost one connection and no temporary archive. The last member is
a sha256 manifest of the bytes actually sent; the receiver unpacks into a private
incoming folder, hashing as it writes, and only when every checksum matches renames
each file into place.
A copy that dies halfway therefore leaves nothing a later launch would trust.

Code and data land at content-addressed paths (their key is in the path), so a file
that is present is identical, and an unchanged relaunch sends no data at all.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shlex
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from cluster.errors import JobFailed
from cluster.ssh import SSHHost
from launcher.plan import Transfer

# Runs on the host with its Python: unpacks the stream into a private folder, hashing
# each file as it is written, and renames files into place only when every checksum
# matches the manifest that ends the stream.
_RECEIVER = r"""
import hashlib, os, shutil, sys, tarfile, tempfile
root = sys.argv[1]
os.makedirs(root, exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".incoming.", dir=root)
try:
    received, manifest = {}, None
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|", bufsize=1 << 20) as tar:
        for member in tar:
            data = tar.extractfile(member)
            if member.name == "MANIFEST":
                manifest = data.read().decode()
                continue
            path, digest = os.path.join(tmp, str(len(received))), hashlib.sha256()
            with open(path, "wb") as out:
                for chunk in iter(lambda: data.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            received[member.name] = (digest.hexdigest(), path)
    if manifest is None:
        sys.exit("the stream ended before its manifest")
    expected = {name: digest for digest, name in (line.split("  ", 1) for line in manifest.splitlines())}
    bad = [name for name, (digest, _) in received.items() if expected.get(name) != digest]
    if bad or set(expected) != set(received):
        sys.exit("checksum mismatch: /" + ", /".join(bad or sorted(set(expected) ^ set(received))))
    for name, (_, path) in received.items():
        os.makedirs(os.path.dirname("/" + name), exist_ok=True)
        os.replace(path, "/" + name)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
"""
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class HostStaging:
    host: str
    files_sent: int
    bytes_sent: int                       # the whole tar stream: files, headers, manifest
    data_bytes_sent: int                  # content of "data" files (shards, validation set, checkpoint)
    code_bytes_sent: int
    files_present: int
    bytes_present: int
    seconds: float


class _Counter(io.RawIOBase):
    """A write-only stream that counts bytes on their way to ``sink``."""

    def __init__(self, sink, on_bytes: Callable[[int], None]) -> None:
        self.sink, self.on_bytes = sink, on_bytes

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sink.write(data)
        self.on_bytes(len(data))
        return len(data)


class _Hashing(io.RawIOBase):
    """Read a file while hashing exactly the bytes read."""

    def __init__(self, handle) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.handle.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def present_on(host: SSHHost, dests: Sequence[str]) -> set[str]:
    """Which of ``dests`` already exist on the host (one command for all)."""
    if not dests:
        return set()
    code, out, err = host.run(["sh", "-c", 'for p; do [ -f "$p" ] && echo "$p"; done; true', "sh", *dests])
    if code != 0:
        raise JobFailed(f"{host.label}: could not list staged files: {err.strip()[-300:]}")
    return set(out.splitlines())


def stage_host(host: SSHHost, transfers: Sequence[Transfer], *, root: str, python: str,
               progress: Callable[[str], None], progress_every_s: float = 1.0) -> HostStaging:
    """Send the host what it lacks: content-addressed files once, run files always."""
    started = time.monotonic()
    present = present_on(host, [t.dest for t in transfers if t.kind != "run"])
    missing = [t for t in transfers if t.kind == "run" or t.dest not in present]
    kept = [t for t in transfers if t not in missing]
    total = sum(os.path.getsize(t.source) for t in missing)
    sent = [0]
    last_report = [started]

    def on_bytes(count: int) -> None:
        sent[0] += count
        now = time.monotonic()
        if now - last_report[0] >= progress_every_s and total:
            last_report[0] = now
            progress(f"{host.label}: {sent[0] / 1e6:.1f}/{total / 1e6:.1f} MB ({100 * min(sent[0], total) // total}%)")

    if missing:
        _send(host, missing, root=root, python=python, on_bytes=on_bytes)
    return HostStaging(host.label, len(missing), sent[0],
                       sum(os.path.getsize(t.source) for t in missing if t.kind == "data"),
                       sum(os.path.getsize(t.source) for t in missing if t.kind == "code"),
                       len(kept), sum(os.path.getsize(t.source) for t in kept), time.monotonic() - started)


def _send(host: SSHHost, transfers: Sequence[Transfer], *, root: str, python: str,
          on_bytes: Callable[[int], None]) -> None:
    proc = host.stream_to(shlex.join([python, "-c", _RECEIVER, root]))
    manifest = []
    try:
        with tarfile.open(fileobj=_Counter(proc.stdin, on_bytes), mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=_CHUNK) as tar:
            tar.copybufsize = _CHUNK
            for transfer in transfers:
                rel = transfer.dest.lstrip("/")
                info = tarfile.TarInfo(rel)
                info.size = os.path.getsize(transfer.source)
                info.mode = 0o644
                info.mtime = int(time.time())
                with open(transfer.source, "rb") as handle:
                    reader = _Hashing(handle)
                    tar.addfile(info, io.BufferedReader(reader, _CHUNK))
                manifest.append(f"{reader.digest.hexdigest()}  {rel}\n")
            body = "".join(manifest).encode()
            info = tarfile.TarInfo("MANIFEST")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    except BrokenPipeError:
        pass  # the receiver failed; its exit code and stderr say why
    _, err = proc.communicate()  # closes stdin: the receiver sees the end of the stream
    if proc.returncode != 0:
        raise JobFailed(f"{host.label}: copying {len(transfers)} files failed (exit {proc.returncode}): "
                        f"{err.decode(errors='replace').strip()[-400:]}")


def stage_all(hosts: Mapping[str, SSHHost], transfers: Sequence[Transfer], *, root_of: Callable[[str], str],
              python_of: Callable[[str], str], progress: Callable[[str], None]) -> list[HostStaging]:
    """Stage every host in parallel; raises JobFailed naming each host that failed."""
    results: dict[str, HostStaging] = {}
    errors: dict[str, str] = {}

    def one(label: str) -> None:
        try:
            results[label] = stage_host(hosts[label], [t for t in transfers if t.host == label],
                                        root=root_of(label), python=python_of(label), progress=progress)
        except Exception as err:  # reported below, per host
            errors[label] = str(err)

    threads = [threading.Thread(target=one, args=(label,), name=f"stage {label}")
               for label in dict.fromkeys(t.host for t in transfers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise JobFailed("staging failed:\n" + "\n".join(f"  {label}: {text}" for label, text in errors.items()))
    return [results[label] for label in results]


def fetch_dir(host: SSHHost, remote_dir: str, local_dir: str, *, names: Sequence[str] = (".",)) -> None:
    """Copy a folder (or the files ``names`` in it) from the host in one tar stream."""
    os.makedirs(local_dir, exist_ok=True)
    proc = host.stream_from(shlex.join(["tar", "-cf", "-", "-C", remote_dir, "--", *names]))
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(local_dir, filter="data")
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise JobFailed(f"{host.label}: could not fetch {remote_dir}: {err.decode(errors='replace').strip()[-300:]}")
