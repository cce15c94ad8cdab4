"""``mxft-launch clean``: free what finished runs left in each host's work folder.

    mxft-launch clean --hosts hosts.txt [--older-than DAYS] [--dry-run]

Each host decides and removes for itself: ``launcher.remote.cleanup``'s source runs there on the
host's Python over SSH (as preflight's probe does), under an exclusive lock on the work
folder, and answers with one JSON line of what it removed (or would remove) and the bytes
freed. Hosts are cleaned ``HOSTS_AT_ONCE`` at a time; one that cannot be reached is
reported and the others are still cleaned. This machine's own run folders (results,
checkpoints, logs) and cache are never touched.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Sequence

from cluster.errors import InputError
from cluster.failure import FailureKind
from cluster.fanout import HostResults, on_each_host
from cluster.hosts import HostSpec, load_hosts
from cluster.slurm import hosts_from_slurm
from cluster.ssh import SSH_ERRORS, SSHHost, SSHOptions, ssh_error_text
from launcher.remote import cleanup

CLEANUP_SCRIPT = inspect.getsource(cleanup)
KINDS = {"run": ("run", "runs"), "data": ("data folder", "data folders"), "code": ("code folder", "code folders"),
         "incoming": ("interrupted copy", "interrupted copies")}


@dataclasses.dataclass(frozen=True)
class Removal:
    kind: str          # run | data | code | incoming
    name: str
    size_bytes: int
    why: str


@dataclasses.dataclass(frozen=True)
class HostCleanup:
    """What cleaning one host did (or, with --dry-run, would do); ``unremoved`` says what could not go."""

    label: str
    root: str = ""
    removals: tuple[Removal, ...] = ()
    freed_bytes: int = 0
    running: tuple[str, ...] = ()      # runs kept because a process of theirs runs there
    staging: bool = False              # a stage ran there: data and code were kept
    unremoved: str = ""


class NotCleaned(Exception):
    """The host could not be cleaned at all (unreachable, its Python failing, an answer that is not a report)."""


def load_clean_hosts(path: str, ssh: SSHOptions) -> tuple[HostSpec, ...]:
    """The hosts file (or ``slurm``), remote hosts only; InputError otherwise."""
    if ssh.ssh_config and not os.path.isfile(ssh.ssh_config):
        raise InputError(ssh.ssh_config, "SSH config file not found", hint="check --ssh-config")
    if path == "slurm":
        return tuple(dataclasses.replace(h, python=h.python or sys.executable) for h in hosts_from_slurm(os.environ))
    hosts = load_hosts(path)
    local = [h for h in hosts if h.is_local]
    if local:
        raise InputError(f"{path}:{local[0].line}", f"'{local[0].label}' is this machine; clean works on remote "
                         "hosts' work folders", hint="this machine's runs are in --run-root, its cache in --cache-dir")
    return hosts


def clean_hosts(hosts: Sequence[HostSpec], ssh: SSHOptions, remote_dir: str, *, older_than_s: float,
                dry_run: bool) -> HostResults[HostCleanup]:
    """Clean every host, ``HOSTS_AT_ONCE`` at a time: each host's report, or why it could not be cleaned."""
    by_label = {host.label: host for host in hosts}
    return on_each_host(lambda label: clean_host(by_label[label], SSHHost(by_label[label], ssh), remote_dir,
                                                 older_than_s=older_than_s, dry_run=dry_run),
                        list(by_label), name="clean", kind=FailureKind.HOST_REFUSED,
                        reason=lambda err: ssh_error_text(err) if isinstance(err, SSH_ERRORS) else str(err))


