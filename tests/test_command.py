"""Command mode (launch.py-compatible): parsing and planning as pure logic, then a real
ps-lite program (tests/programs/pslite_check.py) on this machine and on namespace hosts."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.cli_args import is_command_mode, parse_command_args
from launcher.plan import Facts, HostFacts, Role, Transfer, make_plan
from launcher.spec.command import parse_env, sync_files
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import parse_job
from testing.processes import run_id_from
from tests.helpers import PROGRAM_DIR, check_argv, run_launch, wait_gone, write_job

# What must reach every worker unchanged: spaces, both quotes, $HOME, a backtick, a glob, an empty word.

# --------------------------------------------------------------------------- pure logic

def test_is_command_mode_only_with_a_worker_count():
    assert is_command_mode(["-n", "2", "python", "x.py"])
    assert is_command_mode(["-n2", "--", "python", "x.py"])
    assert is_command_mode(["--num-workers=2", "--", "python", "x.py"])
    assert not is_command_mode(["jobs/demo.yaml", "--set", "train.epochs=2"])
    assert not is_command_mode(["jobs/demo.yaml", "--", "-n", "2"])


def test_parse_env_forms():
    assert parse_env(["A=1", "B:x=y", "C=", "HOME"], environ={"HOME": "/root"}, option="--env") == \
        {"A": "1", "B": "x=y", "C": "", "HOME": "/root"}
    with pytest.raises(InputError, match="--env NOPE: NOPE is not set on this machine"):
        parse_env(["NOPE"], environ={}, option="--env")
    with pytest.raises(InputError, match="'1X' is not an environment variable name"):
        parse_env(["1X=2"], environ={}, option="--env")


def test_launch_py_options_map_onto_a_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse_command_args(["-H", "hosts.txt", "-n", "3", "--sync-dst-dir", "/job", "--env", "A=1",
                                 "--env-worker", "W:2", "--env-server", "S=3", "python", "train.py", "--lr", "0.1"],
                                environ={})
    spec = config.command
    assert (config.hosts_path, spec.workers, spec.servers, spec.sync_dir) == ("hosts.txt", 3, 3, "/job")
    assert spec.argv == ("python", "train.py", "--lr", "0.1") and spec.name == "train"
    assert spec.env_for("worker") == {"A": "1", "W": "2"} and spec.env_for("scheduler") == {"A": "1"}
    assert spec.workdir == str(tmp_path)
    local = parse_command_args(["-H", "hosts.txt", "--launcher", "local", "-n", "1", "--", "prog"], environ={})
    assert local.hosts_path is None


@pytest.mark.parametrize("argv, where", [
    (["-n", "2", "--p3", "--", "prog"], "--p3"),
    (["-n", "2", "--launcher", "mpi", "--", "prog"], "--launcher mpi"),
    (["-n", "2", "--launcher", "ssh", "--", "prog"], "--launcher ssh"),
])
def test_unsupported_launch_py_options_are_named(argv, where):
    with pytest.raises(InputError) as err:
        parse_command_args(argv, environ={})
    assert str(err.value).startswith(where)


def test_command_job_file_parses_with_env_per_role_and_overrides():
    spec = parse_job("command: python train.py --x 'a b'\ncluster: {workers: 3, servers: 2}\n"
                     "env: {A: 1, worker: {B: two}}\nsync_dir: ~/job\n", "/jobs/cmd.yaml",
                     overrides=["cluster.workers=4"])
    assert isinstance(spec, CommandSpec)
    assert (spec.argv, spec.workers, spec.servers, spec.workdir, spec.sync_dir) == \
        (("python", "train.py", "--x", "a b"), 4, 2, "/jobs", "~/job")
    assert spec.env_for("worker") == {"A": "1", "B": "two"} and spec.env_for("server") == {"A": "1"}
    # job.yaml holds the names and where each value came from, never the values (a resumed command is refused)
    assert spec.to_job_dict()["env"] == {"A": "<from the job file>", "worker": {"B": "<from the job file>"}}
    again = parse_job(write_free(spec.to_job_dict()), "/jobs/cmd.yaml")
    assert dataclasses.replace(again, env={}, role_env={}) == dataclasses.replace(spec, env={}, role_env={})
    with pytest.raises(InputError, match=r"^/jobs/c.yaml:2: unknown key 'wrokers' in cluster; did you mean 'workers'"):
        parse_job("command: [prog]\ncluster: {wrokers: 3}\n", "/jobs/c.yaml")
    with pytest.raises(InputError,
                       match=r"^--set cluster.servers=0: cluster.servers must be an integer from 1 to 4096"):
        parse_job("command: [prog]\n", "/jobs/c.yaml", overrides=["cluster.servers=0"])


def write_free(job: dict) -> str:
    import yaml
    return yaml.safe_dump(job)


def test_command_plan_literal_on_two_hosts():
    spec = CommandSpec("t", "cli", ("python", "t.py", "a b"), workers=3, servers=2, env={"A": "1"},
                       workdir="/home/me/job", sync_dir="~/job")
    facts = Facts(run_id="t-1", run_dir="/runs/t-1", cache_dir="/c", scheduler_port=9000, code_dir="/code",
                  train_fingerprint="", code_files=("trainer/remote.py",), code_hash="h", synced=("t.py", "lib/u.py"),
                  hosts={"a": HostFacts("10.0.0.1", "/py", 4, "/w/a", "/home/a"),
                         "b": HostFacts("10.0.0.2", "/py", 4, "/w/b", "/home/b")})
    plan = make_plan(spec, [HostSpec("a"), HostSpec("b")], facts)
    assert [(p.role, p.rank, p.host, p.cwd) for p in plan.processes] == [
        (Role.SCHEDULER, 0, "a", "/home/a/job"), (Role.SERVER, 0, "b", "/home/b/job"),
        (Role.SERVER, 1, "a", "/home/a/job"), (Role.WORKER, 0, "a", "/home/a/job"),
        (Role.WORKER, 1, "b", "/home/b/job"), (Role.WORKER, 2, "a", "/home/a/job")]
    worker1 = plan.processes[4]
    assert worker1.argv == ("/py", "/w/b/code/h/trainer/remote.py", "--pid-file", "/w/b/runs/t-1/pids/worker-1.pid",
                            "--", "/py", "/w/b/code/h/trainer/pyrun.py", "t.py", "a b")
    assert worker1.env_dict == {"A": "1", "DMLC_PS_ROOT_URI": "10.0.0.1", "DMLC_PS_ROOT_PORT": "9000",
                                "DMLC_NUM_SERVER": "2", "DMLC_NUM_WORKER": "3", "DMLC_ROLE": "worker",
                                "DMLC_NODE_HOST": "10.0.0.2", "PYTHONUNBUFFERED": "1", "MXFT_RUN_ID": "t-1"}
    assert worker1.log_path == "/runs/t-1/logs/worker-1.log"
    assert [t for t in plan.transfers if t.host == "b"] == [
        Transfer("b", "/code/trainer/remote.py", "/w/b/code/h/trainer/remote.py", "code"),
        Transfer("b", "/home/me/job/t.py", "/home/b/job/t.py", "run"),
        Transfer("b", "/home/me/job/lib/u.py", "/home/b/job/lib/u.py", "run")]


def test_python_programs_end_at_once_after_an_exception_unless_run_plain():
    """``python SCRIPT`` and ``python -m MODULE`` start through trainer/pyrun.py; other forms and --plain-python as
    given (the command's own argv is what a user reads in the plan)."""
    facts = Facts(run_id="t", run_dir="/r", cache_dir="/c", scheduler_port=1, code_dir="/code", train_fingerprint="",
                  hosts={"localhost": HostFacts("127.0.0.1", "/py", 2)})

    def worker_argv(argv, **given) -> tuple[str, ...]:
        spec = CommandSpec("t", "cli", argv, workers=1, servers=1, workdir="/w", **given)
        return make_plan(spec, [HostSpec("localhost")], facts).processes[-1].argv

    assert worker_argv(("python", "t.py", "-x")) == ("/py", "/code/trainer/pyrun.py", "t.py", "-x")
    assert worker_argv(("python3", "-m", "pkg.train", "-x")) == ("/py", "/code/trainer/pyrun.py", "-m", "pkg.train",
                                                                 "-x")
    assert worker_argv(("python", "-c", "print(1)")) == ("/py", "-c", "print(1)")
    assert worker_argv(("python", "t.py"), plain_python=True) == ("/py", "t.py")
    assert worker_argv(("./train.sh",)) == ("./train.sh",)


def test_slots_limit_workers_per_host():
    spec = CommandSpec("t", "cli", ("prog",), workers=3, servers=1)
    facts = Facts(run_id="t", run_dir="/r", cache_dir="/c", scheduler_port=1, code_dir="/code", train_fingerprint="",
                  hosts={"a": HostFacts("a", "py", 1), "b": HostFacts("b", "py", 1)})
    with pytest.raises(InputError, match="host 'a' offers slots=1 but gets 2 workers"):
        make_plan(spec, [HostSpec("a", slots=1, line=1), HostSpec("b")], facts)


def test_sync_files_skips_caches_and_vcs(tmp_path):
    for rel in ("train.py", "lib/u.py", ".git/HEAD", "lib/__pycache__/u.pyc", ".venv/bin/python", "runs/x/log"):
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert sync_files(str(tmp_path)) == ("lib/u.py", "train.py")


# --------------------------------------------------------------------------- real processes

pslite = pytest.mark.integration


@pslite
def test_pslite_program_three_workers_two_servers_locally(tmp_path):
    done = run_launch(["-n", "3", "-s", "2", "--env-worker", "MXFT_CHECK=worker", "--run-root", str(tmp_path),
                       "--", *check_argv("--expect-env", "MXFT_CHECK=worker")], cwd=PROGRAM_DIR, timeout_s=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert sorted(line.split("] ", 1)[1] for line in done.stdout.splitlines() if "rounds of push/pull" in line) == \
        [f"rank {r}: all 3 rounds of push/pull correct (sum 6 per round)" for r in range(3)]
    run_dir = os.path.join(tmp_path, run_id_from(done.stdout))
    assert sorted(os.listdir(os.path.join(run_dir, "logs"))) == [
        "scheduler.log", "server-0.log", "server-1.log", "worker-0.log", "worker-1.log", "worker-2.log"]
    result = json.load(open(os.path.join(run_dir, "result.json")))
    assert [p["returncode"] for p in result["processes"]] == [0] * 6


@pslite
def test_failing_worker_fails_the_launch_with_its_root_cause(tmp_path):
    done = run_launch(["-n", "3", "-s", "2", "--run-root", str(tmp_path), "--", "python", "pslite_check.py",
                       "--fail-rank", "1"], cwd=PROGRAM_DIR, timeout_s=240)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("mxft-launch: job failed: worker ") and first.endswith("exited with code 3"), first
    assert "rank 1 fails on purpose" in done.stderr
    assert wait_gone(run_id_from(done.stdout)) == []


@pslite
def test_a_worker_that_raises_ends_the_launch_at_once_naming_it(tmp_path):
    """Issue 27: one worker raises after its first push while the others go on to the next; without pyrun.py it waited
    in MXNet's finalisation for them, and they for it, until the launch was killed."""
    done = run_launch(["-n", "3", "-s", "1", "--run-root", str(tmp_path), "--", "python", "pslite_check.py",
                       "--raise-rank", "1", "--rounds", "50"], cwd=PROGRAM_DIR, timeout_s=120)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("mxft-launch: job failed: worker ") and first.endswith("exited with code 1"), first
    assert "RuntimeError: rank 1 raises on purpose after round 1" in done.stderr
    assert wait_gone(run_id_from(done.stdout)) == []


@pslite
def test_command_job_file_runs_the_program(tmp_path):
    shutil.copy(os.path.join(PROGRAM_DIR, "pslite_check.py"), tmp_path)
    job = write_job(tmp_path / "check.yaml", {"command": check_argv("--expect-env", "ROLE_ENV=w"),
                                               "cluster": {"workers": 2, "servers": 1},
                                               "env": {"worker": {"ROLE_ENV": "w"}}})
    done = run_launch([job, "--run-root", str(tmp_path / "runs"), "--set", "cluster.servers=2"], cwd=str(tmp_path),
                      timeout_s=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert done.stdout.count("rounds of push/pull correct (sum 3 per round)") == 2
    saved = open(tmp_path / "runs" / run_id_from(done.stdout) / "job.yaml").read()
    assert "servers: 2" in saved  # the effective job, override included


@pslite
def test_a_failing_pslite_program_across_three_hosts_names_its_exit_and_leaves_nothing(hosts3, tmp_path):
    """(A program that succeeds across three hosts, with its --sync-dir, env and cwd: tests/test_multihost_relay.py.)"""
    from tests.helpers import hosts_file, no_processes_left, ssh_args
    args = ssh_args(hosts3, hosts_file(hosts3, tmp_path)) + ["-n", "3", "-s", "2", "--sync-dir", "/srv/mxft-host/job",
                                                             "--run-root", str(tmp_path / "runs")]
    failed = run_launch(args + ["--", "python", "pslite_check.py", "--fail-rank", "2"], cwd=PROGRAM_DIR,
                        timeout_s=300)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr
    assert failed.stderr.splitlines()[0].endswith("exited with code 3"), failed.stderr
    assert no_processes_left(hosts3, run_id_from(failed.stdout)) == {}


@pslite
@pytest.mark.timeout(900)
def test_sixteen_processes_on_one_host_under_sshds_default_limits(hosts3, tmp_path):
    """16 processes on one host whose sshd keeps OpenSSH's MaxStartups 10:30:100 and MaxSessions 10: they
    are sessions of two shared connections (at most 9 each), not 16 connections opened at once."""
    import dataclasses
    import subprocess
    import threading

    from testing import netns
    from tests.helpers import no_processes_left, python_field, ssh_args
    host = netns.add_host(hosts3, stock_limits=True)
    most, done_sampling = [0], threading.Event()

    def count_connections() -> None:  # SSH connections from here to the host, sampled while the launch runs
        while not done_sampling.wait(0.2):
            out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True).stdout
            most[0] = max(most[0], sum(f"{host.address}:22" in line.split() for line in out.splitlines()))

    sampler = threading.Thread(target=count_connections, daemon=True)
    try:
        config = open(os.path.join(netns.STATE_DIR, host.name, "sshd_config")).read()
        assert "MaxStartups" not in config and "MaxSessions" not in config  # OpenSSH's defaults
        hosts = tmp_path / "hosts.txt"
        hosts.write_text(f"{host.address} {python_field()}\n")
        args = ssh_args(hosts3, str(hosts)) + ["-n", "12", "-s", "3", "--sync-dir", "/srv/mxft-host/job",
                                               "--run-root", str(tmp_path / "runs")]
        sampler.start()
        done = run_launch(args + ["--", *check_argv("--rounds", "1")], cwd=PROGRAM_DIR, timeout_s=800)
        done_sampling.set()
        sampler.join()
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr
        assert done.stdout.count("all 1 rounds of push/pull correct (sum 78 per round)") == 12
        assert 2 <= most[0] <= 4, most  # the processes' two, and at most a staging stream or a check beside them
        assert no_processes_left(dataclasses.replace(hosts3, hosts=(host,)), run_id_from(done.stdout)) == {}
    finally:
        done_sampling.set()
        netns.remove_host(host)


@pslite
def test_slurm_allocation_hosts_over_ssh(hosts3, tmp_path, slurm_conf):
    """Inside an allocation (SLURM_* set as sbatch would), no --hosts: the node list's hosts are used."""
    from tests.helpers import no_processes_left
    slurm = {"SLURM_JOB_NODELIST": "10.231.77.[11-13]", "SLURM_TASKS_PER_NODE": "1(x3)", "SLURM_CONF": slurm_conf}
    args = ["--ssh-config", hosts3.ssh_config, "--remote-dir", "/srv/mxft-host", "--run-root", str(tmp_path),
            "-n", "3", "-s", "1", "--sync-dir", "/srv/mxft-host/job", "--", *check_argv()]
    planned = run_launch(args[:-len(check_argv()) - 1] + ["--dry-run", "--", *check_argv()], cwd=PROGRAM_DIR,
                         env=slurm)
    assert planned.returncode == 0, planned.stderr
    assert [line.split()[3] for line in planned.stdout.splitlines() if line.startswith("    worker")] == \
        ["10.231.77.11", "10.231.77.12", "10.231.77.13"]
    done = run_launch(args, cwd=PROGRAM_DIR, env=slurm, timeout_s=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert done.stdout.count("rounds of push/pull correct (sum 6 per round)") == 3
    assert no_processes_left(hosts3, run_id_from(done.stdout)) == {}
    too_many = run_launch(args[:-len(check_argv()) - 1] + ["-n", "4", "--dry-run", "--", "prog"], cwd=PROGRAM_DIR,
                          env=slurm)
    assert too_many.returncode == 2 and "offers slots=1 but gets 2 workers" in too_many.stderr
