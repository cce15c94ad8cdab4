"""Several real SSH hosts on this machine: network namespaces, each with its own sshd.

Each host has its own address on a private bridge, its own OpenSSH server and host
key, a private PID namespace (``pgrep`` on one host sees only that host) and a private
work directory mounted at ``WORK_DIR`` (a file staged to h1 is not visible on h2).
The filesystem is otherwise shared, so every host finds the same Python and venv.

Needs root, iproute2 and openssh-server. ``python -m testing.netns up 3`` / ``down``
brings hosts up or down by hand.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

BRIDGE = "mxftbr0"
TRAINING_BRIDGE = "mxftbr1"  # add_network: a second network between some hosts
SUBNET = "10.231.77"
STATE_DIR = "/tmp/mxft-netns"
WORK_DIR = "/srv/mxft-host"
SSHD = "/usr/sbin/sshd"


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclasses.dataclass(frozen=True)
class NetnsHost:
    name: str          # h1, h2, ...
    namespace: str     # mxft-h1
    address: str       # 10.231.77.11
    work_dir: str      # the host's private work dir, as seen from the root namespace

    def pids(self) -> list[int]:
        out = _sh("ip", "netns", "pids", self.namespace, check=False).stdout
        return [int(pid) for pid in out.split()]

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside this host's network namespace (not its PID namespace)."""
        return _sh("ip", "netns", "exec", self.namespace, *argv, check=check)


@dataclasses.dataclass(frozen=True)
class NetnsCluster:
    hosts: tuple[NetnsHost, ...]
    ssh_config: str    # an ssh_config naming the key and known_hosts for these hosts
    known_hosts: str
    client_key: str

    def hosts_file(self, path: str, *, extra: dict[str, str] | None = None) -> str:
        """Write a hosts file listing every host (``extra`` appends fields per host name)."""
        with open(path, "w", encoding="utf-8") as handle:
            for host in self.hosts:
                handle.write(f"{host.address} {(extra or {}).get(host.name, '')}".rstrip() + "\n")
        return path


def _kill_processes(host: NetnsHost) -> None:
    """Every process in the host's namespace: TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in host.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.3)


def namespaces() -> list[str]:
    """The namespace hosts that exist now (``mxft-h*``), whoever made them: this run or one killed earlier."""
    out = _sh("ip", "netns", "list", check=False).stdout
    return sorted(word for word in (line.split()[0] for line in out.splitlines() if line.split())
                  if word.startswith("mxft-h") and word[6:].isdigit())


def pids_by_namespace() -> dict[str, list[int]]:
    return {namespace: [int(pid) for pid in _sh("ip", "netns", "pids", namespace, check=False).stdout.split()]
            for namespace in namespaces()}


def _links(prefix: str) -> list[str]:
    """This machine's network links whose names start with ``prefix`` (``mxv-h3@if2`` is ``mxv-h3``)."""
    out = _sh("ip", "-o", "link", "show", check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2]
    return [name for name in names if name.startswith(prefix)]


