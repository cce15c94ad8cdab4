"""A checkpoint evaluated by ``trainer.evaluate``: on this machine, or in parts on the hosts of a hosts file.

``mxft-launch evaluate RUN_DIR --hosts FILE`` gives host i of N part i of N of the ``.rec`` (through its ``.idx``):
every host is probed as a launch would, gets the trainer's code and the model and the data it lacks (a host that has
the same files at the same paths reads them in place; staged files are content-addressed, so evaluating again sends
nothing), and prints its part's sums, which are added here. What a host prints is a claim: its last line only,
bounded, in the shape ``trainer.evaluate`` writes, with counts that fit the part (``checked_counts``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

from cluster.errors import JobFailed
from cluster.failure import Failure, FailureKind
from cluster.fanout import HostProblem, on_each_host
from cluster.hosts import HostSpec, Launcher
from cluster.lines import bounded_lines
from cluster.ssh import SSHOptions
from launcher.data import recfile
from launcher.plan import Transfer
from launcher.remote.host_probe import file_id
from launcher.report.console import Console
from launcher.run.backend import Backend
from launcher.run.facts import CODE_DIR, trainer_files
from launcher.run.preflight import basic_requirements, facts_of, require_fit
from launcher.run.stage import stage_all

PART_TIMEOUT_S = 3600.0   # one host's part, at most


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What is evaluated: the params ``prefix``-``epoch`` on ``rec``, the model's input shape and classes."""

    prefix: str
    epoch: int
    rec: str
    shape: tuple[int, ...]
    num_classes: int
    top_k: int

    @property
    def model_files(self) -> tuple[str, str]:
        return f"{self.prefix}-symbol.json", f"{self.prefix}-{self.epoch:04d}.params"

    @property
    def data_files(self) -> tuple[str, str]:
        return self.rec, recfile.idx_path_for(self.rec)

    def argv(self, python: str, prefix: str, rec: str, part: tuple[int, int]) -> list[str]:
        return [python, "-m", "trainer.evaluate", prefix, str(self.epoch), rec, "--shape",
                ",".join(map(str, self.shape)), "--classes", str(self.num_classes), "--top-k", str(self.top_k),
                "--part", str(part[0]), "--parts", str(part[1])]


def evaluate_here(task: Evaluation) -> dict:
    """The whole ``.rec`` on this machine, with this Python: the counts."""
    done = subprocess.run(task.argv(sys.executable, task.prefix, task.rec, (0, 1)), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=CODE_DIR, PYTHONSAFEPATH="1"), check=False)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    counts = checked_counts(last, task)
    if isinstance(counts, str):
        raise JobFailed(f"evaluating {task.model_files[1]} on {task.rec} failed (exit {done.returncode}): "
                        f"{done.stderr.strip()[-600:] or counts}", failure=Failure(FailureKind.EXITED))
    return counts


def evaluate_on_hosts(task: Evaluation, hosts: Sequence[HostSpec], *, launcher: Launcher, ssh: SSHOptions,
                      remote_dir: str, console: Console) -> dict:
    """Part i of N on host i of N; the counts added. Exit 2 (InputError) for a host that cannot take its part,
    JobFailed naming each host whose part failed."""
    backend = Backend(launcher, ssh)
    try:
        files = (*task.model_files, *task.data_files)
        probed = backend.probe(hosts, remote_dir, files=files)
        require_fit(probed, basic_requirements(remote_dir))
        here, code = {path: file_id(path) for path in files}, trainer_files()  # once, whatever the hosts
        places = {host.label: _place(task, probed.ok[host.label], here, code) for host in hosts}
        transfers = [t for host in hosts for t in places[host.label].transfers(host.label)]
        stage_all(backend.remotes(hosts), transfers, root_of=lambda label: places[label].root,
                  python_of=lambda label: places[label].python,
                  progress=lambda host, sent, total: console.progress(f"staging {host}", sent, total, unit="B"))
        by_label = {host.label: (index, host) for index, host in enumerate(hosts)}
        done = on_each_host(lambda label: _count_part(backend.remote(by_label[label][1]), places[label], task,
                                                      (by_label[label][0], len(hosts))),
                            list(by_label), name="evaluate", kind=FailureKind.EXITED)
        done.raise_failed("evaluating on the hosts", kind=FailureKind.EXITED)
        return added([done.ok[host.label] for host in hosts])
    finally:
        backend.close()


@dataclasses.dataclass(frozen=True)
class _Place:
    """Where a host keeps what it evaluates: its Python, work folder, the trainer's code, the model's prefix and the
    ``.rec`` there, and the files of this machine it needs staged (source -> destination)."""

    python: str
    root: str
    code_dir: str
    prefix: str
    rec: str
    staged: tuple[tuple[str, str, str], ...]  # (source, destination, kind)

    def transfers(self, label: str) -> list[Transfer]:
        return [Transfer(label, source, dest, kind) for source, dest, kind in self.staged]


