"""What a resumed run needs to continue exactly (issue 27): the optimizer's state saved with a checkpoint and given
back without pickle, and learning-rate schedules that are functions of the update count the state carries."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest

from cluster.hosts import HostSpec
from launcher.plan import make_plan
from launcher.spec.jobspec import parse_job
from tests.plan_literals import FACTS, JOB, inventory
from trainer.resume_state import META, load_optimizer_state, save_optimizer_state
from trainer.worker import lr_scheduler


def _updates(updater, weights, steps: int) -> list[np.ndarray]:
    for step in range(steps):
        for index, weight in enumerate(weights):
            updater(index, mx.nd.full(weight.shape, 0.1 * (step + 1) * (index + 1)), weight)
    return [weight.asnumpy().copy() for weight in weights]


@pytest.mark.parametrize("name, params", [("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
                                          ("adam", {"learning_rate": 0.01})])
def test_an_updater_restored_from_its_file_updates_as_the_one_that_went_on(tmp_path, name, params):
    """Momentum (an array per weight) and Adam (a tuple, and the update count its bias correction reads)."""
    def fresh():
        scheduler = mx.lr_scheduler.FactorScheduler(step=10 ** 9, factor=1.0, base_lr=params["learning_rate"],
                                                    warmup_steps=10, warmup_begin_lr=0.0, warmup_mode="linear")
        return mx.optimizer.get_updater(mx.optimizer.create(name, lr_scheduler=scheduler, **params))
    start = [mx.nd.ones((3, 2)), mx.nd.ones((4,)) * 2]
    going_on = fresh()
    weights = [w.copy() for w in start]
    _updates(going_on, weights, 3)
    path = str(tmp_path / "demo-0003.states")
    save_optimizer_state(going_on, path, batches_per_epoch=3)
    resumed_weights = [w.copy() for w in weights]
    expected = _updates(going_on, weights, 2)
    resumed = fresh()
    load_optimizer_state(resumed, path, batches_per_epoch=3)
    assert resumed.optimizer.num_update == 3
    assert all(np.array_equal(a, b) for a, b in zip(_updates(resumed, resumed_weights, 2), expected))
    forgetful = [w.copy() for w in start]  # without the state the same steps give other weights
    _updates(fresh(), forgetful, 3)
    assert not all(np.array_equal(a, b) for a, b in zip(_updates(fresh(), forgetful, 2), expected))


def test_a_states_file_is_arrays_and_json_and_anything_else_is_refused(tmp_path):
    updater = mx.optimizer.get_updater(mx.optimizer.create("sgd", learning_rate=0.1, momentum=0.9))
    weight = mx.nd.ones((2,))
    updater(0, mx.nd.ones((2,)), weight)
    path = str(tmp_path / "a.states")
    save_optimizer_state(updater, path, batches_per_epoch=2)
    saved = mx.nd.load(path)
    assert sorted(saved) == [META, "s0"]
    assert json.loads(bytes(saved[META].asnumpy().astype(np.uint8)).decode())["states"] == {"0": "s0"}
    elsewhere = mx.optimizer.get_updater(mx.optimizer.create("sgd", learning_rate=0.1, momentum=0.9))
    load_optimizer_state(elsewhere, path, batches_per_epoch=4, devices=[1, 2])  # other GPUs, twice the batches
    assert elsewhere.optimizer.num_update == 2 and elsewhere.optimizer._all_index_update_counts == {
        1: {0: 2}, 2: {0: 2}, 0: {0: 2}}
    mx.nd.save(str(tmp_path / "b.states"), {"s0": mx.nd.ones((2,))})
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_optimizer_state(updater, str(tmp_path / "b.states"), batches_per_epoch=2)


@pytest.mark.parametrize("schedule, rates", [
    # 2 batches per epoch; rates at updates 1, 2, 3 ... 12 (a resumed run's scheduler sees the restored count)
    ("{type: step, every_epochs: 2, factor: 0.5}", [0.1] * 4 + [0.05] * 4 + [0.025] * 4),
    ("{type: multistep, at_epochs: [1, 3], factor: 0.1}", [0.1] * 2 + [0.01] * 4 + [0.001] * 6),
    ("{type: cosine, final_lr: 0}", None),
])
def test_a_schedule_gives_each_update_its_rate_from_the_plans_batches_per_epoch(schedule, rates):
    job = parse_job(JOB.replace("epochs: 2,", f"epochs: 6, optimizer_params: {{learning_rate: 0.1}}, "
                                f"lr_schedule: {schedule},"), "/jobs/small.yaml", environ={})
    plan = make_plan(job, [HostSpec("localhost")], FACTS, inventory=inventory())
    worker = plan.component.workers[0]
    assert worker.batches_per_epoch == 2 and worker.train.lr_schedule["type"] in schedule
    scheduler = lr_scheduler(worker, 0.1)
    got = [scheduler(update) for update in range(1, 13)]
    if rates is None:  # cosine: half way at update 6 of 12, the final rate at the end
        assert got[5] == pytest.approx(0.05) and got[11] == pytest.approx(0.0) and got == sorted(got, reverse=True)
    else:
        assert got == pytest.approx(rates)
    assert "(train.lr_schedule: " in plan.describe()
