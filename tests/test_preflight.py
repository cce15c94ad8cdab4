"""The preflight probe, run as a real process on this machine: its mxnet answer is cached
per interpreter/mxnet/numpy install, and a changed install is probed afresh."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from cluster.errors import InputError
from cluster.failure import FailureKind
from cluster.hosts import HostSpec
from cluster.local import LocalTransport
from launcher.run.preflight import _PROBE, HostProbe, Requirements, facts_of, probe_all, require_fit

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
    facts = facts_of(HostProbe("h1", info, 0.0), "10.0.0.1", ("/d/t.rec", "/d/v.rec", "/d/m.params", "/d/x"))
    assert facts.files == {"/d/t.rec": good, "/d/v.rec": "", "/d/m.params": "", "/d/x": ""}
    assert facts_of(HostProbe("h1", dict(info, files=[good]), 0.0), "a", ("/d/t.rec",)).files == {
        "/d/t.rec": ""}


GOOD_ANSWER = {"python": "3.11.2", "cpus": 2, "home": "/h", "free_bytes": 10**9, "work_dir": "/w", "time": 1.0,
               "mxnet": "1.9.1", "dist_kvstore": True, "cuda": True, "gpus": 1}


@pytest.mark.parametrize("answer, why", [
    ("not json at all", "it is not JSON"),
    (json.dumps([GOOD_ANSWER]), "it is not a JSON object"),
    (json.dumps(dict(GOOD_ANSWER, cpus="2")), "cpus is not a count"),
    (json.dumps(dict(GOOD_ANSWER, gpus=-1)), "gpus is not a count"),
    (json.dumps({k: v for k, v in GOOD_ANSWER.items() if k != "mxnet"}), "mxnet is missing"),
    (json.dumps(dict(GOOD_ANSWER, gpu_devices=[{"index": "x", "cc": "9.0"}])),
     "gpu_devices is not in the shape a probe writes"),
    (json.dumps(dict(GOOD_ANSWER, build_archs={"elf": ["sm_90"]})), "build_archs is not in the shape a probe writes"),
    (json.dumps(dict(GOOD_ANSWER, time=float("inf"))), "time is not a time"),
], ids=["text", "list", "cpus", "gpus", "mxnet", "gpu_devices", "build_archs", "time"])
def test_a_hosts_probe_answer_in_a_shape_no_probe_writes_refuses_that_host_by_name(tmp_path, answer, why):
    """A host's Python that answers anything (here a script given as python= in the hosts file) is refused with why,
    as a failure of its own kind; before, a GPU index that was not a number stopped the launcher with a traceback."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ncat <<'END'\n{answer}\nEND\n")
    fake.chmod(0o755)
    probed = probe_all([(HostSpec("h1", python=str(fake)), LocalTransport())], str(tmp_path / "work"))
    failed = probed.failed["h1"]
    assert not probed.ok and failed.failure.kind is FailureKind.HOST_REFUSED and failed.failure.host == "h1"
    assert failed.reason.startswith(f"unexpected preflight output from '{fake}' ({why}): "), failed.reason
    with pytest.raises(InputError, match=f"^host h1: unexpected preflight output .*{re.escape(why)}"):
        require_fit(probed, Requirements("1.9.1", {"h1": 1}, {}, str(tmp_path / "work")))
