"""Evaluation shared by all workers against worker 0 alone (issue 15, item 5), on the demo.

``train.evaluation: shared`` (the default) averages the workers' BatchNorm statistics
through the kvstore and lets each worker evaluate a part of the validation set;
``worker0`` is the former way (worker 0 evaluates the whole set with its own
statistics). Each seed runs ``jobs/demo.yaml`` both ways (interleaved, so load drifts hit
both alike); the table gives the final validation accuracy (min / median / max), the
median per-seed change, and the evaluation's wall time per epoch (``val_s``, worker 0).

``python -m bench evaluation``; ``MXFT_DEMO_SEEDS=N`` runs N seeds instead of 10.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile

from bench.demo_seeds import SEEDS, run_demo
from bench.report import provenance, write_section

MODES = ("worker0", "shared")


def _evaluation_seconds(run_root: str, seed: int) -> float:
    """Mean evaluation time per epoch of the newest run of this seed (worker 0's records)."""
    name = f"seed{seed}-0"
    latest = max((os.path.join(run_root, d) for d in os.listdir(run_root) if d.startswith(name + "-")),
                 key=os.path.getmtime)
    with open(os.path.join(latest, "result.json"), encoding="utf-8") as handle:
        epochs = json.load(handle)["epochs"]
    return statistics.mean(e["val_s"] for e in epochs)


def main() -> None:
    accuracy: dict[str, list[float]] = {mode: [] for mode in MODES}
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as work:
        for seed in range(1, SEEDS + 1):
            for mode in MODES:
                accuracy[mode].append(run_demo(seed, {}, work, sets=(f"train.evaluation={mode}",)))
                seconds[mode].append(_evaluation_seconds(work, seed))
                print(f"[bench] seed {seed} {mode}: {accuracy[mode][-1]:.4f} ({seconds[mode][-1]:.3f} s)", flush=True)
    change = [s - w for s, w in zip(accuracy["shared"], accuracy["worker0"])]
    lines = ["## Evaluation shared by the workers (averaged BatchNorm statistics)", "",
             f"`jobs/demo.yaml` (2 workers, 846 validation images), seeds 1..{SEEDS}, each run with "
             "`train.evaluation: worker0` (worker 0 alone, its own BatchNorm statistics) and `shared` (statistics "
             "averaged over the workers through the kvstore, each worker evaluates half). Final validation "
             "accuracy, and evaluation wall time per epoch on worker 0.", "",
             "| evaluation | runs | min | median | max | evaluation s/epoch (mean) |", "|---|---|---|---|---|---|"]
    for mode in MODES:
        values = accuracy[mode]
        lines.append(f"| {mode} | {len(values)} | {min(values):.3f} | {statistics.median(values):.3f} | "
                     f"{max(values):.3f} | {statistics.mean(seconds[mode]):.3f} |")
    ratio = statistics.mean(seconds["shared"]) / statistics.mean(seconds["worker0"])
    lines += ["", f"Change per seed (shared - worker0): median {statistics.median(change):+.3f}, "
                  f"min {min(change):+.3f}, max {max(change):+.3f}. Evaluation time shared / worker0: {ratio:.2f} "
                  "(2 workers on 2 cores; the averaging adds two kvstore round trips per epoch).",
              "", f"Measured {provenance()}."]
    write_section("evaluation", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
