"""Shared fixtures: the demo's assets (built once per machine, cached), job files, leftovers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import CACHE_DIR, REPO


# Tests that use these fixtures start MXNet processes or need root: never in the fast tier.
_INTEGRATION_FIXTURES = {"demo_assets", "hosts3"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def demo_assets() -> str:
    """The digits demo's checkpoint and .rec files (built into the cache if missing)."""
    out_dir = os.path.join(CACHE_DIR, "digits")
    subprocess.run([sys.executable, "-m", "launcher.demo_assets", out_dir], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=REPO))
    return out_dir


@pytest.fixture(scope="session")
def hosts3():
    """Three real SSH hosts (network namespaces with their own sshd); fails, never skips, if they cannot come up."""
    from tests import netns
    cluster = netns.up(3)
    try:
        yield cluster
    finally:
        netns.down()
