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
import subprocess
import sys
import tempfile

from bench.report import ROOT, provenance, write_section

SIZES_GB = tuple(float(x) for x in os.environ.get("MXFT_STARTUP_GB", "0.5,2,8").split(","))
RECORD_BYTES = 100_000
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
            cache = tempfile.mkdtemp(dir=work, prefix=f"cache-{label}-")
            cold = timed(root, job, os.path.join(work, "runs", label, "cold"), cache, cold=True)
            warm = timed(root, job, os.path.join(work, "runs", label, "warm"), cache, cold=False)
            rows.append({"gb": data_bytes / 1e9, "records": records, "code": label, "cold": cold, "warm": warm})
            print(f"[bench] startup {size:g} GB {label}: cold {cold['total_s']:.2f} s, warm {warm['total_s']:.2f} s, "
                  f"cache {cold['cache_bytes'] / 1e9:.2f} GB", flush=True)
            subprocess.run(["rm", "-rf", cache, os.path.join(work, "runs")], check=True)
        os.remove(prefix + ".rec")
        os.remove(prefix + ".idx")
    return rows


def section(rows: list[dict]) -> str:
    lines = ["## Start-up against the training data's size (issue 13)", "",
             "Work before the first process of a local 2-worker launch (planning with the data's labels, then the "
             "run folder and any shards), timed in a child process; 100 KB records. Cold: a new cache and the page "
             f"cache dropped; warm: a relaunch. Baseline: the launcher before this change ({BASELINE}), same run.", "",
             "| data | records | code | cold s | cold s/GB | warm s | warm s/GB | cache after | cold / baseline |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["gb"]: r for r in rows if r["code"] == "baseline"}
    for r in rows:
        ratio = r["cold"]["total_s"] / base[r["gb"]]["cold"]["total_s"]
        lines.append(f"| {r['gb']:.1f} GB | {r['records']:,} | {r['code']} | {r['cold']['total_s']:.2f} | "
                     f"{r['cold']['total_s'] / r['gb']:.3f} | {r['warm']['total_s']:.2f} | "
                     f"{r['warm']['total_s'] / r['gb']:.3f} | {r['cold']['cache_bytes'] / 1e9:.2f} GB | {ratio:.2f} |")
    mine = [r for r in rows if r["code"] == "mxft"]
    worst = max(max(r["cold"]["total_s"], r["warm"]["total_s"]) / r["gb"] for r in mine)
    copied = max(r["cold"]["cache_bytes"] for r in mine)
    lines += ["", f"Goal: under 0.2 s per GB cold or warm, and no copy of the data on one machine. Worst here "
                  f"{worst:.3f} s/GB: **{'met' if worst < 0.2 else 'NOT met'}**; the cache holds at most "
                  f"{copied / 1e6:.1f} MB after a launch (the trimmed checkpoint; no shard): "
                  f"**{'met' if copied < 0.01 * min(r['gb'] for r in mine) * 1e9 else 'NOT met'}**.", "",
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
