"""The demo's final accuracy over seeds and two numeric paths: how much margin ``make demo`` has.

The same seed and assets give different accuracies on different CPUs (another vector unit,
another MKLDNN kernel). ``MXNET_SUBGRAPH_BACKEND=NONE`` switches off MXNet's fused CPU
kernels and ``MXNET_MKLDNN_ENABLED=0`` its MKLDNN kernels altogether, which stand in for
"another machine" here. Each of ``SEEDS`` runs ``jobs/demo.yaml`` with
``--set train.seed=S`` on each path; the table gives
min / median / max and the worst run's margin over the job's own ``expect.min_accuracy``
(goal: at least 5 points).

``python -m bench demo_seeds``; ``MXFT_DEMO_SEEDS=N`` runs N seeds instead of 10.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import yaml

from bench.report import ROOT, provenance, write_section

SEEDS = int(os.environ.get("MXFT_DEMO_SEEDS", "10"))
PATHS = (("default (MKLDNN, fused subgraphs)", {}),
         ("MXNET_SUBGRAPH_BACKEND=NONE", {"MXNET_SUBGRAPH_BACKEND": "NONE"}),
         ("MXNET_MKLDNN_ENABLED=0 (plain CPU kernels)", {"MXNET_MKLDNN_ENABLED": "0"}))


def run_demo(seed: int, extra_env: dict[str, str], run_root: str, *, sets: tuple[str, ...] = ()) -> float:
    """One ``mxft-launch --local jobs/demo.yaml`` with this seed (and ``--set`` items); its validation accuracy."""
    return run_demo_kept(seed, extra_env, run_root, sets=sets)[0]


def run_demo_kept(seed: int, extra_env: dict[str, str], run_root: str, *,
                  sets: tuple[str, ...] = ()) -> tuple[float, float]:
    """The same: the validation accuracy at the end, and the best epoch's (which ``train.keep`` keeps too)."""
    name = f"seed{seed}-{len(extra_env)}-{len(sets)}"
    overrides = [arg for item in sets for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "launcher.cli", "--local", os.path.join(ROOT, "jobs", "demo.yaml"),
                    "--set", f"train.seed={seed}", "--set", f"name={name}", "--run-root", run_root, *overrides],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=ROOT, **extra_env))
    latest = max((os.path.join(run_root, d) for d in os.listdir(run_root) if d.startswith(name + "-")),
                 key=os.path.getmtime)
    with open(os.path.join(latest, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    return float(result["val_accuracy"]), max(float(e["val_accuracy"]) for e in result["epochs"])


def table(results: dict[str, list[tuple[float, float]]], min_accuracy: float) -> list[str]:
    lines = ["| run | runs | last epoch: min | median | max | best epoch (kept): min | median | max "
             "| worst last - min_accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for label, pairs in results.items():
        last, best = [p[0] for p in pairs], [p[1] for p in pairs]
        lines.append(f"| {label} | {len(pairs)} | {min(last):.3f} | {statistics.median(last):.3f} | "
                     f"{max(last):.3f} | {min(best):.3f} | {statistics.median(best):.3f} | {max(best):.3f} | "
                     f"{min(last) - min_accuracy:+.3f} |")
    return lines


SCHEDULE = ("train.lr_schedule.type=cosine",)  # the demo with a cosine schedule, on the default path


def main() -> None:
    with open(os.path.join(ROOT, "jobs", "demo.yaml"), encoding="utf-8") as handle:
        demo = yaml.safe_load(handle)
    min_accuracy = float(demo["expect"]["min_accuracy"])
    cases = [(label, env, ()) for label, env in PATHS] + [(f"{PATHS[0][0]}, `{SCHEDULE[0]}`", {}, SCHEDULE)]
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in cases}
    with tempfile.TemporaryDirectory() as work:
        for seed in range(1, SEEDS + 1):
            for label, extra_env, sets in cases:  # interleaved, so load drifts hit every case alike
                results[label].append(run_demo_kept(seed, extra_env, work, sets=sets))
                print(f"[bench] seed {seed} {label}: {results[label][-1]}", flush=True)
    worst = min(pair[0] for label, _, _ in cases[:len(PATHS)] for pair in results[label])
    lines = ["## Demo: accuracy over seeds and numeric paths", "",
             f"`jobs/demo.yaml` (`expect.min_accuracy: {min_accuracy}`) with `--set train.seed=S`, S = 1..{SEEDS}, "
             "on MXNet's default CPU path, with subgraph fusion off, and with MKLDNN off (other numeric paths, "
             "standing in for another CPU); and on the default path with a cosine learning-rate schedule. "
             "Validation accuracy at the end of the run, and of its best epoch, whose params the run keeps beside "
             "the last (`train.keep: both`; every worker evaluates a part, with their BatchNorm statistics "
             "averaged).", ""]
    lines += table(results, min_accuracy)
    verdict = "met" if worst - min_accuracy >= 0.05 else "NOT met"
    lines += ["", f"Worst run: {worst:.3f}, {worst - min_accuracy:+.3f} over `min_accuracy` "
                  f"(goal: at least +0.05): **{verdict}**.", "", f"Measured {provenance()}."]
    write_section("demo_seeds", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
