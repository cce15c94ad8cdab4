"""A host's answer to preflight's probe, parsed at the edge: the last line of what the probe printed there, taken
only in the shape ``launcher.remote.host_probe`` writes. A host is not trusted to send that shape, so every field
the launcher reads is checked here once, and the rest of preflight reads fields it knows are there and sound.

>>> line = ('{"python": "3.11.2", "cpus": 2, "home": "/h", "free_bytes": 10, "work_dir": "/w", "time": 1.5, '
...         '"mxnet": "1.9.1", "dist_kvstore": true, "cuda": false}')
>>> parsed_answer(line)["cpus"]
2
>>> parsed_answer(line.replace('"cpus": 2', '"cpus": "2"'))
Traceback (most recent call last):
ValueError: cpus is not a count
"""
from __future__ import annotations

import json
import math

_TEXT_MAX = 4096


def _text(value) -> bool:
    return isinstance(value, str) and len(value) <= _TEXT_MAX


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _flag(value) -> bool:
    return isinstance(value, bool)


def _time(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _texts_by_text(value) -> bool:
    return isinstance(value, dict) and all(_text(k) and _text(v) for k, v in value.items())


def _pairs_of_text(value) -> bool:
    return isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and all(map(_text, p)) for p in value)


def _gpu_devices(value) -> bool:
    """``[{"index": 0, "name": "...", "cc": "9.0", "ran": true, "error": ""}, ...]`` (``launcher.remote.gpu_probe``)."""
    return isinstance(value, list) and all(
        isinstance(gpu, dict) and _count(gpu.get("index")) and all(_text(gpu.get(k, "")) for k in ("name", "cc"))
        and (gpu.get("error") is None or _text(gpu["error"])) and (gpu.get("ran") is None or _flag(gpu["ran"]))
        for gpu in value)


def _build_archs(value) -> bool:
    """``{"elf": [50, 60, ...], "ptx": []}``, or nothing (a build it could not read)."""
    return value is None or isinstance(value, dict) and all(
        isinstance(value.get(k, []), list) and all(_count(a) for a in value.get(k, [])) for k in ("elf", "ptx"))


_REQUIRED = {"python": _text, "cpus": _count, "home": _text, "free_bytes": _count, "work_dir": _text, "time": _time}
_MXNET = {"mxnet": _text, "dist_kvstore": _flag, "cuda": _flag}  # required unless mxnet_error says why not
_OPTIONAL = {"mxnet_error": _text, "gpus": _count, "gpu_devices": _gpu_devices, "build_archs": _build_archs,
             "unsafe_folders": _pairs_of_text, "interfaces": _texts_by_text, "reached_ip": _text,
             "files": lambda v: isinstance(v, dict), "cached": _flag}  # files: preflight._file_ids takes each
_WHAT = {_text: "a text", _count: "a count", _flag: "true or false", _time: "a time"}


def parsed_answer(line: str) -> dict:
    """The probe's JSON line as a dict whose fields are those the launcher reads, each in its shape; ValueError saying
    which field is not (fields no probe writes are dropped)."""
    try:
        info = json.loads(line)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    if not isinstance(info, dict):
        raise ValueError("it is not a JSON object")
    fields = dict(_REQUIRED, **({} if "mxnet_error" in info else _MXNET))
    for name, check in fields.items():
        if name not in info:
            raise ValueError(f"{name} is missing")
    for name, check in dict(fields, **_OPTIONAL).items():
        if name in info and not check(info[name]):
            raise ValueError(f"{name} is not {_WHAT.get(check, 'in the shape a probe writes')}")
    if info["cpus"] < 1:
        raise ValueError("cpus is not 1 or more")
    return {name: info[name] for name in (*fields, *_OPTIONAL) if name in info}
