"""Start-up against the size of the training data (issue 13, item 7): seconds per GB before the first process.

A training ``.rec`` of 100 KB records (an image header with a label, then incompressible
bytes: what a JPEG costs on disk) is written at each of ``SIZES_GB``; the demo's checkpoint
and validation set complete the job. For each size, a local launch's work before any process
starts (``plan_attempt``: the job, the data's labels and the plan; ``stage_local``: the run
folder, configs, trimmed params and, where needed, shards) is timed in a child process:

- cold: a new cache folder and the page cache dropped first (``/proc/sys/vm/drop_caches``),
  as on a first launch after a reboot;
- warm: the same cache again, the data just read (a relaunch).

Both for this code and for the baseline, the launcher as it was before header-only reads and
in-place parts (``BASELINE``, checked out with ``git worktree``), in the same run. Disk use:
what the cache folder holds afterwards.

``python -m bench startup`` (root, for dropping the page cache; about 10 minutes and 11 GB of disk).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench.report import ROOT, provenance, write_section

SIZES_GB = tuple(float(x) for x in os.environ.get("MXFT_STARTUP_GB", "0.5,2,8").split(","))
RECORD_BYTES = 100_000
REPEATS = 2
BASELINE = os.environ.get("MXFT_STARTUP_BASELINE", "d33b4e6")  # the last commit before header-only reads

# Runs in a child with PYTHONPATH at a code tree: the work a launch does before its first process.
PROBE = r"""
import json, os, sys, time
from cluster.ssh import SSHOptions
from launcher.execute import stage_local
from launcher.jobspec import load_job
from launcher.launch import Attempt, LaunchConfig, _hosts, plan_attempt
job_path, run_root, cache = sys.argv[1:4]
started = time.perf_counter()
config = LaunchConfig(job_path, None, False, run_root, cache, "~/.mxft", SSHOptions())
spec = load_job(job_path)
plan = plan_attempt(config, spec, _hosts(config), Attempt("startup", os.path.join(run_root, "startup")))
planned = time.perf_counter()
stage_local(plan)
print(json.dumps({"plan_s": planned - started, "stage_s": time.perf_counter() - planned}))
"""


def write_data(path: str, size_gb: float) -> int:
    """``size_gb`` of 100 KB records with labels 0-4 in a shuffled-looking order; returns the record count."""
    sys.path.insert(0, ROOT)
    from launcher.recfile import RecordWriter
    count = int(size_gb * 1e9 / RECORD_BYTES)
    filler = os.urandom(RECORD_BYTES - 40)
    writer = RecordWriter(path)
    for key in range(count):
        writer.write(key.to_bytes(8, "little") + filler, float((key * 7) % 5), key)
    writer.close()
    return count


def job_file(work: str, train_prefix: str) -> str:
    assets = os.path.join(os.environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft"), "digits")
    subprocess.run([sys.executable, "-m", "launcher.demo_assets", assets], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
    path = os.path.join(work, "job.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"name: startup\nnum_classes: 5\nmodel: {{prefix: {assets}/pretrained-digits0to4}}\n"
                     f"data: {{train: {train_prefix}.rec, val: {assets}/digits5to9-val.rec, shape: [3, 28, 28]}}\n"
                     "cluster: {workers: 2, servers: 1, devices: cpu}\n")
    return path


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
        handle.write("3\n")


def du_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def timed(code_root: str, job: str, runs: str, cache: str, *, cold: bool) -> dict:
    if cold:
        drop_page_cache()
    done = subprocess.run([sys.executable, "-c", PROBE, job, runs, cache], cwd=code_root, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=code_root), timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"start-up probe failed in {code_root}: {done.stderr[-2000:]}")
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return {**times, "total_s": times["plan_s"] + times["stage_s"], "cache_bytes": du_bytes(cache)}


def measure(work: str, baseline_root: str) -> list[dict]:
    rows = []
    for size in SIZES_GB:
        prefix = os.path.join(work, f"train-{size:g}gb")
        records = write_data(prefix, size)
        job = job_file(work, prefix)
        data_bytes = os.path.getsize(prefix + ".rec")
        for label, root in (("baseline", baseline_root), ("mxft", ROOT)):
            cold, warm = [], []
            for _ in range(REPEATS):
                cache = tempfile.mkdtemp(dir=work, prefix=f"cache-{label}-")
                cold.append(timed(root, job, os.path.join(work, "runs", label, "cold"), cache, cold=True))
                warm.append(timed(root, job, os.path.join(work, "runs", label, "warm"), cache, cold=False))
                subprocess.run(["rm", "-rf", cache, os.path.join(work, "runs")], check=True)
            rows.append({"gb": data_bytes / 1e9, "records": records, "code": label,
                         "cold": [c["total_s"] for c in cold], "warm": [w["total_s"] for w in warm],
                         "cache_bytes": max(c["cache_bytes"] for c in cold)})
            print(f"[bench] startup {size:g} GB {label}: {rows[-1]}", flush=True)
        os.remove(prefix + ".rec")
        os.remove(prefix + ".idx")
    return rows


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def section(rows: list[dict]) -> str:
    lines = ["## Start-up against the training data's size (issue 13)", "",
             "Work before the first process of a local 2-worker launch (planning with the data's labels, then the "
             f"run folder and any shards), timed in a child process; 100 KB records; {REPEATS} runs each, median "
             "(min-max). Cold: a new cache and the page cache dropped; warm: a relaunch right after. Baseline: the "
             f"launcher before header-only reads and in-place parts ({BASELINE}), same run.", "",
             "| data | records | code | cold s | cold s/GB | warm s | warm s/GB | cache after | cold / baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["gb"]: r for r in rows if r["code"] == "baseline"}
    for r in rows:
        cold, warm = statistics.median(r["cold"]), statistics.median(r["warm"])
        lines.append(f"| {r['gb']:.1f} GB | {r['records']:,} | {r['code']} | {_spread(r['cold'])} | "
                     f"{cold / r['gb']:.3f} | {_spread(r['warm'])} | {warm / r['gb']:.3f} | "
                     f"{r['cache_bytes'] / 1e9:.2f} GB | {cold / statistics.median(base[r['gb']]['cold']):.2f} |")
    mine = sorted((r for r in rows if r["code"] == "mxft"), key=lambda r: r["gb"])
    worst = max(max(max(r["cold"]), max(r["warm"])) / r["gb"] for r in mine)
    slope = ((statistics.median(mine[-1]["cold"]) - statistics.median(mine[0]["cold"]))
             / (mine[-1]["gb"] - mine[0]["gb"])) if len(mine) > 1 else float("nan")
    copied = max(r["cache_bytes"] for r in mine)
    lines += ["", f"Goal: under 0.2 s per GB cold or warm, and no copy of the data on one machine. Slowest run here "
                  f"{worst:.3f} s/GB (a fixed cost of imports and the checkpoint check weighs most on the smallest "
                  f"file); cold cost per added GB {slope:.3f} s: **{'met' if worst < 0.2 else 'NOT met'}**. The cache "
                  f"holds at most {copied / 1e6:.1f} MB after a launch (the trimmed checkpoint, no shard): "
                  f"**{'met' if copied < 0.01 * mine[0]['gb'] * 1e9 else 'NOT met'}**.", "",
              f"Measured {provenance()}."]
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("MXFT_BENCH_DIR", "/var/tmp")) as work:
        baseline = os.path.join(work, "baseline")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", baseline, BASELINE], check=True,
                       capture_output=True)
        try:
            rows = measure(work, baseline)
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", baseline], check=False,
                           capture_output=True)
    text = section(rows)
    write_section("startup", text)
    print(text)


if __name__ == "__main__":
    main()
