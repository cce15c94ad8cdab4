"""Start-up against the size of the training data (issue 13, item 7): seconds per GB before the first process.

A training ``.rec`` of 100 KB records (an image header with a label, then incompressible
bytes: what a JPEG costs on disk) is written at each of ``SIZES_GB``; the demo's checkpoint
and validation set complete the job. For each size, a local launch's work before any process
starts (``plan_attempt``: the job, the data's labels and the plan; ``stage_local``: the run
folder, configs, trimmed params and, where needed, shards) is timed in a child process:

- a first launch, cold: a new cache folder and the page cache dropped first
  (``/proc/sys/vm/drop_caches``); once without the ``.lst`` beside the ``.rec`` and once with it
  (``launcher.data.labelsource``: its labels, checked against a sample of the records);
- a relaunch after a reboot: the cache folder the last launch left, the page cache dropped;
- a warm relaunch: the same cache again, the data just read.

Both for this code and for the baseline, the launcher as it was before header-only reads and
in-place parts (``BASELINE``, checked out with ``git worktree``), in the same run. The probe
freezes the cycle collector first, as ``launcher.cli.main`` does, for both. Disk use: what the
cache folder holds afterwards.

``python -m bench startup`` (root, for dropping the page cache; about 10 minutes and 11 GB of disk).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.report import ROOT, demo_assets_dir, provenance, spread, write_section

SIZES_GB = tuple(float(x) for x in os.environ.get("MXFT_STARTUP_GB", "0.5,2,8").split(","))
RECORD_BYTES = 100_000
REPEATS = 3
SETTLING_RUNS = 2  # cold first launches after writing the data, before any that counts
BASELINE = os.environ.get("MXFT_STARTUP_BASELINE", "d33b4e6")  # the last commit before header-only reads

# Runs in a child with PYTHONPATH at a code tree: the work a launch does before its first process.
PROBE = r"""
import json, os, sys, time
from cluster.ssh import SSHOptions
from launcher.run.kinds import stage_local
from launcher.spec.jobspec import load_job
from launcher.run.launch import Attempt, LaunchConfig, _hosts, plan_attempt
job_path, run_root, cache = sys.argv[1:4]
import gc; gc.freeze()  # as launcher.cli.main does first
started = time.perf_counter()
config = LaunchConfig(job_path, None, False, run_root, cache, "~/.mxft", SSHOptions())
spec = load_job(job_path)
plan = plan_attempt(config, spec, _hosts(config), Attempt("startup", os.path.join(run_root, "startup")))
planned = time.perf_counter()
stage_local(plan)
print(json.dumps({"plan_s": planned - started, "stage_s": time.perf_counter() - planned}))
"""


def write_data(prefix: str, size_gb: float) -> int:
    """``size_gb`` of 100 KB records with labels 0-4 in a shuffled-looking order, and the ``.lst`` im2rec would
    have packed them from; returns the record count."""
    sys.path.insert(0, ROOT)
    from launcher.data.recfile import RecordWriter
    count = int(size_gb * 1e9 / RECORD_BYTES)
    filler = os.urandom(RECORD_BYTES - 40)
    writer = RecordWriter(prefix)
    with open(prefix + ".lst", "w", encoding="utf-8") as lst:
        for key in range(count):
            writer.write(key.to_bytes(8, "little") + filler, float((key * 7) % 5), key)
            lst.write(f"{key}\t{float((key * 7) % 5):f}\tclass{(key * 7) % 5}/{key:08d}.jpg\n")
    writer.close()
    return count


def job_file(work: str, train_prefix: str) -> str:
    """The demo's checkpoint, a copy of its validation set with the ``.lst`` it would have been packed from
    (``VAL_PREFIX``), and the training data at ``train_prefix``."""
    from launcher.data import recfile
    assets = demo_assets_dir()
    val = os.path.join(work, VAL_PREFIX)
    for suffix in (".rec", ".idx"):
        shutil.copy(os.path.join(assets, "digits5to9-val" + suffix), val + suffix)
    spans = recfile.read_index(val + ".rec")
    with open(val + ".lst", "w", encoding="utf-8") as lst:
        lst.writelines(f"{span.key}\t{label:f}\tval/{span.key}.png\n"
                       for span, label in zip(spans, recfile.read_labels(val + ".rec", spans)))
    path = os.path.join(work, "job.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"name: startup\nnum_classes: 5\nmodel: {{prefix: {assets}/pretrained-digits0to4}}\n"
                     f"data: {{train: {train_prefix}.rec, val: {val}.rec, shape: [3, 28, 28]}}\n"
                     "cluster: {workers: 2, servers: 1, devices: cpu}\n")
    return path


VAL_PREFIX = "val"


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


# (column, cache kept from the last launch, page cache dropped, the .lst beside the .rec)
SCENARIOS = (("first", False, True, False), ("first_lst", False, True, True),
             ("reboot", True, True, True), ("warm", True, False, True))
BASELINE_SCENARIOS = ("first", "warm")   # it reads no .lst and keeps no labels: the other two are its first launch


def measure(work: str, baseline_root: str) -> list[dict]:
    rows = []
    for size in SIZES_GB:
        prefix = os.path.join(work, f"train-{size:g}gb")
        records = write_data(prefix, size)
        job = job_file(work, prefix)
        data_bytes = os.path.getsize(prefix + ".rec")
        _place_list(prefix, present=False)
        for _ in range(SETTLING_RUNS):  # the disk is still busy with the data just written: not counted
            timed(ROOT, job, os.path.join(work, "runs", "settling"), tempfile.mkdtemp(dir=work, prefix="cache-"),
                  cold=True)
        for label, root in (("mxft", ROOT), ("baseline", baseline_root)):  # the baseline's copies written last
            times: dict[str, list[float]] = {}
            cache_bytes = 0
            for _ in range(REPEATS):
                cache = None
                for column, keep_cache, cold, with_lst in SCENARIOS:
                    if label == "baseline" and column not in BASELINE_SCENARIOS:
                        continue
                    if not keep_cache:
                        cache = tempfile.mkdtemp(dir=work, prefix=f"cache-{label}-")
                    for listed in (prefix, os.path.join(work, VAL_PREFIX)):
                        _place_list(listed, present=with_lst)
                    got = timed(root, job, os.path.join(work, "runs", label, column), cache, cold=cold)
                    times.setdefault(column, []).append(got["total_s"])
                    cache_bytes = max(cache_bytes, got["cache_bytes"])
                subprocess.run(["rm", "-rf", os.path.join(work, "runs")], check=True)
            rows.append({"gb": data_bytes / 1e9, "records": records, "code": label, **times,
                         "cache_bytes": cache_bytes})
            print(f"[bench] startup {size:g} GB {label}: {rows[-1]}", flush=True)
        _place_list(prefix, present=True)
        for path in [prefix + ".rec", prefix + ".idx", prefix + ".lst"] + glob.glob(os.path.join(work, "cache-*")):
            subprocess.run(["rm", "-rf", path], check=True)
    return rows


def _place_list(prefix: str, *, present: bool) -> None:
    """Put the ``.lst`` beside the ``.rec``, or out of the launcher's sight."""
    here, away = prefix + ".lst", prefix + ".lst.away"
    if os.path.exists(away if present else here):
        os.rename(*((away, here) if present else (here, away)))


