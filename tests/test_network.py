"""Choosing the training network (issue 12, item 5): SSH over one network, ps-lite over another.

Two of the three namespace hosts get a second network (a bridge of its own, `eth1`,
10.232.77.x) that this machine is not on; SSH stays on the first. ps-lite is pinned to
the second by `cluster.interface` (resolved per host by preflight) or by `addr=` in the
hosts file, and a host that cannot reach the scheduler there is refused before
anything starts.
"""
from __future__ import annotations

import json

import pytest

from testing import netns
from testing.processes import run_id_from
from tests.helpers import demo_job, run_launch, write_job
from tests.helpers import hosts_file, launch_bad, no_processes_left, python_field, ssh_args

pytestmark = pytest.mark.integration


@pytest.fixture()
def second_network(hosts3):
    """h1 and h2 on a second network; h3 not."""
    addresses = netns.add_network(hosts3, ("h1", "h2"))
    try:
        yield addresses
    finally:
        netns.remove_network()


@pytest.mark.timeout(240)
def test_training_runs_on_the_interface_the_job_names(hosts3, tmp_path, demo_assets, second_network):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"workers": 2, "servers": 2,
                                                                          "interface": "eth1"}))
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("".join(f"{h.address} {python_field()}\n" for h in hosts3.hosts[:2]))
    result = run_launch(ssh_args(hosts3, str(hosts)) + [job, "--run-root", str(tmp_path / "runs")],
                        cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_id = run_id_from(result.stdout)
    with open(tmp_path / "runs" / run_id / "plan.json", encoding="utf-8") as handle:
        plan = json.load(handle)
    nodes = {p["host"]: dict(p["env"])["DMLC_NODE_HOST"] for p in plan["processes"]}
    assert nodes == {h.address: second_network[h.name] for h in hosts3.hosts[:2]}, nodes
    assert {dict(p["env"])["DMLC_PS_ROOT_URI"] for p in plan["processes"]} == {second_network["h1"]}
    text = (tmp_path / "runs" / run_id / "plan.txt").read_text()
    assert f"  network    ps-lite on {second_network['h1']}, {second_network['h2']} (interface eth1 " \
           "(cluster.interface))" in text, text
    assert float(result.stdout.strip().splitlines()[-1].split()[2]) >= 0.72
    assert no_processes_left(hosts3, run_id) == {}


def test_host_that_cannot_reach_the_training_address_is_refused(hosts3, tmp_path, demo_assets, second_network):
    """h3 is not on the second network: named with the error, exit 2, nothing staged or started."""
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"workers": 3, "servers": 1}))
    hosts = hosts_file(hosts3, tmp_path, extra={name: f"{python_field()} addr={address}"
                                                for name, address in second_network.items()})
    line = launch_bad(hosts3, tmp_path, hosts, job)
    assert line.startswith(f"mxft-launch: error: host {hosts3.hosts[2].address}: cannot open a TCP connection to "
                           f"the ps-lite scheduler at {second_network['h1']}:"), line
    assert "(addr= in the hosts file)" in line and "unreachable" in line.lower(), line


def test_an_interface_a_host_lacks_is_named(hosts3, tmp_path, demo_assets, second_network):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"workers": 3, "servers": 1,
                                                                          "interface": "eth1"}))
    line = launch_bad(hosts3, tmp_path, hosts_file(hosts3, tmp_path), job)
    assert line.startswith(f"mxft-launch: error: {tmp_path / 'hosts.txt'}:3: host '{hosts3.hosts[2].address}' has no "
                           "IPv4 address on "
                           "interface eth1 (cluster.interface); it has: eth0 10.231.77.13, lo 127.0.0.1"), line
