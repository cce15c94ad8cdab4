"""The best model kept (issue 27, item 5): RUN_DIR/checkpoints keeps the best epoch's params whatever came after,
and RUN_DIR/checkpoint holds the last and the best (train.keep: both), the best alone, or the last alone."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from cluster.hosts import HostSpec
from launcher.data import runstate
from launcher.plan import make_plan
from launcher.run.kinds import FineTuning
from launcher.run.worker0 import _keep_best
from launcher.spec.jobspec import parse_job
from tests.plan_literals import FACTS, JOB, inventory

ACCURACY = {1: 0.6, 2: 0.93, 3: 0.7, 4: 0.8, 5: 0.85}


def _fetched_epochs(run_dir, epochs) -> list[dict]:
    """What keep_checkpoint leaves for each epoch: its params, then its marker (pruned as it goes)."""
    folder = runstate.checkpoint_dir(str(run_dir))
    os.makedirs(folder, exist_ok=True)
    records = []
    for epoch in epochs:
        record = {"epoch": epoch, "val_accuracy": ACCURACY[epoch]}
        records.append(record)
        incoming = run_dir / f"in-{epoch}"
        incoming.mkdir()
        (incoming / f"small-{epoch:04d}.params").write_bytes(b"epoch %d" % epoch)
        (incoming / "small-symbol.json").write_text("{}")
        (incoming / f"checkpoint-{epoch:04d}.json").write_text(json.dumps(
            {"epoch": epoch, "symbol": "small-symbol.json", "params": f"small-{epoch:04d}.params", "record": record}))
        runstate.install_checkpoint(str(incoming), ["small-symbol.json", f"small-{epoch:04d}.params",
                                                     f"checkpoint-{epoch:04d}.json"], str(run_dir), link=False)
    return records


@pytest.mark.parametrize("keep, held, kept", [("both", [2, 5], {"last": 5, "best": 2}),
                                              ("best", [2], {"best": 2}), ("last", [5], {"last": 5})])
def test_the_best_epoch_is_kept_beside_the_last(tmp_path, keep, held, kept):
    records = _fetched_epochs(tmp_path, range(1, 6))
    assert sorted(os.listdir(runstate.checkpoint_dir(str(tmp_path)))) == [
        *(f"checkpoint-{e:04d}.json" for e in range(1, 6)), "small-0002.params", "small-0004.params",
        "small-0005.params", "small-symbol.json"]  # the newest two, and epoch 2's: the best so far
    job = parse_job(JOB.replace("epochs: 2,", f"epochs: 5, keep: {keep},"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, [HostSpec("localhost")], dataclasses.replace(FACTS, run_dir=str(tmp_path)),
                     inventory=inventory())
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "small-0005.params").write_bytes(b"epoch 5")  # what _install_final_checkpoint put there
    result = {"checkpoint": {"prefix": "small", "epoch": 5}, "epochs": records}
    result["kept"] = _keep_best(plan, result)
    assert result["kept"] == kept
    assert sorted(os.listdir(final)) == [f"small-{e:04d}.params" for e in held]
    if 2 in held:
        assert (final / "small-0002.params").read_bytes() == b"epoch 2"
    said = FineTuning.summary(plan, dict(result, val_accuracy=0.85, val_images=5))[0]
    assert {"both": "checkpoint/small-0005.params (last, validation accuracy 0.8500), checkpoint/small-0002.params "
                    "(best, validation accuracy 0.9300)",
            "best": "checkpoint/small-0002.params (best, validation accuracy 0.9300)",
            "last": "checkpoint/small-0005.params (last, validation accuracy 0.8500)"}[keep] in said


def test_a_best_epoch_whose_params_were_not_fetched_is_said_not_passed_off(tmp_path):
    records = _fetched_epochs(tmp_path, range(1, 6))
    os.remove(os.path.join(runstate.checkpoint_dir(str(tmp_path)), "small-0002.params"))  # its fetch failed
    job = parse_job(JOB.replace("epochs: 2,", "epochs: 5, keep: best,"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, [HostSpec("localhost")], dataclasses.replace(FACTS, run_dir=str(tmp_path)),
                     inventory=inventory())
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "small-0005.params").write_bytes(b"epoch 5")
    result = {"checkpoint": {"prefix": "small", "epoch": 5}, "epochs": records}
    result["kept"] = _keep_best(plan, result)
    assert result["kept"] == {"last": 5, "best_not_kept": 2}
    assert os.listdir(tmp_path / "checkpoint") == ["small-0005.params"]
    assert ("checkpoint/small-0005.params (last, validation accuracy 0.8500) (the best, epoch 2, was not fetched: "
            "its params are not kept)") in FineTuning.summary(plan, dict(result, val_accuracy=0.85, val_images=5))[0]