def _kill_strays() -> None:
    """sshd processes of earlier hosts that outlived their namespace (a teardown killed halfway): found by the
    configuration file under STATE_DIR on their command line."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if f"{STATE_DIR}/".encode() in handle.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def down() -> None:
    """Remove every trace of earlier hosts, this run's or a killed run's: processes, sockets, links, namespaces,
    bridges, files. Finds them by name rather than by count, and waits on nothing that may not be there."""
    for namespace in namespaces():
        _kill_processes(NetnsHost(namespace[5:], namespace, "", ""))
    _kill_strays()
    _sh("ss", "-K", "dst", f"{SUBNET}.0/24", check=False)
    for link in _links("mxv-h") + _links("mxw-h"):
        _sh("ip", "link", "del", link, check=False)
    for namespace in namespaces():
        _sh("ip", "netns", "del", namespace, check=False)
    for bridge in (BRIDGE, TRAINING_BRIDGE):
        _sh("ip", "link", "del", bridge, check=False)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def add_network(cluster: "NetnsCluster", names, *, subnet: str = "10.232.77", device: str = "eth1") -> dict[str, str]:
    """A second network on a bridge of its own (``TRAINING_BRIDGE``) for the hosts ``names``: each gets
    ``device`` with address SUBNET.(10+i). This machine is not on it: SSH stays on the first network.
    Returns host name -> its address on the new network."""
    _sh("ip", "link", "add", TRAINING_BRIDGE, "type", "bridge")
    _sh("ip", "link", "set", TRAINING_BRIDGE, "up")
    addresses = {}
    for host in cluster.hosts:
        if host.name not in names:
            continue
        veth, address = f"mxw-{host.name}", f"{subnet}.{10 + int(host.name[1:])}"
        _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", device, "netns", host.namespace)
        _sh("ip", "link", "set", veth, "master", TRAINING_BRIDGE, "up")
        _sh("ip", "-n", host.namespace, "addr", "add", f"{address}/24", "dev", device)
        _sh("ip", "-n", host.namespace, "link", "set", device, "up")
        addresses[host.name] = address
    return addresses


def limit_links(cluster: "NetnsCluster", rate_mbit: float | None) -> None:
    """Every host's link limited to ``rate_mbit`` in each direction (tc tbf on both ends of its veth), or
    unlimited again with None. netem does not exist on this kernel; tbf does."""
    for host in cluster.hosts:
        for prefix, device in ((("ip", "netns", "exec", host.namespace), "eth0"), ((), f"mxv-{host.name}")):
            if rate_mbit is None:
                _sh(*prefix, "tc", "qdisc", "del", "dev", device, "root", check=False)
                continue
            burst = max(int(rate_mbit * 1e6 / 8 / 100), 64 * 1024)  # 10 ms of traffic, at least 64 KiB
            _sh(*prefix, "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{rate_mbit}mbit",
                "burst", str(burst), "latency", "200ms")


def link_bytes(cluster: "NetnsCluster") -> dict[str, tuple[int, int]]:
    """Bytes each host received and sent on its eth0 so far (its own counters)."""
    out = {}
    for host in cluster.hosts:
        rx, tx = (int(host.exec("cat", f"/sys/class/net/eth0/statistics/{k}_bytes").stdout) for k in ("rx", "tx"))
        out[host.name] = (rx, tx)
    return out


def remove_network() -> None:
    """Undo ``add_network``."""
    for link in _links("mxw-h"):
        _sh("ip", "link", "del", link, check=False)
    _sh("ip", "link", "del", TRAINING_BRIDGE, check=False)


def _sshd_config(host_dir: str, address: str, authorized_keys: str, *, stock_limits: bool = False) -> str:
    """The host's sshd_config; ``stock_limits``: OpenSSH's own MaxStartups (10:30:100) and MaxSessions (10),
    as on a real host, instead of the wide ones that let tests start many connections at once."""
    path = os.path.join(host_dir, "sshd_config")
    limits = "" if stock_limits else "MaxStartups 100:30:200\nMaxSessions 100\n"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"""ListenAddress {address}
