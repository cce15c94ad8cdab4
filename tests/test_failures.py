"""Failures on one machine: deadlines, watchdog, stop, resume and automatic restart."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from testing.processes import processes_of_run, run_id_from
from tests.helpers import CACHE_DIR, LAUNCH, REPO, altered_worker_copy, demo_job, \
    run_launch, start_launch, wait_gone, write_job

pytestmark = pytest.mark.integration


def start(tmp_path, job: dict, name: str = "job", *, until: str | None = "epoch 1 done"):
    path = write_job(tmp_path / f"{name}.yaml", job)
    return start_launch([path, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path), until=until)


def find(run_id: str, role: str, suffix: str = ""):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for proc in processes_of_run(run_id):
            try:
                if proc.environ().get("DMLC_ROLE") == role and " ".join(proc.cmdline()).endswith(suffix):
                    return proc
            except Exception:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no {role} of {run_id}")


def last_failure(tmp_path, run_id: str) -> dict:
    """The failure the run's last attempt record keeps (its kind is what restarts and status read)."""
    lines = (tmp_path / "runs" / run_id / "attempts.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["failure"]


def test_worker_that_never_joins_hits_the_startup_deadline(tmp_path, demo_assets):
    job = demo_job(demo_assets, cluster={"startup_timeout_s": 6})
    proc, run_id, _ = start(tmp_path, job, until=None)
    find(run_id, "scheduler").suspend()  # nobody can register with ps-lite now
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    first = stderr.strip().splitlines()[0]
    # Frozen before it listened: the workers' probes say so, then the deadline names them.
    assert first.startswith("mxft-launch: job failed: server 0 on localhost cannot connect to the scheduler"), first
    assert "worker 0 on localhost, worker 1 on localhost did not join ps-lite within 6 s" in first, first
    assert wait_gone(run_id, timeout_s=10) == []
    assert last_failure(tmp_path, run_id)["kind"] == "start-up timeout"


def wait_blocked(proc, *, idle_s: float = 1.0, timeout_s: float = 30.0) -> None:
    """Return once PROC has used no CPU for ``idle_s``: it waits for a peer (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    used, since = sum(proc.cpu_times()[:2]), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_used = sum(proc.cpu_times()[:2])
        if now_used != used:
            used, since = now_used, time.monotonic()
        elif time.monotonic() - since >= idle_s:
            return
    raise AssertionError(f"process {proc.pid} never waited for {idle_s} s")


def test_stuck_worker_is_named_by_the_watchdog(tmp_path, demo_assets):
    # Worker 1 must be stopped where it is one batch behind. Stopped at a random moment, it may not yet have sent its
    # last batch's gradients (MXNet sends them after the batch's line), and then worker 0 stops at the same batch: two
    # workers at one position, nothing to tell them apart. So worker 0 is stopped first; worker 1 runs on until it
    # waits for worker 0, everything of its own sent; it is stopped there, and worker 0 goes on: one batch further,
    # then it waits. Early in an epoch (the 846 images train: 53 batches; the 50 validate), far from its barrier.
    job = demo_job(demo_assets, train={"epochs": 200, "log_every_batches": 1}, cluster={"progress_timeout_s": 8},
                   data={"train": os.path.join(demo_assets, "digits5to9-val.rec"),
                         "val": os.path.join(demo_assets, "digits5to9-train.rec")})
    proc, run_id, _ = start(tmp_path, job, until="epoch 0 batch 1:")
    worker0, worker1 = find(run_id, "worker", "worker-0.json"), find(run_id, "worker", "worker-1.json")
    for line in proc.stdout:
        if "epoch 1 batch 1:" in line:
            break
    worker0.suspend()
    wait_blocked(worker1)
    worker1.suspend()
    worker0.resume()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    first = stderr.strip().splitlines()[0]
    assert first.startswith("mxft-launch: job failed: worker 1 on localhost reported no progress for 8 s"), first
    assert wait_gone(run_id, timeout_s=10) == []
    assert last_failure(tmp_path, run_id)["kind"] == "stalled"


def test_resume_after_ctrl_c_continues_from_the_last_complete_epoch(tmp_path, demo_assets):
    job = demo_job(demo_assets, train={"epochs": 40})
    proc, run_id, _ = start(tmp_path, job, until="epoch 4 done")  # worker 0 has checkpointed epoch 3 by then
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    run_dir = tmp_path / "runs" / run_id
    markers = sorted(name for name in os.listdir(run_dir / "checkpoints") if name.startswith("checkpoint-"))
    last = int(markers[-1][len("checkpoint-"):-len(".json")])
    assert last >= 3
    resumed = run_launch(["--resume", str(run_dir)], cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert f"attempt 2, from epoch {last}" in resumed.stdout
    logs = (run_dir / "logs" / "attempt-2" / "worker-0.log").read_text()
    assert f"resuming after epoch {last} from {run_dir}/checkpoints/demo" in logs
    result = json.loads((run_dir / "result.json").read_text())
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 41))
    assert [(a["attempt"], a["outcome"]) for a in result["attempts"]] == [(1, "interrupted"), (2, "succeeded")]
    assert result["attempts"][1]["begin_epoch"] == last
    again = run_launch(["--resume", str(run_dir)], cwd=str(tmp_path))
    assert again.returncode == 2 and "all 40 epochs are done already" in again.stderr


def test_automatic_restart_after_a_killed_worker(tmp_path, demo_assets):
    epochs = 16
    plain = run_launch([write_job(tmp_path / "plain.yaml", demo_job(demo_assets, train={"epochs": epochs})),
                        "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    assert plain.returncode == 0, plain.stderr
    job = demo_job(demo_assets, train={"epochs": epochs}, cluster={"max_restarts": 1})
    proc, run_id, _ = start(tmp_path, job, until="epoch 5 done")
    find(run_id, "worker", "worker-1.json").kill()
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout[-2000:] + stderr
    assert "[mxft] attempt 1 failed: worker 1 on localhost" in stdout
    result = json.loads((tmp_path / "runs" / run_id / "result.json").read_text())
    first, second = result["attempts"]
    assert first["outcome"] == "failed" and "worker 1" in first["reason"] and first["epochs_done"] >= 4
    assert second["outcome"] == "succeeded" and second["begin_epoch"] == first["epochs_done"]
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, epochs + 1))
    plain_accuracy = float(plain.stdout.strip().splitlines()[-1].split()[2].rstrip(","))
    assert abs(result["val_accuracy"] - plain_accuracy) < 0.08, (result["val_accuracy"], plain_accuracy)


def start_logged(tmp_path, job: dict, name: str) -> tuple[subprocess.Popen, str]:
    """Start a launch writing to a file (nobody has to read its pipe), once epoch 1 is done."""
    path = write_job(tmp_path / f"{name}.yaml", job)
    env = dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR)
    log = open(tmp_path / f"{name}.out", "w")
    proc = subprocess.Popen(LAUNCH + [path, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path), env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (tmp_path / f"{name}.out").read_text()
        if "\nepoch 1/" in text:  # the console's line for epoch 1
            return proc, run_id_from(text)
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(text[-3000:])


def test_stop_stops_exactly_that_run(tmp_path, demo_assets):
    job = demo_job(demo_assets, train={"epochs": 400})
    one, one_id = start_logged(tmp_path, job, "one")
    two, two_id = start_logged(tmp_path, job, "two")
    try:
        stopped = run_launch(["stop", str(tmp_path / "runs" / one_id)], cwd=str(tmp_path), timeout_s=90)
        assert stopped.returncode == 0, stopped.stderr
        assert one.wait(timeout=30) == 143
        assert wait_gone(one_id, timeout_s=5) == []
        assert two.poll() is None and len(processes_of_run(two_id)) == 4
        again = run_launch(["stop", str(tmp_path / "runs" / one_id)], cwd=str(tmp_path))
        assert again.returncode == 1 and "no launcher of this run is running" in again.stderr
    finally:
        two.send_signal(signal.SIGTERM)
        two.wait(timeout=60)
    assert wait_gone(two_id, timeout_s=5) == []


@pytest.mark.timeout(180)
def test_a_worker_that_raises_ends_the_run_named_instead_of_hanging_it(tmp_path, demo_assets):
    """Worker 1 raises while worker 0 goes on: its process ends right after the traceback (MXNet's finalisation
    would wait for the others, who wait for it, until the 30-minute progress timeout), and the launch fails
    naming worker 1 and the exception."""
    code = altered_worker_copy(tmp_path, after_joining="    if cfg.index == 1:\n"
                                                       "        raise RuntimeError('worker 1 gives up')\n",
                               appended="")
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 2}))
    done = subprocess.run([*LAUNCH, job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=code), capture_output=True, text=True, timeout=150)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("mxft-launch: job failed: worker 1 on localhost") and "exited with code 1" in first, \
        done.stderr
    assert "RuntimeError: worker 1 gives up" in done.stderr
