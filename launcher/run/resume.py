"""``--resume RUN_DIR``: the run that stopped, continued as its own.

The job is the run's ``job.yaml``; ``--set`` may change what can change mid-run (more
epochs, what counts as success, logging and deadlines) and is refused, one line, for a
key the checkpoints were trained under. The hosts, launcher, SSH config, work folder and
cache are those its last plan recorded (``plan-attempt-N.json``), unless the command
line gives others, which the console then names; a run whose hosts came from a Slurm
allocation takes the nodes of the allocation it resumes in.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Mapping

from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.secret import Secret
from launcher.data import runstate
from launcher.plan import Plan
from launcher.remote.folder_check import folder_unsafe_reason
from launcher.run.config import Attempt, LaunchConfig
from launcher.run.kinds import kind_of
from launcher.run.trust import RUN_ID, read_plan, require_fair_hosts
from launcher.spec.jobspec import JobSpec, load_job

# What --set may change when a run resumes: nothing its checkpoints were trained under.
CHANGEABLE = ("train.epochs", "train.keep", "train.early_stop", "train.log_every_batches", "train.step_timing",
              "expect.", "cluster.max_restarts", "cluster.min_hosts", "cluster.startup_timeout_s",
              "cluster.progress_timeout_s", "cluster.host_silence_s")


def resumed_job(run_dir: str, overrides: tuple[str, ...], *,
                given_env: Mapping[str, str] | None = None) -> tuple[JobSpec, Attempt]:
    """The job (with the ``--set`` items that may change mid-run, and its ``--env`` secrets again) and the next
    attempt of a stopped run."""
    job_path = os.path.join(run_dir, "job.yaml")
    if not os.path.isfile(job_path):
        raise InputError(run_dir, "is not an mxft run directory (no job.yaml)", hint="give the folder a launch printed")
    unsafe = folder_unsafe_reason(run_dir)  # what it records decides what runs where, as you
    if unsafe is not None:
        raise InputError(run_dir, unsafe, hint="resume only a run folder of your own")
    if runstate.running_launcher(run_dir) is not None:
        raise InputError(run_dir, "this run is still running", hint=f"stop it first: mxft-launch stop {run_dir}")
    job = load_job(job_path)
    if not kind_of(job).resumable:
        raise InputError(run_dir, "command-mode runs cannot be resumed", hint="launch the command again")
    if overrides:
        job = _changed_only_where_it_may(job, load_job(job_path, overrides=overrides))
    if job.env or given_env:
        job = dataclasses.replace(job, env=_secrets_again(job.env or {}, given_env or {}, os.environ))
    attempts = runstate.read_attempts(run_dir)
    run_id = next((a["run_id"] for a in attempts if "run_id" in a), os.path.basename(os.path.normpath(run_dir)))
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise InputError(os.path.join(run_dir, "attempts.jsonl"), f"names the run {run_id!r}, which is not a run id")
    checkpoint = runstate.latest_checkpoint(run_dir)
    if checkpoint is not None and checkpoint.epoch >= job.train.epochs:
        raise InputError(run_dir, f"all {job.train.epochs} epochs are done already",
                         hint=f"see result.json, or train on: --resume {run_dir} --set train.epochs=N")
    if attempts and attempts[-1].get("stopped_early") is not None:
        _require_more_patience(run_dir, job, checkpoint)
    number = max((a.get("attempt", 0) for a in attempts), default=0) + 1
    return job, Attempt(run_id, run_dir, number, checkpoint)


def _secrets_again(env: Mapping[str, str], given: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The job's environment with the ``--env`` values its record only names: this machine's value again for
    ``<from environment>``, the resume's own ``--env NAME=VALUE`` for ``<given>``; InputError for one missing.

    >>> env = _secrets_again({"A": "1", "T": "<from environment>"}, {}, {"T": "s3"})
    >>> env == {"A": "1", "T": "s3"}, env["T"].shown
    (True, '<from environment>')
    """
    out = {**env}
    for name, value in env.items():
        if name in given:
            out[name] = given[name]
        elif value == "<from environment>":
            if name not in environ:
                raise InputError(f"--env {name}", "the run passed this machine's value of it, which is not set now",
                                 hint=f"set {name} again, or give --env {name}=VALUE")
            out[name] = Secret(environ[name], "<from environment>")
        elif value == "<given>":
            raise InputError(f"--env {name}", "the run was given its value on the command line, which a run never "
                             "records", hint=f"give it again: --env {name}=VALUE")
    return {**out, **{name: value for name, value in given.items() if name not in out}}