COLUMNS = (("first", "first launch, cold"), ("first_lst", "first launch with the .lst, cold"),
           ("reboot", "relaunch, cold (after a reboot)"), ("warm", "relaunch, warm"))


def _cell(row: dict, column: str) -> str:
    values = row.get(column)
    if not values:
        return "-"
    return f"{spread(values, '{:.2f}')} s, {statistics.median(values) / row['gb']:.3f}/GB"


def section(rows: list[dict]) -> str:
    lines = ["## Start-up against the training data's size (issue 13)", "",
             "Work before the first process of a local 2-worker launch (planning with the data's labels, then the "
             f"run folder and any shards), timed in a child process; 100 KB records; {REPEATS} runs each, median "
             f"(min-max) seconds and seconds per GB, after {SETTLING_RUNS} uncounted cold first launches that let the "
             "disk finish with the data just written. Cold: the page cache dropped first; a first launch has a new "
             "cache folder, a relaunch the one its last launch left (the label cache). The .lst files (training and "
             "validation set) are the ones im2rec would have packed the files from. Baseline: the launcher before "
             f"header-only reads and in-place parts ({BASELINE}), same run; it reads no .lst and keeps no labels.", "",
             "| data | records | code | " + " | ".join(title for _, title in COLUMNS) + " | cache after | "
             "first launch / baseline |", "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|"]
    base = {r["gb"]: r for r in rows if r["code"] == "baseline"}
    for r in sorted(rows, key=lambda r: (r["gb"], r["code"] != "baseline")):
        ratio = statistics.median(r["first"]) / statistics.median(base[r["gb"]]["first"])
        lines.append(f"| {r['gb']:.1f} GB | {r['records']:,} | {r['code']} | "
                     + " | ".join(_cell(r, column) for column, _ in COLUMNS)
                     + f" | {r['cache_bytes'] / 1e6:.1f} MB | {ratio:.2f} |")
    lines += ["", *verdict(sorted((r for r in rows if r["code"] == "mxft"), key=lambda r: r["gb"])), "",
              f"Measured {provenance()}."]
    return "\n".join(lines)


def verdict(mine: list[dict]) -> list[str]:
    """The goal, said plainly: with the .lst files and on relaunches, and for a first launch without them."""
    def worst(columns):
        return max(max(r[c]) / r["gb"] for r in mine for c in columns)
    listed = worst(("first_lst", "reboot", "warm"))
    slope = ((statistics.median(mine[-1]["first"]) - statistics.median(mine[0]["first"]))
             / (mine[-1]["gb"] - mine[0]["gb"])) if len(mine) > 1 else float("nan")
    copied = max(r["cache_bytes"] for r in mine)
    bare = [(r["gb"], max(r["first"]) / r["gb"]) for r in mine]
    met = [f"{gb:g} GB" for gb, slowest in bare if slowest < 0.2]
    missed = [f"{gb:g} GB" for gb, slowest in bare if slowest >= 0.2]
    return [f"Goal: under 0.2 s per GB cold or warm. A first launch with the .lst files, and every relaunch (cold or "
            f"warm): slowest run {listed:.3f} s/GB, **{'met' if listed < 0.2 else 'NOT met'}**. A first launch without "
            "the .lst files reads one header per record (one random page read each, requested ahead), slowest run "
            + ", ".join(f"{slowest:.3f} s/GB at {gb:g} GB" for gb, slowest in bare)
            + f" ({slope:.3f} s per added GB: {mine[-1]['records'] / mine[-1]['gb'] / slope:,.0f} records/s): "
            + (f"**met** at {', '.join(met)}" if met else "")
            + ("; " if met and missed else "")
            + (f"**NOT met** at {', '.join(missed)}" if missed else "") + ".", "",
            f"No copy of the data on one machine: the cache holds at most {copied / 1e6:.1f} MB after a launch (the "
            f"trimmed checkpoint and 4 bytes of label per record, no shard): "
            f"**{'met' if copied < 0.01 * mine[0]['gb'] * 1e9 else 'NOT met'}**."]


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
