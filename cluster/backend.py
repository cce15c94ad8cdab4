"""How a launch reaches its hosts, chosen once per attempt: over SSH, or as job steps of the Slurm allocation the
launcher runs in (``--launcher srun``); this machine's own processes start here either way.

``Backend`` makes each host's transport once and keeps it for the attempt: preflight's probe, the reach check,
staging, the processes and the keepalive watch all use the same ``SSHHost`` (one reading of the SSH config, one
pool of shared connections) or ``SrunHost``. What a transport can do differs only by what it says of itself
(``cluster.supervise.Transport``); nobody asks which one it is.
"""
from __future__ import annotations

from collections.abc import Sequence

from cluster.hosts import HostSpec
from cluster.local import LocalTransport
from cluster.srun import SrunHost
from cluster.ssh import SSHHost, SSHOptions

RemoteHost = SSHHost | SrunHost  # how the launcher reaches a host that is not this machine
LAUNCHERS = ("ssh", "srun")


class Backend:
    """The transports of one attempt's hosts, made once each (``remote``) and kept."""

    def __init__(self, launcher: str, ssh: SSHOptions) -> None:
        if launcher not in LAUNCHERS:
            raise ValueError(f"unknown launcher {launcher!r}")
        self.launcher, self.ssh = launcher, ssh
        self._remote: dict[str, RemoteHost] = {}

    def remote(self, host: HostSpec) -> RemoteHost:
        """How the launcher reaches ``host`` (not this machine): the one choice between a job step and SSH."""
        if host.label not in self._remote:
            self._remote[host.label] = SrunHost(host) if self.launcher == "srun" else SSHHost(host, self.ssh)
        return self._remote[host.label]

    def remotes(self, hosts: Sequence[HostSpec]) -> dict[str, RemoteHost]:
        """The transports of the hosts that are not this machine, by label."""
        return {host.label: self.remote(host) for host in hosts if not host.is_local}

    def transport(self, host: HostSpec) -> LocalTransport | RemoteHost:
        return LocalTransport() if host.is_local else self.remote(host)
