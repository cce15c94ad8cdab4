"""Staged data as hosts are added (issue 26, items 4 and 5): one job whose training file no host can read
(``data.staging: always``) on 2, 4, 8 and 16 namespace hosts, every link, the launcher's and each host's, limited by
tc tbf to ``RATE_MBIT`` each way, so the launcher's link is the bottleneck as on a real cluster.

The job: the demo's model and one epoch of a noise training set of ``SIZE_GB`` GB (60 KB JPEGs, with its .idx), one
worker and one server per host. Each launch starts from emptied work folders and a fresh ``--cache-dir``. The
launcher cuts each host's shard into that host's stream as it sends it (no local copy); the hosts' validation parts,
code and model come with it. Bytes on the launcher's link are the bridge's counters (SSH's framing, the launcher's
control traffic and the workers' event lines included; host-to-host traffic such as ps-lite's is not). The launcher's
own process is sampled every 0.1 s: peak threads and file descriptors, its CPU seconds, and the bytes it wrote to
disk (labels cache and run folder included). "Cache after" is the data the ``--cache-dir`` holds when the run has
ended (``shards/``, ``trimmed/``: the model's cut params).

``python -m bench staged_data``; needs root (testing/netns.py). ``MXFT_BENCH_REPEATS=N`` launches N times a case
(default 2).
"""
from __future__ import annotations

import os
import statistics
import tempfile

from bench.data_plane import REPEATS, job_file, one_run, sized_training_set
from bench.report import provenance, spread, write_section

HOST_COUNTS = (2, 4, 8, 16)
SIZE_GB = 0.5
RATE_MBIT = 400


def main() -> None:
    from bench.relay import limited_hosts
    results: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        train = sized_training_set(work, SIZE_GB)
        size_mb = os.path.getsize(train) / 1e6
        for count in HOST_COUNTS:
            with limited_hosts(count, RATE_MBIT) as cluster:
                for _ in range(REPEATS):
                    results.setdefault(count, []).append(one_run(cluster, work, job_file(work, train, "always")))
                    print(f"[bench] {count} hosts: {results[count][-1]}", flush=True)
    write_section("staged_data", "\n".join(report(results, size_mb)))


COLUMNS = (("launcher_link_mb", "{:.0f}", 1.0), ("data_mb", "{:.0f}", 1.0), ("written", "{:.0f}", 1e-6),
           ("cache_mb", "{:.1f}", 1.0), ("staging_s", "{:.1f}", 1.0), ("first_batch_s", "{:.1f}", 1.0),
           ("cpu", "{:.1f}", 1.0), ("threads", "{:.0f}", 1.0), ("fds", "{:.0f}", 1.0))


def report(results: dict[int, list[dict]], size_mb: float) -> list[str]:
    doc = __doc__.replace("``RATE_MBIT``", f"{RATE_MBIT} Mbit/s").replace("``SIZE_GB``", f"{SIZE_GB:g}")
    lines = ["## Staged data as hosts are added", "", *doc.split("\n\n")[:2], "",
             f"Training file {size_mb:.0f} MB. Median (min-max) of {REPEATS} launches per host count.", "",
             "| hosts | launcher's link (MB) | data sent (MB) | launcher wrote to disk (MB) | cache after (MB) "
             "| staging (s) | command to first batch (s) | launcher CPU (s) | peak threads | peak file descriptors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for count, runs in sorted(results.items()):
        lines.append(f"| {count} | " + " | ".join(spread([run[key] * scale for run in runs], fmt)
                                                  for key, fmt, scale in COLUMNS) + " |")
    lines += ["", *goals(results, size_mb), "", f"_{provenance()}_"]
    return lines


def goals(results: dict[int, list[dict]], size_mb: float) -> list[str]:
    few, many = min(results), max(results)

    def median(count: int, key: str) -> float:
        return statistics.median(run[key] for run in results[count])
    beyond = {count: median(count, "launcher_link_mb") - size_mb for count in results}
    held = max(run["shards_mb"] for runs in results.values() for run in runs)
    ratio = median(many, "staging_s") / median(few, "staging_s")
    return [f"Goals: the launcher's link carried the training file once and {beyond[few]:.0f} MB more at {few} hosts, "
            f"{beyond[many]:.0f} MB more at {many} (the model, validation parts, code, control; these are below the "
            "relay's 64 MB, so each host's come from the launcher). The cache held "
            f"{held:.1f} MB of shards after a run, at most (goal: none after start-up: "
            f"{'met' if held == 0 else 'NOT met'}). "
            f"Staging at {many} hosts took {ratio:.2f}x as long as at {few} (goal: within 1.5x: "
            f"{'met' if ratio <= 1.5 else 'NOT met'}).",
            "The time to the first batch grows with the hosts here because every host's worker and server share this "
            f"machine's 2 cores: {many} hosts start {2 * many} MXNet processes on them."]
