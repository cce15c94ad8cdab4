"""Slurm node lists (expanded by Slurm's own scontrol) and slots, against literal expansions."""
from __future__ import annotations

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec
from cluster.slurm import allocation_nodes, expand_counts, hosts_from_slurm


@pytest.mark.parametrize("text, expected", [
    ("node1", ["node1"]),
    ("a,b,c", ["a", "b", "c"]),
    ("gpu[01-04,07],cpu9", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu9"]),
    ("n[008-011]", ["n008", "n009", "n010", "n011"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[98-101]", ["n98", "n99", "n100", "n101"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("10.231.77.[11-12]", ["10.231.77.11", "10.231.77.12"]),
])
def test_the_node_list_is_what_slurm_makes_of_it(text, expected, slurm_conf):
    assert allocation_nodes(text, {"SLURM_CONF": slurm_conf}) == expected


@pytest.mark.parametrize("text, expected", [
    ("gpu[01-04", "Slurm expands node list 'gpu[01-04' to 'gpu]', which is not a host name"),
    ("gpu01-04]", "Slurm expands node list 'gpu01-04]' to 'gpu01-04]', which is not a host name"),
    ("n[a-b]", "Slurm cannot expand node list 'n[a-b]': Invalid hostlist: n[a-b]"),
    ("n[5-3]", "Slurm cannot expand node list 'n[5-3]': Invalid hostlist: n[5-3]"),
    ("-oProxyCommand=x,n1", "Slurm expands node list '-oProxyCommand=x,n1' to '-oProxyCommand=x', which is not a "
                            "host name"),
])
def test_bad_nodelists_are_refused(text, expected, slurm_conf):
    with pytest.raises(ValueError) as refused:
        allocation_nodes(text, {"SLURM_CONF": slurm_conf})
    assert str(refused.value) == expected


def test_expand_counts():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("4") == [4]


def test_hosts_from_allocation_take_gpus_else_tasks_as_slots(slurm_conf):
    env = {"SLURM_JOB_NODELIST": "gpu[01-02],cpu9", "SLURM_TASKS_PER_NODE": "2(x2),1", "SLURM_CONF": slurm_conf}
    assert hosts_from_slurm(env) == (HostSpec("gpu01", slots=2, line=1), HostSpec("gpu02", slots=2, line=2),
                                     HostSpec("cpu9", slots=1, line=3))
    assert [h.slots for h in hosts_from_slurm({**env, "SLURM_GPUS_ON_NODE": "8"})] == [8, 8, 8]
    with pytest.raises(InputError, match="not inside a Slurm allocation"):
        hosts_from_slurm({})
    with pytest.raises(InputError, match="SLURM_TASKS_PER_NODE: gives 1 counts for 3 nodes"):
        hosts_from_slurm({**env, "SLURM_TASKS_PER_NODE": "2"})
