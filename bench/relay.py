"""The relay as hosts are added (issue 26, items 3 and 5): a folder every host needs (``COMMON_MB`` MB of random bytes
in ``FILES`` files, as a ``--sync-dir`` folder or the code and a model sent whole would be) staged to 2, 4, 8 and 16
namespace hosts, through the relay and as a star (each host its own copy from the launcher), from emptied work
folders, each case ``REPEATS`` times. Every link, the launcher's and each host's, is limited by tc tbf to
``RATE_MBIT`` each way, so the launcher's link is the bottleneck as on a real cluster.

Bytes are those the launcher's link carried (the bridge's counters: SSH's framing included, host-to-host traffic
not). Seconds are the whole staging call, from the first SSH connection to the last file placed and checked. The
last row kills one relay host's program (the head of the first chain) when a quarter of the folder is there: the
hosts it fed are routed around, and its own files then come straight from the launcher.

``python -m bench relay``; needs root (testing/netns.py).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

from bench.report import provenance, spread, write_section

HOST_COUNTS = (2, 4, 8, 16)
COMMON_MB = 96
LARGE_MB = 1024
FILES = 4
RATE_MBIT = 400
REPEATS = int(os.environ.get("MXFT_BENCH_REPEATS", "2"))
DEST = "/srv/mxft-host/common"


def common_folder(work: str, megabytes: int = COMMON_MB) -> list[str]:
    folder = os.path.join(work, f"common-{megabytes}")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(FILES):
        path = os.path.join(folder, f"part-{index}.bin")
        with open(path, "wb") as handle:
            for _ in range(megabytes // FILES):
                handle.write(os.urandom(1 << 20))
        paths.append(path)
    return paths


def launcher_link_bytes() -> int:
    """What this machine sent into the hosts' bridge so far."""
    from testing import netns
    with open(f"/sys/class/net/{netns.BRIDGE}/statistics/tx_bytes") as handle:
        return int(handle.read())


def limit_launcher_link(rate_mbit: float | None) -> None:
    import subprocess

    from testing import netns
    if rate_mbit is None:
        subprocess.run(["tc", "qdisc", "del", "dev", netns.BRIDGE, "root"], capture_output=True)
        return
    burst = max(int(rate_mbit * 1e6 / 8 / 100), 64 * 1024)
    subprocess.run(["tc", "qdisc", "replace", "dev", netns.BRIDGE, "root", "tbf", "rate", f"{rate_mbit}mbit", "burst",
                    str(burst), "latency", "200ms"], check=True)


@contextlib.contextmanager
def limited_hosts(count: int, rate_mbit: float):
    """``count`` namespace hosts whose every link, the launcher's too, carries ``rate_mbit`` each way; gone after."""
    from testing import netns
    cluster = netns.up(count)
    try:
        netns.limit_links(cluster, rate_mbit)
        limit_launcher_link(rate_mbit)
        yield cluster
    finally:
        limit_launcher_link(None)
        netns.down()