def _flat(value, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    return {key: item for name, sub in value.items() for key, item in _flat(sub, f"{prefix}{name}.").items()} \
        if value else {prefix: value}


def _require_more_patience(run_dir: str, job: JobSpec, checkpoint: runstate.Checkpoint | None) -> None:
    """A run that stopped early goes on only with the patience to (or with no early stopping): it would stop again
    at once otherwise."""
    if job.train.early_stop is None or checkpoint is None:
        return
    best = runstate.best_epoch(checkpoint.records) or checkpoint.epoch
    waited = checkpoint.epoch - best
    if job.train.early_stop.patience <= waited:
        raise InputError(run_dir, f"it stopped early after epoch {checkpoint.epoch}: {waited} epoch(s) brought no "
                         f"better validation accuracy than epoch {best}'s, and train.early_stop.patience is "
                         f"{job.train.early_stop.patience}",
                         hint=f"train on with more patience: --resume {run_dir} --set "
                              f"train.early_stop.patience={waited + 1} (or more)")


def _changed_only_where_it_may(job: JobSpec, changed: JobSpec) -> JobSpec:
    """``changed`` when every key ``--set`` changed may change mid-run; InputError naming the first that may not."""
    before, after = _flat(job.to_job_dict()), _flat(changed.to_job_dict())
    for key in sorted(set(before) | set(after)):
        name = key.rstrip(".")
        if before.get(key) != after.get(key) and not name.startswith(CHANGEABLE):
            raise InputError(f"--set {name}", f"cannot change when a run resumes: its checkpoints were trained with "
                             f"{before.get(key)!r}", hint="launch a new run with it; a resume may change "
                             + ", ".join(k.rstrip(".") + ("*" if k.endswith(".") else "") for k in CHANGEABLE))
    return changed


def recorded_plan(run_dir: str) -> Plan | None:
    """The plan of the run's last attempt that planned (plan.json, plan-attempt-N.json); None if it has none that
    this mxft can read (it never started, or an older mxft wrote it)."""
    numbered = sorted((int(match.group(1)), path) for path in glob.glob(os.path.join(run_dir, "plan-attempt-*.json"))
                      if (match := re.fullmatch(r"plan-attempt-([0-9]{1,6})\.json", os.path.basename(path))))
    for path in [*(path for _, path in reversed(numbered)), os.path.join(run_dir, "plan.json")]:
        try:
            return read_plan(path)
        except InputError:
            continue
    return None


def resumed_where(config: LaunchConfig, run_dir: str, hosts_of) -> tuple[LaunchConfig, tuple[HostSpec, ...], str]:
    """(settings, hosts, a note for the console): the run's own where the command line gives none.

    ``hosts_of(config)`` reads the hosts a configuration names (``launch._hosts``).
    """
    recorded = recorded_plan(run_dir)
    if recorded is None:
        return config, hosts_of(config), ""
    facts, given = recorded.facts, config.given
    require_fair_hosts(recorded.hosts, os.path.join(run_dir, "plan.json"))
    config = dataclasses.replace(
        config, launcher=config.launcher if "launcher" in given else facts.launcher,
        remote_dir=config.remote_dir if "remote_dir" in given else facts.remote_dir,
        cache_dir=config.cache_dir if "cache_dir" in given else facts.cache_dir,
        ssh=config.ssh if "ssh_config" in given else dataclasses.replace(config.ssh, ssh_config=facts.ssh.ssh_config))
    source = next((a.get("hosts_from") for a in reversed(runstate.read_attempts(run_dir)) if "hosts_from" in a), None)
    if "hosts" not in given:
        if source == "slurm":  # the nodes of the allocation it resumes in
            return config, hosts_of(dataclasses.replace(config, hosts_path="slurm")), ""
        return dataclasses.replace(config, hosts_path=source), recorded.hosts, ""
    hosts = hosts_of(config)
    was, now = [h.label for h in recorded.hosts], [h.label for h in hosts]
    if was == now:
        return config, hosts, ""
    added, left = [label for label in now if label not in was], [label for label in was if label not in now]
    return config, hosts, ("[mxft] resuming on other hosts than the run's (--hosts): "
                           + "; ".join(part for part in (f"adds {', '.join(added)}" if added else "",
                                                         f"leaves out {', '.join(left)}" if left else "") if part)
                           + ("" if added or left else "the same hosts in another order"))
