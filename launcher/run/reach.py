"""Before any ps-lite process starts: can every host reach the scheduler on the training network?

ps-lite retries a connection it cannot make forever, in silence, so a training address
that some host cannot route to (a second network not cabled to it, a firewall, an
``addr=`` that is not the host's) used to surface only at the start-up deadline, after
staging and starting everything. Here the scheduler's host opens the scheduler's very
address and port for a moment, and every host tries a TCP connection to it; each host
that cannot is named, with the error, and nothing is started.
"""
from __future__ import annotations

import inspect
import os
import select
import shlex
import subprocess
import sys
import time

from cluster.errors import InputError
from cluster.failure import FailureKind
from cluster.fanout import on_each_host
from cluster.hosts import HostSpec
from cluster.lines import ended_tail
from launcher.plan import Plan, Role
from launcher.remote import reach_probe
from launcher.run.backend import Backend

# Runs on the hosts: launcher/remote/reach_probe.py, sent as source (``listen`` on the scheduler's host, ``connect`` on
# every host).
PROBE = inspect.getsource(reach_probe)


class NoRoute(Exception):
    """A host could not open a connection to the scheduler; the message is its answer."""


def require_scheduler_reachable(plan: Plan, backend: Backend, *, connect_timeout_s: float = 5.0) -> None:
    """Raise InputError naming every host that cannot connect to the scheduler's address (one line each)."""
    scheduler = next(p for p in plan.processes if p.role is Role.SCHEDULER)
    hosts = {h.label: h for h in plan.hosts}
    busy = list(dict.fromkeys(p.host for p in plan.processes))
    target = f"{plan.scheduler_uri}:{plan.scheduler_port}"
    with _listening(plan, hosts[scheduler.host], backend):
        reaches = on_each_host(lambda label: _try_connect(plan, hosts[label], backend, connect_timeout_s), busy,
                               name="reach", kind=FailureKind.CONNECTION_LOST)
    if reaches.failed:
        raise InputError("", "\n".join(
            str(InputError(f"host {f.host}", f"cannot open a TCP connection to the ps-lite scheduler at {target} "
                           f"({plan.network or 'the SSH addresses'}): {f.reason}",
                           hint="check the routes and firewalls between the hosts on that network, or choose "
                                "another with addr= in the hosts file or cluster.interface"))
            for f in reaches.failed.values()))


class _listening:
    """The scheduler's address and port held open on its host for the duration of the block."""

    def __init__(self, plan: Plan, host: HostSpec, backend: Backend) -> None:
        python = plan.remote_pythons.get(host.label, sys.executable)
        argv = [python, "-c", PROBE, "listen", plan.scheduler_uri, str(plan.scheduler_port), "900"]  # ends with stdin
        if host.is_local:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        else:
            self.proc = backend.remote(host).stream_to(shlex.join(argv))
        self.host, self.plan = host, plan

    def __enter__(self) -> "_listening":
        line = _first_line(self.proc, timeout_s=60.0)  # as long as a preflight probe may take
        if line != "listening":
            self.__exit__()
            raise InputError(f"host {self.host.label}", f"the ps-lite scheduler's address "
                             f"{self.plan.scheduler_uri}:{self.plan.scheduler_port} cannot be opened there: "
                             f"{line or ended_tail(self.proc.stderr)[-300:]}",
                             hint="addr= must be one of that host's own addresses; a port in use: launch again "
                                  "(each launch picks another)")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


_FIRST_LINE_MAX = 4096  # bytes: the listener's first line is a word or an error; more than this is not one


def _first_line(proc: subprocess.Popen, *, timeout_s: float) -> str:
    """The process's first line of output (at most ``_FIRST_LINE_MAX`` bytes of it), or "" if none came in time
    (or it ended)."""
    deadline, data = time.monotonic() + timeout_s, b""
    while b"\n" not in data and len(data) < _FIRST_LINE_MAX and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data[:_FIRST_LINE_MAX].decode(errors="replace").split("\n", 1)[0].strip()


def _try_connect(plan: Plan, host: HostSpec, backend: Backend, timeout_s: float) -> None:
    """Nothing if ``host`` reached the scheduler's address; NoRoute saying why not."""
    python = plan.remote_pythons.get(host.label, sys.executable)
    argv = [python, "-c", PROBE, "connect", plan.scheduler_uri, str(plan.scheduler_port), str(timeout_s)]
    try:
        if host.is_local:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 10).stdout
        else:
            remote = backend.remote(host)
            _, out, err = remote.run(argv, timeout_s=timeout_s + plan.ssh.connect_timeout_s + 5)
            out = out or err
    except Exception as err:  # noqa: BLE001 - an SSH failure here is this host's answer
        raise NoRoute(f"the check could not run there ({type(err).__name__}: {err})") from None
    answer = out.strip().splitlines()[-1] if out.strip() else "no answer"
    if answer != "ok":
        raise NoRoute(answer)