def clean_host(spec: HostSpec, ssh: SSHHost, remote_dir: str, *, older_than_s: float, dry_run: bool) -> HostCleanup:
    """Run the cleanup on one host; NotCleaned (or one of ``SSH_ERRORS``) if it could not run there."""
    python = spec.python or "python3"
    argv = [python, "-c", CLEANUP_SCRIPT, remote_dir, repr(float(older_than_s)), "dry-run" if dry_run else "remove"]
    code, out, err = ssh.run(argv, timeout_s=1800)
    if code != 0:
        last = (err or out).strip().splitlines()[-1:] or ["no output"]
        raise NotCleaned(f"'{python}' failed (exit {code}): {last[0][:300]}")
    return parse_report(spec.label, out)


def parse_report(label: str, out: str) -> HostCleanup:
    """The host's JSON line, checked field by field (a host's answer is a claim, not trusted as is); NotCleaned if
    it is not a report.

    >>> parse_report("h1", '{"root": "/w", "removals": [{"kind": "run", "name": "r1", "bytes": 4096, '
    ...              '"why": "finished"}], "freed_bytes": 4096, "errors": [], "running": ["r2"], "staging": false}')
    HostCleanup(label='h1', root='/w', removals=(Removal(kind='run', name='r1', size_bytes=4096, why='finished'),), \
freed_bytes=4096, running=('r2',), staging=False, unremoved='')
    """
    try:
        report = json.loads(out.strip().splitlines()[-1])
        removals = tuple(Removal(_text(r["kind"], KINDS), _text(r["name"]), _count(r["bytes"]), _text(r["why"]))
                         for r in report["removals"])
        return HostCleanup(label, _text(report["root"]), removals, _count(report["freed_bytes"]),
                           tuple(_text(name) for name in report["running"]), report["staging"] is True,
                           "; ".join(_text(text) for text in report["errors"]))
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise NotCleaned(f"unexpected answer from the cleanup there ({err}): {out.strip()[-200:]!r}") from None


def _text(value, allowed=None) -> str:
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        raise ValueError(f"not an expected string: {value!r}")
    return value


def _count(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a byte count: {value!r}")
    return value


def size_text(size_bytes: int) -> str:
    """4096 -> '4.1 kB'; decimal units, as ``check`` prints free GB.

    >>> [size_text(n) for n in (0, 999, 4096, 3_500_000, 12_000_000_000)]
    ['0 B', '999 B', '4.1 kB', '3.5 MB', '12.0 GB']
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def cleanup_lines(results: HostResults[HostCleanup], *, dry_run: bool) -> list[str]:
    """What the console shows: per host a line (and one per entry removed), then the total."""
    verb, freed_verb = ("would remove", "would free") if dry_run else ("removed", "freed")
    lines = []
    for label in results.hosts:
        if label in results.failed:
            lines.append(f"host {label}: not cleaned: {results.failed[label].reason}")
            continue
        report = results.ok[label]
        kept = ([f"{len(report.running)} running run{'s' if len(report.running) != 1 else ''} kept"] if report.running
                else []) + (["a stage is running there: data and code kept"] if report.staging else [])
        counts = [f"{n} {KINDS[kind][n != 1]}" for kind in KINDS
                  for n in [sum(r.kind == kind for r in report.removals)] if n]
        what = (f"{verb} {', '.join(counts)}, {freed_verb} "
                f"{size_text(sum(r.size_bytes for r in report.removals) if dry_run else report.freed_bytes)}"
                if counts else "nothing to remove")
        lines.append(f"host {report.label} ({report.root}): {what}" + "".join(f"; {text}" for text in kept))
        lines += [f"  {r.kind:<8} {r.name:<44} {size_text(r.size_bytes):>9}  {r.why}" for r in report.removals]
        if report.unremoved:
            lines.append(f"host {report.label}: some entries could not be removed: {report.unremoved}")
    cleaned = list(results.ok.values())
    total = sum(sum(r.size_bytes for r in c.removals) if dry_run else c.freed_bytes for c in cleaned)
    lines.append(f"total: {freed_verb} {size_text(total)} on {len(cleaned)} of {len(results.hosts)} hosts")
    return lines