Port 22
HostKey {host_dir}/ssh_host_ed25519_key
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
{limits}LogLevel ERROR
""")
    return path


def _wait_listening(address: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((address, 22), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {address} did not come up")
            time.sleep(0.05)


def _start_host(i: int, authorized_keys: str, *, stock_limits: bool = False) -> tuple[NetnsHost, str]:
    """Host h<i>: its namespace on the bridge, work dir, host key and sshd; returns it and its known_hosts line."""
    name, namespace, address = f"h{i}", f"mxft-h{i}", f"{SUBNET}.{10 + i}"
    host_dir = os.path.join(STATE_DIR, name)
    work = os.path.join(host_dir, "work")
    os.makedirs(work)
    _sh("ip", "netns", "add", namespace)
    _sh("ip", "link", "add", f"mxv-{name}", "type", "veth", "peer", "name", "eth0", "netns", namespace)
    _sh("ip", "link", "set", f"mxv-{name}", "master", BRIDGE, "up")
    _sh("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
    _sh("ip", "-n", namespace, "link", "set", "eth0", "up")
    _sh("ip", "-n", namespace, "link", "set", "lo", "up")
    key = os.path.join(host_dir, "ssh_host_ed25519_key")
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
    config = _sshd_config(host_dir, address, authorized_keys, stock_limits=stock_limits)
    with open(os.path.join(host_dir, "hosts"), "w", encoding="utf-8") as handle:
        handle.write(f"127.0.0.1 localhost\n{address} {name}\n")
    setup = (f"hostname {name}; mount --bind {work} {WORK_DIR}; "
             f"mount --bind {host_dir}/hosts /etc/hosts; exec {SSHD} -D -f {config}")
    subprocess.Popen(["ip", "netns", "exec", namespace, "setsid", "unshare", "--mount", "--uts", "--pid",
                      "--fork", "--mount-proc", "--propagation", "private", "sh", "-ec", setup],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    with open(key + ".pub", encoding="utf-8") as handle:
        key_line = f"{address} {' '.join(handle.read().split()[:2])}\n"
    return NetnsHost(name, namespace, address, work), key_line


def add_host(cluster: NetnsCluster, *, stock_limits: bool = False) -> NetnsHost:
    """One more host beside ``cluster``'s (h<N+1>, on the same bridge, key and known_hosts), for a test
    that needs a host configured differently; ``remove_host`` takes it away again."""
    host, key_line = _start_host(len(cluster.hosts) + 1, os.path.join(STATE_DIR, "authorized_keys"),
                                 stock_limits=stock_limits)
    with open(cluster.known_hosts, "a", encoding="utf-8") as handle:
        handle.write(key_line)
    _wait_listening(host.address)
    return host


def remove_host(host: NetnsHost) -> None:
    """Undo ``add_host``: the host's processes, link, namespace and files."""
    _kill_processes(host)
    _sh("ip", "link", "del", f"mxv-{host.name}", check=False)
    _sh("ip", "netns", "del", host.namespace, check=False)
    shutil.rmtree(os.path.join(STATE_DIR, host.name), ignore_errors=True)


def up(count: int) -> NetnsCluster:
    """Bring up ``count`` hosts h1..hN (tearing down any earlier ones first)."""
    if os.geteuid() != 0 or not os.path.exists(SSHD):
        raise RuntimeError("namespace hosts need root and openssh-server (apt-get install openssh-server)")
    down()
    os.makedirs(STATE_DIR)
    os.makedirs("/run/sshd", exist_ok=True)
    os.makedirs(WORK_DIR, exist_ok=True)
    client_key = os.path.join(STATE_DIR, "client_key")
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mxft-test", "-f", client_key)
    authorized_keys = os.path.join(STATE_DIR, "authorized_keys")
    shutil.copy(client_key + ".pub", authorized_keys)
    _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    hosts, known = [], []
    for i in range(1, count + 1):
        host, key_line = _start_host(i, authorized_keys)
        hosts.append(host)
        known.append(key_line)
    known_hosts = os.path.join(STATE_DIR, "known_hosts")
    with open(known_hosts, "w", encoding="utf-8") as handle:
        handle.writelines(known)
    ssh_config = os.path.join(STATE_DIR, "ssh_config")
    with open(ssh_config, "w", encoding="utf-8") as handle:
        handle.write(f"Host {SUBNET}.*\n  User root\n  IdentityFile {client_key}\n"
                     f"  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
                     "  ConnectTimeout 5\n")
    for host in hosts:
        _wait_listening(host.address)
    return NetnsCluster(tuple(hosts), ssh_config, known_hosts, client_key)


if __name__ == "__main__":
    if sys.argv[1:2] == ["up"]:
        cluster = up(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
        print(f"hosts: {' '.join(h.address for h in cluster.hosts)}\nssh -F {cluster.ssh_config} {cluster.hosts[0].address}")
    else:
        down()
