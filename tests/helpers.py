"""Helpers for the tests that start real processes."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import psutil
import yaml

from testing.processes import processes_of_run, run_id_from, run_processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft")
LAUNCH = [sys.executable, "-m", "launcher.cli"]


def demo_job(assets_dir: str, **sections) -> dict:
    """jobs/demo.yaml with absolute asset paths and ``sections`` merged in (one level deep)."""
    with open(os.path.join(REPO, "jobs", "demo.yaml"), encoding="utf-8") as handle:
        job = yaml.safe_load(handle)
    job["model"]["prefix"] = os.path.join(assets_dir, "pretrained-digits0to4")
    job["data"]["train"] = os.path.join(assets_dir, "digits5to9-train.rec")
    job["data"]["val"] = os.path.join(assets_dir, "digits5to9-val.rec")
    job.pop("expect", None)
    job.pop("builtin_assets", None)  # the tests name the built files directly
    for key, value in sections.items():
        if isinstance(value, dict):
            job[key] = {**copy.deepcopy(job.get(key, {})), **value}
        else:
            job[key] = value
    return job


JOINED = '    events.emit("joined", index=cfg.index, rank=kv.rank, num_workers=kv.num_workers,\n' \
         '                join_s=round(time.time() - started, 2))\n'


def altered_worker_copy(root, *, after_joining: str, appended: str) -> str:
    """ROOT/code: mxft's packages, with a worker that runs ``after_joining`` (indented lines) right after it says it
    joined ps-lite and has ``appended`` at the end of trainer/worker.py (what those lines call). For the tests of a
    worker that lies, floods or breaks: run the launcher with PYTHONPATH set to the returned folder."""
    code = os.path.join(str(root), "code")
    for package in ("launcher", "cluster", "trainer"):
        shutil.copytree(os.path.join(REPO, package), os.path.join(code, package),
                        ignore=shutil.ignore_patterns("__pycache__"))
    worker = os.path.join(code, "trainer", "worker.py")
    with open(worker, encoding="utf-8") as handle:
        text = handle.read()
    assert JOINED in text, "trainer/worker.py no longer says it joined as the altered copies expect"
    with open(worker, "w", encoding="utf-8") as handle:
        handle.write(text.replace(JOINED, JOINED + after_joining) + appended)
    return code


def write_job(path, job: dict) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(job, handle, sort_keys=False)
    return str(path)


def refusal_line(result: subprocess.CompletedProcess) -> str:
    """The last line of a launch refused as bad input (exit 2)."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr
    return result.stderr.strip().splitlines()[-1]


