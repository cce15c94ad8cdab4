"""A plan that lasts (issue 25): ``--dry-run --save-plan FILE`` writes it, ``--plan FILE`` runs that very plan after
gathering its facts again, and refuses, naming what changed, when a fact or the plan itself is not what it was."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec
from launcher.plan import Facts, HostFacts, fact_changes, make_plan, plan_from_json
from launcher.run.launch import saved_plan
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import parse_job
from testing.processes import run_id_from
from tests.helpers import demo_job, refusal_line, run_launch, write_job
from tests.plan_literals import FACTS, JOB, inventory

HOSTS = (HostSpec("10.0.0.1"), HostSpec("10.0.0.2", slots=2, line=2, source="/h.txt"))
REMOTE_FACTS = Facts(run_id="small-1", run_dir="/runs/small-1", cache_dir="/cache", scheduler_port=9000,
                     code_dir="/code", train_fingerprint="f", remote_dir="~/.mxft",
                     hosts={"10.0.0.1": HostFacts("10.0.0.1", "py", 4, "/home/a/.mxft",
                                                  interfaces={"eth0": "10.0.0.1"}),
                            "10.0.0.2": HostFacts("10.0.0.2", "py", 4, "/home/b/.mxft")},
                     code_files=("trainer/worker.py",), code_hash="c0de", file_keys={"/m/net-symbol.json": "mk"})


def plans():
    job = parse_job(JOB, "/jobs/small.yaml", environ={})
    command = CommandSpec("t", "cli", ("python", "t.py", "a b"), workers=3, servers=2, workdir="/home/me/job",
                          sync_dir="~/job")
    return {"fine-tuning on two hosts": make_plan(job, HOSTS, REMOTE_FACTS, inventory=inventory()),
            "fine-tuning here": make_plan(job, [HostSpec("localhost")], FACTS, inventory=inventory()),
            "a command on two hosts": make_plan(command, HOSTS, REMOTE_FACTS)}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", list(plans()))
def test_a_plan_reads_back_as_the_same_value(name):
    plan = plans()[name]
    assert plan_from_json(plan.to_json(), "plan.json") == plan


@pytest.mark.timeout(30)
def test_a_plan_file_that_does_not_fit_is_refused_naming_the_field():
    good = json.loads(plans()["fine-tuning on two hosts"].to_json())

    def refusal(data) -> str:
        with pytest.raises(InputError) as refused:
            plan_from_json(data if isinstance(data, str) else json.dumps(data), "p.json")
        assert refused.value.where == "p.json"
        return refused.value.message

    assert refusal("{not json").startswith("is not a plan (not JSON")
    assert "component kind 'train'" in refusal({**good, "component": {**good["component"], "kind": "train"}})
    wrong = json.loads(json.dumps(good))
    wrong["processes"][3]["argv"] = "python -m trainer"
    assert refusal(wrong) == "is not a plan mxft wrote: plan.processes[3].argv: expected a list, found str"
    assert refusal({**good, "extra": 1}) == "is not a plan mxft wrote: plan: Plan has no field 'extra'"
    del wrong["facts"]["run_id"]
    assert "plan.facts: the field 'run_id' is missing" in refusal(wrong)
    wrong = json.loads(json.dumps(good))
    wrong["facts"]["scheduler_port"] = True  # JSON's true is not a port
    assert refusal(wrong).endswith("plan.facts.scheduler_port: expected int, found bool")


@pytest.mark.timeout(30)
def test_fact_changes_name_each_fact_and_host_that_changed():
    now = dataclasses.replace(REMOTE_FACTS, run_id="small-2", scheduler_port=9999, code_hash="beef",
                              file_keys={"/m/net-symbol.json": "mk2"},
                              hosts={"10.0.0.1": dataclasses.replace(REMOTE_FACTS.hosts["10.0.0.1"], cpu_count=2)})
    assert fact_changes(REMOTE_FACTS, now) == [
        "the trainer's code (code_hash c0de -> beef)",
        "the model or validation files (file_keys /m/net-symbol.json mk -> mk2)",
        "host 10.0.0.1: cpu_count 4 -> 2", "host 10.0.0.2: gone"]
    assert fact_changes(REMOTE_FACTS, dataclasses.replace(REMOTE_FACTS, run_id="x", worker_ports=(1, 2))) == []


@pytest.mark.timeout(300)
def test_a_saved_plan_runs_as_saved_once_and_is_refused_when_a_fact_or_the_plan_changed(tmp_path, demo_assets):
    assets = tmp_path / "assets"
    shutil.copytree(demo_assets, assets)
    job = write_job(tmp_path / "job.yaml", demo_job(str(assets), train={"epochs": 1}))
    runs = str(tmp_path / "runs")

    def save(name: str) -> str:
        path = str(tmp_path / name)
        dry = run_launch([job, "--dry-run", "--save-plan", path, "--run-root", runs], cwd=str(tmp_path))
        assert dry.returncode == 0 and f"plan saved to {path}" in dry.stdout, dry.stdout[-2000:] + dry.stderr
        return path

    first = save("first.json")
    planned = saved_plan(first)
    done = run_launch(["--plan", first], cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    run_dir = os.path.join(runs, run_id_from(done.stdout))
    assert planned.run_dir == run_dir
    executed = plan_from_json(open(os.path.join(run_dir, "plan.json"), encoding="utf-8").read(), "plan.json")
    assert executed == planned  # the dry run's plan is the plan that ran: compared as values
    assert refusal_line(run_launch(["--plan", first], cwd=str(tmp_path))).endswith(
        f"this plan has run already (its run folder {run_dir} exists); a saved plan runs once (make a new one with "
        f"--dry-run --probe --save-plan FILE, or continue that run: mxft-launch --resume {run_dir})")

    edited = save("edited.json")
    data = json.loads(open(edited, encoding="utf-8").read())
    data["component"]["batches_per_epoch"] += 1
    open(edited, "w", encoding="utf-8").write(json.dumps(data))
    assert "is not the plan its own job and facts give (component differs" in \
        refusal_line(run_launch(["--plan", edited], cwd=str(tmp_path)))

    changed = save("changed.json")
    with open(assets / "digits5to9-val.rec", "ab") as handle:
        handle.write(b"\0" * 16)  # the validation file is not what it was when the plan was made
    line = refusal_line(run_launch(["--plan", changed], cwd=str(tmp_path)))
    assert f"changed.json: a fact this plan was made from has changed: the model or validation files (file_keys " \
           f"{assets / 'digits5to9-val.'}" in line, line  # the .rec and its .idx share a key
    assert sorted(os.listdir(runs)) == [os.path.basename(run_dir)]  # nothing started for the refused plans


@pytest.mark.timeout(120)
def test_a_saved_command_plan_with_environment_values_is_refused(tmp_path):
    (tmp_path / "t.py").write_text("print('hi')\n")
    path = str(tmp_path / "cmd.json")
    dry = run_launch(["-n", "1", "--env", "TOKEN=s3cr3t", "--dry-run", "--save-plan", path, "--", "python", "t.py"],
                     cwd=str(tmp_path))
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr
    assert "s3cr3t" not in open(path, encoding="utf-8").read()
    assert refusal_line(run_launch(["--plan", path], cwd=str(tmp_path))) == (
        f"mxft-launch: error: {path}: this command's processes get TOKEN from --env or env:, whose value a saved plan "
        "never holds (launch the command again instead)")


def _write(tmp_path, data: dict, name: str = "p.json", mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    os.chmod(path, mode)
    return str(path)


@pytest.mark.timeout(30)
def test_a_plan_file_is_a_program_and_is_checked_as_one(tmp_path):
    """A plan decides what runs where, as you: a file others may write is refused, and a plan must hold nothing a
    launch could not have made (its job, hosts, run id and trust settings pass their own rules)."""
    good = json.loads(plans()["fine-tuning on two hosts"].to_json())

    def refusal(data: dict, **writing) -> str:
        with pytest.raises(InputError) as refused:
            saved_plan(_write(tmp_path, data, **writing))
        return refused.value.message

    assert saved_plan(_write(tmp_path, good)) == plans()["fine-tuning on two hosts"]
    assert "may be written by others" in refusal(good, mode=0o622)
    changed = json.loads(json.dumps(good))
    changed["facts"]["run_id"], changed["facts"]["run_dir"] = "../../etc", "/runs/../../etc"
    assert refusal(changed).startswith("its run id '../../etc' and folder")
    changed = json.loads(json.dumps(good))
    changed["hosts"][1]["name"] = "-oProxyCommand=touch /tmp/owned"
    assert refusal(changed) == "'-oProxyCommand=touch' is not a host name or address"  # the hosts file's rule
    changed = json.loads(json.dumps(good))
    changed["component"]["job"]["cluster"]["workers"] = 10 ** 9
    assert refusal(changed).startswith("its job is not one a job file can say")
    changed = json.loads(json.dumps(good))
    changed["facts"]["ssh"]["accept_new_host_keys"] = True
    assert refusal(changed) == "it would accept new host keys, which only the command line may ask for"
    text = json.dumps(good).replace('"connect_timeout_s": 10.0', '"connect_timeout_s": NaN')
    (tmp_path / "nan.json").write_text(text)
    os.chmod(tmp_path / "nan.json", 0o600)
    with pytest.raises(InputError, match="NaN is not a number a plan holds"):
        saved_plan(str(tmp_path / "nan.json"))


@pytest.mark.timeout(30)
def test_the_plan_names_the_files_for_the_relay_and_says_when_they_take_it(tmp_path):
    """``Plan.relayed`` names the files more than two hosts get at the same path (the sync folder's and the code);
    --dry-run prints them with the rule staging applies to their sizes then, and a saved plan keeps them. With two
    hosts the relay keeps nothing off the launcher's links: none."""
    work = tmp_path / "job"
    work.mkdir()
    (work / "big.bin").write_bytes(b"x")
    hosts = tuple(HostSpec(f"10.0.0.{i}", line=i) for i in range(1, 5))
    facts = dataclasses.replace(REMOTE_FACTS, synced=("big.bin",), hosts={
        h.label: HostFacts(h.label, "py", 4, "/home/me/.mxft", home="/home/me") for h in hosts})
    command = CommandSpec("t", "cli", ("python", "t.py"), workers=4, servers=1, workdir=str(work), sync_dir="~/job")
    plan = make_plan(command, hosts, facts)
    every = tuple(h.label for h in hosts)
    assert [(file.source, file.dest, file.kind, file.hosts) for file in plan.relayed] == [
        ("/code/trainer/worker.py", "/home/me/.mxft/code/c0de/trainer/worker.py", "code", every),
        (str(work / "big.bin"), "/home/me/job/big.bin", "run", every)]
    assert ("  relay      2 files (1 code, 1 run) that 4 hosts get at the same path: through the relay when that keeps "
            "64 MiB or more off the launcher's links at staging") in plan.describe()
    assert plan_from_json(plan.to_json(), "plan.json") == plan
    two = make_plan(dataclasses.replace(command, workers=2), hosts[:2], facts)
    assert two.relayed == () and "  relay " not in two.describe()
