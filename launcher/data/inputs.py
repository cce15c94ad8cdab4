"""Check a job's files before anything starts, and measure what planning needs.

Reads the checkpoint and the ``.rec``/``.idx`` files (and writes nothing but the label
cache): the cut layer must be in the symbol, the params file must be a complete MXNet NDArray
file (every array's header and data, to its last byte; and match its sha256 when the job gives
one), and every label must lie in ``[0, num_classes)`` with every class present in the
training data; the labels are the records' own, or a ``.lst`` that a sample of the records
agrees with (``launcher.data.labelsource``). Pure Python: the launch host needs no mxnet.
"""
from __future__ import annotations

import dataclasses
import json
import os

from cluster.errors import InputError
from launcher.data import paramsfile, recfile
from launcher.data.labelsource import load_labels
from launcher.data.pieces import file_sha256
from launcher.spec.jobspec import JobSpec


@dataclasses.dataclass(frozen=True)
class Inventory:
    """What the job's data holds, as planning needs it."""

    train_records: tuple[recfile.RecordSpan, ...]
    train_bytes: int
    val_records: int
    val_bytes: int
    train_labels: tuple[float, ...] = ()   # of each record, in train_records order
    train_index: str | None = None         # the training file's .idx, if it has one (reading it in place needs it)
    val_spans: tuple[recfile.RecordSpan, ...] = ()  # the validation records (their parts go to the workers)
    val_index: str | None = None           # the validation file's .idx, if it has one (its parts are read through it)
    notes: tuple[str, ...] = ()            # what the launcher passed over and the user may want to know


def _require_file(path: str, what: str, hint: str) -> None:
    if not os.path.isfile(path):
        raise InputError(path, f"{what} not found", hint=hint)


def check_model(job: JobSpec) -> int:
    """Validate the checkpoint files; returns their total size in bytes."""
    model = job.model
    fetch_hint = (f"download it from {model.url}" if model.url
                  else "check model.prefix and model.epoch in " + job.source)
    _require_file(model.symbol_path, "model symbol", fetch_hint)
    _require_file(model.params_path, "model params", fetch_hint)
    try:
        with open(model.symbol_path, encoding="utf-8") as handle:
            graph = json.load(handle)
        names = [node["name"] for node in graph["nodes"]]
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: JSON nested without end
        raise InputError(model.symbol_path, "is not an MXNet symbol file (JSON with 'nodes')") from None
    if model.cut_layer not in names:
        ops = [node["name"] for node in graph["nodes"] if node.get("op") not in (None, "null")]
        raise InputError(job.source, f"model.cut_layer '{model.cut_layer}' is not a layer of {model.symbol_path}",
                         hint=f"its last layers are {', '.join(ops[-5:])}")
    check_params_file(model.params_path)
    if model.params_sha256:
        digest = file_sha256(model.params_path)
        if digest != model.params_sha256:
            raise InputError(model.params_path, f"sha256 is {digest[:12]}..., the job expects "
                             f"{model.params_sha256[:12]}...", hint="the file is corrupt or a different model")
    return os.path.getsize(model.symbol_path) + os.path.getsize(model.params_path)


def check_params_file(path: str) -> None:
    """Raise InputError unless ``path`` is a whole MXNet params file of named arrays (every header and
    data length adding up to its size, as ``mx.model.load_checkpoint`` needs)."""
    layout = paramsfile.read_layout(path)
    if isinstance(layout, paramsfile.BadParams):
        raise InputError(path, f"is not an MXNet params file ({layout.reason})",
                         hint="the download may be incomplete; fetch it again")
    if layout.arrays and not layout.names:
        raise InputError(path, f"holds {len(layout.arrays)} arrays without names",
                         hint="save a dict of 'arg:NAME' / 'aux:NAME' arrays, as Module.save_checkpoint does")


def check_inputs(job: JobSpec, *, cache_dir: str | None = None, remember_labels: bool = True) -> Inventory:
    """Raise InputError for the first thing wrong with the job's files, else describe them.

    The labels come from ``cache_dir``'s label cache, the ``.lst`` or the records (``launcher.data.labelsource``),
    and are cached there with ``remember_labels``.
    """
    check_model(job)
    train_spans, train_labels = load_labels(job.data.train, cache_dir, remember=remember_labels)
    train = recfile.LabelSummary.of(job.data.train, train_labels.values)
    train.check(job.num_classes, require_every_class=True)
    val_spans, val_labels = load_labels(job.data.val, cache_dir, remember=remember_labels)
    val = recfile.LabelSummary.of(job.data.val, val_labels.values)
    val.check(job.num_classes, require_every_class=False)
    return Inventory(
        train_records=tuple(train_spans),
        train_bytes=sum(span.size_bytes for span in train_spans),
        val_records=val.num_records,
        val_bytes=os.path.getsize(job.data.val),
        train_labels=train_labels.values,
        train_index=recfile.present_index(job.data.train),
        val_spans=tuple(val_spans),
        val_index=recfile.present_index(job.data.val),
        notes=tuple(labels.note for labels in (train_labels, val_labels) if labels.note),
    )
