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


def test_no_module_imports_a_test_module():
    """What several test modules share lives in tests/helpers.py, tests/plan_literals.py or a fixture: a test module
    imported by another runs its import-time code twice and ties the two together."""
    importers = []
    for path in sorted(glob.glob(os.path.join(REPO, "tests", "*.py")) + glob.glob(os.path.join(REPO, "bench", "*.py"))):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            importers += [f"{os.path.relpath(path, REPO)}:{node.lineno} {name}" for name in names
                          if name.split(".")[-1].startswith("test_")]
    assert importers == []


def test_no_tar_archive_is_unpacked_anywhere():
    """Files come back from hosts by name (launcher/fetch.py), never as an archive whose members name their own
    paths: tarfile's filters could be bypassed (CVE-2025-4517) and Python 3.11.0-3.11.3 has none."""
    users = []
    for package in ("launcher", "cluster", "trainer"):
        for path in sorted(glob.glob(os.path.join(REPO, package, "*.py"))):
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            users += [f"{os.path.relpath(path, REPO)}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, (ast.Import, ast.ImportFrom)) and
                      "tarfile" in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])]
    assert users == []


JOB_SECTIONS = ("cfg.job", "cfg.train", "cfg.data", "cfg.model", "cfg.job['cluster']", "cfg.job[\"cluster\"]")


def test_the_trainer_keeps_no_default_of_a_job_key():
    """A job key's default is declared once, in launcher/jobspec.py; the worker's config holds the effective job
    (every key the schema declares, absent only where its default is None), so the trainer reads each key as it is
    and never supplies a second default with ``.get(KEY, DEFAULT)``."""
    seconds = []
    for path in sorted(glob.glob(os.path.join(REPO, "trainer", "*.py"))):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and len(node.args) == 2 and ast.unparse(node.func.value) in JOB_SECTIONS:
                seconds.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {ast.unparse(node)}")
    assert seconds == []
