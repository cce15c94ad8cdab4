"""How a launch reaches the hosts that are not this machine, chosen once per attempt: over SSH, or as job steps of
the Slurm allocation the launcher runs in (``--launcher srun``); this machine's own processes start here either way.

``Transports`` makes each host's transport once and keeps it for the attempt: preflight's probe, the reach check,
staging, the processes and the keepalive watch all use the same ``SSHHost`` (one reading of the SSH config, one
pool of shared connections) or ``SrunHost``. What a transport can do differs only by what it says of itself
(``cluster.supervise.Transport``); nobody asks which one it is. ``launcher.run.backend.Backend`` is what the
launch does with them.
"""
from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence
from typing import Protocol

from cluster.hosts import HostSpec, Launcher
from cluster.srun import SrunHost
from cluster.ssh import SSHHost, SSHOptions
from cluster.supervise import Transport


class RemoteHost(Transport, Protocol):
    """A host that is not this machine, however it is reached (``SSHHost``, ``SrunHost``): what the launch asks of it
    besides starting processes (``Transport``)."""

    unreachable: threading.Event     # set when the host stopped answering (cluster.hostwatch), for a quick stop

    @property
    def address(self) -> str: ...    # where the other hosts reach it (OpenSSH's HostName; the node's name)

    def run(self, argv: Sequence[str], *, timeout_s: float = 60.0) -> tuple[int, str, str]: ...

    def stream_to(self, command: str) -> subprocess.Popen: ...     # bytes into a command there (staging)

    def stream_from(self, command: str) -> subprocess.Popen: ...   # bytes out of a command there (fetching)

    def close(self) -> None: ...


class Transports:
    """The transports of one attempt's hosts, made once each (``remote``) and kept."""

    def __init__(self, launcher: Launcher, ssh: SSHOptions) -> None:
        self.launcher, self.ssh = Launcher(launcher), ssh
        self._remote: dict[str, RemoteHost] = {}

    def remote(self, host: HostSpec) -> RemoteHost:
        """How the launcher reaches ``host`` (not this machine): the one choice between a job step and SSH."""
        if host.label not in self._remote:
            self._remote[host.label] = (SrunHost(host) if self.launcher is Launcher.SRUN
                                        else SSHHost(host, self.ssh))
        return self._remote[host.label]

    def remotes(self, hosts: Sequence[HostSpec]) -> dict[str, RemoteHost]:
        """The transports of the hosts that are not this machine, by label."""
        return {host.label: self.remote(host) for host in hosts if not host.is_local}

    def close(self) -> None:
        """Close the connections the transports still hold (sessions of stopped processes, a bastion's)."""
        for remote in self._remote.values():
            remote.close()
