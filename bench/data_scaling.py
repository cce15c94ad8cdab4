"""The data plane as hosts are added, on limited links (issue 26, items 4 and 5): one job on 2, 4, 8 and 16 namespace
hosts, its training file staged to every host (``data.staging: always``: no host reads it) and read in place
(``auto``, the file at the same path on every host: a folder outside the hosts' private work folders stands for a
shared filesystem). Every link, the launcher's and each host's, is limited by tc tbf to ``RATE_MBIT`` each way, so
the launcher's link is the bottleneck as on a real cluster.

The job: the demo's model and one epoch of a noise training set of ``SIZE_GB`` GB (60 KB JPEGs, with its .idx), one
worker and one server per host. Each launch starts from emptied work folders and a fresh ``--cache-dir``. Staged, the
launcher cuts each host's shard into that host's stream as it sends it (no local copy); each host's validation part,
the code and the model come with it. Bytes on the launcher's link are the bridge's counters (SSH's framing, the
launcher's control traffic and the workers' event lines included; host-to-host traffic such as ps-lite's is not). The
launcher's own process is sampled every 0.1 s: peak threads, file descriptors and resident memory, its CPU seconds,
and the bytes it wrote to disk (its labels cache and run folder included); and the machine's busy cores, averaged
over the part of the launch before the processes start (the command to the launcher's starting them). "Shards
after" is what the ``--cache-dir``'s ``shards/`` holds when the run has ended.

``python -m bench data_scaling``; needs root (testing/netns.py). ``MXFT_BENCH_REPEATS=N`` launches N times a case
(default 2).
"""
from __future__ import annotations

import os
import statistics
import tempfile

from bench.data_plane import REPEATS, job_file, one_run, sized_training_set
from bench.report import provenance, spread, write_section

HOST_COUNTS = (2, 4, 8, 16)
MODES = {"always": "staged", "auto": "read in place"}
SIZE_GB = 0.5
RATE_MBIT = 400


def main() -> None:
    from bench.relay import limited_hosts
    results: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        train = sized_training_set(work, SIZE_GB)
        size_mb = os.path.getsize(train) / 1e6
        for count in HOST_COUNTS:
            with limited_hosts(count, RATE_MBIT) as cluster:
                for _ in range(REPEATS):
                    for mode in MODES:
                        results.setdefault((count, mode), []).append(one_run(cluster, work,
                                                                             job_file(work, train, mode)))
                        print(f"[bench] {count} hosts, {mode}: {results[(count, mode)][-1]}", flush=True)
    write_section("data_scaling", "\n".join(report(results, size_mb)))


COLUMNS = (("launcher_link_mb", "{:.0f}", 1.0), ("data_mb", "{:.0f}", 1.0), ("written", "{:.1f}", 1e-6),
           ("shards_mb", "{:.1f}", 1.0), ("staging_s", "{:.1f}", 1.0), ("first_batch_s", "{:.1f}", 1.0),
           ("before_processes_s", "{:.1f}", 1.0), ("busy_cores_before", "{:.2f}", 1.0),
           ("cpu", "{:.1f}", 1.0), ("threads", "{:.0f}", 1.0), ("fds", "{:.0f}", 1.0), ("rss", "{:.0f}", 1e-6))


def report(results: dict[tuple[int, str], list[dict]], size_mb: float) -> list[str]:
    doc = __doc__.replace("``RATE_MBIT``", f"{RATE_MBIT} Mbit/s").replace("``SIZE_GB``", f"{SIZE_GB:g}")
    lines = ["## The data plane as hosts are added, on limited links", "", *doc.split("\n\n")[:2], "",
             f"Training file {size_mb:.0f} MB. Median (min-max) of {REPEATS} launches per case.", "",
             "| hosts | data | launcher's link (MB) | data sent (MB) | launcher wrote to disk (MB) | shards after (MB) "
             "| staging (s) | command to first batch (s) | of it before the processes start (s) | cores busy then "
             "| launcher CPU (s) | peak threads | peak file descriptors | peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (count, mode), runs in sorted(results.items()):
        lines.append(f"| {count} | {MODES[mode]} | " + " | ".join(spread([run[key] * scale for run in runs], fmt)
                                                                 for key, fmt, scale in COLUMNS) + " |")
    lines += ["", *goals(results, size_mb), "", f"_{provenance()}_"]
    return lines


def goals(results: dict[tuple[int, str], list[dict]], size_mb: float) -> list[str]:
    counts = sorted({count for count, _ in results})
    few, many = counts[0], counts[-1]

    def median(count: int, mode: str, key: str) -> float:
        return statistics.median(run[key] for run in results[(count, mode)])
    beyond = {count: median(count, "always", "launcher_link_mb") - size_mb for count in (few, many)}
    held = max(run["shards_mb"] for (_, mode), runs in results.items() if mode == "always" for run in runs)
    sent = max(run["data_mb"] for (_, mode), runs in results.items() if mode == "auto" for run in runs)
    staging = median(many, "always", "staging_s") / median(few, "always", "staging_s")
    first = median(many, "auto", "first_batch_s") / median(few, "auto", "first_batch_s")
    before = median(many, "auto", "before_processes_s") / median(few, "auto", "before_processes_s")
    processes = ((median(many, "auto", "first_batch_s") - median(many, "auto", "before_processes_s"))
                 / (median(few, "auto", "first_batch_s") - median(few, "auto", "before_processes_s")))
    memory = max(run["rss"] for runs in results.values() for run in runs) / 1e6
    busy = median(many, "auto", "busy_cores_before")
    return [f"Goals. Staged: the launcher's link carried the training file once and {beyond[few]:.0f} MB more at "
            f"{few} hosts, {beyond[many]:.0f} MB more at {many} (model, validation parts, code, control: below the "
            f"relay's 64 MB, so each host's come from the launcher); the cache held {held:.1f} MB of shards after a "
            f"run at most (goal: none after start-up: {'met' if held == 0 else 'NOT met'}); staging at {many} hosts "
            f"took {staging:.2f}x as long as at {few} (goal: within 1.5x: {'met' if staging <= 1.5 else 'NOT met'}). "
            f"Read in place: the launcher sent at most {sent:.1f} MB of data (goal 0: "
            f"{'met' if sent == 0 else 'NOT met'}); the first batch at {many} hosts came {first:.2f}x as late as at "
            f"{few} (goal 1.2x: {'met' if first <= 1.2 else 'NOT met'}): the part before the processes start "
            f"(checks of every host, plan, staging) {before:.2f}x, the processes' own start (MXNet's import, ps-lite's "
            f"joining, the first pull) {processes:.2f}x; before the processes start at {many} hosts, this machine "
            f"kept {busy:.2f} of its {os.cpu_count()} cores busy (the hosts' sshd and Python programs, the "
            f"launcher's SSH clients). The launcher's resident memory peaked at "
            f"{memory:.0f} MB with the {size_mb:.0f} MB file (it hashes the data a block at a time and sends it by "
            "sendfile).",
            "",
            "The time to the first batch grows with the hosts in both modes because every host's worker and server "
            f"share this machine's 2 cores: {many} hosts start {2 * many} MXNet processes on them."]
