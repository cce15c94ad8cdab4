"""Gradient compression (issue 13, item 5): step time on a limited network, and the demo's accuracy.

Step time: three namespace hosts on links limited to ``RATE_MBIT`` each way (as ``bench.network``),
one worker and one server per host, mxft's bigarray bound, the fine-tuned ResNet-50's gradient
shapes pushed and pulled by ``bench/programs/kvstore_step.py`` with and without MXNet's 2bit
compression (threshold 0.5), alternated ``ROUNDS`` times so both see the same machine. With
compression a push carries 1/16 of the bytes and a pull all of them, so its lower bound is
``(1 + 1/16) / 2`` of the uncompressed ``t_min``.

Accuracy: ``jobs/demo.yaml`` (two workers on this machine, ``train.evaluation: worker0``, which
compression needs) over ``SEEDS`` seeds, with and without ``cluster.gradient_compression``.

``python -m bench compression`` (root; about 8 minutes); ``MXFT_NET_MBIT`` sets the rate.
"""
from __future__ import annotations

import math
import os
import statistics
import tempfile

from bench.demo_seeds import run_demo
from bench.network import MXFT_BOUND, RATE_MBIT, STEPS, bench_program, limited_hosts, step_times, t_min_s
from bench.report import provenance, write_section

THRESHOLD = 0.5
ROUNDS = 2
SEEDS = int(os.environ.get("MXFT_DEMO_SEEDS", "5"))
WORKER0 = ("train.evaluation=worker0", "expect.min_accuracy=0")
COMPRESSED = ("cluster.gradient_compression.type=2bit", f"cluster.gradient_compression.threshold={THRESHOLD}")


def measure_steps() -> dict:
    """Step seconds with and without compression, ``ROUNDS`` alternations of ``STEPS`` steps each."""
    steps: dict[str, list[float]] = {"none": [], "2bit": []}
    with limited_hosts(RATE_MBIT) as (cluster, work):
        program, shapes = bench_program(work, depths=(50,))
        for _ in range(ROUNDS):
            for label, extra in (("none", ()), ("2bit", ("--compression", str(THRESHOLD)))):
                steps[label] += step_times(cluster, work, os.path.join(program, "shapes-50.json"), hosts=3,
                                           servers=3, bound=MXFT_BOUND, extra=extra)
                print(f"[bench] compression {label}: {steps[label]}", flush=True)
    gradient_bytes = 4 * sum(math.prod(s) for s in shapes[50])
    return {"steps": steps, "t_min_s": t_min_s(gradient_bytes, 3, RATE_MBIT), "mb": gradient_bytes / 1e6}


def measure_accuracy() -> dict[str, list[float]]:
    accuracy: dict[str, list[float]] = {"none": [], "2bit": []}
    with tempfile.TemporaryDirectory() as runs:
        for seed in range(1, SEEDS + 1):
            accuracy["none"].append(run_demo(seed, {}, runs, sets=WORKER0))
            accuracy["2bit"].append(run_demo(seed, {}, runs, sets=WORKER0 + COMPRESSED))
            print(f"[bench] demo seed {seed}: none {accuracy['none'][-1]:.4f}, 2bit {accuracy['2bit'][-1]:.4f}",
                  flush=True)
    return accuracy


def section(steps: dict, accuracy: dict[str, list[float]]) -> str:
    t_min = steps["t_min_s"]
    bounds = {"none": t_min, "2bit": t_min * (1 + 1 / 16) / 2}
    lines = ["## Gradient compression (issue 13)", "",
             f"Step time: ResNet-50's {steps['mb']:.0f} MB of gradients, 3 namespace hosts on {RATE_MBIT:g} Mbit/s "
             f"links (`tc tbf`), one worker and server per host, bigarray bound {MXFT_BOUND:,}; {ROUNDS} alternating "
             f"rounds of {STEPS} steps each (`bench/programs/kvstore_step.py --compression {THRESHOLD}`). Keys move as "
             "the trainer moves them: one pushpull each uncompressed, a push then a pull compressed (MXNet 1.9 "
             "refuses pushpull with compression). A compressed push carries 1/16 of the bytes, a pull all of them: "
             "its bound is (1 + 1/16) / 2 of t_min.", "",
             "| compression | step s median (min-max) | bound s | step / bound | step / uncompressed step |",
             "|---|---|---|---|---|"]
    base = statistics.median(steps["steps"]["none"])
    for label in ("none", "2bit"):
        values = steps["steps"][label]
        lines.append(f"| {label if label == 'none' else f'2bit, threshold {THRESHOLD}'} | "
                     f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) | {bounds[label]:.2f} | "
                     f"{statistics.median(values) / bounds[label]:.2f} | {statistics.median(values) / base:.2f} |")
    diffs = [c - n for n, c in zip(accuracy["none"], accuracy["2bit"])]
    lines += ["", f"The demo's accuracy (`jobs/demo.yaml`, 2 workers here, `train.evaluation: worker0`), seeds 1-{SEEDS}:",
              "", "| compression | min | median | max |", "|---|---|---|---|"]
    for label in ("none", "2bit"):
        values = accuracy[label]
        lines.append(f"| {label} | {min(values):.3f} | {statistics.median(values):.3f} | {max(values):.3f} |")
    lines += ["", f"Per seed, compressed minus uncompressed: median {statistics.median(diffs):+.3f}, range "
                  f"{min(diffs):+.3f} to {max(diffs):+.3f}. The demo's gradients are small (its network is a few MB), "
                  "so its step time says nothing about compression; the step table does.", "",
              f"Measured {provenance()}."]
    return "\n".join(lines)


def main() -> None:
    accuracy = measure_accuracy()
    steps = measure_steps()
    text = section(steps, accuracy)
    write_section("compression", text)
    print(text)


if __name__ == "__main__":
    main()
