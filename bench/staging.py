"""Staging throughput and bytes on the wire, against OpenSSH baselines in the same run.

Needs root, iproute2, openssh-server and rsync: the hosts are network namespaces on
this machine (testing/netns.py), each with its own sshd. Every method copies the same
files to an emptied folder on the same hosts, one host and then three at once; the runs
are interleaved (method A, B, C, A, B, C, ...) so every method sees the same machine.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.report import ROOT, provenance, spread, write_section
from cluster.hosts import HostSpec, load_hosts
from cluster.ssh import SSHHost, SSHOptions
from launcher.data.inputs import check_inputs
from launcher.plan import Transfer
from launcher.run.kinds import stage_local
from launcher.run.launch import Attempt, LaunchConfig, new_run_id, plan_attempt
from launcher.run.stage import forget_digests, stage_all, stage_host
from launcher.spec.jobspec import load_job

FILES, FILE_MB, REPEATS = 4, 50, 3
DEST = "/srv/mxft-host/bench"


def _ssh(config: str) -> list[str]:
    return ["ssh", "-F", config, "-o", "BatchMode=yes"]


def _clear(config: str, address: str) -> None:
    subprocess.run(_ssh(config) + [address, f"rm -rf {DEST}; mkdir -p {DEST}"], check=True)


def _mxft(config: str, address: str, paths: list[str]) -> None:
    host = SSHHost(HostSpec(address), SSHOptions(ssh_config=config))
    transfers = [Transfer(address, path, f"{DEST}/{os.path.basename(path)}", "run") for path in paths]
    stage_host(host, transfers, root="/srv/mxft-host", python=sys.executable, progress=lambda *report: None)


def _scp(config: str, address: str, paths: list[str], *cipher: str) -> None:
    subprocess.run(["scp", "-q", "-F", config, *cipher, *paths, f"{address}:{DEST}/"], check=True)


def _tar_ssh(config: str, address: str, paths: list[str]) -> None:
    folder = os.path.dirname(paths[0])
    names = " ".join(shlex.quote(os.path.basename(p)) for p in paths)
    subprocess.run(f"tar -C {shlex.quote(folder)} -cf - {names} | {shlex.join(_ssh(config))} {address} "
                   f"'tar -xf - -C {DEST}'", shell=True, check=True)


def _rsync(config: str, address: str, paths: list[str]) -> None:
    subprocess.run(["rsync", "-a", "-e", shlex.join(_ssh(config)), *paths, f"{address}:{DEST}/"], check=True)


METHODS = {
    "mxft staging": _mxft,
    "scp": _scp,
    "scp -c aes128-gcm": lambda c, a, p: _scp(c, a, p, "-c", "aes128-gcm@openssh.com"),
    "tar \\| ssh": _tar_ssh,
    "rsync -e ssh": _rsync,
}


def _timed(method, config: str, addresses: list[str], paths: list[str]) -> float:
    for address in addresses:
        _clear(config, address)
    forget_digests()  # each mxft copy hashes its files afresh, once for all hosts, as a new launch would
    threads = [threading.Thread(target=method, args=(config, address, paths)) for address in addresses]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def throughput_table(cluster, paths: list[str]) -> list[str]:
    total_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    methods = {name: fn for name, fn in METHODS.items() if name != "rsync -e ssh" or shutil.which("rsync")}
    lines = ["| method | 1 host MB/s | 3 hosts MB/s (total) |", "|---|---|---|"]
    results: dict[str, dict[int, list[float]]] = {name: {1: [], 3: []} for name in methods}
    for _ in range(REPEATS):
        for count in (1, 3):
            addresses = [h.address for h in cluster.hosts[:count]]
            for name, method in methods.items():
                results[name][count].append(count * total_mb / _timed(method, cluster.ssh_config, addresses, paths))
    best = {count: max(statistics.median(r[count]) for n, r in results.items() if n != "mxft staging")
            for count in (1, 3)}
    for name, by_count in results.items():
        lines.append(f"| {name} | {spread(by_count[1], '{:.0f}')} | {spread(by_count[3], '{:.0f}')} |")
    mine = results["mxft staging"]
    ratios = {count: statistics.median(mine[count]) / best[count] for count in (1, 3)}
    lines += ["", f"mxft staging / best baseline: **{ratios[1]:.2f}** (1 host), **{ratios[3]:.2f}** (3 hosts). "
              f"Goal >= 0.90: {'met' if min(ratios.values()) >= 0.9 else 'NOT met'}."]
    return lines


def wire_table(cluster, work: str) -> list[str]:
    """Bytes sent for the demo job (4 workers on 3 hosts) vs the minimum, then for a relaunch."""
    hosts_file = cluster.hosts_file(os.path.join(work, "hosts.txt"),
                                    extra={h.name: f"python={sys.executable}" for h in cluster.hosts})
    config = LaunchConfig(os.path.join(ROOT, "jobs", "demo.yaml"), hosts_file, False, os.path.join(work, "runs"),
                          os.path.join(work, "cache"), "/srv/mxft-host", SSHOptions(ssh_config=cluster.ssh_config))
    job = load_job(config.job_path)
    job = dataclasses.replace(job, cluster=dataclasses.replace(job.cluster, workers=4, servers=2),
                              data=dataclasses.replace(job.data, staging="always"))  # the hosts see the files too
    hosts = load_hosts(hosts_file)
    rows = []
    for attempt in ("first launch", "unchanged relaunch"):
        run_id = new_run_id(job)
        plan = plan_attempt(config, job, hosts, Attempt(run_id, os.path.join(config.run_root, run_id)))
        ssh_hosts = {host.label: SSHHost(host, plan.ssh) for host in plan.hosts}
        inventory = check_inputs(job)
        pieces = stage_local(plan)
        reports = stage_all(ssh_hosts, plan.transfers, root_of=plan.remote_roots.__getitem__, pieces=pieces,
                            python_of=plan.remote_pythons.__getitem__, progress=lambda *report: None).hosts
        sent = sum(r.data_bytes_sent for r in reports)
        code = sum(r.code_bytes_sent for r in reports)
        stream = sum(r.bytes_sent for r in reports)
        busy = {t.host for t in plan.transfers}
        recipe = plan.component
        per_host = inventory.val_bytes + os.path.getsize(job.model.symbol_path) + \
            os.path.getsize(job.data.val.replace(".rec", ".idx"))
        model = os.path.getsize(recipe.trimmed_params or job.model.params_path)  # to worker 0's host alone
        statistics = os.path.getsize(recipe.statistics_params) if recipe.statistics_params else model
        shards = sum(pieces[t.source].size for t in plan.transfers if "/part-" in t.dest)
        minimum = inventory.train_bytes + len(busy) * per_host + model + (len(busy) - 1) * statistics
        rows.append(f"| {attempt} | {sent} | {minimum} | {sent / minimum:.3f} | {code} | {stream} | {shards} |")
    return ["| | data bytes sent | minimum (every training record once, the validation set and symbol per host, "
            "the weights once and BatchNorm statistics to the other hosts) "
            "| ratio | code bytes sent | whole streams (with configs and frame headers) "
            "| shard bytes (records + their .idx) |", "|---|---|---|---|---|---|---|", *rows]


def main() -> None:
    from testing import netns
    cluster = netns.up(3)
    try:
        with tempfile.TemporaryDirectory() as work:
            paths = []
            for i in range(FILES):
                path = os.path.join(work, f"part-{i}.rec")
                with open(path, "wb") as handle:
                    for _ in range(FILE_MB):
                        handle.write(os.urandom(1 << 20))
                paths.append(path)
            table = throughput_table(cluster, paths)
            wire = wire_table(cluster, work)
    finally:
        netns.down()
    lines = ["## Staging throughput", "",
             f"{FILES} files of {FILE_MB} MiB (random bytes) to emptied folders on namespace hosts over real sshd "
             f"(testing/netns.py), one host and three at once; MB/s, median (min-max) of {REPEATS} interleaved runs. "
             "mxft staging checks a sha256 of every file on both ends and renames files into place only when all arrived; the baselines check nothing beyond SSH's "
             "own integrity. All hosts share this machine's cores, so 3 hosts at once measure CPU, not network.",
             "", *table, "",
             "Where the time goes (profiled once here, 2 x 200 MiB through a local pipe, no ssh): the first version "
             "wrote a tar stream with Python's tarfile and unpacked it with tarfile on the host; the sender alone "
             "managed 230 MB/s into /dev/null and the receiver 177 MB/s from a file, while GNU tar unpacked the "
             "same stream at 820 MB/s: every byte was copied several times through Python objects. Now the "
             "sender hands file bytes to the ssh pipe with sendfile (700 MB/s into /dev/null) and the receiver "
             "splices them into the file (bounded by page-cache writes: `cat | cat > file` runs at ~200 MB/s "
             "here); both widen their pipes to 1 MiB (64 KiB pipes cost another ~20%: 158 vs 185 MB/s in one "
             "A/B run). What remains beside ssh's own crypto is sha256 (1.4 GB/s here, from the page cache): once "
             "per file on the receiving host, and once per file and launch on the sending side however many "
             "hosts get it (hashing it again for each host cost the 3-host case 0.85 against 0.96 alone).",
             "", "### Bytes on the wire", "",
             "The demo job with 4 workers and 2 servers on the 3 hosts: what staging sent, against the minimum. "
             "Shards add their own .idx (a few bytes per record) to the training records; code is counted apart.",
             "", *wire, "", f"Measured {provenance()}."]
    write_section("staging", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
