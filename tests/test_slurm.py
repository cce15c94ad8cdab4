"""Slurm node lists and slots, against literal expansions."""
from __future__ import annotations

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.slurm import expand_counts, expand_nodelist, hosts_from_slurm


@pytest.mark.parametrize("text, expected", [
    ("node1", ["node1"]),
    ("a,b,c", ["a", "b", "c"]),
    ("gpu[01-04,07],cpu9", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu9"]),
    ("n[008-011]", ["n008", "n009", "n010", "n011"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[98-101]", ["n98", "n99", "n100", "n101"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("a[1,3],b[2-3]x", ["a1", "a3", "b2x", "b3x"]),
    ("h-[1-2].ib", ["h-1.ib", "h-2.ib"]),
])
def test_expand_nodelist(text, expected):
    assert expand_nodelist(text) == expected


@pytest.mark.parametrize("text", ["gpu[01-04", "gpu01-04]", "n[a-b]", "n[5-3]", "a,,b", "n[1-]"])
def test_bad_nodelists_are_refused(text):
    with pytest.raises(ValueError):
        expand_nodelist(text)


def test_expand_counts():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("4") == [4]


def test_hosts_from_allocation_take_gpus_else_tasks_as_slots():
    env = {"SLURM_JOB_NODELIST": "gpu[01-02],cpu9", "SLURM_TASKS_PER_NODE": "2(x2),1"}
    assert hosts_from_slurm(env) == (HostSpec("gpu01", slots=2, line=1), HostSpec("gpu02", slots=2, line=2),
                                     HostSpec("cpu9", slots=1, line=3))
    assert [h.slots for h in hosts_from_slurm({**env, "SLURM_GPUS_ON_NODE": "8"})] == [8, 8, 8]
    with pytest.raises(InputError, match="not inside a Slurm allocation"):
        hosts_from_slurm({})
    with pytest.raises(InputError, match="SLURM_TASKS_PER_NODE: gives 1 counts for 3 nodes"):
        hosts_from_slurm({**env, "SLURM_TASKS_PER_NODE": "2"})
