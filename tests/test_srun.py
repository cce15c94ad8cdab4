"""``--launcher srun``: every process a job step of the Slurm allocation, on a real Slurm (``testing.slurm``).

The unit tests check the choice of launcher and the refusals at the seam; the rest run
real slurmctld/slurmd on the namespace hosts, with the launcher inside ``salloc`` (as a
user types it) or as an ``sbatch`` script (where Slurm's warning before a time limit goes).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import time

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.srun import default_launcher, require_allocation_nodes
from testing.processes import run_id_from
from tests.helpers import CACHE_DIR, LAUNCH, REPO, assert_dry_run_is_the_plan, demo_job, write_job

ALLOCATION = {"SLURM_JOB_ID": "41", "SLURM_JOB_NODELIST": "gpu[01-02]"}


def test_srun_is_the_default_for_the_allocations_own_nodes(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert default_launcher("slurm", ALLOCATION) == "srun"
    assert default_launcher("hosts.txt", ALLOCATION) == "ssh"   # a hosts file of its own: SSH, as it says
    assert default_launcher("slurm", {}) == "ssh"
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert default_launcher("slurm", ALLOCATION) == "ssh"       # no srun here


def test_srun_takes_only_the_allocations_nodes(monkeypatch, slurm_conf):
    allocation = {**ALLOCATION, "SLURM_CONF": slurm_conf}  # Slurm's scontrol expands the node list
    monkeypatch.setattr("cluster.srun.shutil.which", lambda name, **kw: f"/usr/bin/{name}")  # srun is there
    require_allocation_nodes([HostSpec("gpu01", line=1), HostSpec("gpu02", line=2)], allocation, where="h.txt")
    with pytest.raises(InputError, match=r"^h.txt:2: 'gpu07' is not a node of Slurm job 41 \(gpu01, gpu02\)"):
        require_allocation_nodes([HostSpec("gpu01", line=1), HostSpec("gpu07", line=2)], allocation, where="h.txt")
    with pytest.raises(InputError, match=r"^h.txt:1: 'gpu01:2222': port= and user= are SSH settings"):
        require_allocation_nodes([HostSpec("gpu01", port=2222, line=1)], allocation, where="h.txt")
    with pytest.raises(InputError, match="not inside a Slurm allocation"):
        require_allocation_nodes([HostSpec("gpu01")], {}, where="h.txt")


def test_launcher_srun_outside_an_allocation_is_bad_input_and_starts_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(LAUNCH + ["--launcher", "srun", os.path.join(REPO, "jobs", "demo.yaml"), "--run-root",
                                    str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(env, PYTHONPATH=REPO), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("mxft-launch: error: --launcher srun: SLURM_JOB_ID is not set: this is not inside "
                                   "a Slurm allocation (run under salloc or sbatch, or use --launcher ssh)")
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def slurm(hosts3):
    """slurmctld here and a slurmd on each namespace host, for this module's tests only."""
    from testing import slurm as slurm_cluster
    cluster = slurm_cluster.up(hosts3)
    try:
        yield cluster
    finally:
        slurm_cluster.down()


