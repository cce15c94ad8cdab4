"""``--dry-run`` prints the plan a launch runs: its plan.txt, line for line (run id and ports aside).

Local jobs, command jobs and (tests/test_multihost.py) three SSH hosts; offline, a dry run
plans with facts an earlier probe cached, or marks what it had to assume.
"""
from __future__ import annotations

import os

import pytest

from testing.processes import run_id_from
from tests.helpers import REPO, assert_dry_run_is_the_plan, demo_job, refusal_line, run_launch, write_job

pytestmark = pytest.mark.integration
PROGRAM_DIR = os.path.join(REPO, "tests", "programs")


def test_local_dry_run_is_the_launch_plan(tmp_path, demo_assets):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 1}))
    args = [job, "--run-root", str(tmp_path / "runs")]
    dry = run_launch(args + ["--dry-run"], cwd=str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "runs").exists()
    done = run_launch(args, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    run_dir = tmp_path / "runs" / run_id_from(done.stdout)
    assert_dry_run_is_the_plan(dry.stdout, str(run_dir))
    assert (run_dir / "plan.json").is_file()


def test_command_dry_run_is_the_launch_plan(tmp_path):
    args = ["-n", "2", "-s", "1", "--run-root", str(tmp_path), "--", "python", "pslite_check.py"]
    dry = run_launch(["--dry-run"] + args, cwd=PROGRAM_DIR)
    assert dry.returncode == 0, dry.stderr
    done = run_launch(args, cwd=PROGRAM_DIR, timeout_s=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert_dry_run_is_the_plan(dry.stdout, os.path.join(tmp_path, run_id_from(done.stdout)))


def test_offline_dry_run_marks_what_it_assumed(tmp_path, demo_assets):
    """No host is contacted: names from the hosts file, facts assumed and said to be."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("gpu01.invalid slots=8\ngpu02.invalid slots=8 python=/opt/py/bin/python3\ngpu03.invalid\n")
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"devices": "gpu:8"}))
    folders = ["--cache-dir", str(tmp_path / "cache"), "--run-root", str(tmp_path / "runs")]
    dry = run_launch(["--hosts", str(hosts), job, "--dry-run", *folders, "--exclude", "gpu03.invalid"],
                     cwd=str(tmp_path), timeout_s=60)  # issue 28: --include/--exclude, as DeepSpeed's
    assert dry.returncode == 0, dry.stderr
    assumed = [line.strip() for line in dry.stdout.splitlines() if line.startswith("  assumed")]
    assert assumed == [
        "assumed    gpu01.invalid: python python3, 1 CPU(s), work folder ~/.mxft (never probed: --dry-run --probe "
        "asks the host)",
        "assumed    gpu02.invalid: python /opt/py/bin/python3, 1 CPU(s), work folder ~/.mxft (never probed: "
        "--dry-run --probe asks the host)"]
    assert sorted(os.listdir(tmp_path)) == ["hosts.txt", "job.yaml"]
    typo = run_launch(["--hosts", str(hosts), job, "--dry-run", *folders, "--include", "gpu01.invalid,gpu09.invalid"],
                      cwd=str(tmp_path), timeout_s=60)
    assert refusal_line(typo) == ("mxft-launch: error: --include gpu09.invalid: not a host of "
                                  f"{hosts} (its hosts: gpu01.invalid, gpu02.invalid, gpu03.invalid)")
