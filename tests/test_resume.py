"""A resume is the run's own (issue 27): its hosts, launcher, SSH config and work folder come from its record, so
the hint printed after a stop works as printed; ``--set`` may change what can change mid-run and nothing else; the
plan names the checkpoint it continues from."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import mxnet as mx
import pytest

from testing.processes import run_id_from
from tests.helpers import (REPO, demo_job, hosts_file, no_processes_left, refusal_line, run_launch, ssh_args,
                           start_launch, wait_until, write_job)


@pytest.mark.timeout(400)
def test_set_on_resume_extends_a_run_bitwise_as_if_it_never_stopped_and_refuses_what_it_was_trained_under(
        tmp_path, demo_assets):
    """Two epochs, then a resume for a third: bit for bit the params of three epochs straight (CPU; two workers,
    whose sums on the server do not depend on which push came first). Momentum, a warm-up and a step schedule make the
    optimizer's state and update count matter; each epoch's data order comes from (seed, worker, epoch)."""
    train = {"epochs": 2, "optimizer_params": {"learning_rate": 0.1, "momentum": 0.9}, "warmup_epochs": 1,
             "lr_schedule": {"type": "step", "every_epochs": 1, "factor": 0.5}}
    straight = write_job(tmp_path / "straight.yaml", demo_job(demo_assets, train=dict(train, epochs=3)))
    whole = run_launch([straight, "--run-root", str(tmp_path / "straight")], cwd=str(tmp_path))
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train=train))
    done = run_launch([job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    run_dir = str(tmp_path / "runs" / run_id_from(done.stdout))
    assert refusal_line(run_launch(["--resume", run_dir], cwd=str(tmp_path))).endswith(
        f"all 2 epochs are done already (see result.json, or train on: --resume {run_dir} --set train.epochs=N)")
    line = refusal_line(run_launch(["--resume", run_dir, "--set", "train.optimizer=nag"], cwd=str(tmp_path)))
    assert line.startswith("mxft-launch: error: --set train.optimizer: cannot change when a run resumes: its "
                           "checkpoints were trained with 'sgd' (launch a new run with it; a resume may change "
                           "train.epochs, "), line
    assert "--set train.epochs" in refusal_line(run_launch(["--resume", run_dir, "--set", "train.epochs=abc"],
                                                   cwd=str(tmp_path)))
    dry = run_launch(["--resume", run_dir, "--set", "train.epochs=3", "--dry-run"], cwd=str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert re.search(rf"  resume     attempt 2: from the checkpoint of epoch 2, {run_dir}/checkpoints/\S+, with the "
                     "optimizer's state: it continues as if it never stopped", dry.stdout), dry.stdout
    assert "training   3 epochs" in dry.stdout
    more = run_launch(["--resume", run_dir, "--set", "train.epochs=3"], cwd=str(tmp_path))
    assert more.returncode == 0, more.stdout[-2000:] + more.stderr
    result = json.loads(open(os.path.join(run_dir, "result.json"), encoding="utf-8").read())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3]
    assert [(a["attempt"], a["outcome"], a.get("begin_epoch")) for a in result["attempts"]] == [
        (1, "succeeded", 0), (2, "succeeded", 2)]
    final = [os.path.join(root, run_id_from(out.stdout), "checkpoint", "demo-0003.params")
             for root, out in ((str(tmp_path / "straight"), whole), (str(tmp_path / "runs"), done))]
    assert open(final[0], "rb").read() == open(final[1], "rb").read()


@pytest.mark.timeout(300)
def test_a_stopped_run_on_three_hosts_resumes_on_them_with_the_hint_as_printed(hosts3, tmp_path, demo_assets):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 4},
                                                    cluster={"workers": 3, "servers": 2}))
    runs = tmp_path / "runs"
    args = ssh_args(hosts3, hosts_file(hosts3, tmp_path)) + [job, "--run-root", str(runs)]
    proc, run_id, _ = start_launch(args, cwd=str(tmp_path), until="epoch 2 done")
    run_dir = runs / run_id
    wait_until(lambda: (run_dir / "checkpoints" / "checkpoint-0001.json").exists(), what="epoch 1's checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    hint = re.search(r"continue with: (mxft-launch --resume \S+)", stderr)
    assert hint and hint.group(1) == f"mxft-launch --resume {run_dir}", stderr
    assert no_processes_left(hosts3, run_id) == {}
    os.remove(tmp_path / "hosts.txt")  # the run's own record is all the resume has
    resumed = run_launch(hint.group(1).split()[1:], cwd=str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    first, second = (json.loads(open(run_dir / name, encoding="utf-8").read())
                     for name in ("plan.json", "plan-attempt-2.json"))
    assert [h["name"] for h in second["hosts"]] == [h["name"] for h in first["hosts"]] == \
        [h.address for h in hosts3.hosts]
    assert second["facts"]["remote_dir"] == "/srv/mxft-host" and second["facts"]["ssh"] == first["facts"]["ssh"]
    result = json.loads((run_dir / "result.json").read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2, 3, 4]
    assert [a["outcome"] for a in result["attempts"]] == ["interrupted", "succeeded"]
    assert no_processes_left(hosts3, run_id) == {}


@pytest.mark.timeout(30)
def test_a_run_folder_others_may_write_is_not_resumed(tmp_path):
    """What a run folder records decides what runs where on a resume: one another user could change is refused."""
    run_dir = tmp_path / "runs" / "demo-20261207-120000-abcd1234"
    run_dir.mkdir(parents=True)
    (run_dir / "job.yaml").write_text("num_classes: 2\nmodel: {prefix: /m}\ndata: {train: /t.rec, val: /v.rec}\n")
    os.chmod(run_dir, 0o777)
    assert refusal_line(run_launch(["--resume", str(run_dir)], cwd=str(tmp_path))).startswith(
        f"mxft-launch: error: {run_dir}: ")
    os.chmod(run_dir, 0o700)
    (run_dir / "attempts.jsonl").write_text(json.dumps({"attempt": 1, "run_id": "../../elsewhere"}) + "\n")
    assert refusal_line(run_launch(["--resume", str(run_dir)], cwd=str(tmp_path))) == (
        f"mxft-launch: error: {run_dir}/attempts.jsonl: names the run '../../elsewhere', which is not a run id")


@pytest.mark.timeout(300)
def test_early_stopping_stops_every_worker_at_the_same_epoch_and_keeps_the_best(tmp_path, demo_assets):
    """Issue 27, item 5: patience 1 stops at the first epoch no better than the best so far (the demo's accuracy
    swings from epoch to epoch); RUN_DIR/checkpoint holds that epoch's params and the best one's; the run is not
    resumed as if it were cut short, unless given more patience."""
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 10, "early_stop": {"patience": 1}},
                                                    cluster={"workers": 2}))
    done = run_launch([job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    run_dir = tmp_path / "runs" / run_id_from(done.stdout)
    result = json.loads((run_dir / "result.json").read_text())
    stopped = result["stopped_early"]
    accuracies = [e["val_accuracy"] for e in result["epochs"]]
    assert stopped["epoch"] < 10 and [e["epoch"] for e in result["epochs"]] == list(range(1, stopped["epoch"] + 1))
    best = accuracies.index(max(accuracies)) + 1
    assert stopped == {"epoch": stopped["epoch"], "best_epoch": best, "patience": 1}
    assert stopped["epoch"] == best + 1 and accuracies[-1] <= accuracies[best - 1]
    for worker in (0, 1):
        assert f"stopping after epoch {stopped['epoch']}: no better validation accuracy than epoch {best}'s" in (
            run_dir / "logs" / f"worker-{worker}.log").read_text()
    assert result["checkpoint"]["epoch"] == stopped["epoch"] and result["kept"] == {"last": stopped["epoch"],
                                                                                      "best": best}
    assert sorted(os.listdir(run_dir / "checkpoint")) == sorted(
        ["demo-symbol.json", f"demo-{best:04d}.params", f"demo-{stopped['epoch']:04d}.params"])
    assert refusal_line(run_launch(["--resume", str(run_dir)], cwd=str(tmp_path))) == (
        f"mxft-launch: error: {run_dir}: it stopped early after epoch {stopped['epoch']}: 1 epoch(s) brought no "
        f"better validation accuracy than epoch {best}'s, and train.early_stop.patience is 1 (train on with more "
        f"patience: --resume {run_dir} --set train.early_stop.patience=2 (or more))")
    more = run_launch(["--resume", str(run_dir), "--set", "train.early_stop.patience=2", "--dry-run"],
                      cwd=str(tmp_path))
    assert more.returncode == 0 and f"from the checkpoint of epoch {stopped['epoch']}" in more.stdout, more.stderr
    # mxft-launch evaluate: each kept model on the run's own validation set gives what the run reported for its epoch
    # (the checkpoint holds the averaged BatchNorm statistics the run evaluated with)
    for which, epoch in (("best", best), ("last", stopped["epoch"])):
        out = run_launch(["evaluate", str(run_dir), "--epoch", which, "--json"], cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr
        found, record = json.loads(out.stdout), result["epochs"][epoch - 1]
        assert (found["epoch"], found["images"]) == (epoch, record["val_images"]) == (epoch, 846)
        assert round(found["accuracy"] * 846) == round(record["val_accuracy"] * 846), (found, record)
        assert sum(row["images"] for row in found["per_class"]) == 846 and len(found["per_class"]) == 5
    text = run_launch(["evaluate", str(run_dir)], cwd=str(tmp_path)).stdout.splitlines()
    assert text[0].startswith(f"{run_dir}/checkpoint/demo-{best:04d}.params (epoch {best}) on ") and len(text) == 7
    assert refusal_line(run_launch(["evaluate", str(run_dir), "--epoch", "99"], cwd=str(tmp_path))) == (
        f"mxft-launch: error: {run_dir}: has no params of epoch 99 kept (see result.json's kept, and checkpoint/ and "
        "checkpoints/)")
    # the README's lines that classify an image with the model run as written, on a validation image
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    code = readme.split("<!-- use-model -->\n```python\n")[1].split("```\n<!-- /use-model -->")[0]
    (tmp_path / "use_model.py").write_text(code)
    val = os.path.join(demo_assets, "digits5to9-val")
    _, image = mx.recordio.unpack(mx.recordio.MXIndexedRecordIO(val + ".idx", val + ".rec", "r").read_idx(0))
    (tmp_path / "digit.png").write_bytes(image)
    said = subprocess.run([sys.executable, str(tmp_path / "use_model.py"), str(run_dir / "checkpoint" / "demo"),
                           str(best), str(tmp_path / "digit.png")], capture_output=True, text=True, timeout=120)
    assert said.returncode == 0 and re.fullmatch(r"[0-4]  0\.\d{3}", said.stdout.strip()), said.stdout + said.stderr
