"""YAML that remembers its lines, and a reader that names the line of every mistake.

``compose_with_lines`` loads a YAML text into plain Python values plus the 1-based line
of every key path; ``Fields`` reads one mapping of it, checks each value and raises
``InputError("FILE:LINE", ...)`` naming the key, what was expected and what was found.
Values given by ``--set`` carry the ``--set`` itself instead of a line number.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from cluster.errors import InputError


# Limits on what one YAML text may hold: a job file is a few dozen values. Without them a
# 400-byte file of nested aliases ("billion laughs") expands to billions of values.
MAX_YAML_CHARS = 1_000_000
MAX_VALUES = 10_000     # values after expanding aliases
MAX_DEPTH = 50          # nested mappings and lists

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + name for name in ("null", "bool", "int", "float", "str", "timestamp", "binary"))


def compose_with_lines(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Load YAML into plain Python values plus ``{key path: 1-based line}``.

    Every YAML problem is an InputError naming ``source:LINE``: syntax, a recursive alias,
    a key that is not a plain scalar, an unknown tag, a value its tag cannot read, and more
    than MAX_VALUES values (aliases count once per use) or MAX_DEPTH levels.

    >>> compose_with_lines("a:\\n  b: 1\\n", "x.yaml")
    ({'a': {'b': 1}}, {(): 1, ('a',): 1, ('a', 'b'): 2})
    """
    builder = _Builder(lambda line: f"{source}:{line}", source)
    root = builder.compose(text)
    return (builder.build(root, (), 0) if root is not None else {}), builder.lines


def load_value(text: str, where: str) -> Any:
    """One YAML value (a ``--set`` value, say), read with the same limits; errors name ``where``.

    >>> load_value("[1, two]", "--set x=[1, two]")
    [1, 'two']
    """
    builder = _Builder(lambda line: where, where)
    root = builder.compose(text)
    return builder.build(root, (), 0) if root is not None else None


class _Builder:
    """Builds plain values from a composed YAML node graph, once per node, within the limits.

    An alias is the anchored node itself in the graph: its value is built the first time
    and copied for every later use (so ``--set`` never changes two places at once), each
    copy counted against MAX_VALUES before it is made.
    """

    def __init__(self, where: Callable[[int], str], source: str) -> None:
        self.where, self.source = where, source
        self.lines: dict[tuple, int] = {}
        self.built: dict[int, tuple[Any, int]] = {}   # id(node) -> (value, how many values it holds)
        self.open: set[int] = set()                   # the nodes being built (a recursive alias comes back to one)
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def compose(self, text: str) -> yaml.Node | None:
        if len(text) > MAX_YAML_CHARS:
            raise InputError(self.source, f"is {len(text)} characters long; at most {MAX_YAML_CHARS} are read")
        try:
            return yaml.compose(text, Loader=_DepthLimitedLoader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            if mark is None and getattr(err, "position", None) is not None:  # a ReaderError: a character
                line = text.count("\n", 0, err.position) + 1
            else:
                line = mark.line + 1 if mark else None
            where = self.where(line) if line else self.source
            raise InputError(where, f"not valid YAML: {_problem(err)}") from None

    def fail(self, node: yaml.Node, message: str) -> None:
        raise InputError(self.where(node.start_mark.line + 1), message)

    def build(self, node: yaml.Node, path: tuple, depth: int) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self.open:
            self.fail(node, "a recursive alias (an anchor used inside its own value)")
        if id(node) in self.built:  # an alias: a copy of what its anchor built, if the budget allows
            value, size = self.built[id(node)]
            self.charge(node, size)
            return copy.deepcopy(value)
        if depth > MAX_DEPTH:
            self.fail(node, f"nested more than {MAX_DEPTH} levels deep")
        start = self.count
        self.charge(node, 1)
        self.open.add(id(node))
        try:
            value = self.collection(node, path, depth) if isinstance(
                node, (yaml.MappingNode, yaml.SequenceNode)) else self.scalar(node)
        finally:
            self.open.discard(id(node))
        self.built[id(node)] = (value, self.count - start)
        return value

    def charge(self, node: yaml.Node, size: int) -> None:
        self.count += size
        if self.count > MAX_VALUES:
            self.fail(node, f"more than {MAX_VALUES} values once the aliases are expanded (aliases of aliases "
                            "multiply: a \"billion laughs\"?)")

    def collection(self, node: yaml.Node, path: tuple, depth: int) -> Any:
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                self.fail(node, f"unsupported tag {_tag_name(node.tag)} on a list")
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        if node.tag != _TAG + "map":
            self.fail(node, f"unsupported tag {_tag_name(node.tag)} on a mapping")
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, "a key must be a plain name or number, not a mapping or list")
            key = self.scalar(key_node)
            if key in out:
                self.fail(key_node, f"key {key!r} appears twice")
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out

    def scalar(self, node: yaml.Node) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.fail(node, f"unsupported tag {_tag_name(node.tag)}" + (" (merge keys are not supported)"
                                                                         if node.tag == _TAG + "merge" else ""))
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as err:
            detail = getattr(err, "problem", None) or str(err).split(";")[0]
            self.fail(node, f"cannot read {node.value[:40]!r} as {_tag_name(node.tag)}: {detail}")
        except (TypeError, KeyError, AttributeError, IndexError):
            # PyYAML's constructors also fail in these ways on text their tag cannot read
            # (``!!bool x``, ``!!timestamp x``); the text is the user's, so it is an input error.
            self.fail(node, f"cannot read {node.value[:40]!r} as {_tag_name(node.tag)}")


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML's composer recurses once per level: refuse deep nesting before Python's stack runs out."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _problem(err: yaml.YAMLError) -> str:
    """What PyYAML says is wrong, on one line (its messages also quote the text around it)."""
    if isinstance(err, yaml.reader.ReaderError):
        character = chr(err.character) if isinstance(err.character, int) else err.character
        return f"the character {character!r} is not allowed ({err.reason})"
    return getattr(err, "problem", None) or str(err).splitlines()[0]


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
                self.fail(path + (key,), f"unknown key {str(key)!r}{where}; {hint}")
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
