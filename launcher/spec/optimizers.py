"""MXNet's optimizers and the parameters each takes, read from mxnet's own source: its optimizer module is parsed,
never imported (importing mxnet takes seconds), so a job's optimizer settings are checked before anything starts.

``parameters(name)`` is what ``mx.optimizer.create(name, **params)`` accepts for a registered
optimizer: its ``__init__`` parameters and, through ``**kwargs``, the base ``Optimizer``'s, each
with its default. When mxnet cannot be found on this machine, nothing is known (None) and
the job is checked by the types below only.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import math
import os
from typing import Any

# Base parameters the trainer sets itself, or that a job file cannot give (objects).
NOT_FROM_A_JOB = {"param_idx2name": "set by MXNet's Module", "sym": "set by MXNet's Module",
                  "param_dict": "set by MXNet's Module", "begin_num_update": "set on resume",
                  "lr_scheduler": "an object: a job gives learning-rate warm-up with train.warmup_epochs"}
POSITIVE = {"learning_rate", "clip_gradient", "epsilon", "eps"}   # > 0
FRACTIONS = {"momentum", "beta1", "beta2", "gamma1", "gamma2", "rho"}   # in [0, 1)


@functools.lru_cache(maxsize=1)
def _registered() -> dict[str, tuple[str, dict[str, Any]]] | None:
    """Lower-case name -> (class name, {parameter: default}) of every ``@register``-ed optimizer; None without
    mxnet here."""
    try:
        spec = importlib.util.find_spec("mxnet")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "optimizer", "optimizer.py")
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, ValueError):
        return None
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    base = _init_defaults(classes.get("Optimizer"))
    return {name.lower(): (name, _with_base(classes, node, base)) for name, node in classes.items()
            if any(isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list)}


def _init_defaults(node: ast.ClassDef | None) -> dict[str, Any]:
    """``__init__``'s keyword parameters and their literal defaults (``...`` where a default is not a literal)."""
    init = next((n for n in (node.body if node else ()) if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None)
    if init is None:
        return {}
    args = init.args.args[1:]
    defaults = [None] * (len(args) - len(init.args.defaults)) + list(init.args.defaults)
    found = {}
    for arg, default in zip(args, defaults):
        try:
            found[arg.arg] = ast.literal_eval(default) if default is not None else ...
        except ValueError:
            found[arg.arg] = ...
    return found


def _with_base(classes: dict[str, ast.ClassDef], node: ast.ClassDef, base: dict[str, Any]) -> dict[str, Any]:
    """A class's own parameters, then (through ``**kwargs``) its parent's, down to ``Optimizer``'s."""
    own = _init_defaults(node)
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None and init.args.kwarg is None:
        return own
    parent = next((b.id for b in node.bases if isinstance(b, ast.Name)), "Optimizer")
    inherited = base if parent == "Optimizer" or parent not in classes else _with_base(classes, classes[parent], base)
    return {**inherited, **own}


def parameters(name: str) -> dict[str, Any] | None:
    """What optimizer ``name`` takes, each with its default; None when mxnet is not on this machine."""
    known = _registered()
    return None if known is None else known.get(name.lower(), ("", {}))[1]


def class_name(name: str) -> str:
    """``mx.optimizer.Adam`` for ``adam``; "" when mxnet is not on this machine."""
    found = (_registered() or {}).get(name.lower())
    return f"mx.optimizer.{found[0]}" if found else ""


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of hundreds of digits (YAML's are unbounded)
        return False


def problem(name: str, key: str, value: Any) -> str | None:
    """Why optimizer ``name`` cannot take ``key: value`` from a job, or None."""
    if key in NOT_FROM_A_JOB:
        return f"{key} cannot be given by a job ({NOT_FROM_A_JOB[key]})"
    takes = parameters(name)
    if takes is not None and key not in takes:
        allowed = ", ".join(sorted(k for k in takes if k not in NOT_FROM_A_JOB))
        return f"MXNet's {name} optimizer has no parameter {key!r} (it takes: {allowed})"
    default = takes.get(key, ...) if takes else ...
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if (key in POSITIVE | FRACTIONS or isinstance(default, float) or (isinstance(default, int) and
                                                                     not isinstance(default, bool))) and not number:
        return f"{key} must be a number, not {value!r}"
    if isinstance(default, bool) and not isinstance(value, bool):
        return f"{key} must be true or false, not {value!r}"
    if number and not _finite(value):
        return f"{key} must be a finite number, not {str(value)[:30]}"
    if key in POSITIVE and number and value <= 0:
        return f"{key} must be above 0, not {value!r}"
    if key in FRACTIONS and number and not 0 <= value < 1:
        return f"{key} must be from 0 up to (not including) 1, not {value!r}"
    if key == "wd" and number and value < 0:
        return f"wd must be 0 or more, not {value!r}"
    return None
