"""Which address ps-lite uses on each host: ``addr=`` in the hosts file, an interface's address, or the SSH one."""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.plan.model import Facts, HostFacts


def training_network(hosts: Sequence[HostSpec], facts: Facts, interface: str | None) -> tuple[Facts, str]:
    """The facts with each host's address made ps-lite's (``node_address``), and why, for the plan."""
    chosen = {h.label: dataclasses.replace(facts.hosts[h.label], address=node_address(h, facts.hosts[h.label],
                                                                                       interface))
              for h in hosts if h.label in facts.hosts}
    why = (["addr= in the hosts file"] if any(h.addr for h in hosts) else []) + \
        ([f"interface {interface} (cluster.interface)"] if interface and not all(h.is_local for h in hosts) else [])
    return dataclasses.replace(facts, hosts={**facts.hosts, **chosen}), "; ".join(why)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def node_address(host: HostSpec, facts: HostFacts, interface: str | None) -> str:
    """Where ps-lite binds and is reached on ``host``: its ``addr=``, else its address on ``interface``, else
    the SSH one (``DMLC_NODE_HOST``; the scheduler's is ``DMLC_PS_ROOT_URI``).

    >>> node_address(HostSpec("h1", addr="10.1.0.7"), HostFacts("192.168.0.5", "python3", 8), "eth1")
    '10.1.0.7'
    >>> node_address(HostSpec("h1"), HostFacts("192.168.0.5", "python3", 8, interfaces={"eth1": "10.1.0.5"}), "eth1")
    '10.1.0.5'
    >>> node_address(HostSpec("h1"), HostFacts("192.168.0.5", "python3", 8), None)
    '192.168.0.5'
    >>> node_address(HostSpec("gpu01"), HostFacts("gpu01.cluster", "python3", 8, ip="10.0.0.11"), None)
    '10.0.0.11'
    """
    if host.addr:
        return host.addr
    if interface is None or host.is_local:
        if _is_ip(facts.address) or facts.ip:
            return facts.address if _is_ip(facts.address) else facts.ip  # ps-lite binds numeric addresses only
        return f"<IP of {host.label}>" if facts.assumed else facts.address
    if facts.assumed:
        return f"<{interface} of {host.label}>"  # a dry run that never probed the host
    if interface not in facts.interfaces:
        have = ", ".join(f"{name} {address}" for name, address in sorted(facts.interfaces.items())) or "none"
        raise InputError(host.where, f"host '{host.label}' has no IPv4 address on interface {interface} "
                         f"(cluster.interface); it has: {have}",
                         hint="choose another interface, or give this host addr= in the hosts file")
    return facts.interfaces[interface]

