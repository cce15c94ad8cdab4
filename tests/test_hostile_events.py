"""Events are claims, not commands (issue 14): a worker 0 that lies cannot make the launcher touch
anything outside the run folder.

The worker is real: a copy of mxft whose trainer, besides training, sends crafted checkpoint
events (a path outside every folder, an epoch that does not exist, links planted where the
checkpoint files should be) and finally rewrites its result.json to name a file elsewhere.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from tests.helpers import altered_worker_copy, demo_job, write_job

pytestmark = pytest.mark.integration

LIES = '''

# --- added by tests/test_hostile_events.py: worker 0 lies to the launcher ---
VICTIM = {victim!r}


def _lie(cfg):
    events.emit("checkpoint", index=0, epoch=1, out_dir="/", files=["../" * 8 + VICTIM.lstrip("/"), "etc/passwd"])
    events.emit("checkpoint", index=0, epoch=10 ** 6, out_dir=os.path.dirname(VICTIM),
                files=[os.path.basename(VICTIM)])
    os.makedirs(cfg.out_dir, exist_ok=True)
    links = [f"{{cfg.checkpoint_name}}-symbol.json", f"{{cfg.checkpoint_name}}-0001.params", "checkpoint-0001.json"]
    for link in links:
        os.symlink(VICTIM, os.path.join(cfg.out_dir, link))
    events.emit("checkpoint", index=0, epoch=1, out_dir=cfg.out_dir, files=links)
    time.sleep(2)
    for link in links:
        os.remove(os.path.join(cfg.out_dir, link))


_honest_write_result = _write_result


def _write_result(cfg, *args, **kwargs):
    _honest_write_result(cfg, *args, **kwargs)
    path = os.path.join(cfg.out_dir, "result.json")
    with open(path, encoding="utf-8") as handle:
        result = json.load(handle)
    result["checkpoint"] = {{"prefix": "../" * 8 + VICTIM.lstrip("/")[:-len("-0001.params")], "epoch": 1}}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
'''


def lying_copy(root, victim: str) -> str:
    """mxft's packages, with a worker 0 that lies."""
    return altered_worker_copy(root, after_joining="    if cfg.index == 0:\n        _lie(cfg)\n",
                               appended=LIES.format(victim=victim))


def snapshot(root, skip: str) -> dict[str, tuple[str, str]]:
    """Every path under ``root`` but ``skip``: its kind and content hash (or link target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) != skip]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                found[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                found[path] = ("file", hashlib.sha256(open(path, "rb").read()).hexdigest())
            else:
                found[path] = ("dir", "")
    return found


def test_a_lying_worker_changes_nothing_outside_the_run_folder(tmp_path, demo_assets):
    victim = tmp_path / "victim" / "precious-0001.params"
    victim.parent.mkdir()
    victim.write_text("precious")
    code = lying_copy(tmp_path, str(victim))
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 2}))
    runs = tmp_path / "runs"
    before = snapshot(str(tmp_path), str(runs))
    done = subprocess.run([sys.executable, "-m", "launcher.cli", job, "--run-root", str(runs)], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=code), capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr
    assert "worker 0's result.json names the checkpoint" in done.stderr.splitlines()[0], done.stderr
    assert "ignored an event of worker 0 on localhost: epoch 1000000 is not a number in its range" in done.stdout
    assert "is not a regular file (a link or a folder); not taken" in done.stdout, done.stdout[-3000:]
    assert snapshot(str(tmp_path), str(runs)) == before
    assert victim.read_text() == "precious"
    (run_dir,) = runs.iterdir()
    kept = sorted(os.listdir(run_dir / "checkpoints"))
    assert kept == ["checkpoint-0001.json", "checkpoint-0002.json", "demo-0001.params", "demo-0001.states",
                    "demo-0002.params", "demo-0002.states", "demo-symbol.json"], kept  # the honest epochs, fetched
    # by the plan's names (with the optimizer's state: exact resume)
    assert not any(os.path.islink(run_dir / "checkpoints" / name) for name in kept)
