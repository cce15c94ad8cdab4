"""GPU check: ResNet-50 fine-tuning throughput, mxft's one-host ``dist_sync_device`` vs plain ``Module.fit``.

    bash bench/gpu.sh                        # on the GPU machine: installs mxnet-cu*, runs this, writes $OUT/gpu.json
    python -m bench.gpu --smoke --out DIR    # the same steps on this CPU machine, tiny, to check the script
    python -m bench gpu_report DIR/gpu.json  # here: rewrite BENCHMARKS.md's GPU section from a result

Both sides train the tutorial's graph edit of ResNet-50 (MXNet's model zoo network,
exported as a checkpoint; its weights do not change the speed) at 224x224, batch 16 per
GPU, on the same generated 256x256 images packed as .rec. mxft side: ``mxft-launch
--local`` with 1 worker, 1 server and ``kvstore: dist_sync_device``. Baseline: the same
worker config run in one process with ``kvstore: device`` (``Module.fit`` without ps-lite).
Images/s come from the workers' epoch reports, epochs after the first. Any failure
(the CUDA build not loading, no GPU) is written to gpu.json and reported, not hidden.
Before training, gpu.json's ``preflight`` records what preflight's GPU probe finds on
each GPU here (model, compute capability, a test operation, the build's architectures)
and whether ``mxft-launch`` would let a job use them: the probe's GPU half, which needs
no SSH (``mxft-launch check`` runs the same code on remote hosts).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np
import yaml

from launcher.run.gpu_check import build_archs_of, gpu_problem, gpus_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment() -> dict:
    try:
        import mxnet as mx
        from mxnet.runtime import Features
        features = Features()
        return {"mxnet": mx.__version__, "cuda": features.is_enabled("CUDA"), "cudnn": features.is_enabled("CUDNN"),
                "dist_kvstore": features.is_enabled("DIST_KVSTORE"),
                "gpus": mx.context.num_gpus() if features.is_enabled("CUDA") else 0}
    except Exception as err:  # noqa: BLE001 - the point is to record whatever stops the CUDA build
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}


def gpu_preflight() -> dict:
    """``launcher.remote.gpu_probe`` on this machine's GPUs, in a fresh process as on a probed host, with its verdict."""
    code = ("import json, mxnet\nfrom mxnet.runtime import Features\nfrom launcher.remote.gpu_probe import gpu_facts\n"
            "count = mxnet.context.num_gpus() if Features().is_enabled('CUDA') else 0\n"
            "print(json.dumps(gpu_facts(mxnet, count, mxnet.base._LIB._name) if count else {}), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=300)  # exit status aside: the line is the answer
    try:
        facts = json.loads(done.stdout.splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"exit {done.returncode}: {(done.stdout + done.stderr)[-2000:]}"}
    gpus = gpus_of(facts)
    problem = gpu_problem(gpus, [gpu.index for gpu in gpus], build_archs_of(facts))
    verdict = "no GPU" if not gpus else "ok" if problem is None else f"{problem[0]} ({problem[1]})"
    return {**facts, "verdict": verdict}


def make_model(prefix: str) -> str:
    """ResNet-50 v1 from the model zoo, exported as PREFIX-symbol.json + PREFIX-0000.params; returns the cut layer."""
    import mxnet as mx
    net = mx.gluon.model_zoo.vision.resnet50_v1(classes=1000)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.zeros((1, 3, 224, 224)))
    net.export(prefix, epoch=0)
    with open(prefix + "-symbol.json", encoding="utf-8") as handle:
        names = [node["name"] for node in json.load(handle)["nodes"]]
    return next(name for name in reversed(names) if "pool" in name)  # the global pool before the dense layer


def make_data(prefix: str, count: int, side: int, num_classes: int, seed: int = 0) -> None:
    """``count`` smooth RGB PNG images (fast to decode), labels cycling over every class, as PREFIX.rec/.idx."""
    sys.path.insert(0, ROOT)
    from launcher.data.png import encode as encode_png
    from launcher.data.recfile import RecordWriter
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side)
    writer = RecordWriter(prefix)
    for i in range(count):
        colors = rng.uniform(0, 255, size=(3, 3))
        image = (colors[0] * ramp[None, :, None] + colors[1] * ramp[:, None, None]) / 2 + colors[2] / 4
        pixels = np.clip(image + rng.normal(0, 4, (side, side, 3)), 0, 255).astype(np.uint8)
        writer.write(encode_png(pixels), float(i % num_classes), i)
    writer.close()


