"""What a process prints is bounded on the launcher's side (issue 24): memory for a line of any length, disk for a
log of any size, events.jsonl for any number of events, and the plot for any value.

The processes are real: a child that writes 300 MB without a newline through the
supervisor, and a fine-tuning run whose worker 1 floods its output with 1 GB of log and
10,000 events (repeats, lies and impossible values) before it trains as usual.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cluster.lines import CONTINUED, HEAD_BYTES, MAX_LINE, TAIL_BYTES, CappedLog, bounded_lines
from launcher.report import plot
from launcher.report.metrics import panels
from tests.helpers import REPO, altered_worker_copy, demo_job, write_job

_LONG_LINE = """
import resource, sys
from cluster.local import LocalTransport
from cluster.supervise import Supervisor
writer = "import sys\\nfor _ in range(300): sys.stdout.write('x' * (1 << 20))\\nsys.stdout.flush()"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with Supervisor(echo=lambda line: None) as group:
    group.start("worker 0", LocalTransport(), [sys.executable, "-c", writer], env={}, log_path=sys.argv[1],
                primary=True)
    group.wait()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.timeout(120)
def test_a_300_mb_line_without_a_newline_costs_the_launcher_little_memory_and_its_log_is_capped(tmp_path):
    log = tmp_path / "worker-0.log"
    done = subprocess.run([sys.executable, "-c", _LONG_LINE, str(log)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=110)
    assert done.returncode == 0, done.stderr
    grew = int(done.stdout.strip().splitlines()[-1])
    assert grew < 64 << 20, f"the supervisor's peak RSS grew by {grew >> 20} MiB"
    assert log.stat().st_size <= HEAD_BYTES + TAIL_BYTES + 4096
    with open(log, encoding="utf-8") as handle:
        first = handle.readline()
        assert len(first) == MAX_LINE + 1  # the line was cut at MAX_LINE
        assert handle.readline().startswith(CONTINUED + "x")  # and went on as continuation lines
        notes = [line for line in handle if line.startswith("[mxft] ")]
    assert len(notes) == 1 and "of this log were left out here" in notes[0], notes
    assert not [name for name in os.listdir(tmp_path) if ".tail-" in name]


def test_a_capped_log_keeps_its_head_and_tail_and_says_what_it_left_out(tmp_path):
    log = CappedLog(str(tmp_path / "w.log"), head=100, tail=100)
    for i in range(1000):
        log.write(f"line {i:04d}")
    log.close()
    lines = (tmp_path / "w.log").read_text().splitlines()
    note = next(line for line in lines if line.startswith("[mxft] "))
    assert lines[:lines.index(note)] == [f"line {i:04d}" for i in range(10)]  # 10 bytes each: 10 fill the head
    kept_tail = lines[lines.index(note) + 1:]
    assert kept_tail == [f"line {i:04d}" for i in range(1000 - len(kept_tail), 1000)] and 5 <= len(kept_tail) <= 10
    assert note.startswith(f"[mxft] {1000 - 10 - len(kept_tail)} lines (") and os.listdir(tmp_path) == ["w.log"]


def test_no_piece_of_a_cut_line_reads_as_an_event():
    chunks = [b"x" * 10 + b'@mxft {"event": "epoch"}\nok\n']
    lines = list(bounded_lines(lambda n: chunks.pop(0) if chunks else b"", max_line=10))
    assert lines == ["x" * 10, CONTINUED + '@mxft {"ev', CONTINUED + 'ent": "epo', CONTINUED + 'ch"}', "ok"]


def test_a_value_far_off_the_axis_costs_no_more_to_draw_than_one_on_it(monkeypatch):
    """An epoch claiming train_loss 3e6 (or any value): every segment is clipped to the panel before it is
    rasterised, so the points drawn stay within the canvas's size (it once took 42 s and 12.9 GB)."""
    sizes = []
    linspace = np.linspace
    monkeypatch.setattr(plot.np, "linspace", lambda a, b, steps: sizes.append(steps) or linspace(a, b, steps))
    rows = [{"epoch": e, "train_accuracy": 0.5, "val_accuracy": 0.5, "train_loss": loss, "val_loss": 1.0,
             "images_per_s_total": 10.0} for e, loss in ((1, 1.0), (2, 3e6), (3, 1e300), (4, 2.0))]
    image = plot.render(panels(rows))
    assert image.startswith(b"\x89PNG") and sizes
    assert max(sizes) <= plot.WIDTH + plot.PANEL_HEIGHT + 1


FLOOD = '''

# --- added by tests/test_hostile_output.py: worker 1 floods the launcher, then trains as usual ---
def _flood(cfg):
    import sys
    line = "y" * 16383 + "\\n"
    for _ in range((1 << 28) // len(line)):  # 256 MB of log: four times what a log keeps
        sys.stdout.write(line)
    for i in range(2000):
        events.emit("epoch", index=0, rank=0, epoch=1, epoch_s=1.0, images_per_s=1.0, train_accuracy=3e6)
        events.emit("epoch", index=0, rank=0, epoch=10 ** 9, epoch_s=1.0, images_per_s=1.0)
        events.emit("scheduler_unreachable", address="x", error="y" * 10000, waited_s=i)
        events.emit("no_such_kind", payload="z")
        events.emit("joined", index=0, rank=0, num_workers=2)
    sys.stdout.flush()
'''


def flooding_copy(root) -> str:
    return altered_worker_copy(root, after_joining="    if cfg.index == 1:\n        _flood(cfg)\n", appended=FLOOD)


@pytest.mark.timeout(300)
def test_a_flooding_worker_leaves_the_run_folder_within_its_caps_and_the_run_succeeds(tmp_path, demo_assets):
    code = flooding_copy(tmp_path)
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 2},
                                                    cluster={"workers": 2, "servers": 1}))
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "launcher.cli", job, "--run-root", str(runs)], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=code), capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    said = [line for line in done.stdout.splitlines() if line.startswith("[mxft] ignored an event of worker 1")]
    assert len(said) == 3, said  # the first few refusals are said, the rest only counted
    assert "train_accuracy 3000000.0 is not a number in its range" in said[0]
    with open(run_dir / "events.jsonl", encoding="utf-8") as handle:
        stored = [json.loads(line) for line in handle]
    processes = 4  # scheduler, server 0, workers 0 and 1
    assert len(stored) <= processes * ((1 + 3) * 2 + 100 + 4), len(stored)
    assert not [e for e in stored if e["process"] == "worker 1" and e["event"] == "epoch" and e["index"] != 1]
    assert {e["epoch"] for e in stored if e["event"] == "epoch"} == {1, 2}
    for log in (run_dir / "logs").iterdir():
        assert log.stat().st_size <= HEAD_BYTES + TAIL_BYTES + 4096, (log, log.stat().st_size)
    total = sum(path.stat().st_size for path in run_dir.rglob("*") if path.is_file())
    checkpoint = sum(path.stat().st_size for path in run_dir.rglob("*.params") if path.is_file())
    assert total - checkpoint <= HEAD_BYTES + TAIL_BYTES + (8 << 20), total
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,") and rows[2].startswith("2,")
