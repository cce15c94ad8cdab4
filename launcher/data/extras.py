"""Optional packages: a missing one is an input error naming the package and the pip command.

mxft's extras (pyproject.toml): ``demo`` (scikit-learn: the demo's images), ``prepare``
(OpenCV: packing image folders), ``tensorboard`` (tensorboardX: event files beside
metrics.csv). Checked before anything starts, so a missing package never surfaces as a
traceback from a child process.
"""
from __future__ import annotations

import importlib.util
import os
import shlex

from cluster.errors import InputError

# The folder holding the ``launcher`` package: a checkout (pyproject.toml beside it) or site-packages (a wheel).
_INSTALLED_FROM = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def has_module(name: str) -> bool:
    """Whether ``import name`` can find the package (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def install_hint(package: str, extra: str, *, installed_from: str = _INSTALLED_FROM) -> str:
    """The command that installs ``package`` from where the user is: mxft's extra from its checkout (mxft is not on
    the package index, so ``mxft[extra]`` alone would not be found), else the package itself (a wheel's install).

    >>> install_hint("scikit-learn", "demo", installed_from="/home/me/mxft")  # no pyproject.toml there
    'pip install scikit-learn'
    """
    if os.path.isfile(os.path.join(installed_from, "pyproject.toml")):
        return f"pip install -e {shlex.quote(f'{installed_from}[{extra}]')}, or pip install {package}"
    return f"pip install {package}"


def require(module: str, *, package: str, extra: str, needed_for: str, source: str) -> None:
    """Raise InputError unless ``module`` can be imported: ``source``: NEEDED_FOR needs PACKAGE, with the fix."""
    if not has_module(module):
        raise InputError(source, f"{needed_for} needs {package}, which is not installed",
                         hint=install_hint(package, extra))
