"""Shared fixtures: the demo's assets (built once per machine, cached), job files, leftovers, and a check
that no test leaves process-wide state (umask, cwd, signal handlers, environment...) changed for the next."""
from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import CACHE_DIR, REPO

pytest_plugins = ("pytester",)  # tests/test_infrastructure.py runs this file's state check on tests of its own


# Tests that use these fixtures start MXNet processes or need root: never in the fast tier.
_INTEGRATION_FIXTURES = {"demo_assets", "hosts3"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# Libraries that change the environment when first imported (tensorboardX sets CRC32C_SW_MODE, mxnet and
# scikit-learn KMP_*, OpenCV LD_LIBRARY_PATH), imported before the first test: a change the state check sees is
# then a test's own doing, not that of whichever test happened to import one first.
_IMPORTED_BEFORE_THE_TESTS = ("tensorboardX", "mxnet", "sklearn", "cv2")


def pytest_sessionstart(session) -> None:
    for name in _IMPORTED_BEFORE_THE_TESTS:
        try:
            importlib.import_module(name)
        except ImportError:  # an extra that is not installed: nothing of it can be imported later either
            pass
    # The runs the tests start are recorded in a list of the session's own, not the user's (launcher.data.run_index).
    os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="mxft-tests-data-")


# Every catchable signal but SIGALRM, which pytest-timeout's own handler holds around each test.
_WATCHED_SIGNALS = tuple(sorted(set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP, signal.SIGALRM}))
# Set by pytest itself, differently in each phase of a test.
_PYTEST_OWN_ENVIRONMENT = {"PYTEST_CURRENT_TEST"}


def _pytests_own(handler: logging.Handler) -> bool:
    """pytest's log capture puts a handler of its own on the root logger for each phase of a test."""
    return type(handler).__module__.startswith("_pytest")


def _process_state() -> dict[str, object]:
    """What one test could change for every later test of the same process."""
    umask = os.umask(0o022)
    os.umask(umask)
    return {"umask": oct(umask), "cwd": os.getcwd(),
            "signal handlers": {signum.name: signal.getsignal(signum) for signum in _WATCHED_SIGNALS},
            "environment": {k: v for k, v in os.environ.items() if k not in _PYTEST_OWN_ENVIRONMENT},
            "gc": (gc.isenabled(), gc.get_freeze_count() > 0, gc.get_threshold()),
            "root logger": tuple(h for h in logging.getLogger().handlers if not _pytests_own(h)),
            "recursion limit": sys.getrecursionlimit()}


def _restore(state: dict[str, object]) -> None:
    os.umask(int(str(state["umask"]), 8))
    os.chdir(str(state["cwd"]))
    for name, handler in state["signal handlers"].items():
        if signal.getsignal(signal.Signals[name]) is not handler and handler is not None:
            signal.signal(signal.Signals[name], handler)
    os.environ.clear()
    os.environ.update(state["environment"])
    enabled, frozen, threshold = state["gc"]
    (gc.enable if enabled else gc.disable)()
    if not frozen:
        gc.unfreeze()
    gc.set_threshold(*threshold)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if _pytests_own(h)] + list(state["root logger"])
    sys.setrecursionlimit(int(state["recursion limit"]))


def _changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    changed = []
    for what, old in before.items():
        new = after[what]
        if isinstance(old, dict):
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            changed += [f"{what}: {key} {old.get(key)!r} -> {new.get(key)!r}" for key in keys]
        elif old != new:
            changed.append(f"{what}: {old!r} -> {new!r}")
    return changed


@pytest.fixture(autouse=True)
def process_state_is_left_as_found():
    """Fails the test that leaves the process's umask, cwd, signal handlers, environment, collector or root
    logger changed (an in-process call of the CLI once left its 0077 umask to every later test), and puts
    them back so that the tests after it start as they would alone."""
    before = _process_state()
    yield
    changed = _changes(before, _process_state())
    if changed:
        _restore(before)
        pytest.fail("this test left process-wide state changed for the tests after it:\n  " + "\n  ".join(changed),
                    pytrace=False)


@pytest.fixture(scope="session")
def demo_assets() -> str:
    """The digits demo's checkpoint and .rec files (built into the cache if missing)."""
    out_dir = os.path.join(CACHE_DIR, "digits")
    subprocess.run([sys.executable, "-m", "launcher.data.demo_assets", out_dir], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=REPO))
    return out_dir


@pytest.fixture(scope="session")
def slurm_conf(tmp_path_factory) -> str:
    """A Slurm configuration with no controller behind it: what Slurm's scontrol needs to expand a node list as it
    does inside an allocation (nothing is asked of a controller)."""
    path = tmp_path_factory.mktemp("slurm") / "slurm.conf"
    path.write_text("ClusterName=mxft-test\nSlurmctldHost=localhost\nNodeName=n1\nPartitionName=p Nodes=ALL\n")
    return str(path)


@pytest.fixture(scope="session")
def hosts3():
    """Three real SSH hosts (network namespaces with their own sshd); fails, never skips, if they cannot come up."""
    from testing import netns
    cluster = netns.up(3)
    try:
        yield cluster
    finally:
        netns.down()
