"""Secrets and private files (issue 14, item 3).

Values of ``--env`` / a command job's ``env:`` reach the processes and nothing else: not
plan.txt, plan.json, job.yaml, the dry run's output, nor a command line on any host (other
users' ``ps`` shows command lines); remote processes read them from their SSH session.
What mxft creates is private to the user: 0700 folders, 0600 files; staged files keep
their mode.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import stat

import pytest
import yaml

from cluster.hosts import HostSpec
from cluster.secret import ENV_FROM_STDIN, Secret, split_secrets
from cluster.ssh import remote_command
from launcher import cli
from launcher.cli_args import parse_command_args
from launcher.plan import Facts, HostFacts
from launcher.plan.command import make_command_plan
from tests.helpers import start_launch

TOKEN = "tok-" + secrets.token_hex(12)
GIVEN = "given-" + secrets.token_hex(12)


def _remote_plan(tmp_path):
    config = parse_command_args(["-H", "hosts.txt", "-n", "2", "-s", "1", "--env", "MXFT_TOKEN",
                                 "--env-worker", f"MXFT_GIVEN={GIVEN}", "--", "python", "t.py"],
                                environ={"MXFT_TOKEN": TOKEN})
    facts = Facts(run_id="t-1", run_dir=str(tmp_path / "t-1"), cache_dir="/cache", scheduler_port=9000,
                  code_dir="/code", train_fingerprint="",
                  hosts={h: HostFacts(h, "/usr/bin/python3", 2, "/home/me/.mxft", "/home/me") for h in ("a", "b")})
    return make_command_plan(dataclasses.replace(config.command, workdir=str(tmp_path)),
                             [HostSpec("a", line=1), HostSpec("b", line=2)], facts)


def test_secret_values_never_reach_a_rendering_or_a_command_line(tmp_path):
    plan = _remote_plan(tmp_path)
    rendered = plan.describe() + plan.to_json() + yaml.safe_dump(plan.job_dict())
    assert TOKEN not in rendered and GIVEN not in rendered
    assert plan.job_dict()["env"] == {"MXFT_TOKEN": "<from environment>", "worker": {"MXFT_GIVEN": "<given>"}}
    for proc in plan.processes:
        env = proc.env_dict
        assert env["MXFT_TOKEN"] == TOKEN and isinstance(env["MXFT_TOKEN"], Secret)  # in memory, for the start
        assert ENV_FROM_STDIN in proc.argv  # remote: the values come on the session's input
        public, hidden = split_secrets(env)
        line = remote_command(proc.argv, env=public)
        assert TOKEN not in line and GIVEN not in line and "DMLC_ROLE=" in line
        assert set(hidden) == ({"MXFT_TOKEN", "MXFT_GIVEN"} if proc.role.value == "worker" else {"MXFT_TOKEN"})


def test_dry_run_output_holds_no_secret(capsys, monkeypatch):
    monkeypatch.setenv("MXFT_TOKEN", TOKEN)
    assert cli.main(["-n", "1", "--env", "MXFT_TOKEN", "--env", f"MXFT_GIVEN={GIVEN}", "--dry-run", "--", "python",
                     "t.py"]) == 0
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and GIVEN not in out.out + out.err and "run " in out.out


def _command_lines(pids) -> list[bytes]:
    lines = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                lines.append(handle.read())
        except OSError:
            continue
    return lines


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.timeout(240)
def test_remote_processes_get_secrets_on_their_input_and_files_stay_private(hosts3, tmp_path, monkeypatch):
    from tests.helpers import PROGRAM_DIR, check_argv
    from tests.helpers import hosts_file, no_processes_left, ssh_args
    monkeypatch.setenv("MXFT_TOKEN", TOKEN)
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    runs = tmp_path / "runs"
    args = ssh_args(hosts3, hosts_file(hosts3, tmp_path)) + [
        "-n", "3", "-s", "1", "--sync-dir", "/srv/mxft-host/job-secrets", "--env", "MXFT_TOKEN",
        "--run-root", str(runs), "--", *check_argv("--expect-env-sha256", f"MXFT_TOKEN={digest}", "--rounds", "40")]
    proc, run_id, seen = start_launch(args, cwd=PROGRAM_DIR, until="rank ", timeout_s=180)
    try:
        lines = [line for host in hosts3.hosts for line in _command_lines(host.pids())]
        lines += _command_lines(p for p in os.listdir("/proc") if p.isdigit())
        assert lines and not [line for line in lines if TOKEN.encode() in line]
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, "".join(seen)[-2000:] + out[-2000:] + err
    assert sum("rounds of push/pull correct" in line for line in (out + "".join(seen)).splitlines()) == 3
    run_dir = runs / run_id
    for name in ("plan.txt", "plan.json", "job.yaml"):
        assert TOKEN not in (run_dir / name).read_text(), name
        assert _mode(run_dir / name) == 0o600, name
    assert TOKEN not in out + err + "".join(seen)
    assert _mode(run_dir) == _mode(run_dir / "logs") == 0o700
    remote_run = os.path.join(hosts3.hosts[0].work_dir, "runs", run_id)
    assert _mode(remote_run) == 0o700
    program = os.path.join(hosts3.hosts[1].work_dir, "job-secrets", "pslite_check.py")
    assert _mode(program) == _mode(os.path.join(PROGRAM_DIR, "pslite_check.py"))  # staged files keep their mode
    assert no_processes_left(hosts3, run_id) == {}


def test_sync_dir_copies_links_inside_and_refuses_links_that_leave(tmp_path):
    from cluster.errors import InputError
    from launcher.spec.command import sync_files
    job = tmp_path / "job"
    (job / "sub").mkdir(parents=True)
    (job / "train.py").write_text("print(1)\n")
    (job / "sub" / "data.txt").write_text("x\n")
    os.symlink("train.py", job / "same.py")
    assert sync_files(str(job)) == ("same.py", "sub/data.txt", "train.py")
    outside = tmp_path / "id_rsa"
    outside.write_text("secret\n")
    os.symlink(outside, job / "key")
    with pytest.raises(InputError, match=f"^{job}/key: is a link to {outside}, outside the synced folder"):
        sync_files(str(job))
    os.remove(job / "key")
    os.symlink(job / "sub", job / "again")
    with pytest.raises(InputError, match=f"^{job}/again: is a link to a folder, which --sync-dir does not copy"):
        sync_files(str(job))
