"""``mxft-launch evaluate RUN_DIR [--data REC] [--epoch best|last|N] [--hosts FILE]``: a run's fine-tuned model on
a ``.rec``.

The run folder says what the model is (its effective job.yaml: the input shape, the classes) and which params
it kept (result.json's ``kept``: the last epoch's and the best one's). ``trainer.evaluate`` counts, on this machine
with this Python or in parts on the hosts of a hosts file (``launcher.run.evaluate_hosts``); this prints the
scores with the class names kept beside the model.
"""
from __future__ import annotations

import argparse
import json
import os
import re

from cluster.errors import InputError
from cluster.hosts import Launcher, load_hosts
from launcher.cli_args import add_ssh_options, ssh_options
from launcher.data import paramsfile, recfile
from launcher.remote.folder_check import folder_unsafe_reason
from launcher.report.console import Console
from launcher.run.evaluate_hosts import Evaluation, evaluate_here, evaluate_on_hosts, scores
from launcher.spec.jobspec import JobSpec, load_job


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mxft-launch evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a run's fine-tuned model on a .rec (its own validation set by default) on this "
                    "machine, or in parts on the hosts of a hosts file: accuracy, top-k, mean cross-entropy and "
                    "each class's accuracy, every image once.",
        epilog="examples:\n  mxft-launch evaluate runs/demo-20261207-120000-ab12\n"
               "  mxft-launch evaluate runs/demo-20261207-120000-ab12 --epoch last --data test.rec --json\n\n"
               "exit codes:\n  0    evaluated\n  1    the evaluation failed\n  2    bad input")
    parser.add_argument("run_dir", help="the run folder a launch printed (RUN_ROOT/RUN_ID)")
    parser.add_argument("--data", metavar="REC", help="the .rec to evaluate (default: the job's data.val)")
    parser.add_argument("--epoch", default="best", metavar="best|last|N",
                        help="which of the kept params (default: best; a number: that epoch's params, if kept)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K", help="default: the job's train.top_k")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    parser.add_argument("--hosts", metavar="FILE", help="evaluate in parts on these hosts (part i of N on host i), "
                        "probed and given the model and data they lack as a launch would")
    parser.add_argument("--remote-dir", default="~/.mxft", metavar="DIR", help="work folder on the hosts "
                        "(default: ~/.mxft)")
    add_ssh_options(parser)
    return parser.parse_args(argv)


def evaluate(argv: list[str]) -> int:
    args = parse(argv)
    run_dir = os.path.abspath(args.run_dir)
    job, prefix, epoch = _model_of(run_dir, args.epoch)
    rec = os.path.abspath(args.data or job.data.val)
    if not os.path.isfile(rec):
        raise InputError(args.data or os.path.join(run_dir, "job.yaml"), f"{rec} is not a file",
                         hint="give a .rec with --data")
    _require_labels(rec, job.num_classes)
    task = Evaluation(prefix, epoch, rec, tuple(job.data.shape), job.num_classes,
                      max(1, min(args.top_k or job.train.top_k, job.num_classes)))
    if args.hosts:
        hosts = load_hosts(args.hosts)
        if any(host.is_local for host in hosts):
            raise InputError(args.hosts, "lists this machine", hint="leave out --hosts to evaluate here")
        counts = evaluate_on_hosts(task, hosts, launcher=Launcher.SSH, ssh=ssh_options(args),
                                   remote_dir=args.remote_dir, console=Console())
    else:
        counts = evaluate_here(task)
    found = dict(scores(counts), params=f"{prefix}-{epoch:04d}.params", epoch=epoch, data=rec,
                 **({"hosts": len(hosts)} if args.hosts else {}))
    names = _class_names(run_dir, job.name)
    for row in found["per_class"]:
        row["name"] = names.get(row["label"], "")
    print(json.dumps(found) if args.json else "\n".join(_lines(found)), flush=True)
    return 0


