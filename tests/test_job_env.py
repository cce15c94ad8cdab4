"""A fine-tuning job's environment (issue 27): ``env:`` in the job file is part of the job; ``--env NAME[=VALUE]``
passes a secret to every process and never writes it; a resume passes this machine's value again."""
from __future__ import annotations

import json
import os

import pytest

from testing.processes import processes_of_run, run_id_from
from tests.helpers import demo_job, refusal_line, run_launch, start_launch, write_job

TOKEN = "s3cr3t-job-env-value"


@pytest.mark.timeout(300)
def test_job_env_and_secret_env_reach_every_process_and_no_file(tmp_path, demo_assets):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 3},
                                                    env={"MXNET_CUDNN_AUTOTUNE_DEFAULT": 0, "OMP_NUM_THREADS": 1}))
    runs = tmp_path / "runs"
    env = {"MXFT_TOKEN": TOKEN}
    saved = tmp_path / "plan.json"
    dry = run_launch([job, "--env", "MXFT_TOKEN", "--dry-run", "--save-plan", str(saved), "--run-root", str(runs)],
                     cwd=str(tmp_path), env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(saved.read_text())
    for process in plan["processes"]:
        got = dict(process["env"])
        assert (got["MXNET_CUDNN_AUTOTUNE_DEFAULT"], got["OMP_NUM_THREADS"], got["MXFT_TOKEN"]) == (
            "0", "1", "<from environment>"), process["argv"]  # the job's own threads win over mxft's
    assert TOKEN not in saved.read_text() + dry.stdout

    os.environ["MXFT_TOKEN"] = TOKEN  # start_launch passes this process's environment on
    try:
        proc, run_id, _ = start_launch([job, "--env", "MXFT_TOKEN", "--run-root", str(runs)], cwd=str(tmp_path))
        seen = {}
        for process in processes_of_run(run_id):
            values = process.environ()
            seen[values.get("DMLC_ROLE")] = (values.get("MXFT_TOKEN"), values.get("MXNET_CUDNN_AUTOTUNE_DEFAULT"))
        out, err = proc.communicate(timeout=240)
    finally:
        del os.environ["MXFT_TOKEN"]
    assert proc.returncode == 0, out[-2000:] + err
    assert seen == {role: (TOKEN, "0") for role in ("scheduler", "server", "worker")}, seen
    run_dir = runs / run_id
    for root, _, files in os.walk(run_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert TOKEN.encode() not in handle.read(), os.path.join(root, name)

    more = ["--resume", str(run_dir), "--set", "train.epochs=4"]
    assert refusal_line(run_launch(more, cwd=str(tmp_path))) == (
        "mxft-launch: error: --env MXFT_TOKEN: the run passed this machine's value of it, which is not set now "
        "(set MXFT_TOKEN again, or give --env MXFT_TOKEN=VALUE)")
    resumed = run_launch(more, cwd=str(tmp_path), env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr
    assert run_id_from(resumed.stdout) == run_id


@pytest.mark.timeout(60)
def test_a_job_cannot_set_what_mxft_sets(tmp_path, demo_assets):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, env={"DMLC_ROLE": "server"}))
    line = refusal_line(run_launch([job, "--dry-run"], cwd=str(tmp_path)))
    assert line.startswith(f"mxft-launch: error: {job}:") and \
        "env must be names mxft leaves to the job: DMLC_ROLE is set by mxft for every process" in line, line


@pytest.mark.timeout(60)
def test_a_secret_looking_job_env_is_pointed_at_env_and_mxfts_names_are_refused(tmp_path, demo_assets):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, env={"WANDB_API_KEY": "abc"}))
    dry = run_launch([job, "--dry-run"], cwd=str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert "[mxft] note: env: WANDB_API_KEY looks like a secret, and env: values are recorded with the run " \
           "(job.yaml, plan.json) and on remote command lines; pass it with --env WANDB_API_KEY instead" in dry.stdout
    assert refusal_line(run_launch([job, "--env", "DMLC_ROLE=server", "--dry-run"], cwd=str(tmp_path))) == \
        "mxft-launch: error: --env DMLC_ROLE: is set by mxft for every process (leave it to mxft)"
