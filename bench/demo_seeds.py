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
    name = f"seed{seed}-{len(extra_env)}"
    overrides = [arg for item in sets for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "launcher.cli", "--local", os.path.join(ROOT, "jobs", "demo.yaml"),
                    "--set", f"train.seed={seed}", "--set", f"name={name}", "--run-root", run_root, *overrides],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=ROOT, **extra_env))
    latest = max((os.path.join(run_root, d) for d in os.listdir(run_root) if d.startswith(name + "-")),
                 key=os.path.getmtime)
    with open(os.path.join(latest, "result.json"), encoding="utf-8") as handle:
        return float(json.load(handle)["val_accuracy"])


def table(results: dict[str, list[float]], min_accuracy: float) -> list[str]:
    lines = ["| numeric path | runs | min | median | max | worst - min_accuracy |", "|---|---|---|---|---|---|"]
    for label, values in results.items():
        lines.append(f"| {label} | {len(values)} | {min(values):.3f} | {statistics.median(values):.3f} | "
                     f"{max(values):.3f} | {min(values) - min_accuracy:+.3f} |")
    return lines


def main() -> None:
    with open(os.path.join(ROOT, "jobs", "demo.yaml"), encoding="utf-8") as handle:
        demo = yaml.safe_load(handle)
    min_accuracy = float(demo["expect"]["min_accuracy"])
    results: dict[str, list[float]] = {label: [] for label, _ in PATHS}
    with tempfile.TemporaryDirectory() as work:
        for seed in range(1, SEEDS + 1):
            for label, extra_env in PATHS:  # interleaved, so load drifts hit both paths alike
                results[label].append(run_demo(seed, extra_env, work))
                print(f"[bench] seed {seed} {label}: {results[label][-1]:.4f}", flush=True)
    worst = min(min(values) for values in results.values())
    lines = ["## Demo: accuracy over seeds and numeric paths", "",
             f"`jobs/demo.yaml` (`expect.min_accuracy: {min_accuracy}`) with `--set train.seed=S`, S = 1..{SEEDS}, "
             "on MXNet's default CPU path, with subgraph fusion off, and with MKLDNN off (other numeric paths, "
             "standing in for another CPU). Validation accuracy at the end of the run (every worker evaluates a "
             "part, with their BatchNorm statistics averaged).", ""]
    lines += table(results, min_accuracy)
    verdict = "met" if worst - min_accuracy >= 0.05 else "NOT met"
    lines += ["", f"Worst run: {worst:.3f}, {worst - min_accuracy:+.3f} over `min_accuracy` "
                  f"(goal: at least +0.05): **{verdict}**.", "", f"Measured {provenance()}."]
    write_section("demo_seeds", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
