"""Which of a process's events the launcher takes, and in what form: each is checked before it is stored or used.

A worker's ``@mxft`` line is a claim from a process on a host that may be broken or
hostile. An event is taken only with the fields its kind has, each of its type and in its
range (an accuracy in [0, 1], an epoch in 1..epochs, every number finite); anything else
in it is left out, and an event that fails is refused with the reason. Who sent it is
not the event's to say: the launcher sets ``index`` from the process whose output
carried the line, so no worker can speak as worker 0. ``result_problem`` does the same for
worker 0's result.json.
"""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping

Check = Callable[[object], bool]
_BIG = 1e12      # above any count, rate or duration a real run reports
_TEXT = 400      # characters kept of a text field (an address, an error)


def _number(low: float, high: float) -> Check:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def _integer(low: int, high: float) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _text(v: object) -> bool:
    return isinstance(v, str)


def _digest(v: object) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32}", v) is not None


_FRACTION, _NONNEGATIVE, _COUNT = _number(0.0, 1.0), _number(0.0, _BIG), _integer(0, _BIG)

# Fields of the epoch event by name: an accuracy or top-k is a fraction; a loss, a time or a rate is non-negative.
_EPOCH_FIELDS: tuple[tuple[str, Check], ...] = (
    (r"(train|val)_(accuracy|top\d{1,3})", _FRACTION),
    (r"(train|val)_loss|[a-z_]{1,40}_s|images_per_s", _NONNEGATIVE),
    (r"val_images|val_correct|rank", _COUNT),
)


@functools.lru_cache(maxsize=8)
def _fields(epochs: int) -> Mapping[str, Mapping[str, Check]]:
    """Each kind's fields and checks (``epoch`` is every kind's own; ``time`` every event's); built once per run's
    epoch count, not for every event (a progress event comes with every batch)."""
    epoch, progress_epoch = _integer(1, epochs), _integer(0, epochs)
    return {
        "joined": {"rank": _COUNT, "num_workers": _COUNT, "join_s": _NONNEGATIVE},
        "start": {"weights": _digest},
        "progress": {"epoch": progress_epoch, "batch": _COUNT, "train_loss": _NONNEGATIVE, "lr": _NONNEGATIVE},
        "first_batch": {"epoch": progress_epoch},
        "epoch": {"epoch": epoch, "order": _digest},
        "checkpoint": {"epoch": epoch},
        "done": {"train_s": _NONNEGATIVE, "rank": _COUNT},
        "scheduler_unreachable": {"address": _text, "error": _text, "waited_s": _NONNEGATIVE},
        "scheduler_reachable": {"address": _text, "waited_s": _NONNEGATIVE},
    }


REQUIRED = {"joined": ("rank",), "start": ("weights",), "progress": ("epoch", "batch"),
            "epoch": ("epoch", "epoch_s", "images_per_s"),
            "checkpoint": ("epoch",), "first_batch": ("time",)}


def checked_event(event: dict, *, index: int, epochs: int) -> tuple[dict | None, str]:
    """(the event as the launcher takes it, "") or (None, why it is refused).

    >>> checked_event({"event": "epoch", "epoch": 1, "epoch_s": 2.0, "images_per_s": 9.5, "index": 0,
    ...                "train_accuracy": 0.5, "bogus": [1]}, index=3, epochs=2)
    ({'event': 'epoch', 'index': 3, 'epoch': 1, 'epoch_s': 2.0, 'images_per_s': 9.5, 'train_accuracy': 0.5}, '')
    >>> checked_event({"event": "epoch", "epoch": 1, "epoch_s": 2.0, "images_per_s": 9.5,
    ...                "train_accuracy": 3e6}, index=0, epochs=2)
    (None, 'train_accuracy 3000000.0 is not a number in its range')
    >>> checked_event({"event": "epoch", "epoch": 2, "epoch_s": 2.0, "images_per_s": 9.5, "train_loss": float("nan")},
    ...               index=1, epochs=2)[0]
    {'event': 'epoch', 'index': 1, 'epoch': 2, 'epoch_s': 2.0, 'images_per_s': 9.5}
    >>> checked_event({"event": "epoch"}, index=0, epochs=2)
    (None, 'it has no epoch')
    >>> checked_event({"event": "start", "weights": "0123456789abcdef" * 2}, index=2, epochs=2)[0]["weights"]
    '0123456789abcdef0123456789abcdef'
    >>> checked_event({"event": "start", "weights": "../x"}, index=2, epochs=2)
    (None, 'weights ../x is not a digest')
    """
    kind = event.get("event")
    fields = _fields(epochs)
    if kind not in fields:
        return None, f"no event kind {str(kind)[:40]!r} is known"
    taken: dict = {"event": kind, "index": index}
    if "time" in event:
        if not _number(0.0, 1e11)(event["time"]):
            return None, f"time {str(event['time'])[:40]} is not a time"
        taken["time"] = event["time"]
    for name, value in event.items():
        check = fields[kind].get(name) or (_epoch_field(name) if kind == "epoch" else None)
        if check is None or _diverged_loss(name, value):
            continue
        if not check(value):
            what = {_text: "a text", _digest: "a digest"}.get(check, "a number in its range")
            return None, f"{name} {str(value)[:40]} is not {what}"
        taken[name] = value[:_TEXT] if isinstance(value, str) else value
    missing = [name for name in REQUIRED.get(kind, ()) if name not in taken]
    return (None, f"it has no {missing[0]}") if missing else (taken, "")


def _diverged_loss(name: str, value: object) -> bool:
    """A loss of NaN or infinity is what a diverging run honestly reports: left out of the event (no value to
    draw or sum), which is still taken."""
    return name.endswith("_loss") and isinstance(value, float) and not math.isfinite(value)


def _epoch_field(name: str) -> Check | None:
    return next((check for pattern, check in _EPOCH_FIELDS if re.fullmatch(pattern, name)), None)


def result_problem(result: object, *, epochs: int) -> str | None:
    """What is wrong with worker 0's result.json for the launcher's use of it, or None.

    >>> result_problem({"val_accuracy": 0.5, "val_images": 10, "val_top3": 0.9, "epochs": [{"epoch": 1}]}, epochs=2)
    >>> result_problem({"val_accuracy": 0.5, "epochs": []}, epochs=2)
    'val_images is missing or not a count'
    >>> result_problem({"val_accuracy": 0.5, "val_images": 10, "epochs": [{"epoch": 7}]}, epochs=2)
    'epochs holds a record that is not of an epoch in 1..2'
    """
    if not isinstance(result, dict):
        return "it is not a JSON object"
    for name, check in (("val_accuracy", _FRACTION), ("val_images", _COUNT)):
        if not check(result.get(name)):
            return f"{name} is missing or not a {'fraction' if check is _FRACTION else 'count'}"
    for name in result:
        if re.fullmatch(r"val_top\d{1,3}", str(name)) and not _FRACTION(result[name]):
            return f"{name} is not a fraction"
    if "num_workers" in result and not _COUNT(result["num_workers"]):
        return "num_workers is not a count"
    records = result.get("epochs")
    if not isinstance(records, list) or not all(isinstance(r, dict) and _integer(1, epochs)(r.get("epoch"))
                                                 for r in records):
        return f"epochs holds a record that is not of an epoch in 1..{epochs}"
    return None
