"""A run's processes, found by the run id the launcher tags each with (``MXFT_RUN_ID``), on this machine or inside
a namespace host; and the run id a launch printed."""
from __future__ import annotations

import psutil


def processes_of_run(run_id: str) -> list[psutil.Process]:
    """Every live process started for ``run_id`` (the launcher tags each with MXFT_RUN_ID)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("MXFT_RUN_ID") == run_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run_id_from(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith("[mxft] run ") and ":" in line:
            return line.split()[2].rstrip(":")
    raise AssertionError(f"no '[mxft] run ID:' line in:\n{stdout[-2000:]}")


def run_processes(cluster, run_id: str) -> dict[str, list[int]]:
    """Processes of ``run_id`` on each namespace host, found inside each host's namespace."""
    found = {}
    for host in cluster.hosts:
        pids = []
        for pid in host.pids():
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if f"MXFT_RUN_ID={run_id}".encode() in handle.read().split(b"\0"):
                        pids.append(pid)
            except OSError:
                continue
        found[host.name] = pids
    return found


RELAY_PROGRAM = b"def heartbeat(stream)"  # in the command line of a host's relay program (launcher.remote.relay_host)


def pids_running(host, text: bytes, *, start: bool = False) -> list[int]:
    """The namespace host's processes whose command line holds ``text`` (``start``: begins with it)."""
    found = []
    for pid in host.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if cmdline.startswith(text) if start else text in cmdline:
            found.append(pid)
    return found

