"""A typed value back from its JSON form (``plain``'s inverse), checked against the type's annotations.

A saved plan is input like any other: a field of the wrong type, a missing field or a
field the type does not have is refused with the path to it (``processes[2].env``), never
passed on as whatever JSON held.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Point:
...     x: int
...     tags: tuple[str, ...] = ()
>>> decode(Point, {"x": 1, "tags": ["a"]}, "p")
Point(x=1, tags=('a',))
>>> decode(Point, {"x": "1"}, "p")
Traceback (most recent call last):
...
launcher.plan.decode.DecodeError: p.x: expected int, found str
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any


class DecodeError(ValueError):
    """Where in the value (``processes[2].env``) it does not fit its type, and how."""


def decode_with(kind: type, value: Any, where: str, **given: Any) -> Any:
    """A dataclass ``kind`` from ``value``, with the fields in ``given`` already decoded by the caller (a field
    typed by a protocol, whose class the value itself names)."""
    return _decode_dataclass(kind, value, where, given)


def decode(kind: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as an instance of ``kind``: dataclasses, tuples, mappings, unions, enums,
    ranges (``{"start", "stop", "step"}``) and JSON's scalars."""
    origin = kind if kind in (list, tuple) else typing.get_origin(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _decode_union(typing.get_args(kind), value, where)
    if dataclasses.is_dataclass(kind):
        return _decode_dataclass(kind, value, where)
    if origin is tuple or origin is list:
        return _decode_sequence(kind, origin, value, where)
    if origin in (dict, Mapping, typing.Mapping) or kind is dict:
        key_kind, item_kind = typing.get_args(kind) or (str, Any)
        _expect(isinstance(value, dict), "an object", value, where)
        return {decode(key_kind, k, where): decode(item_kind, v, f"{where}.{k}") for k, v in value.items()}
    if kind is range:
        _expect(isinstance(value, dict) and set(value) == {"start", "stop", "step"}, "a range", value, where)
        start, stop, step = (decode(int, value[part], f"{where}.{part}") for part in ("start", "stop", "step"))
        if step == 0:
            raise DecodeError(f"{where}: a range's step cannot be 0")
        return range(start, stop, step)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            raise DecodeError(f"{where}: {value!r} is not one of {[m.value for m in kind]}") from None
    return _decode_scalar(kind, value, where)


def _expect(ok: bool, what: str, value: Any, where: str) -> None:
    if not ok:
        raise DecodeError(f"{where}: expected {what}, found {type(value).__name__}")


def _decode_scalar(kind: Any, value: Any, where: str) -> Any:
    if kind is type(None):
        _expect(value is None, "null", value, where)
    elif kind is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), "a number", value, where)
        try:
            number = float(value)
        except OverflowError:
            raise DecodeError(f"{where}: {str(value)[:20]}... is too large for a number") from None
        _expect(math.isfinite(number), "a finite number", value, where)
        return number
    elif kind in (int, str, bool):
        _expect(type(value) is kind, kind.__name__, value, where)
    else:
        raise DecodeError(f"{where}: cannot read a {kind!r}")
    return value


def _decode_union(options: tuple, value: Any, where: str) -> Any:
    problems = []
    for option in options:
        try:
            return decode(option, value, where)
        except DecodeError as err:
            problems.append(str(err).removeprefix(f"{where}: "))
    raise DecodeError(f"{where}: {' or '.join(problems)}")


def _decode_sequence(kind: Any, origin: type, value: Any, where: str) -> Any:
    _expect(isinstance(value, list), "a list", value, where)
    args = typing.get_args(kind)
    if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: fixed length
        _expect(len(value) == len(args), f"{len(args)} items", value, where)
        return tuple(decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    item = args[0] if args else Any
    items = [decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


@functools.lru_cache(maxsize=None)
def _field_types(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _decode_dataclass(kind: type, value: Any, where: str, given: Mapping[str, Any] | None = None) -> Any:
    _expect(isinstance(value, dict), "an object", value, where)
    fields = {f.name: f for f in dataclasses.fields(kind) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise DecodeError(f"{where}: {kind.__name__} has no field {unknown[0]!r}")
    types_of = _field_types(kind)
    given = dict(given or {})
    for name, field in fields.items():
        if name in given:
            continue
        if name in value:
            given[name] = decode(types_of[name], value[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise DecodeError(f"{where}: the field {name!r} is missing")
    return kind(**given)
