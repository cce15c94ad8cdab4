"""The preflight probe, run as a real process on this machine: its mxnet answer is cached
per interpreter/mxnet/numpy install, and a changed install is probed afresh."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launcher.run.preflight import _PROBE, HostReport, facts_of

pytestmark = pytest.mark.integration


def probe(tmp_path, **env) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "work")], capture_output=True, text=True,
                          env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_probe_caches_mxnet_and_notices_a_changed_numpy(tmp_path):
    first = probe(tmp_path)
    assert first["dist_kvstore"] is True and "cached" not in first
    assert first["cuda"] is False and "gpu_devices" not in first and "build_archs" not in first  # no libcuda
    second = probe(tmp_path)
    assert second["cached"] is True and second["mxnet"] == first["mxnet"]
    assert not os.path.exists(tmp_path / "work")  # the work folder is left alone
    broken = tmp_path / "numpy-2" / "numpy"  # a different numpy (here: one that breaks mxnet)
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('numpy 2 is not numpy 1.23')\n")
    third = probe(tmp_path, PYTHONPATH=str(broken.parent))
    assert "cached" not in third and third["mxnet_error"].startswith("ImportError"), third


def test_a_hosts_answer_about_files_counts_only_for_the_paths_asked_in_the_shape_a_probe_writes():
    """What a host says of the data's files is its word only: a path not asked about, or an answer no probe writes
    (which could make the plan read a file in place that the host does not have the same), is dropped."""
    good = "12:1700000000:" + "0" * 32
    info = {"python_path": "python3", "cpus": 2, "work_dir": "/w", "home": "/h",
            "files": {"/d/t.rec": good, "/d/v.rec": good + "x", "/d/m.params": 7, "/etc/shadow": good}}
    facts = facts_of(HostReport("h1", True, "ok", info), "10.0.0.1", ("/d/t.rec", "/d/v.rec", "/d/m.params", "/d/x"))
    assert facts.files == {"/d/t.rec": good, "/d/v.rec": "", "/d/m.params": "", "/d/x": ""}
    assert facts_of(HostReport("h1", True, "ok", dict(info, files=[good])), "a", ("/d/t.rec",)).files == {
        "/d/t.rec": ""}
