"""A real Slurm cluster on the namespace hosts of ``testing.netns``: munge, slurmctld here, a slurmd on each host.

Debian's ``slurmctld slurmd slurm-client munge`` (``make test`` installs them). slurmctld
runs in this machine's namespace on the bridge address; each host's slurmd runs in the
host's network namespace and in a mount namespace of its own where, as for the host's
sshd, ``testing.netns.WORK_DIR`` is that host's private folder (so a file staged to h1 is
not on h2) and /etc/hosts names the host. Steps run as root with the shared Python and
venv. The configuration lives under the namespace state folder; commands find it through
``SLURM_CONF`` in ``env``. ``python -m testing.slurm up 2`` / ``down`` by hand.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time

import psutil

from testing import netns

STATE = "/tmp/mxft-slurm"  # not under netns.STATE_DIR, which netns.down removes while slurmctld may still run
CONF = os.path.join(STATE, "slurm.conf")
BINARIES = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/srun", "/usr/sbin/munged")


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    hosts: netns.NetnsCluster
    nodes: tuple[str, ...]   # h1, h2, ...

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=CONF)


def _config(cluster: netns.NetnsCluster) -> str:
    nodes = "".join(f"NodeName={h.name} NodeAddr={h.address} CPUs={os.cpu_count() or 2} RealMemory=4000\n"
                    for h in cluster.hosts)
    return (f"ClusterName=mxft\nSlurmctldHost={os.uname().nodename}({netns.SUBNET}.1)\nSlurmUser=root\n"
            "AuthType=auth/munge\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/affinity\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\n"
            "JobAcctGatherType=jobacct_gather/none\nSlurmctldPort=6917\nSlurmdPort=6918\n"
            f"StateSaveLocation={STATE}/state\nSlurmdSpoolDir={STATE}/spool/%n\n"
            f"SlurmctldPidFile={STATE}/slurmctld.pid\nSlurmdPidFile={STATE}/slurmd-%n.pid\n"
            f"SlurmctldLogFile={STATE}/slurmctld.log\nSlurmdLogFile={STATE}/slurmd-%n.log\n"
            "KillWait=5\nInactiveLimit=0\n" + nodes +
            "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")


# munged refuses folders whose modes it does not trust, and its clients need to traverse /run/munge: each is made
# with its mode set explicitly, whatever the umask of the process that makes it (a test's may be 0077).
MUNGE_FOLDERS = (("/etc/munge", 0o700), ("/run/munge", 0o755), ("/var/log/munge", 0o700), ("/var/lib/munge", 0o700))
MUNGE_KEY = "/etc/munge/munge.key"


def _munge_answers() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=10).returncode == 0


def _start_munge() -> None:
    """munged with the machine's key (made if the package left none), unless one already answers. A munged killed
    earlier may have left its socket and pid file: --force takes them over."""
    if _munge_answers():
        return
    for folder, mode in MUNGE_FOLDERS:
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, mode)
        shutil.chown(folder, "munge", "munge")
    if not os.path.isfile(MUNGE_KEY) or os.path.getsize(MUNGE_KEY) == 0:
        with open(os.open(MUNGE_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400), "wb") as handle:
            handle.write(os.urandom(1024))
        os.chmod(MUNGE_KEY, 0o400)
        shutil.chown(MUNGE_KEY, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--force"], check=True, capture_output=True,
                   timeout=30)
    deadline = time.monotonic() + 10
    while not _munge_answers():
        if time.monotonic() > deadline:
            raise RuntimeError("munged started but 'munge -n | unmunge' fails: see /var/log/munge/munged.log")
        time.sleep(0.1)


def _start_slurmd(host: netns.NetnsHost) -> None:
    setup = (f"hostname {host.name}; mount --bind {host.work_dir} {netns.WORK_DIR}; "
             f"mount --bind {os.path.dirname(host.work_dir)}/hosts /etc/hosts; exec /usr/sbin/slurmd -N {host.name}"
             f" -f {CONF}")
    subprocess.run(["nsenter", f"--net=/var/run/netns/{host.namespace}", "unshare", "--mount", "--uts",
                    "--propagation", "private", "sh", "-ec", setup], check=True, capture_output=True)


def _wait_idle(cluster: SlurmCluster, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=cluster.env, capture_output=True,
                             text=True).stdout
        states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        if all(states.get(node) == "idle" for node in cluster.nodes):
            return
        time.sleep(0.3)
    raise RuntimeError(f"Slurm nodes never became idle: {out!r}; see {STATE}/*.log")


def up(cluster: netns.NetnsCluster) -> SlurmCluster:
    """Slurm on ``cluster``'s hosts (tearing down any earlier one first)."""
    missing = [path for path in BINARIES if not os.path.exists(path)]
    if missing:
        raise RuntimeError(f"Slurm is not installed ({', '.join(missing)} missing): "
                           "apt-get install slurmctld slurmd slurm-client munge")
    down()
    os.makedirs(os.path.join(STATE, "state"))
    os.makedirs(os.path.join(STATE, "spool"))
    with open(CONF, "w", encoding="utf-8") as handle:
        handle.write(_config(cluster))
    _start_munge()
    subprocess.run(["/usr/sbin/slurmctld", "-f", CONF], check=True, capture_output=True)
    for host in cluster.hosts:
        _start_slurmd(host)
    slurm = SlurmCluster(cluster, tuple(h.name for h in cluster.hosts))
    _wait_idle(slurm)
    return slurm


def _our_daemons() -> list[psutil.Process]:
    """slurmctld and every slurmd started with this configuration, and whatever runs in a job step of theirs: found
    by their command lines and process trees, not by pid files that a killed run may have left stale."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] in ("slurmctld", "slurmd") and CONF in (proc.info["cmdline"] or []):
            found.append(proc)
        elif proc.info["name"] == "slurmstepd" and _in_a_namespace_host(proc.pid):
            found.append(proc)
    return found


def _in_a_namespace_host(pid: int) -> bool:
    return any(pid in host_pids for host_pids in netns.pids_by_namespace().values())


def down() -> None:
    """Stop slurmctld, every slurmd of an earlier ``up`` and their job steps, and remove their state, whatever a
    killed run left: a stale configuration with no controller to answer is not waited on."""
    daemons = _our_daemons()
    if any(proc.name() == "slurmctld" for proc in daemons):
        try:
            subprocess.run(["scancel", "--full", "--user=root"], env=dict(os.environ, SLURM_CONF=CONF),
                           capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for proc in daemons + [child for proc in daemons for child in _children(proc)]:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(daemons, timeout=5)
    shutil.rmtree(STATE, ignore_errors=True)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


if __name__ == "__main__":
    if sys.argv[1:2] == ["up"]:
        slurm = up(netns.up(int(sys.argv[2]) if len(sys.argv) > 2 else 2))
        print(f"export SLURM_CONF={CONF}; sinfo; salloc -N{len(slurm.nodes)}")
    else:
        down()
        netns.down()
