"""Issue 28: a defaults file for the options typed on every launch (``launcher.spec.defaults``)."""
from __future__ import annotations

import os

import pytest

from cluster.errors import InputError
from launcher.cli_args import parse_args
from tests.helpers import demo_job, run_launch, write_job


def defaults(tmp_path, monkeypatch, text: str) -> str:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = tmp_path / "config" / "mxft" / "defaults.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return str(path)


def test_the_defaults_file_fills_what_the_command_line_leaves_out_and_says_so(tmp_path, monkeypatch):
    path = defaults(tmp_path, monkeypatch, "hosts: /etc/mxft/hosts.txt\nremote_dir: /scratch/me\nrun_root: ~/runs\n")
    taken = parse_args(["job.yaml"])
    assert (taken.config.hosts_path, taken.config.remote_dir, taken.config.run_root) == (
        "/etc/mxft/hosts.txt", "/scratch/me", os.path.expanduser("~/runs"))
    assert taken.notes == (f"[mxft] from {path}: --hosts /etc/mxft/hosts.txt, --remote-dir /scratch/me, "
                           f"--run-root {os.path.expanduser('~/runs')}",)
    assert "remote_dir" not in taken.config.given  # a resume keeps the run's own work folder, not the file's
    mine = parse_args(["job.yaml", "--remote-dir", "/mine", "--local"])
    assert (mine.config.hosts_path, mine.config.remote_dir) == (None, "/mine")
    assert mine.notes == (f"[mxft] from {path}: --run-root {os.path.expanduser('~/runs')}",)
    resumed = parse_args(["--resume", str(tmp_path / "runs" / "r1")])
    assert resumed.config.hosts_path is None  # the run's own hosts, not the file's


@pytest.mark.parametrize("text, line", [
    ("hosts: h.txt\nremote-dir: /x\n", ":2: unknown key 'remote-dir'; did you mean 'remote_dir'?"),
    ("launcher: mpi\n", ":1: launcher must be ssh or srun, got 'mpi'"),
    ("run_root: [a, b]\n", ":1: run_root must be a path or name (text), got ['a', 'b']"),
    ("accept_new_host_keys: true\n", ":1: unknown key 'accept_new_host_keys'; valid keys: hosts, remote_dir, "
                                     "run_root, cache_dir, ssh_config, launcher"),
])
def test_a_bad_defaults_file_is_refused_at_its_line(tmp_path, monkeypatch, text, line):
    path = defaults(tmp_path, monkeypatch, text)
    with pytest.raises(InputError) as refused:
        parse_args(["job.yaml"])
    assert str(refused.value) == path + line


def test_a_dry_run_shows_the_values_it_took_from_the_defaults_file(tmp_path, demo_assets):
    (tmp_path / "config" / "mxft").mkdir(parents=True)
    (tmp_path / "config" / "mxft" / "defaults.yaml").write_text(f"run_root: {tmp_path / 'elsewhere'}\n")
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets))
    dry = run_launch([job, "--dry-run"], cwd=str(tmp_path), env={"XDG_CONFIG_HOME": str(tmp_path / "config")})
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == (f"[mxft] from {tmp_path / 'config' / 'mxft' / 'defaults.yaml'}: "
                                          f"--run-root {tmp_path / 'elsewhere'}")
    assert f"{tmp_path / 'elsewhere'}/demo-" in dry.stdout  # the plan's run folder is under it
