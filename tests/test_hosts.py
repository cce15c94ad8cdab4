"""Hosts files: the accepted forms and every mistake named with its line."""
from __future__ import annotations

import pytest

from cluster.errors import InputError
from cluster.hosts import HostSpec, parse_hosts


def test_forms():
    text = """
    # cluster
    gpu01 slots=8
    gpu02:2222 slots=4 user=train   # trailing comment
    10.0.0.7
    [fe80::1]:22
    localhost
    gpu03 python=/opt/venv/bin/python
    """
    assert parse_hosts(text, "h.txt") == (
        HostSpec("gpu01", None, 8, None, 3),
        HostSpec("gpu02", 2222, 4, "train", 4),
        HostSpec("10.0.0.7", None, None, None, 5),
        HostSpec("fe80::1", 22, None, None, 6),
        HostSpec("localhost", None, None, None, 7),
        HostSpec("gpu03", None, None, None, 8, "/opt/venv/bin/python"),
    )
    assert parse_hosts("localhost\n", "h")[0].is_local
    assert not parse_hosts("gpu01\n", "h")[0].is_local


@pytest.mark.parametrize("text, expected", [
    ("a\na\n", "h.txt:2: host 'a' is already listed on line 1"),
    ("a slots=0\n", "h.txt:1: slots must be a whole number >= 1, got '0'"),
    ("a slots=x\n", "h.txt:1: slots must be a whole number >= 1, got 'x'"),
    ("a gpus=2\n", "h.txt:1: unknown field 'gpus=2' (expected slots=N, user=NAME, python=PATH or addr=IP)"),
    ("a:99999\n", "h.txt:1: port 99999 is not in 1-65535"),
    ("a/b\n", "h.txt:1: 'a/b' is not a host name or address (expected HOST[:PORT])"),
    ("# nothing\n\n", "h.txt: lists no hosts (one HOST[:PORT] [slots=N] [user=NAME] [python=PATH] [addr=IP] per line)"),
    ("a slots=1 slots=2\n", "h.txt:1: 'slots' is given twice"),
    # Habits from other launchers, read right (issue 28): horovodrun's HOST:SLOTS, ssh's USER@HOST.
    ("gpu01:8\n", "h.txt:1: 'gpu01:8': SSH port 8? horovodrun and MPI hostfiles write a host's slots this way "
                  "(write 'gpu01 slots=8' for 8 slots, or give the SSH port (22, or 100 and up))"),
    ("root@gpu01 slots=2\n", "h.txt:1: 'root@gpu01': a user goes in a field of its own (write it as "
                             "'gpu01 user=root')"),
])
def test_mistakes(text, expected):
    with pytest.raises(InputError) as info:
        parse_hosts(text, "h.txt")
    assert str(info.value) == expected


def test_ssh_ports_of_22_and_from_100_up_are_ports():
    assert [h.port for h in parse_hosts("a:22\nb:100\nc:2222\n", "h.txt")] == [22, 100, 2222]


def test_hosts_example_parses():
    import os

    from cluster.hosts import load_hosts
    from tests.helpers import REPO
    assert [h.name for h in load_hosts(os.path.join(REPO, "hosts.example"))] == ["localhost"]


def test_addr_is_the_training_address():
    hosts = parse_hosts("gpu01 slots=8 addr=10.1.0.11\ngpu03\n", "hosts.txt")
    assert [h.addr for h in hosts] == ["10.1.0.11", None]
    for bad in ("gpu01-ib", "fd00::12"):
        with pytest.raises(InputError, match=rf"^hosts.txt:2: addr={bad} is not an IPv4 address \(ps-lite cannot "):
            parse_hosts(f"gpu01\ngpu02 addr={bad}\n", "hosts.txt")
