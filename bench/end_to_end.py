"""The demo end to end on 1, 2 and 3 hosts with limited links (issue 13, item 6).

Namespace hosts (testing/netns.py) on links limited to ``RATE_MBIT`` each way with ``tc tbf``,
low enough that the demo's small network (about 80,000 parameters, 0.3 MB of gradients)
takes as long to cross them as a step takes to compute. ``jobs/demo.yaml`` runs with one
worker (one CPU context) and one server per host, ``train.step_timing`` on: each worker
times its steps' compute (forward and backward, finished) and communication (push, pull and
the update, finished). An epoch is the whole training set whatever the hosts, so images/s is
its images over the epoch's time (epochs after the first), scaling efficiency is the one-host
epoch time over hosts x epoch time, and t_min is the push+pull bound 2·G·(H−1)/(H·B) of
``bench.network``.

The two cores of this machine are shared by every host, so compute per step grows with the
hosts too: the split shows how much of the loss of efficiency is the link and how much the CPU.

``python -m bench end_to_end`` (root; about 4 minutes); ``MXFT_E2E_MBIT`` sets the rate.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench.network import limited_hosts, t_min_s
from bench.report import ROOT, demo_assets_dir, provenance, write_section

RATE_MBIT = float(os.environ.get("MXFT_E2E_MBIT", "20"))
EPOCHS = 6


def run_demo(cluster, work: str, hosts: int, *,
             sets: tuple[str, ...] = ("train.step_timing=true", f"train.epochs={EPOCHS}")) -> tuple[dict, dict]:
    """The demo (with ``sets``) on the first ``hosts`` namespace hosts, one worker each; its result.json and
    plan.json."""
    hosts_file = os.path.join(work, f"hosts{hosts}.txt")
    with open(hosts_file, "w", encoding="utf-8") as handle:
        handle.writelines(f"{h.address} python={sys.executable}\n" for h in cluster.hosts[:hosts])
    runs = tempfile.mkdtemp(prefix=f"runs{hosts}-", dir=work)
    sets = (f"cluster.workers={hosts}", "cluster.servers=auto", "expect.min_accuracy=0", *sets)
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", os.path.join(ROOT, "jobs", "demo.yaml"), "--hosts", hosts_file,
         "--ssh-config", cluster.ssh_config, "--remote-dir", "/srv/mxft-host", "--run-root", runs,
         *[arg for item in sets for arg in ("--set", item)]],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"demo on {hosts} hosts failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    (run_dir,) = [os.path.join(runs, d) for d in os.listdir(runs)]
    with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as result, \
            open(os.path.join(run_dir, "plan.json"), encoding="utf-8") as plan:
        return json.load(result), json.load(plan)


def _count(positions) -> int:
    """Records of a shard as plan.json holds them: a list, or a range as {start, stop, step}."""
    return len(range(positions["start"], positions["stop"], positions["step"])) if isinstance(positions, dict) \
        else len(positions)


def row(hosts: int, result: dict, plan: dict, gradient_bytes: int) -> dict:
    """Epochs after the first (which holds every engine's and connection's start-up); real images only, not the
    padding that rounds each worker's part up to whole batches."""
    epochs = [e["epoch_s"] for e in result["epochs"][1:]]
    steps = plan["recipe"]["batches_per_epoch"]
    images = sum(_count(shard["positions"]) for shard in plan["recipe"]["shards"])
    median = statistics.median(epochs)
    return {"hosts": hosts, "epoch_s": median, "epoch_range": (min(epochs), max(epochs)), "steps": steps,
            "images_per_s": images / median,
            "compute_ms": statistics.median(e["compute_s"] for e in result["epochs"][1:]) / steps * 1000,
            "communication_ms": statistics.median(e["communication_s"] for e in result["epochs"][1:]) / steps * 1000,
            "step_ms": median / steps * 1000, "t_min_ms": t_min_s(gradient_bytes, hosts, RATE_MBIT) * 1000,
            "val_accuracy": result["val_accuracy"]}


def section(rows: list[dict], gradient_bytes: int) -> str:
    one = rows[0]["epoch_s"]
    lines = ["## The demo end to end on limited links (issue 13)", "",
             f"`jobs/demo.yaml` ({gradient_bytes / 1e6:.2f} MB of gradients) with one worker and one server per "
             f"namespace host, links limited to {RATE_MBIT:g} Mbit/s each way (`tc tbf`), {EPOCHS} epochs, "
             "`train.step_timing` on (its waits remove the overlap of compute and communication, so these steps "
             f"are slower than untimed ones); medians over epochs 2-{EPOCHS} of worker 0's own timing. An epoch is "
             "the whole training set (50 images) whatever the hosts: images/s counts those, not the padding of the "
             "last batch; scaling efficiency is epoch time on 1 host / (hosts x epoch time).", "",
             "| hosts | epoch s (min-max) | images/s | scaling efficiency | steps | step ms | compute ms | "
             "communication ms | t_min ms | val accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['hosts']} | {r['epoch_s']:.3f} ({r['epoch_range'][0]:.3f}-{r['epoch_range'][1]:.3f}) | "
                     f"{r['images_per_s']:.0f} | {one / (r['hosts'] * r['epoch_s']):.2f} | {r['steps']} | "
                     f"{r['step_ms']:.0f} | {r['compute_ms']:.0f} | {r['communication_ms']:.0f} | "
                     f"{r['t_min_ms']:.0f} | {r['val_accuracy']:.3f} |")
    lines += ["", "The hosts share this machine's 2 cores: compute per step grows with them, which the link does "
                  "not explain; communication above t_min is ps-lite's own cost (and CPU) on top of the link.", "",
              f"Measured {provenance()}."]
    return "\n".join(lines)


def main() -> None:
    params = os.path.join(demo_assets_dir(), "pretrained-digits0to4-0000.params")
    gradient_bytes = os.path.getsize(params)  # float32 weights: about the gradients' bytes
    rows = []
    with limited_hosts(RATE_MBIT) as (cluster, work):
        for hosts in (1, 2, 3):
            rows.append(row(hosts, *run_demo(cluster, work, hosts), gradient_bytes))
            print(f"[bench] end to end {hosts} host(s): {rows[-1]}", flush=True)
    text = section(rows, gradient_bytes)
    write_section("end_to_end", text)
    print(text)


if __name__ == "__main__":
    main()
