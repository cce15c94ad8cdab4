"""Rules the code keeps (issue 11): no function over 60 lines in launcher/, cluster/ or trainer/."""
from __future__ import annotations

import ast
import glob
import os

from tests.helpers import REPO

MAX_FUNCTION_LINES = 60


def test_no_function_over_sixty_lines():
    long = []
    for package in ("launcher", "cluster", "trainer"):
        for path in sorted(glob.glob(os.path.join(REPO, package, "*.py"))):
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            long += [f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                     for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