def _place(task: Evaluation, probe, here: Mapping[str, str], code: tuple[Sequence[str], str]) -> _Place:
    """A probed host's place: the model and the data read in place where the host has the same files at the same
    paths as ``here`` says this machine has (``file_id``), else staged under its work folder, keyed by what they
    are; ``code``: the trainer's files and their hash (``trainer_files``)."""
    info, there = probe.info, facts_of(probe, "", tuple(here)).files
    root = info["work_dir"].rstrip("/")
    code_files, code_hash = code
    code_dir = f"{root}/code/{code_hash}"
    staged = [(os.path.join(CODE_DIR, rel), f"{code_dir}/{rel}", "code") for rel in code_files]
    paths = {}
    for group in (task.model_files, task.data_files):
        ids = [here[path] for path in group]
        if all(ids) and all(there.get(path) == ident for path, ident in zip(group, ids)):
            paths.update({path: path for path in group})
            continue
        key = hashlib.sha256(json.dumps([group, ids]).encode()).hexdigest()[:16]
        for path in group:
            paths[path] = f"{root}/data/eval-{key}/{os.path.basename(path)}"
            staged.append((path, paths[path], "data"))
    return _Place(info["python_path"], root, code_dir, paths[task.model_files[0]][:-len("-symbol.json")],
                  paths[task.rec], tuple(staged))


def _count_part(host, place: _Place, task: Evaluation, part: tuple[int, int]) -> dict:
    """``trainer.evaluate`` of part ``part`` on ``host``; its checked counts (a HostProblem otherwise)."""
    argv = ["env", f"PYTHONPATH={place.code_dir}", "PYTHONSAFEPATH=1", *task.argv(place.python, place.prefix,
                                                                                   place.rec, part)]
    proc = host.stream_from(shlex.join(argv) + " 2>&1")
    timer = threading.Timer(PART_TIMEOUT_S, proc.kill)
    timer.start()
    try:
        last = ""
        for line in bounded_lines(lambda count: os.read(proc.stdout.fileno(), count)):
            last = line if line.strip() else last  # only the last line is kept: a host may print without end
        code = proc.wait()
    finally:
        timer.cancel()
    counts = checked_counts(last, task)
    if isinstance(counts, str):
        raise HostProblem(f"part {part[0]} of {part[1]}: trainer.evaluate exited {code}: {last[-300:]!r} "
                          f"({counts})", kind=FailureKind.EXITED)
    return counts


def checked_counts(line: str, task: Evaluation) -> dict | str:
    """``trainer.evaluate``'s counts from its last line, or why they are not taken (a host's answer is a claim)."""
    try:
        counts = json.loads(line)
    except (ValueError, RecursionError):
        return "its last line is not JSON"
    if not isinstance(counts, dict):
        return "its answer is not a JSON object"
    lists = [counts.get(key) for key in ("seen", "correct", "correct_k")]
    if not all(isinstance(values, list) and len(values) == task.num_classes
               and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values) for values in lists):
        return f"seen, correct and correct_k are not {task.num_classes} counts each"
    if any(right > seen for values in lists[1:] for right, seen in zip(values, lists[0])):
        return "more right than seen"
    loss = counts.get("loss_sum")
    if not (isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and loss >= 0):
        return "loss_sum is not a sum of losses"
    if counts.get("top_k") != task.top_k:
        return f"top_k is not {task.top_k}"
    return {"seen": lists[0], "correct": lists[1], "correct_k": lists[2], "loss_sum": float(loss), "top_k": task.top_k}


def added(parts: Sequence[dict]) -> dict:
    """The counts of every part, added."""
    total = {key: [sum(values) for values in zip(*(part[key] for part in parts))]
             for key in ("seen", "correct", "correct_k")}
    return dict(total, loss_sum=sum(part["loss_sum"] for part in parts), top_k=parts[0]["top_k"])


def scores(counts: dict) -> dict:
    """Accuracy, top-k, mean cross-entropy and per-class accuracy from the counts.

    >>> scores({"seen": [2, 2], "correct": [1, 2], "correct_k": [2, 2], "loss_sum": 2.0, "top_k": 2})["per_class"]
    [{'label': 0, 'images': 2, 'accuracy': 0.5}, {'label': 1, 'images': 2, 'accuracy': 1.0}]
    """
    seen, correct, correct_k = counts["seen"], counts["correct"], counts["correct_k"]
    images = sum(seen)
    return {"images": images, "accuracy": sum(correct) / max(images, 1),
            f"top{counts['top_k']}": sum(correct_k) / max(images, 1), "loss": counts["loss_sum"] / max(images, 1),
            "per_class": [{"label": label, "images": seen[label],
                           "accuracy": correct[label] / seen[label] if seen[label] else None}
                          for label in range(len(seen))]}
