"""Optional packages: a missing one is an input error naming the package and the pip command.

mxft's extras (pyproject.toml): ``demo`` (scikit-learn: the demo's images), ``prepare``
(OpenCV: packing image folders), ``tensorboard`` (tensorboardX: event files beside
metrics.csv). Checked before anything starts, so a missing package never surfaces as a
traceback from a child process.
"""
from __future__ import annotations

import importlib.util

from cluster.errors import InputError


def has_module(name: str) -> bool:
    """Whether ``import name`` can find the package (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def require(module: str, *, package: str, extra: str, needed_for: str, source: str) -> None:
    """Raise InputError unless ``module`` can be imported: ``source``: NEEDED_FOR needs PACKAGE, with the fix."""
    if not has_module(module):
        raise InputError(source, f"{needed_for} needs {package}, which is not installed",
                         hint=f"pip install 'mxft[{extra}]', or pip install {package}")
