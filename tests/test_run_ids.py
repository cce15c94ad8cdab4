"""Run ids: launches in the same second get different ids, and a run folder is never shared."""
from __future__ import annotations

import re

from launcher.run.launch import _claim_run_dir, new_run_id
from launcher.spec.jobspec import parse_job


def test_run_ids_differ_within_a_second_and_keep_their_form():
    job = parse_job("{name: demo, num_classes: 2, model: {prefix: m}, data: {train: t, val: v}}", "/j.yaml",
                    environ={})
    ids = [new_run_id(job) for _ in range(200)]
    assert len(set(ids)) == 200
    assert all(re.fullmatch(r"demo-\d{8}-\d{6}-[0-9a-f]{8}", run_id) for run_id in ids), ids[:3]


def test_a_run_folder_is_claimed_once(tmp_path):
    run_dir = str(tmp_path / "runs" / "demo-20261128-210603-a988c41e")
    assert _claim_run_dir(run_dir) is True
    assert _claim_run_dir(run_dir) is False  # the second launch with this id plans again under a new one
