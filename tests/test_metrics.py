"""Per-epoch metrics: rows, CSV, plot panels and TensorBoard files, with and without top-k."""
from __future__ import annotations

import csv
import json
import os

import pytest

from launcher.report import metrics
from launcher.report.metrics import MetricsWriter, epoch_rows, panels, scalars_in_event_files
from tests.helpers import tensorboard_scalars


def epoch_event(index: int, epoch: int, *, top_k: int | None = None) -> dict:
    """A worker's epoch event as trainer/worker.py emits it (worker 0 adds the validation metrics)."""
    event = {"event": "epoch", "index": index, "rank": index, "epoch": epoch, "epoch_s": 2.0 + index,
             "images_per_s": 100.0 + 10 * index + epoch, "train_accuracy": 0.5 + epoch / 100, "train_loss": 1.0 / epoch,
             "process": f"worker-{index}"}
    if top_k:
        event[f"train_top{top_k}"] = 0.9
    if index == 0:
        event.update({"val_accuracy": 0.6 + epoch / 100, "val_loss": 2.0 / epoch, "val_images": 846})
        if top_k:
            event[f"val_top{top_k}"] = 0.95 + epoch / 1000
    return event


def events_for(epochs, *, workers: int = 2, top_k: int | None = None) -> list[dict]:
    return [epoch_event(index, epoch, top_k=top_k) for epoch in epochs for index in range(workers)]


def csv_rows(run_dir) -> tuple[list[str], list[dict]]:
    with open(os.path.join(run_dir, "metrics.csv"), encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_without_top_k_there_is_no_top_k_column_or_curve(tmp_path):
    """The demo's case: 5 classes, train.top_k 5, so the worker reports no top-k."""
    rows = epoch_rows(events_for([1, 2]), 2)
    assert list(rows[0]) == ["epoch", "epoch_s", "train_accuracy", "train_loss", "val_accuracy", "val_loss",
                             "images_per_s_total", "images_per_s_worker_0", "images_per_s_worker_1"]
    assert rows[1]["val_accuracy"] == 0.62 and rows[1]["images_per_s_total"] == 214.0
    accuracy, loss, speed = panels(rows)
    assert [s.name for s in accuracy.series] == ["train (worker 0)", "val"]
    assert accuracy.series[1].points == ((1, 0.61), (2, 0.62))
    assert [s.name for s in speed.series] == ["all workers", "worker 0", "worker 1"]

    writer = MetricsWriter(str(tmp_path), 2)
    for event in events_for([1, 2]):
        writer.add(event)
    writer.write()
    header, written = csv_rows(tmp_path)
    assert not any("top" in name for name in header)
    assert [row["epoch"] for row in written] == ["1", "2"]


def test_top_k_columns_and_curve_carry_the_jobs_k(tmp_path):
    rows = epoch_rows(events_for([1, 2], top_k=3), 2)
    assert list(rows[0])[:8] == ["epoch", "epoch_s", "train_accuracy", "train_top3", "train_loss", "val_accuracy",
                                 "val_top3", "val_loss"]
    assert rows[0]["val_top3"] == 0.951
    accuracy = panels(rows)[0]
    assert [s.name for s in accuracy.series] == ["train (worker 0)", "val", "val top-3"]
    assert accuracy.series[2].points == ((1, 0.951), (2, 0.952))

    writer = MetricsWriter(str(tmp_path), 2)
    for event in events_for([1, 2], top_k=3):
        writer.add(event)
    writer.write()
    header, written = csv_rows(tmp_path)
    assert [name for name in header if "top" in name] == ["train_top3", "val_top3"]
    assert [float(row["val_top3"]) for row in written] == [0.951, 0.952]
    assert os.path.getsize(tmp_path / "metrics.png") > 0


def assert_each_epoch_once(scalars: dict, epochs: list[int], top_k: int) -> None:
    assert sorted(scalars) == sorted(["accuracy/train", f"accuracy/train_top{top_k}", "loss/train", "accuracy/val",
                                      f"accuracy/val_top{top_k}", "loss/val", "time/epoch_s", "images_per_s/total",
                                      "images_per_s/worker_0", "images_per_s/worker_1"])
    for tag, points in scalars.items():
        assert [step for step, _ in points] == epochs, tag
    assert scalars["accuracy/val"] == [(e, pytest.approx(0.6 + e / 100)) for e in epochs]
    assert scalars[f"accuracy/val_top{top_k}"] == [(e, pytest.approx(0.95 + e / 1000)) for e in epochs]
    assert scalars["loss/train"] == [(e, pytest.approx(1.0 / e)) for e in epochs]
    assert scalars["images_per_s/worker_1"] == [(e, pytest.approx(110.0 + e)) for e in epochs]
    assert scalars["images_per_s/total"] == [(e, pytest.approx(210.0 + 2 * e)) for e in epochs]
    assert scalars["time/epoch_s"] == [(e, 3.0) for e in epochs]


def test_tensorboard_gets_each_completed_epoch_once(tmp_path):
    writer = MetricsWriter(str(tmp_path), 2)
    for epoch in (1, 2):
        for event in events_for([epoch], top_k=3):
            writer.add(event)
        writer.write(final=False)  # as the launcher does after each completed epoch
    writer.add(epoch_event(0, 3, top_k=3))  # epoch 3 only half reported: not a row yet
    writer.write(final=True)
    (name,) = [name for name in os.listdir(tmp_path) if "tfevents" in name]  # one file: one TensorBoard run
    assert name.startswith("events.out.tfevents.") and f".mxft-e0001-{os.getpid()}-" in name
    assert_each_epoch_once(tensorboard_scalars(tmp_path), [1, 2], top_k=3)


def test_a_resumed_run_adds_only_its_new_epochs(tmp_path):
    """Attempt 1 wrote epoch 1 to TensorBoard and died after reporting epoch 2; attempt 2 does epochs 3 and 4."""
    first = MetricsWriter(str(tmp_path), 2)
    for event in events_for([1], top_k=3):
        first.add(event)
    first.write(final=False)
    with open(tmp_path / "events.jsonl", "w", encoding="utf-8") as handle:  # what the launcher kept
        handle.writelines(json.dumps(event) + "\n" for event in events_for([1, 2], top_k=3))
    assert scalars_in_event_files(str(tmp_path)) >= {("accuracy/val", 1)}

    second = MetricsWriter(str(tmp_path), 2)  # starts from events.jsonl: epochs 1 and 2
    for event in events_for([3, 4], top_k=3):
        second.add(event)
    second.write(final=True)
    assert len([name for name in os.listdir(tmp_path) if "tfevents" in name]) == 2
    assert_each_epoch_once(tensorboard_scalars(tmp_path), [1, 2, 3, 4], top_k=3)


def test_a_record_cut_short_counts_as_not_written(tmp_path):
    writer = MetricsWriter(str(tmp_path), 2)
    for epoch in (1, 2):
        for event in events_for([epoch]):
            writer.add(event)
        writer.write(final=epoch == 2)
    (name,) = [name for name in os.listdir(tmp_path) if "tfevents" in name]
    path = tmp_path / name
    os.truncate(path, os.path.getsize(path) - 3)  # the launcher killed while writing epoch 2
    assert {step for _, step in scalars_in_event_files(str(tmp_path))} == {1}


def test_without_tensorboardx_only_the_csv_and_plot_are_written(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "_tensorboardx", lambda: None)
    writer = MetricsWriter(str(tmp_path), 2)
    for event in events_for([1, 2]):
        writer.add(event)
    writer.write()
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "metrics.png"]


