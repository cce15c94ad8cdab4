"""Fine-tuning the demo vs training the same network from scratch, same data and budget.

Both runs are the shipped ``jobs/demo.yaml`` (2 workers, 1 server, its epochs, 50
training images); the scratch run uses ``model.variant: scratch`` and, to be fair to
it, the best learning rate of a small sweep. The tutorial's other variant, the
frozen feature extractor, is measured beside them. Each setting runs ``REPEATS`` times.
"""
from __future__ import annotations

import json
import statistics
import os
import subprocess
import sys
import tempfile

import yaml

from bench.report import ROOT, provenance, spread, write_section

REPEATS = 2
SCRATCH_LRS = (0.02, 0.05, 0.1)


def run(job: dict, work: str, name: str) -> float:
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(job, handle)
    subprocess.run([sys.executable, "-m", "launcher.cli", path, "--run-root", os.path.join(work, "runs")],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
    runs = os.path.join(work, "runs")
    latest = max((os.path.join(runs, d) for d in os.listdir(runs)), key=os.path.getmtime)
    with open(os.path.join(latest, "result.json"), encoding="utf-8") as handle:
        return json.load(handle)["val_accuracy"]


def main() -> None:
    with open(os.path.join(ROOT, "jobs", "demo.yaml"), encoding="utf-8") as handle:
        demo = yaml.safe_load(handle)
    demo.pop("expect", None)
    with tempfile.TemporaryDirectory() as work:
        # Paths in demo.yaml are relative to jobs/; keep them valid from the temp folder.
        for section, key in (("model", "prefix"), ("data", "train"), ("data", "val")):
            value = demo[section][key]
            if not value.startswith(("/", "~", "$")):
                demo[section][key] = os.path.join(ROOT, "jobs", value)
        rows = []
        tuned = [run(demo, work, f"tuned{i}") for i in range(REPEATS)]
        lr = demo["train"]["optimizer_params"]["learning_rate"]
        rows.append(("fine-tuned (variant full)", lr, tuned))
        frozen = json.loads(json.dumps(demo))
        frozen["model"]["variant"] = "frozen"
        rows.append(("frozen feature extractor (variant frozen)", lr,
                     [run(frozen, work, f"frozen{i}") for i in range(REPEATS)]))
        for lr in SCRATCH_LRS:
            job = json.loads(json.dumps(demo))
            job["model"]["variant"] = "scratch"
            job["train"]["optimizer_params"]["learning_rate"] = lr
            rows.append(("from scratch (variant scratch)", lr, [run(job, work, f"scratch{lr}-{i}")
                                                                for i in range(REPEATS)]))
    best_scratch = max(statistics.median(values) for name, _, values in rows if "scratch" in name)
    median_tuned = statistics.median(tuned)
    lines = ["## Demo: fine-tuning vs training from scratch", "",
             "`jobs/demo.yaml`: digits 5-9, 10 training images per class, 846 validation images; 2 workers, "
             f"{demo['train']['epochs']} epochs, batch 8 per worker. Validation accuracy, median (min-max) of "
             f"{REPEATS} runs.", "",
             "| network | lr | validation accuracy |", "|---|---|---|"]
    lines += [f"| {name} | {lr} | {spread(values, '{:.3f}')} |" for name, lr, values in rows]
    lines += ["", f"Fine-tuning minus the best scratch setting: **{median_tuned - best_scratch:+.3f}** "
                  "(goal: +0.10 or more).", "", f"Measured {provenance()}."]
    write_section("demo_vs_scratch", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