def run_mxft(job_path: str, runs: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--local", job_path, "--run-root", runs],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError("mxft-launch failed:\n" + (done.stdout + done.stderr)[-3000:])
    run_id = next(line.split()[2].rstrip(":") for line in done.stdout.splitlines() if line.startswith("[mxft] run "))
    with open(os.path.join(runs, run_id, "result.json"), encoding="utf-8") as handle:
        return {"run_dir": os.path.join(runs, run_id), "result": json.load(handle)}


def run_plain(config_path: str, out_dir: str) -> dict:
    """The mxft run's worker config with kvstore 'device', in one process without any DMLC_* variable."""
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config.update(kvstore="device", out_dir=out_dir, resume_prefix=None, begin_epoch=0)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "worker.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    env.update(PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "trainer", "--config", path], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError("plain Module.fit failed:\n" + (done.stdout + done.stderr)[-3000:])
    with open(os.path.join(out_dir, "result.json"), encoding="utf-8") as handle:
        return {"result": json.load(handle)}


def speed(result: dict) -> float:
    epochs = result["epochs"][1:] or result["epochs"]
    return statistics.median(e["images_per_s"] for e in epochs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu")
    parser.add_argument("--out", required=True, help="folder for gpu.json and the runs")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny images: check the script on any machine")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    report: dict = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
                    "env": environment()}
    try:
        nvidia = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = nvidia.stdout.strip() or nvidia.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        report["nvidia_smi"] = f"not available: {err}"
    try:
        report["preflight"] = gpu_preflight()
    except (OSError, subprocess.TimeoutExpired) as err:
        report["preflight"] = {"error": f"{type(err).__name__}: {err}"}
    try:
        if "error" in report["env"]:
            raise RuntimeError("mxnet did not load: " + report["env"]["error"])
        if not args.smoke and report["env"]["gpus"] < 1:
            raise RuntimeError(f"mxnet {report['env']['mxnet']} sees no GPU (CUDA build: {report['env']['cuda']})")
        side, crop, batch, images, classes = (40, 32, 4, 32, 8) if args.smoke else (256, 224, 16, args.images, 257)
        work = os.path.join(args.out, "work")
        os.makedirs(work, exist_ok=True)
        cut = make_model(os.path.join(work, "resnet50"))
        make_data(os.path.join(work, "train"), images, side, classes)
        make_data(os.path.join(work, "val"), max(batch * 2, images // 8), side, classes, seed=1)
        job = {"name": "gpu-resnet50", "num_classes": classes,
               "model": {"prefix": os.path.join(work, "resnet50"), "cut_layer": cut},
               "data": {"train": os.path.join(work, "train.rec"), "val": os.path.join(work, "val.rec"),
                        "shape": [3, crop, crop], "preprocess_threads": 2 if args.smoke else 12},
               "train": {"epochs": 3, "batch_per_device": batch, "log_every_batches": 20},
               "cluster": {"workers": 1, "servers": 1, "devices": "cpu" if args.smoke else [0],
                           "kvstore": "dist_sync" if args.smoke else "dist_sync_device"}}
        job_path = os.path.join(work, "job.yaml")
        with open(job_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(job, handle)
        report["job"] = job
        report["mxft"], report["plain"] = [], []
        for i in range(args.repeats):
            mxft = run_mxft(job_path, os.path.join(args.out, "runs"))
            report["mxft"].append(speed(mxft["result"]))
            config = os.path.join(mxft["run_dir"], "config", "worker-0.json")
            report["plain"].append(speed(run_plain(config, os.path.join(work, f"plain-{i}"))["result"]))
        report["ratio"] = statistics.median(report["mxft"]) / statistics.median(report["plain"])
    except Exception as err:  # noqa: BLE001 - recorded for BENCHMARKS.md
        report["error"] = f"{type(err).__name__}: {err}"[-3000:]
    with open(os.path.join(args.out, "gpu.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k not in ("job",)}, indent=2)[-4000:])
    return 0 if "error" not in report else 1


def section(report: dict | None) -> str:
    """BENCHMARKS.md's GPU section from a gpu.json (None: never run on a GPU yet)."""
    lines = ["## GPU: ResNet-50 fine-tuning, mxft dist_sync_device vs plain Module.fit", "",
             "`bash bench/gpu.sh` on a GPU machine (installs an mxnet-cu* build into a venv, then "
             "`python -m bench.gpu`), then `python -m bench gpu_report OUT/gpu.json` here. ResNet-50 v1 with the "
             "tutorial's new 257-class head, 224x224 crops of 256x256 images, batch 16, 1 GPU; mxft: 1 worker + "
             "1 server with kvstore dist_sync_device; baseline: the same worker config in one process with "
             "kvstore device. Images/s after the first epoch.", ""]
    if report is None:
        return "\n".join(lines + [
            "**Not run yet.** No device machine was lent to the sessions so far (the device tool's status said "
            "'not drawn'). Also in the way on the H200 machines this workplace lends, as their documentation describes them: "
            "nothing can be downloaded there, an mxnet-cu112 wheel is several hundred MB against the 64 MiB that "
            "may be carried, and MXNet 1.9.1 needs numpy<1.24, which has no wheels for that image's Python 3.12. "
            "`python -m bench.gpu --smoke --out DIR` runs every step on the CPU here to keep the script working "
            "(last smoke run: both sides trained and reported; on 32x32 crops with batch 4 the 96 MB of ResNet-50 "
            "gradients that dist_sync carries through the server each step dominate, so the smoke ratio, 0.61, "
            "says nothing about a GPU, where the compute per step is far larger)."])
    env = report.get("env", {})
    lines.append(f"Run {report.get('when', '?')}; GPU: {report.get('nvidia_smi', '?')}; mxnet: "
                 + (f"{env['mxnet']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['gpus']} GPUs)"
                    if "mxnet" in env else env.get("error", "?")) + ".")
    preflight = report.get("preflight", {})
    if preflight:
        lines.append(f"Preflight's GPU check: {preflight.get('verdict') or preflight.get('error', '?')[:500]}.")
    if "error" in report:
        return "\n".join(lines + ["", f"**Failed:** {report['error'][:1500]}"])
    mxft, plain = report["mxft"], report["plain"]
    spread = lambda v: f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"  # noqa: E731
    return "\n".join(lines + ["", "| | images/s |", "|---|---|", f"| mxft (dist_sync_device, 1 worker) | {spread(mxft)} |",
                               f"| plain Module.fit (kvstore device) | {spread(plain)} |",
                               f"| ratio | **{report['ratio']:.3f}** |"]
                      + (["", "(smoke run on a CPU: checks the script, measures nothing)"] if report["smoke"] else []))


if __name__ == "__main__":
    sys.exit(main())