def in_salloc(slurm, argv: list[str], *, cwd, timeout_s: float = 240) -> subprocess.CompletedProcess:
    """``salloc --exclusive -w h1,h2 ARGV`` (every CPU of both nodes) with the launcher's environment."""
    env = dict(slurm.env, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR)
    return subprocess.run(["salloc", "--quiet", "--exclusive", "-w", "h1,h2", "-N2", *argv], cwd=cwd, env=env,
                          capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.mark.timeout(240)
def test_demo_through_srun_steps_inside_salloc(slurm, tmp_path, demo_assets):
    """No --hosts, no --launcher, no SSH config: the allocation's nodes, reached by srun alone (h1 and h2 are
    not even names this machine resolves), each with its own work folder."""
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 4}))
    args = [*LAUNCH, job, "--run-root", str(tmp_path / "runs"), "--remote-dir", "/srv/mxft-host/srun"]
    done = in_salloc(slurm, args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    run_id = run_id_from(done.stdout)
    run_dir = tmp_path / "runs" / run_id
    result = json.loads((run_dir / "result.json").read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3, 4]
    assert result["attempts"][0]["hosts"] == ["h1", "h2"]
    plan = (run_dir / "plan.txt").read_text()
    assert "launcher   srun: each process, copy and probe is a job step of this Slurm allocation" in plan
    assert "DMLC_NODE_HOST=10.231.77.12" in plan  # h2's address on the route to the launcher, from its own step
    logs = {path.name: path.stat().st_size for path in (run_dir / "logs").glob("*.log")}
    assert set(logs) == {"scheduler.log", "server-0.log", "worker-0.log", "worker-1.log"} and all(logs.values()), logs
    for host in slurm.hosts.hosts[:2]:  # staged into each node's own folder (private per host)
        assert os.path.isdir(os.path.join(host.work_dir, "srun", "runs", run_id)), host.name
    assert not os.path.exists(os.path.join(slurm.hosts.hosts[2].work_dir, "srun"))
    dry = in_salloc(slurm, args + ["--dry-run"], cwd=tmp_path)  # the facts the launch's probe cached
    assert dry.returncode == 0, dry.stderr
    assert_dry_run_is_the_plan(dry.stdout, str(run_dir))


STEP_PROGRAM = """
import os, sys, time
print("step", os.environ.get("SLURM_STEP_ID"), "node", os.environ.get("SLURMD_NODENAME"),
      "cpus", len(os.sched_getaffinity(0)), flush=True)
if os.environ["DMLC_ROLE"] == "worker" and os.environ["DMLC_NODE_HOST"] == "10.231.77.12":
    time.sleep(1)
    sys.exit(3)
time.sleep(300)
"""


@pytest.mark.timeout(120)
def test_a_failed_step_stops_every_other_step_with_its_exit_code(slurm, tmp_path):
    (tmp_path / "prog.py").write_text(STEP_PROGRAM)
    script = (f"{' '.join(LAUNCH)} command -n 2 -s 1 --remote-dir /srv/mxft-host/srun -- "
              f"{LAUNCH[0]} {tmp_path / 'prog.py'}; echo launcher exit $?; squeue -h -s -j $SLURM_JOB_ID -o %i")
    done = in_salloc(slurm, ["sh", "-c", script], cwd=tmp_path, timeout_s=100)  # the steps sleep 300 s if not stopped
    assert "launcher exit 1" in done.stdout, done.stdout[-3000:] + done.stderr
    assert "mxft-launch: job failed: worker 1 on h2 exited with code 3" in done.stderr
    steps_left = done.stdout.split("launcher exit 1", 1)[1].split()
    assert all(step.endswith(".extern") for step in steps_left), steps_left  # no step of the run is left
    for name, node in (("scheduler", "h1"), ("server-0", "h1"), ("worker-0", "h1"), ("worker-1", "h2")):
        log = (tmp_path / "runs").glob(f"*/logs/{name}.log").__next__().read_text()
        assert f"node {node}" in log and "step None" not in log, (name, log)  # each process is a Slurm job step
        # with all of the job's CPUs on its node (task/affinity binds each step to them; --exclusive: all of them)
        assert f"cpus {os.cpu_count()}" in log, (name, log)


@pytest.mark.timeout(240)
def test_usr1_before_the_time_limit_stops_the_run_and_resume_finishes_it(slurm, tmp_path, demo_assets):
    """sbatch --signal=B:USR1@120 sends USR1 to the batch script; here scancel sends it at once, the same way."""
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 30}))
    launch = f"{' '.join(LAUNCH)} {job} --run-root {tmp_path / 'runs'} --remote-dir /srv/mxft-host/srun"
    (tmp_path / "job.sh").write_text(f"#!/bin/sh\ncd {REPO}\nexport PYTHONPATH={REPO} MXFT_CACHE={CACHE_DIR}\n"
                                     f"exec {launch}\n")
    env = slurm.env
    job_id = subprocess.run(["sbatch", "--parsable", "--exclusive", "-w", "h1,h2", "-N2", f"--output={tmp_path / 'out.txt'}",
                             str(tmp_path / "job.sh")], env=env, capture_output=True, text=True, check=True,
                            timeout=30).stdout.strip()
    deadline = time.monotonic() + 120
    while not glob.glob(str(tmp_path / "runs" / "*" / "checkpoints" / "checkpoint-0002.json")):
        assert time.monotonic() < deadline, (tmp_path / "out.txt").read_text()
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], env=env, check=True, timeout=30)
    while subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, "the batch job did not end after USR1"
        time.sleep(0.2)
    out = (tmp_path / "out.txt").read_text()
    run_dir = glob.glob(str(tmp_path / "runs" / "*"))[0]
    assert f"interrupted by SIGUSR1; every process of the run was stopped; continue with: mxft-launch --resume " \
           f"{run_dir}" in out, out[-2000:]
    assert "srun: error" not in out  # Slurm's echo of the stopped steps stays in the logs
    resumed = in_salloc(slurm, [*LAUNCH, "--resume", run_dir], cwd=tmp_path)  # the hint as printed
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    result = json.loads(open(os.path.join(run_dir, "result.json"), encoding="utf-8").read())
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 31))
    assert [(a["attempt"], a["outcome"]) for a in result["attempts"]] == [(1, "interrupted"), (2, "succeeded")]
