"""Aligned steps in the trainer (issue 13): ResNet-50 fine-tuned end to end on limited links, with and without
``cluster.align_steps``.

``bench.network`` found that a push+pull loop with no compute between steps runs at 1.4x its
bound free-running and 1.2x when every worker waits for the others after each step. Whether the
trainer gains the same depends on its compute between steps, and on what the barrier costs: the
overlap of the last pulls with the next forward pass. The demo's gradients (0.3 MB) are too small
to tell, so this trains a network whose gradients dominate: the pre-activation ResNet-50 of
``bench.synthetic`` (random weights, every layer trained, 94 MB of gradients) on the demo's digits
at 28x28, where a step's compute is about 0.2 s on this machine and its push+pull bound 2.6 s.

Three namespace hosts on links of ``RATE_MBIT`` each way (``tc tbf``), one worker and one server
per host, mxft's defaults otherwise. The demo's 846 validation images are the training set (18
steps of 16 images per worker), its 50 training images the validation set; one epoch per run,
aligned and free-running runs alternated ``ROUNDS`` times. A step is the epoch's time (worker 0's
own clock, evaluation excluded) over its steps.

``python -m bench aligned_steps`` (root; about 6 minutes); ``MXFT_ALIGN_MBIT`` sets the rate.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys

from bench.end_to_end import run_demo
from bench.network import limited_hosts, t_min_s
from bench.report import ROOT, provenance, spread, write_section
from launcher.paramsfile import ParamsLayout, read_layout

RATE_MBIT = float(os.environ.get("MXFT_ALIGN_MBIT", "400"))
ROUNDS = int(os.environ.get("MXFT_ALIGN_ROUNDS", "2"))
HOSTS = 3
BATCH = 16
MODES = (("free-running", False), ("aligned", True))


def digits_dir() -> str:
    """The demo's files (built if missing): its validation set trains here, its training set validates."""
    folder = os.path.join(os.environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft"), "digits")
    subprocess.run([sys.executable, "-m", "launcher.demo_assets", folder], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
    return folder


def resnet50_checkpoint(work: str) -> tuple[str, int]:
    """The synthetic ResNet-50 with a 5-class fc1 (the demo's classes): its prefix, and its gradients' bytes
    (every argument array's bytes: each is trained)."""
    folder = os.path.join(work, "resnet50")
    subprocess.run([sys.executable, "-m", "bench.synthetic", folder, "--depth", "50", "--classes", "5"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
    prefix = os.path.join(folder, "resnet-50")
    layout = read_layout(prefix + "-0000.params")
    assert isinstance(layout, ParamsLayout), layout
    gradient_bytes = sum(span.end - span.start for name, span in zip(layout.names, layout.arrays)
                         if name.startswith("arg:"))
    return prefix, gradient_bytes


def step_seconds(cluster, work: str, prefix: str, digits: str, *, aligned: bool) -> float:
    result, plan = run_demo(cluster, work, HOSTS, sets=(
        f"model.prefix={prefix}", f"data.train={os.path.join(digits, 'digits5to9-val.rec')}",
        f"data.val={os.path.join(digits, 'digits5to9-train.rec')}", "train.epochs=1",
        f"train.batch_per_device={BATCH}", "train.log_every_batches=100", f"cluster.align_steps={str(aligned).lower()}"))
    return result["epochs"][0]["epoch_s"] / plan["recipe"]["batches_per_epoch"]


def measure() -> dict:
    digits = digits_dir()
    steps: dict[str, list[float]] = {label: [] for label, _ in MODES}
    with limited_hosts(RATE_MBIT) as (cluster, work):
        prefix, gradient_bytes = resnet50_checkpoint(work)
        for _ in range(ROUNDS):
            for label, aligned in MODES:
                steps[label].append(step_seconds(cluster, work, prefix, digits, aligned=aligned))
                print(f"[bench] aligned_steps {label}: {steps[label]}", flush=True)
    return {"steps": steps, "mb": gradient_bytes / 1e6, "t_min_s": t_min_s(gradient_bytes, HOSTS, RATE_MBIT)}


def section(measured: dict) -> str:
    steps, t_min = measured["steps"], measured["t_min_s"]
    free = steps["free-running"]
    ratios = [a / f for a, f in zip(steps["aligned"], free)]
    lines = ["## Aligned steps in the trainer: ResNet-50 end to end (issue 13)", "",
             f"The pre-activation ResNet-50 of `bench.synthetic` (random weights, every layer trained, "
             f"{measured['mb']:.0f} MB of gradients) fine-tuned on the demo's 846 digit images at 28x28, "
             f"{BATCH} per worker, one worker and one server on each of {HOSTS} namespace hosts, links limited to "
             f"{RATE_MBIT:g} Mbit/s each way (`tc tbf`); one epoch per run, {ROUNDS} alternating rounds. A step is "
             "worker 0's epoch time over its steps; t_min = 2·G·(H−1)/(H·B), the push+pull bound.", "",
             "| cluster.align_steps | step s median (runs) | t_min s | step / t_min | step / free-running step |",
             "|---|---|---|---|---|"]
    for label, _ in MODES:
        values = steps[label]
        relative = ratios if label == "aligned" else [1.0] * len(values)
        lines.append(f"| {label} | {statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)}) | "
                     f"{t_min:.2f} | {statistics.median(values) / t_min:.2f} | {spread(relative, '{:.2f}')} |")
    better = max(ratios) < 1
    lines += ["", f"Aligned over free-running, per round: {', '.join(f'{r:.2f}' for r in ratios)}. "
                  + ("Every round faster aligned: `cluster.align_steps` pays here." if better else
                     "Not faster in every round: no gain shown."),
              "", f"Measured {provenance()}."]
    return "\n".join(lines)


def main() -> None:
    text = section(measure())
    write_section("aligned_steps", text)
    print(text)


if __name__ == "__main__":
    main()
