"""Slurm's ``sbcast`` beside the relay (issue 26, item 3): the relay bench's folder (``COMMON_MB`` MB of random bytes in
``FILES`` files) to every node of a Slurm allocation of 2, 4, 8 and 16 namespace hosts, once with ``sbcast`` (one
call per file, as a user would copy a folder; Slurm's default fanout, at most 8) and once with mxft's relay over
srun steps (the launcher's ``--launcher srun`` staging: each host's relay program is a job step, the stream goes
into each chain's head through srun's own connection). Every link, the launcher's and each host's, is limited by tc
tbf to ``RATE_MBIT`` each way; slurmctld runs on the launcher's machine, a slurmd on each host. Each case runs
``REPEATS`` times from emptied work folders, inside one ``salloc`` a case.

Bytes are those the launcher's link carried (the bridge's counters: srun's and Slurm's framing and control traffic
included, host-to-host traffic not). Seconds are from the first call to the last file placed (for the relay: the
whole staging call, with its check of what each host holds and every file's digest on every host; ``sbcast`` checks
no digest).

``python -m bench sbcast``; needs root (testing/netns.py) and Slurm (``testing/slurm.py``).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.relay import (COMMON_MB, DEST, FILES, HOST_COUNTS, RATE_MBIT, REPEATS, common_folder, empty_work_folders,
                         every_host_gets, launcher_link_bytes, limited_hosts)
from bench.report import ROOT, provenance, spread, write_section

MODES = ("sbcast", "relay")


def main() -> None:
    from testing import slurm
    rows: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        paths = common_folder(work)
        for count in HOST_COUNTS:
            with limited_hosts(count, RATE_MBIT) as cluster:
                allocation = slurm.up(cluster)
                try:
                    for _ in range(REPEATS):
                        for mode in MODES:
                            empty_work_folders(cluster)
                            rows.setdefault((count, mode), []).append(in_salloc(allocation, mode, paths))
                            every_host_has(cluster, paths)
                            print(f"[bench] {count} hosts, {mode}: {rows[(count, mode)][-1]}", flush=True)
                finally:
                    slurm.down()
    write_section("sbcast", "\n".join(report(rows)))


def in_salloc(allocation, mode: str, paths: list[str]) -> dict:
    """One copy of ``paths`` to every node, by ``mode``, from inside ``salloc`` on all of them: what ``inside`` says."""
    addresses = {host.name: host.address for host in allocation.hosts.hosts}
    argv = ["salloc", "--quiet", "--exclusive", "-N", str(len(addresses)), sys.executable, "-m", "bench.sbcast",
            json.dumps({"mode": mode, "paths": paths, "addresses": addresses})]
    done = subprocess.run(argv, cwd=ROOT, env=dict(allocation.env, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def every_host_has(cluster, paths: list[str]) -> None:
    for host in cluster.hosts:
        for path in paths:
            placed = os.path.join(host.work_dir, os.path.relpath(DEST, "/srv/mxft-host"), os.path.basename(path))
            assert os.path.getsize(placed) == os.path.getsize(path), (host.name, placed)


def inside(mode: str, paths: list[str], addresses: dict[str, str]) -> dict:
    """In the allocation: copy ``paths`` into ``DEST`` on every node; seconds and copies on the launcher's link."""
    nodes = str(len(addresses))
    subprocess.run(["srun", "-N", nodes, "--ntasks-per-node=1", "mkdir", "-p", DEST], check=True, timeout=60)
    size = sum(os.path.getsize(path) for path in paths)
    before, started = launcher_link_bytes(), time.monotonic()
    if mode == "sbcast":
        for path in paths:
            subprocess.run(["sbcast", "--force", path, f"{DEST}/{os.path.basename(path)}"], check=True, timeout=300)
    else:
        relay_over_srun(paths, addresses)
    return {"seconds": time.monotonic() - started, "copies": (launcher_link_bytes() - before) / size}


def relay_over_srun(paths: list[str], addresses: dict[str, str]) -> None:
    from cluster.slurm import hosts_from_slurm
    from cluster.srun import SrunHost
    from launcher.plan import Transfer
    from launcher.run.stage import stage_all
    hosts = {spec.label: SrunHost(spec) for spec in hosts_from_slurm(os.environ)}
    transfers = [Transfer(label, path, f"{DEST}/{os.path.basename(path)}", "run") for label in hosts for path in paths]
    staged = stage_all(hosts, transfers, root_of=lambda label: "/srv/mxft-host", python_of=lambda label: sys.executable,
                       progress=lambda *report: None, address_of=addresses.__getitem__,
                       relayed=every_host_gets(paths, hosts), relay_from=0)
    assert staged.relay is not None and not staged.relay.missed, staged.relay


def report(rows: dict[tuple[int, str], list[dict]]) -> list[str]:
    def of(count: int, mode: str, key: str) -> list[float]:
        return [row[key] for row in rows[(count, mode)]]
    about = (__doc__.split("\n\n")[0].replace("``COMMON_MB`` MB", f"{COMMON_MB} MB").replace("``FILES``", str(FILES))
             .replace("``REPEATS``", str(REPEATS)).replace("``RATE_MBIT``", f"{RATE_MBIT} Mbit/s"))
    lines = ["## Slurm's sbcast beside the relay", "", about, "", __doc__.split("\n\n")[1], "",
             "| nodes | copies on the launcher's link, sbcast | relay | seconds, sbcast | relay "
             "| relay / sbcast time |",
             "|---|---|---|---|---|---|"]
    counts = sorted({count for count, _ in rows})
    for count in counts:
        sbcast_s, relay_s = of(count, "sbcast", "seconds"), of(count, "relay", "seconds")
        lines.append(f"| {count} | {spread(of(count, 'sbcast', 'copies'), '{:.2f}')} | "
                     f"{spread(of(count, 'relay', 'copies'), '{:.2f}')} | {spread(sbcast_s, '{:.1f}')} | "
                     f"{spread(relay_s, '{:.1f}')} | {statistics.median(relay_s) / statistics.median(sbcast_s):.2f} |")
    few, many = counts[0], counts[-1]

    def growth(mode: str) -> float:
        return statistics.median(of(many, mode, "seconds")) / statistics.median(of(few, mode, "seconds"))
    copies = {mode: statistics.median(of(many, mode, "copies")) for mode in MODES}
    lines += ["", f"From {few} to {many} nodes, sbcast's time grew {growth('sbcast'):.2f}x and the relay's "
              f"{growth('relay'):.2f}x; at {many} nodes the launcher's link carried {copies['sbcast']:.2f} copies "
              f"with sbcast and {copies['relay']:.2f} with the relay.", "", f"_{provenance()}_"]
    return lines


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(json.dumps(inside(request["mode"], request["paths"], request["addresses"])), flush=True)