def _model_of(run_dir: str, which: str) -> tuple[JobSpec, str, int]:
    """The run's job and the prefix and epoch of the params ``which`` names (best, last or an epoch number)."""
    if not os.path.isfile(os.path.join(run_dir, "job.yaml")):
        raise InputError(run_dir, "is not an mxft run directory (no job.yaml)", hint="give the folder a launch printed")
    unsafe = folder_unsafe_reason(run_dir)  # its files say what is loaded and run here
    if unsafe is not None:
        raise InputError(run_dir, unsafe, hint="evaluate only a run folder of your own")
    job = load_job(os.path.join(run_dir, "job.yaml"))
    try:
        with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as handle:
            result = json.load(handle)
    except (OSError, ValueError, RecursionError):
        result = {}
    kept = result.get("kept") if isinstance(result, dict) and isinstance(result.get("kept"), dict) else {}
    if which in ("best", "last"):
        epoch = kept.get(which)
        if not isinstance(epoch, int):
            raise InputError(run_dir, f"kept no {which} model (result.json's kept: {kept or 'none'})",
                             hint="give --epoch best, last or an epoch number it kept")
    elif re.fullmatch(r"[0-9]{1,6}", which):
        epoch = int(which)
    else:
        raise InputError(f"--epoch {which}", "must be best, last or an epoch number")
    for folder in ("checkpoint", "checkpoints"):
        prefix = os.path.join(run_dir, folder, job.name)
        if os.path.isfile(f"{prefix}-{epoch:04d}.params") and os.path.isfile(f"{prefix}-symbol.json"):
            layout = paramsfile.read_layout(f"{prefix}-{epoch:04d}.params")
            if not isinstance(layout, paramsfile.ParamsLayout):
                raise InputError(f"{prefix}-{epoch:04d}.params", f"is not an MXNet params file ({layout.reason})")
            return job, prefix, epoch
    raise InputError(run_dir, f"has no params of epoch {epoch} kept",
                     hint="see result.json's kept, and checkpoint/ and checkpoints/")


def _require_labels(rec: str, num_classes: int) -> None:
    """Every record's label is one of the model's classes (read from the records' headers through the ``.idx``)."""
    if recfile.present_index(rec) is None:
        raise InputError(rec, "has no .idx beside it", hint="mxft-prepare and im2rec write one")
    labels = recfile.read_labels(rec, recfile.read_index(rec))
    wrong = next((label for label in labels if not (0 <= label < num_classes and label == int(label))), None)
    if wrong is not None:
        raise InputError(rec, f"holds label {wrong:g}, and the model has {num_classes} classes (0..{num_classes - 1})")


def _class_names(run_dir: str, name: str) -> dict[int, str]:
    """Label -> class name, from the names kept beside the model (``checkpoint/NAME-labels.txt``), if any."""
    names = {}
    try:
        with open(os.path.join(run_dir, "checkpoint", f"{name}-labels.txt"), encoding="utf-8") as handle:
            for line in handle:
                label, _, text = line.rstrip("\n").partition("\t")
                if label.isdigit():
                    names[int(label)] = text
    except OSError:
        pass
    return names


def _lines(found: dict) -> list[str]:
    top = next(key for key in found if key.startswith("top"))
    lines = [f"{found['params']} (epoch {found['epoch']}) on {found['data']}: accuracy {found['accuracy']:.4f}, "
             f"{top} {found[top]:.4f}, loss {found['loss']:.4f} ({found['images']} images"
             + (f", in parts on {found['hosts']} hosts)" if "hosts" in found else ")"),
             f"  {'label':>5}  {'class':<24} {'images':>6}  accuracy"]
    for row in found["per_class"]:
        accuracy = f"{row['accuracy']:.4f}" if row["accuracy"] is not None else "-"
        lines.append(f"  {row['label']:>5}  {row['name'][:24]:<24} {row['images']:>6}  {accuracy}")
    return lines