def test_the_plot_has_the_runs_name_an_epoch_axis_a_mark_where_a_resume_began_and_one_colour_per_meaning(tmp_path):
    """Issue 28: metrics.png says whose it is, what x is, where attempt 2 began, and red is validation only."""
    from launcher.report import plot
    rows = epoch_rows(events_for([1, 2, 3, 4]), 2)
    accuracy, loss, speed = panels(rows)
    assert [s.color for s in accuracy.series] == [s.color for s in loss.series] == [plot.TRAIN, plot.VAL]
    assert plot.VAL not in [s.color for s in speed.series] and len({s.color for s in speed.series}) == 3
    (tmp_path / "attempts.jsonl").write_text(
        '{"attempt": 1, "outcome": "started", "begin_epoch": 0}\n{"attempt": 1, "outcome": "failed"}\n'
        '{"attempt": 2, "outcome": "started", "begin_epoch": 2}\n')
    marks = metrics.resume_marks(str(tmp_path))
    assert marks == [plot.Mark(2.5, "attempt 2")]
    image = plot.draw([accuracy, loss, speed], title="demo-20261207-1", marks=marks)
    assert image.shape == (plot.TITLE_HEIGHT + 3 * plot.PANEL_HEIGHT, plot.WIDTH, 3)
    assert (image[:plot.TITLE_HEIGHT] < 100).all(axis=2).sum() > 100  # the title's black pixels
    x = round(plot._LEFT + (2.5 - 1) / 3 * (plot.WIDTH - plot._RIGHT - plot._LEFT))
    for panel in range(3):
        top = plot.TITLE_HEIGHT + panel * plot.PANEL_HEIGHT
        column = image[top + plot._TOP:top + plot.PANEL_HEIGHT - plot._BOTTOM, x]
        assert (column == plot.MARK).all(axis=1).sum() >= 40, panel  # the dashed line, every panel
        axis_label_row = image[top + plot.PANEL_HEIGHT - plot._BOTTOM + 24:top + plot.PANEL_HEIGHT - 6]
        assert (axis_label_row == (90, 90, 90)).all(axis=2).sum() > 20  # "EPOCH" under each x axis
    writer = MetricsWriter(str(tmp_path), 2)
    for event in events_for([1, 2, 3, 4]):
        writer.add(event)
    writer.write()
    assert (tmp_path / "metrics.png").read_bytes() == plot.render([accuracy, loss, speed], title=tmp_path.name,
                                                                  marks=marks)


def test_worker_0s_batches_become_per_batch_curves_written_with_the_next_epochs_files(tmp_path):
    """Issue 28: TensorBoard had one point per epoch; worker 0's progress events now give the running training loss
    and the learning rate per batch (step: the batch counted from the run's start)."""
    writer = MetricsWriter(str(tmp_path), 2)
    for epoch in (0, 1):
        for batch in (1, 2, 3):
            writer.add_batch({"event": "progress", "epoch": epoch, "batch": batch, "train_loss": 1.0 / (batch + epoch),
                              "lr": 0.1 * (epoch + 1)}, batches_per_epoch=3)
    writer.add_batch({"event": "progress", "epoch": 1, "batch": 3}, batches_per_epoch=3)  # another worker's kind
    writer.add_batch({"event": "progress", "epoch": 1, "batch": 10 ** 9, "lr": 5.0}, batches_per_epoch=3)  # no such
    assert len(writer._batches) == 6
    for event in events_for([1, 2]):
        writer.add(event)
    writer.write()
    scalars = tensorboard_scalars(tmp_path)
    assert scalars["batch/lr"] == [(s, pytest.approx(0.1 if s <= 3 else 0.2)) for s in range(1, 7)]
    assert scalars["batch/train_loss"][3] == (4, pytest.approx(1.0 / 2))
    assert [step for step, _ in scalars["accuracy/val"]] == [1, 2]
