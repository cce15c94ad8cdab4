"""The launcher's own cost as hosts are added (issue 26, item 5): a trivial command-mode program on 16, 64 and 128
namespace hosts, each host running one worker, with one server and the scheduler on the first hosts.

The program sleeps 5 s in a worker and 30 s in the scheduler and the server, which must outlive the workers
(MXNet is not needed; sshd is small). While the launch runs, its process is
sampled every 0.1 s: threads, open file descriptors, resident memory; and its own CPU time at the end (children's
not counted: OpenSSH processes for staging and keepalives are reported as their count). The issue's goal: at 128
hosts the launcher's threads under 300 and its memory under 300 MB, and its CPU per added host flat.

``python -m bench control_plane``; needs root (testing/netns.py). ``MXFT_BENCH_REPEATS=N`` launches N times on each
host count (default 3), on the same hosts.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from bench.report import ROOT, provenance, spread, write_section

HOST_COUNTS = (16, 64, 128)
REPEATS = int(os.environ.get("MXFT_BENCH_REPEATS", "3"))
PROGRAM = (sys.executable, "-c", "import os, time; time.sleep(5 if os.environ['DMLC_ROLE'] == 'worker' else 30)")


def machine_busy_s() -> float:
    """The CPU seconds every core of this machine has spent busy since boot (all but idle and waiting for I/O)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def busy_cores(timeline: list[tuple[float, float]], start: float, end: float) -> float:
    """The cores this machine kept busy on average from ``start`` to ``end``, from (time, ``machine_busy_s``) samples
    (the first at or after ``start`` to the last at or before ``end``; 0 with fewer than two).

    >>> busy_cores([(0.0, 10.0), (1.0, 11.5), (2.0, 13.5), (3.0, 13.5)], 0.0, 2.0)
    1.75
    """
    inside = [(when, busy) for when, busy in timeline if start <= when <= end]
    if len(inside) < 2 or inside[-1][0] == inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def sample(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Peak threads, file descriptors, resident bytes and child processes of ``pid`` until ``stop``; its CPU seconds
    and the bytes it had written to storage when last seen; and the machine's (time, ``machine_busy_s``) timeline."""
    timeline = peaks.setdefault("machine", [])
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            timeline.append((time.time(), machine_busy_s()))
            with proc.oneshot():
                peaks["threads"] = max(peaks.get("threads", 0), proc.num_threads())
                peaks["fds"] = max(peaks.get("fds", 0), proc.num_fds())
                peaks["rss"] = max(peaks.get("rss", 0), proc.memory_info().rss)
                peaks["cpu"] = sum(proc.cpu_times()[:2])
                peaks["written"] = proc.io_counters().write_bytes
            peaks["children"] = max(peaks.get("children", 0), len(proc.children(recursive=True)))
            time.sleep(0.1)
    except psutil.NoSuchProcess:
        pass


def one_launch(cluster, work: str, count: int) -> dict:
    hosts = cluster.hosts_file(os.path.join(work, f"hosts-{count}.txt"),
                               extra={h.name: f"python={sys.executable}" for h in cluster.hosts})
    argv = [sys.executable, "-m", "launcher.cli", "--hosts", hosts, "--ssh-config", cluster.ssh_config,
            "--remote-dir", "/srv/mxft-host", "--run-root", os.path.join(work, "runs"), "-n", str(count), "-s", "1",
            "--", *PROGRAM]
    started = time.time()
    _, peaks = sampled_launch(argv, cwd=work)
    peaks.pop("machine")
    return dict(peaks, wall=time.time() - started)


def sampled_launch(argv: list[str], *, cwd: str) -> tuple[str, dict]:
    """Run a launch to its end, sampled (``sample``); its stdout and the peaks. It must succeed."""
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stop, peaks = threading.Event(), {}
    sampler = threading.Thread(target=sample, args=(proc.pid, stop, peaks), daemon=True)
    sampler.start()
    out, err = proc.communicate(timeout=900)
    stop.set()
    sampler.join()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out, peaks


def main() -> None:
    from testing import netns
    rows: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        for count in HOST_COUNTS:
            cluster = netns.up(count)
            try:
                for _ in range(REPEATS):
                    rows.setdefault(count, []).append(one_launch(cluster, work, count))
                    print(f"[bench] {count} hosts: {rows[count][-1]}", flush=True)
            finally:
                netns.down()
    write_section("control_plane", "\n".join(report(rows)))


def per_host_second(runs: list[dict], count: int) -> float:
    """The launcher's CPU seconds per host and second of the launch, median over ``runs``."""
    return statistics.median(run["cpu"] / count / run["wall"] for run in runs)


def report(rows: dict[int, list[dict]]) -> list[str]:
    lines = ["## The launcher's own cost as hosts are added", "", *__doc__.split("\n\n")[:2], "",
             f"Median (min-max) of {REPEATS} launches per host count.", "",
             "| hosts | processes | peak threads | per host | peak file descriptors | per host | peak memory (MB) "
             "| launcher CPU (s) | per host (s) | child processes at most | command to end (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for count, runs in sorted(rows.items()):
        def cell(key: str, fmt: str, scale: float = 1.0) -> str:
            return spread([run[key] * scale for run in runs], fmt)
        lines.append(f"| {count} | {count + 2} | {cell('threads', '{:.0f}')} | {cell('threads', '{:.1f}', 1 / count)}"
                     f" | {cell('fds', '{:.0f}')} | {cell('fds', '{:.1f}', 1 / count)} | {cell('rss', '{:.0f}', 1e-6)}"
                     f" | {cell('cpu', '{:.1f}')} | {cell('cpu', '{:.3f}', 1 / count)} | {cell('children', '{:.0f}')}"
                     f" | {cell('wall', '{:.1f}')} |")
    top = rows[max(rows)]
    threads, rss = max(run["threads"] for run in top), max(run["rss"] for run in top)
    lines += ["", f"At {max(rows)} hosts, the most of {len(top)} launches: {threads} threads (goal under 300: "
              f"{'met' if threads < 300 else 'NOT met'}), {rss / 1e6:.0f} MB (goal under 300 MB: "
              f"{'met' if rss < 300e6 else 'NOT met'}). Launcher CPU per host and second of the launch: "
              + ", ".join(f"{per_host_second(runs, count) * 1e3:.2f} ms at {count} hosts"
                          for count, runs in sorted(rows.items()))
              + " (the launch takes longer as hosts are added, all of them starting on this machine's 2 cores; "
              "what the launcher spends on a host for each second it watches it does not grow).", "",
              f"_{provenance()}_"]
    return lines


if __name__ == "__main__":
    main()
