"""YAML that remembers its lines, and a reader that names the line of every mistake.

``compose_with_lines`` loads a YAML text into plain Python values plus the 1-based line
of every key path; ``Fields`` reads one mapping of it, checks each value and raises
``InputError("FILE:LINE", ...)`` naming the key, what was expected and what was found.
Values given by ``--set`` carry the ``--set`` itself instead of a line number.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from cluster.errors import InputError


def compose_with_lines(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Load YAML into plain Python values plus ``{key path: 1-based line}``.

    >>> compose_with_lines("a:\\n  b: 1\\n", "x.yaml")
    ({'a': {'b': 1}}, {(): 1, ('a',): 1, ('a', 'b'): 2})
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(where, f"not valid YAML: {getattr(err, 'problem', err)}") from None
    lines: dict[tuple, int] = {}
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, path: tuple) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    raise InputError(f"{source}:{key_node.start_mark.line + 1}", f"key {key!r} appears twice")
                lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    return (build(root, ()) if root is not None else {}), lines


class Fields:
    """Reads one mapping of a YAML file, reporting errors at the right line."""

    def __init__(self, source: str, lines: Mapping[tuple, Any], raw: Any, path: tuple,
                 allowed: Sequence[str]) -> None:
        self.source, self.lines, self.path = source, lines, path
        if not isinstance(raw, dict):
            self.fail(path, f"{self.dotted(path) or 'the job'} must be a mapping of keys, "
                            f"got {type(raw).__name__}")
        for key in raw:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                where = f" in {self.dotted(path)}" if path else ""
                hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(allowed)}"
                self.fail(path + (key,), f"unknown key '{key}'{where}; {hint}")
        self.raw = raw

    @staticmethod
    def dotted(path: tuple) -> str:
        return ".".join(str(part) for part in path)

    def where(self, path: tuple) -> str:
        while path and path not in self.lines:
            path = path[:-1]
        line = self.lines.get(path, 1)
        return line if isinstance(line, str) else f"{self.source}:{line}"  # a str: the --set that gave it

    def fail(self, path: tuple, message: str, hint: str = "") -> None:
        raise InputError(self.where(path), message, hint=hint)

    def get(self, key: str, check: Callable[[Any], Any], default: Any = dataclasses.MISSING) -> Any:
        """The checked value of ``key``; ``check`` raises ValueError with what was expected."""
        path = self.path + (key,)
        if key not in self.raw or self.raw[key] is None:
            if default is dataclasses.MISSING:
                self.fail(self.path, f"missing required key '{self.dotted(path)}'")
            return default
        try:
            return check(self.raw[key])
        except ValueError as err:
            self.fail(path, f"{self.dotted(path)} must be {err}, got {self.raw[key]!r}")

    def section(self, key: str, allowed: Sequence[str], *, required: bool = False) -> "Fields":
        if key not in self.raw and required:
            self.fail(self.path, f"missing required section '{self.dotted(self.path + (key,))}'")
        return Fields(self.source, self.lines, self.raw.get(key) or {}, self.path + (key,), allowed)