def empty_work_folders(cluster) -> None:
    for host in cluster.hosts:
        for name in os.listdir(host.work_dir):
            path = os.path.join(host.work_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def kill_head_when_quarter_there(cluster, size: int, stop: threading.Event, killed: list) -> None:
    import glob

    from testing.processes import RELAY_PROGRAM, pids_running
    head = cluster.hosts[0]
    while not stop.wait(0.02):
        if sum(os.path.getsize(p) for p in glob.glob(os.path.join(head.work_dir, ".incoming.*", "*"))) < size // 4:
            continue
        for pid in pids_running(head, RELAY_PROGRAM):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(time.monotonic())
            return


def every_host_gets(paths: list[str], hosts) -> list:
    """The folder's files for the relay, to every host (at 2 hosts too, where a plan would send each its own)."""
    from launcher.plan import Relayed
    return [Relayed(path, f"{DEST}/{os.path.basename(path)}", "run", tuple(hosts)) for path in paths]


def stage_once(cluster, paths: list[str], *, use_relay: bool, kill: bool = False) -> dict:
    from cluster.hosts import parse_hosts
    from cluster.ssh import SSHHost, SSHOptions
    from launcher.plan import Transfer
    from launcher.run.stage import forget_digests, stage_all
    specs = parse_hosts("".join(f"{h.address} python={sys.executable}\n" for h in cluster.hosts), "bench")
    hosts = {spec.label: SSHHost(spec, SSHOptions(cluster.ssh_config)) for spec in specs}
    transfers = [Transfer(label, path, f"{DEST}/{os.path.basename(path)}", "run") for label in hosts for path in paths]
    empty_work_folders(cluster)
    forget_digests()
    stop, killed = threading.Event(), []
    if kill:
        threading.Thread(target=kill_head_when_quarter_there, args=(cluster, COMMON_MB << 20, stop, killed),
                         daemon=True).start()
    before, started = launcher_link_bytes(), time.monotonic()
    try:
        staged = stage_all(hosts, transfers, root_of=lambda label: "/srv/mxft-host",
                           python_of=lambda label: sys.executable, progress=lambda *report: None,
                           address_of=lambda label: label,
                           relayed=every_host_gets(paths, hosts) if use_relay else (), relay_from=0)
    finally:
        stop.set()
        for host in hosts.values():
            host.close()
    seconds, sent = time.monotonic() - started, launcher_link_bytes() - before
    size = sum(os.path.getsize(path) for path in paths)
    for host in cluster.hosts:
        assert os.path.getsize(os.path.join(host.work_dir, "common", "part-0.bin")) == os.path.getsize(paths[0])
    row = {"seconds": seconds, "copies": sent / size}
    if kill and killed and staged.relay is not None:
        moved = [at for at, change in zip(staged.relay.reroute_s, staged.relay.reroutes) if change.now is not None]
        row["reroute_after_kill_s"] = staged.relay.began + moved[0] - killed[0] if moved else float("nan")
    return row


def main() -> None:
    rows: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        paths = common_folder(work)
        for count in HOST_COUNTS:
            with limited_hosts(count, RATE_MBIT) as cluster:
                for _ in range(REPEATS):
                    for mode in ("relay", "star"):
                        rows.setdefault((count, mode), []).append(stage_once(cluster, paths, use_relay=mode == "relay"))
                        print(f"[bench] {count} hosts {mode}: {rows[(count, mode)][-1]}", flush=True)
                if count == max(HOST_COUNTS):
                    for _ in range(REPEATS):
                        rows.setdefault((count, "killed"), []).append(
                            stage_once(cluster, paths, use_relay=True, kill=True))
                        print(f"[bench] {count} hosts, a relay host killed: {rows[(count, 'killed')][-1]}", flush=True)
                    big = common_folder(work, LARGE_MB)  # the issue's --sync-dir goal: 1 GB to 16 hosts
                    rows[(count, "large")] = [stage_once(cluster, big, use_relay=True)]
                    print(f"[bench] {count} hosts, {LARGE_MB} MB: {rows[(count, 'large')][-1]}", flush=True)
    write_section("relay", "\n".join(report(rows)))


def report(rows: dict[tuple[int, str], list[dict]]) -> list[str]:
    def of(count: int, mode: str, key: str) -> list[float]:
        return [row[key] for row in rows[(count, mode)]]
    about = (__doc__.split("\n\n")[0].replace("``COMMON_MB`` MB", f"{COMMON_MB} MB").replace("``FILES``", str(FILES))
             .replace("``REPEATS``", str(REPEATS)).replace("``RATE_MBIT``", f"{RATE_MBIT} Mbit/s"))
    lines = ["## The relay: what every host needs, as hosts are added", "", about, "", __doc__.split("\n\n")[1], "",
             "| hosts | copies on the launcher's link, relay | star | staging s, relay | star | relay / star time "
             "| relay time / 2 hosts' |", "|---|---|---|---|---|---|---|"]
    base = statistics.median(of(min(HOST_COUNTS), "relay", "seconds"))
    for count in HOST_COUNTS:
        relay_s, star_s = of(count, "relay", "seconds"), of(count, "star", "seconds")
        lines.append(f"| {count} | {spread(of(count, 'relay', 'copies'), '{:.2f}')} | "
                     f"{spread(of(count, 'star', 'copies'), '{:.2f}')} | {spread(relay_s, '{:.1f}')} | "
                     f"{spread(star_s, '{:.1f}')} | {statistics.median(relay_s) / statistics.median(star_s):.2f} | "
                     f"{statistics.median(relay_s) / base:.2f} |")
    top = max(HOST_COUNTS)
    copies = max(of(top, "relay", "copies"))
    growth = statistics.median(of(top, "relay", "seconds")) / base
    killed = rows.get((top, "killed"), [])
    lines += ["", f"Goals at {top} hosts: the launcher's link carried at most {copies:.2f} copies of the folder "
              f"(goal: at most 2 plus SSH's framing: {'met' if copies <= 2.1 else 'NOT met'}); staging took "
              f"{growth:.2f}x as long as at 2 hosts (goal: within 1.5x: {'met' if growth <= 1.5 else 'NOT met'})."]
    large = rows.get((top, "large"), [])
    if large:
        copies = large[0]["copies"]
        lines += ["", f"A {LARGE_MB} MB folder (a `--sync-dir`) to {top} hosts, once: the launcher's link carried "
                  f"{copies:.2f} copies ({copies * LARGE_MB / 1024:.2f} GB; goal: at most 2 GB plus SSH's framing: "
                  f"{'met' if copies <= 2.05 else 'NOT met'}), in {large[0]['seconds']:.1f} s."]
    if killed:
        lines += ["", f"A relay host killed when a quarter was there ({top} hosts): staging took "
                  f"{spread([r['seconds'] for r in killed], '{:.1f}')} s (unkilled "
                  f"{spread(of(top, 'relay', 'seconds'), '{:.1f}')} s); the hosts it fed were fed again "
                  f"{spread([r['reroute_after_kill_s'] for r in killed], '{:.2f}')} s after the kill (goal: within "
                  f"one deadline, 5 s), and every host got the folder. The killed host's own copy came from the "
                  "launcher after the relay, which is most of the extra time."]
    lines += ["", f"_{provenance()}_"]
    return lines


if __name__ == "__main__":
    main()