def run_launch(args: list[str], *, cwd: str, timeout_s: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR, **(env or {}))
    return subprocess.run(LAUNCH + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def wait_gone(run_id: str, timeout_s: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = processes_of_run(run_id)
        if not left:
            return []
        time.sleep(0.1)
    return processes_of_run(run_id)


def wait_until(condition, *, what: str, timeout_s: float = 60.0, every_s: float = 0.05) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` if it is not within ``timeout_s`` (a bound for a
    hang, far above the usual wait: tests wait on conditions, never on the clock)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(every_s)


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in RUN_DIR as TensorBoard itself reads the folder: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def _ctrl_c_as_at_a_terminal() -> None:
    """SIGINT back to its default in the launcher: a test suite started in the background (``cmd &`` in a script,
    which ignores SIGINT, and every child inherits that) must still see the launcher take a Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_launch(args: list[str], *, cwd: str, until: str | None = "epoch 1 done",
                 timeout_s: float = 120) -> tuple[subprocess.Popen, str, list[str]]:
    """Start ``mxft-launch ARGS`` and read its output until a line holds ``until``.

    With ``until=None``, returns as soon as the run id is known. Returns the process (its
    stdout still open), the run id and the lines read so far. The launch runs with ``-v``
    (every process's lines on the console), so ``until`` can be a worker's line.
    """
    env = dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR)
    proc = subprocess.Popen(LAUNCH + ["-v"] + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_ctrl_c_as_at_a_terminal)
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if (until is None and line.startswith("[mxft] run ")) or (until is not None and until in line):
            return proc, run_id_from("".join(seen)), seen
    proc.kill()
    raise AssertionError(f"the launch never printed {until!r}:\n" + "".join(seen[-30:]) + proc.stderr.read())


def plan_lines(text: str, run_id: str) -> list[str]:
    """A printed or saved plan with its run id and ports made neutral (they differ run to run)."""
    text = text[text.index(f"run {run_id}"):]
    return re.sub(r":\d{4,5}\b", ":PORT", text.replace(run_id, "RUN")).strip().splitlines()


def assert_dry_run_is_the_plan(dry_stdout: str, run_dir: str) -> None:
    """``--dry-run``'s output is the launch's plan.txt, line for line (run id and ports aside)."""
    dry_id = next(line.split()[1] for line in dry_stdout.splitlines() if line.startswith("run "))
    with open(os.path.join(run_dir, "plan.txt"), encoding="utf-8") as handle:
        saved = handle.read()
    assert plan_lines(dry_stdout, dry_id) == plan_lines(saved, os.path.basename(run_dir))


# --------------------------------------------------------------------------- namespace hosts (testing.netns)

def python_field() -> str:
    return f"python={sys.executable}"


def hosts_file(cluster, tmp_path, *, extra=None) -> str:
    """TMP_PATH/hosts.txt naming ``cluster``'s namespace hosts, each with this Python (``extra``: more fields)."""
    fields = {h.name: python_field() for h in cluster.hosts}
    fields.update(extra or {})
    return cluster.hosts_file(str(tmp_path / "hosts.txt"), extra=fields)


def ssh_args(cluster, hosts: str, *, remote_dir: str = "/srv/mxft-host") -> list[str]:
    """The options that reach ``cluster``'s namespace hosts over SSH, with their private work folder (a test that
    leaves odd files there gives a folder of its own below it)."""
    return ["--hosts", hosts, "--ssh-config", cluster.ssh_config, "--remote-dir", remote_dir]


def no_processes_left(cluster, run_id: str, timeout_s: float = 10.0) -> dict[str, list[int]]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = {name: pids for name, pids in run_processes(cluster, run_id).items() if pids}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def launch_bad(cluster, tmp_path, hosts: str, job: str, *, ssh_config: str | None = None) -> str:
    """A launch on the namespace hosts that must be refused as bad input before anything starts: its one line."""
    before = {h.name: sorted(os.listdir(h.work_dir)) for h in cluster.hosts}
    args = ["--hosts", hosts, "--ssh-config", ssh_config or cluster.ssh_config, "--remote-dir", "/srv/mxft-host"]
    result = run_launch(args + [job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path), timeout_s=60)
    assert result.returncode == 2, result.stdout + result.stderr  # within run_launch's 60 s: no hang
    assert "Traceback" not in result.stderr and "[mxft] run " not in result.stdout
    assert not (tmp_path / "runs").exists()
    assert {h.name: sorted(os.listdir(h.work_dir)) for h in cluster.hosts} == before  # nothing staged
    for host in cluster.hosts:  # only sshd runs there
        names = {open(f"/proc/{pid}/comm").read().strip() for pid in host.pids() if os.path.exists(f"/proc/{pid}")}
        assert names <= {"sshd", "unshare", "sh"}, names
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --------------------------------------------------------------------------- command mode

PROGRAM_DIR = os.path.join(REPO, "tests", "programs")


# What must reach every worker unchanged: spaces, both quotes, $HOME, a backtick, a glob, an empty word.
WORDS = ["a b", "it's", '"quoted"', "$HOME", "`id`", "*", ""]


def check_argv(*extra: str) -> list[str]:
    return ["python", "pslite_check.py", *extra, "--expect-json", json.dumps(WORDS), "--", *WORDS]
