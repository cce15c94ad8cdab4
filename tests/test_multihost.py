"""Multi-host launches over real SSH to network-namespace hosts, each with its own sshd."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from launcher.data import recfile
from launcher.data.shards import index_parts
from testing.processes import run_id_from, run_processes
from tests.helpers import (assert_dry_run_is_the_plan, demo_job, hosts_file, launch_bad, no_processes_left,
                           python_field, refusal_line, run_launch, ssh_args, start_launch, wait_until, write_job)

pytestmark = pytest.mark.integration


def test_demo_across_three_hosts_then_relaunch_sends_no_data(hosts3, tmp_path, demo_assets):
    spec = demo_job(demo_assets, cluster={"workers": 3, "servers": 2}, data={"staging": "always"})
    job = write_job(tmp_path / "job.yaml", spec)
    hosts = hosts_file(hosts3, tmp_path)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = run_launch(ssh_args(hosts3, hosts) + [job, "-v", "--run-root", str(tmp_path / "runs")] + cache,
                       cwd=str(tmp_path))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    run_id = run_id_from(first.stdout)
    # Offline, the dry run plans with the facts this launch probed: the plan it prints is the one that ran.
    dry = run_launch(ssh_args(hosts3, hosts) + [job, "--dry-run", "--run-root", str(tmp_path / "runs")] + cache,
                     cwd=str(tmp_path))
    assert dry.returncode == 0 and "  assumed" not in dry.stdout, dry.stdout + dry.stderr
    assert_dry_run_is_the_plan(dry.stdout, str(tmp_path / "runs" / run_id))
    for role, host in (("scheduler", "10.231.77.11"), ("server 0", "10.231.77.11"), ("server 1", "10.231.77.12")):
        assert f"[{role}] mxft {role.split()[0]}: serving ps-lite on {host}" in first.stdout
    accuracy = float(first.stdout.strip().splitlines()[-1].split()[2].rstrip(","))
    local = run_launch([job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    assert local.returncode == 0, local.stderr
    local_accuracy = float(local.stdout.strip().splitlines()[-1].split()[2].rstrip(","))
    assert abs(accuracy - local_accuracy) < 0.08, (accuracy, local_accuracy)
    assert os.path.isfile(tmp_path / "runs" / run_id / "checkpoint" / f"demo-{spec['train']['epochs']:04d}.params")
    assert no_processes_left(hosts3, run_id) == {}

    # Each host holds exactly its own workers' shards (worker i runs on host i+1), cut as they were sent: the
    # launcher's cache holds none (issue 26, item 4), and each is what cutting it here gives.
    assert not (tmp_path / "cache" / "shards").exists() or not os.listdir(tmp_path / "cache" / "shards")
    spans = recfile.read_index(spec["data"]["train"])
    for i, host in enumerate(hosts3.hosts):
        shards = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(host.work_dir, "data"))
                        for name in names if name.startswith("part-"))
        assert [os.path.basename(p) for p in shards] == [f"part-{i}-of-3.idx", f"part-{i}-of-3.rec"], shards
        here = recfile.write_shard(spec["data"]["train"], spans[i::3], str(tmp_path / f"part-{i}"))
        assert [open(p, "rb").read() for p in shards] == [open(p, "rb").read() for p in here[::-1]]
    assert_each_host_got_its_workers_part_of_the_validation_set_alone(hosts3, spec["data"]["val"], tmp_path)
    assert_the_model_went_once(hosts3, tmp_path / "runs" / run_id, attempts=1)
    # ... and those weights are the pretrained model's with the seeded new layer: what every worker on one machine,
    # each with the whole checkpoint, starts from (the same digest whichever ps-lite rank got which host)
    assert start_digests(tmp_path / "runs" / run_id_from(local.stdout)) == start_digests(tmp_path / "runs" / run_id)

    again = run_launch(ssh_args(hosts3, hosts) + [job, "--set", "train.epochs=1", "--run-root", str(tmp_path / "runs")]
                       + cache, cwd=str(tmp_path))  # one epoch: what matters is that the same data is not sent again
    assert again.returncode == 0, again.stderr
    assert "[stage] 0 bytes of data sent in total" in again.stdout
    assert "[stage] 0 bytes of data sent in total" not in first.stdout
    assert_evaluated_in_parts_on_the_hosts_as_the_run_did(hosts3, hosts, str(tmp_path / "runs" / run_id), spec,
                                                          tmp_path)


def assert_each_host_got_its_workers_part_of_the_validation_set_alone(cluster, val: str, tmp_path) -> None:
    """Issue 26, item 3 (its last point): with shared evaluation, worker i evaluates part i of 3 of the validation
    set through its .idx; a host that does not read the set in place gets that part alone, as cutting it here gives,
    and never the whole set."""
    spans = recfile.read_index(val)
    parts = index_parts(spans, 3)
    for i, host in enumerate(cluster.hosts):
        found = sorted(os.path.join(root, name) for root, _, names in os.walk(os.path.join(host.work_dir, "data"))
                       for name in names if name.startswith("val-part-") or name == os.path.basename(val))
        assert [os.path.basename(p) for p in found] == [f"val-part-{i}-of-3.idx", f"val-part-{i}-of-3.rec"], found
        here = recfile.write_shard(val, [spans[k] for k in parts[i]], str(tmp_path / f"val-part-{i}"))
        assert [open(p, "rb").read() for p in found] == [open(p, "rb").read() for p in here[::-1]]


def assert_evaluated_in_parts_on_the_hosts_as_the_run_did(cluster, hosts: str, run_dir: str, spec: dict,
                                                          tmp_path) -> None:
    """Issue 27, item 7: ``evaluate --hosts`` gives host i part i of 3 of the validation set, and the parts add up
    to the run's own evaluation of its kept best epoch. The .rec (a copy of the run's) is one the hosts do not have
    (this machine's /srv/mxft-host is not theirs): it is staged to each host; the model is read in place."""
    private = "/srv/mxft-host/evaluate-test"
    os.makedirs(private, exist_ok=True)
    try:
        for suffix in (".rec", ".idx"):
            shutil.copy(os.path.splitext(spec["data"]["val"])[0] + suffix, f"{private}/val{suffix}")
        there = run_launch(["evaluate", run_dir, "--data", f"{private}/val.rec", "--json",
                            *ssh_args(cluster, hosts)], cwd=str(tmp_path))
    finally:
        shutil.rmtree(private)
    assert there.returncode == 0, there.stdout + there.stderr
    found = json.loads(there.stdout)
    result = json.loads(open(os.path.join(run_dir, "result.json")).read())
    best = next(e for e in result["epochs"] if e["epoch"] == result["kept"]["best"])
    assert found["hosts"] == 3 and found["images"] == 846 and found["epoch"] == best["epoch"]
    # the parts add up to the run's own evaluation of that epoch: every image once, the same model
    assert round(found["accuracy"] * 846) == best["val_correct"] and sum(c["images"] for c in found["per_class"]) == 846
    for host in cluster.hosts:
        staged = [name for name in os.listdir(os.path.join(host.work_dir, "data")) if name.startswith("eval-")]
        assert [sorted(n for n in os.listdir(os.path.join(host.work_dir, "data", name)) if not n.startswith("."))
                for name in staged] == [["val.idx", "val.rec"]], (host.name, staged)


@pytest.mark.timeout(240)
def test_cpu2_workers_one_per_two_slot_host_train_as_well_as_single_context_ones(hosts3, tmp_path, demo_assets):
    """Issue 12, item 3: ``devices: cpu:2`` runs Module's multi-device path (a batch split over two contexts).

    4 images per context keep each worker's batch at the demo's 8, so the run takes the same steps as
    the demo's single-context workers and must pass the same bar (demo_seeds: worst 0.798 over seeds).
    """
    spec = demo_job(demo_assets, cluster={"workers": "auto", "servers": 2}, expect={"min_accuracy": 0.72})
    job = write_job(tmp_path / "job.yaml", spec)
    hosts = hosts_file(hosts3, tmp_path, extra={h.name: f"{python_field()} slots=2" for h in hosts3.hosts})
    args = ssh_args(hosts3, hosts) + [job, "--set", "cluster.devices=cpu:2", "--set", "train.batch_per_device=4",
                                      "--run-root", str(tmp_path / "runs")]
    done = run_launch(args, cwd=str(tmp_path), timeout_s=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr   # exits 1 below expect.min_accuracy
    run_dir = tmp_path / "runs" / run_id_from(done.stdout)
    plan = (run_dir / "plan.txt").read_text()
    assert "kvstore    dist_sync, 3 worker(s) x cpu:2, 2 server(s)" in plan
    assert "workers    3: one per 2 slots of each host (cpu:2 workers, cluster.workers: auto)" in plan
    assert f"{spec['train']['epochs']} epochs x 3 batches of 8 per worker (global batch 24)" in plan
    for i, host in enumerate(hosts3.hosts):
        assert f"    worker {i}   on {host.address} " in plan
        log = (run_dir / "logs" / f"worker-{i}.log").read_text()
        assert f"worker {i} computes on 2 context(s): cpu(0), cpu(1), 8 images per step" in log, log[-2000:]
    assert plan.count(", cpu 0,1\n") == 3
    # The hosts see the demo's files at their paths (data.staging: auto): nothing staged but code and configs.
    assert "  data       training data: read in place on every host (the same files at the same paths" in plan
    assert "validation data: read in place on every host" in plan and "model: read in place on every host" in plan
    assert plan.count(", 0 data, ") == 3 and plan.count("  stage to ") == 3, plan
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["num_workers"], result["batch_size_per_worker"]) == (3, 8)
    assert result["val_accuracy"] >= 0.72, result["val_accuracy"]
    dry = run_launch(args + ["--dry-run"], cwd=str(tmp_path))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert_dry_run_is_the_plan(dry.stdout, str(run_dir))
    assert no_processes_left(hosts3, run_dir.name) == {}


@pytest.fixture()
def small_job(tmp_path, demo_assets) -> str:
    return write_job(tmp_path / "job.yaml", demo_job(demo_assets))


def test_unreachable_host(hosts3, tmp_path, small_job):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"10.231.77.11 {python_field()}\n10.231.77.99 {python_field()}\n")
    line = launch_bad(hosts3, tmp_path, str(hosts), small_job)
    assert line.startswith("mxft-launch: error: host 10.231.77.99: unreachable over SSH"), line


def test_unknown_host_key(hosts3, tmp_path, small_job):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(open(hosts3.ssh_config).read().replace(hosts3.known_hosts, str(empty)))
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"10.231.77.12 {python_field()}\n")
    line = launch_bad(hosts3, tmp_path, str(hosts), small_job, ssh_config=str(config))
    assert line.startswith("mxft-launch: error: host 10.231.77.12: unknown host key ssh-ed25519 SHA256:"), line
    assert "--accept-new-host-keys" in line


def test_host_without_mxnet(hosts3, tmp_path, small_job):
    hosts = hosts_file(hosts3, tmp_path, extra={"h3": "python=/usr/bin/python3"})
    line = launch_bad(hosts3, tmp_path, hosts, small_job)
    assert line.startswith("mxft-launch: error: host 10.231.77.13: mxnet is not importable by /usr/bin/python3"), line


def test_dry_run_for_three_hosts_touches_nothing(hosts3, tmp_path, demo_assets):
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"workers": 3, "servers": 2}))
    hosts = hosts_file(hosts3, tmp_path)
    before = {h.name: sorted(os.listdir(h.work_dir)) for h in hosts3.hosts}
    result = run_launch(ssh_args(hosts3, hosts) + [job, "--dry-run", "--run-root", str(tmp_path / "runs")],
                        cwd=str(tmp_path), timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert "stage to 10.231.77.13" in result.stdout and "worker 2   on 10.231.77.13" in result.stdout
    assert not (tmp_path / "runs").exists()
    assert {h.name: sorted(os.listdir(h.work_dir)) for h in hosts3.hosts} == before


def test_where_hosts_have_the_data_they_read_it_in_place_and_staging_never_names_a_host_without_it(
        hosts3, tmp_path, demo_assets):
    """Issue 26, item 1: preflight asks each host what the data's files are at their paths. Here they are in the
    hosts' private folders: h1 and h2 have copies (same size, time and bytes), h3 has none."""
    shared = os.path.join("/srv/mxft-host", f"data-{os.getpid()}")  # the launcher's own folder at that path
    try:
        for where in [shared] + [os.path.join(h.work_dir, os.path.basename(shared)) for h in hosts3.hosts[:2]]:
            shutil.copytree(demo_assets, where)
        spec = demo_job(shared, cluster={"workers": 3, "servers": 1})
        hosts = hosts_file(hosts3, tmp_path)
        job = write_job(tmp_path / "job.yaml", spec)
        dry = run_launch(ssh_args(hosts3, hosts) + [job, "--dry-run", "--probe"], cwd=str(tmp_path), timeout_s=60)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        train = os.path.join(shared, "digits5to9-train.rec")
        assert ("  data       training data: read in place on 10.231.77.11, 10.231.77.12 (the same files at the same "
                f"paths as here); staged to 10.231.77.13 ({train} is not there)") in dry.stdout, dry.stdout
        assert "part 1 of 3 of " in dry.stdout and "shard 2: " in dry.stdout
        never = write_job(tmp_path / "never.yaml", dict(spec, data=dict(spec["data"], staging="never")))
        line = launch_bad(hosts3, tmp_path, hosts, never)
        assert line == (f"mxft-launch: error: host 10.231.77.13: {train} is not there, and {never} says "
                        "data.staging: never (put the same file at the same path there, or set data.staging: auto)")
    finally:
        for where in [shared] + [os.path.join(h.work_dir, os.path.basename(shared)) for h in hosts3.hosts[:2]]:
            shutil.rmtree(where, ignore_errors=True)


def start_remote_run(cluster, tmp_path, demo_assets, *, epochs=200, until="epoch 1 done", job=None,
                     **cluster_fields) -> tuple[subprocess.Popen, str]:
    """The demo for ``epochs`` on 3 workers (``job``: more of each section), started and followed ``until``."""
    sections = {"train": {"epochs": epochs}, "cluster": {"workers": 3, "servers": 2, **cluster_fields}}
    for name, fields in (job or {}).items():
        sections[name] = {**sections.get(name, {}), **fields}
    job = write_job(tmp_path / "long.yaml", demo_job(demo_assets, **sections))
    args = ssh_args(cluster, hosts_file(cluster, tmp_path)) + [job, "--run-root", str(tmp_path / "runs")]
    proc, run_id, _ = start_launch(args, cwd=str(tmp_path), until=until)
    return proc, run_id


def find_process(cluster, run_id: str, log_name: str) -> int:
    """The pid (as root sees it) of the process ``log_name`` (e.g. server-0), not its SSH wrapper."""
    for pids in run_processes(cluster, run_id).values():
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
            if b"trainer.remote" in cmdline and f"/pids/{log_name}.pid".encode() in cmdline:
                return psutil.Process(pid).children()[0].pid
    raise AssertionError(f"no {log_name} of run {run_id}")


@pytest.mark.parametrize("log_name, name", [("worker-2", "worker 2"), ("server-1", "server 1"),
                                            ("scheduler", "scheduler")])
def test_killing_a_remote_process_stops_the_run_everywhere(hosts3, tmp_path, demo_assets, log_name, name):
    proc, run_id = start_remote_run(hosts3, tmp_path, demo_assets)
    os.kill(find_process(hosts3, run_id, log_name), 9)
    # Noticed, not timed out: the run's own progress deadline is 30 minutes away, this wait is 60 s.
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    first = stderr.strip().splitlines()[0]
    assert first.startswith(f"mxft-launch: job failed: {name}") and "killed by SIGKILL" in first, first
    assert no_processes_left(hosts3, run_id) == {}


@pytest.mark.parametrize("signum", [2, 9, 15])
def test_launcher_death_or_signals_leave_nothing_on_any_host(hosts3, tmp_path, demo_assets, signum):
    proc, run_id = start_remote_run(hosts3, tmp_path, demo_assets)
    assert sum(len(p) for p in run_processes(hosts3, run_id).values()) >= 6  # 5 processes + wrappers
    proc.send_signal(signum)
    proc.wait(timeout=60)
    assert proc.returncode == {2: 130, 9: -9, 15: 143}[signum]
    assert no_processes_left(hosts3, run_id) == {}


def test_argv_reaches_the_remote_process_exactly(hosts3):
    import sys

    from cluster.hosts import HostSpec
    from cluster.ssh import SSHHost, SSHOptions
    host = SSHHost(HostSpec(hosts3.hosts[1].address), SSHOptions(ssh_config=hosts3.ssh_config))
    args = ["a b", "$HOME", "it's", 'say "hi"', "`id`", "semi;colon", ""]
    code, out, _ = host.run([sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *args])
    import json
    assert code == 0 and json.loads(out) == args


def test_accept_new_host_keys_records_the_key_and_a_changed_key_is_refused(hosts3, tmp_path):
    from cluster.hosts import HostSpec
    from cluster.ssh import HostKeyError, SSHHost, SSHOptions
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = tmp_path / "ssh_config"
    config.write_text(open(hosts3.ssh_config).read().replace(hosts3.known_hosts, str(known)))
    address = hosts3.hosts[2].address
    accept = SSHHost(HostSpec(address), SSHOptions(ssh_config=str(config), accept_new_host_keys=True))
    assert accept.run(["true"])[0] == 0
    recorded = known.read_text()
    assert recorded.startswith(f"{address} ssh-ed25519 ")
    strict = SSHHost(HostSpec(address), SSHOptions(ssh_config=str(config)))
    assert strict.run(["true"])[0] == 0  # now known
    other_key = open(hosts3.known_hosts).read().splitlines()[0].split(" ", 1)[1]
    known.write_text(f"{address} {other_key}\n")  # h1's key recorded for h3: a changed key
    with pytest.raises(HostKeyError, match="host key changed"):
        accept.run(["true"])


def start_events(run_dir) -> list[dict]:
    """Each worker's digest of its weights after the first pull, in the order reported."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "start"]


def start_digests(run_dir) -> set[str]:
    return {e["weights"] for e in start_events(run_dir)}


def assert_the_model_went_once(cluster, run_dir, *, attempts: int) -> None:
    """Issue 26, item 2: the weights went to worker 0's host alone (the others got the BatchNorm statistics), and every
    worker's weights after the first pull were worker 0's (in each attempt: a resumed one starts from the run's own
    checkpoint, on every host)."""
    assert f"  model once its weights go to {cluster.hosts[0].address} (worker 0's host) alone: " in (
        run_dir / "plan.txt").read_text()
    for i, host in enumerate(cluster.hosts):
        models = {name for name in os.listdir(os.path.join(host.work_dir, "data")) if "flatten0" in name}
        assert any(name.endswith("-statistics") for name in models) == (i > 0), (host.name, models)
    starts = start_events(run_dir)
    assert len(starts) == 3 * attempts, starts
    for attempt in range(attempts):
        ours = starts[3 * attempt: 3 * attempt + 3]
        assert sorted(e["index"] for e in ours) == [0, 1, 2] and len({e["weights"] for e in ours}) == 1, ours


def assert_each_epoch_read_its_documented_order(run_dir, *, attempt: int) -> None:
    """Issue 27: in a run restarted on other hosts, epoch E of worker i of the W workers then running reads part i of
    W of the training file in the order seeded by (seed, i, E), whatever came before: computed here from each
    worker's own config (``trainer.worker.train_reader``), it is the order that worker reported for every epoch."""
    from trainer.config import WorkerConfig
    from trainer.resume_state import epoch_order
    from trainer.worker import train_reader
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    reported = {(e["index"], e["epoch"]): e["order"] for e in events
                if e["event"] == "epoch" and e["attempt"] == attempt}
    workers = len({index for index, _ in reported})  # cluster.workers' count, on the hosts left
    assert {index for index, _ in reported} == set(range(workers)) and workers >= 2, sorted(reported)
    for index in range(workers):
        cfg = WorkerConfig.load(str(run_dir / "config" / f"worker-{index}.json"))
        assert cfg.train_part and cfg.train_part[1] == workers and os.path.isfile(cfg.train_rec), cfg.train_part
        reader = train_reader(cfg)
        ours = {epoch: order for (i, epoch), order in reported.items() if i == index}
        assert len(set(ours.values())) == len(ours) >= 2, ours  # every epoch an order of its own
        checked = (min(ours), max(ours))  # the first epoch after the restart, and the last
        assert {e: ours[e] for e in checked} == {e: epoch_order(reader, e - 1) for e in checked}, (index, ours)


def test_restart_across_hosts_resumes_from_the_fetched_checkpoint(hosts3, tmp_path, demo_assets):
    """With ``train.evaluation: worker0`` (the servers update the weights) and the data staged everywhere."""
    proc, run_id = start_remote_run(hosts3, tmp_path, demo_assets, epochs=10, until="epoch 4 done", max_restarts=1,
                                    job={"train": {"evaluation": "worker0"}, "data": {"staging": "always"}})
    os.kill(find_process(hosts3, run_id, "worker-1"), 9)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout[-2000:] + stderr
    result = json.loads((tmp_path / "runs" / run_id / "result.json").read_text())
    first, second = result["attempts"]
    assert first["outcome"] == "failed" and first["reason"].startswith("worker 1 on 10.231.77.12")
    assert second["begin_epoch"] == first["epochs_done"] >= 3 and second["outcome"] == "succeeded"
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 11))
    assert no_processes_left(hosts3, run_id) == {}
    assert_the_model_went_once(hosts3, tmp_path / "runs" / run_id, attempts=2)


def test_staging_killed_halfway_leaves_nothing_trusted(hosts3, tmp_path):
    import hashlib
    import sys

    from cluster.errors import JobFailed
    from cluster.hosts import HostSpec
    from cluster.ssh import SSHHost, SSHOptions
    from launcher.plan import Transfer
    from launcher.run.stage import stage_host
    big = tmp_path / "big.rec"
    with open(big, "wb") as handle:
        for _ in range(24):
            handle.write(os.urandom(1 << 22))  # 96 MiB
    small = tmp_path / "small.idx"
    small.write_bytes(b"0\t0\n")
    host = SSHHost(HostSpec(hosts3.hosts[0].address), SSHOptions(ssh_config=hosts3.ssh_config))
    dest = "/srv/mxft-host/data/k1"
    transfers = [Transfer("h1", str(small), f"{dest}/small.idx", "data"),
                 Transfer("h1", str(big), f"{dest}/big.rec", "data")]
    me = psutil.Process()

    def kill_ssh_midway(*report) -> None:
        for child in me.children(recursive=True):
            if child.name() == "ssh":
                child.kill()

    with pytest.raises(JobFailed, match="copying 2 files failed"):
        stage_host(host, transfers, root="/srv/mxft-host", python=sys.executable, progress=kill_ssh_midway,
                   progress_every_s=0.0)
    local_view = os.path.join(hosts3.hosts[0].work_dir, "data", "k1")
    assert not os.path.exists(local_view)  # not even the small file that arrived whole: all or nothing
    wait_until(lambda: not [n for n in os.listdir(hosts3.hosts[0].work_dir) if n.startswith(".incoming")],
               what="the killed receiver's .incoming folder to be removed", timeout_s=30)

    report = stage_host(host, transfers, root="/srv/mxft-host", python=sys.executable, progress=lambda *report: None)
    assert report.files_sent == 2 and report.files_present == 0
    assert hashlib.sha256(open(os.path.join(local_view, "big.rec"), "rb").read()).hexdigest() == \
        hashlib.sha256(big.read_bytes()).hexdigest()
    again = stage_host(host, transfers, root="/srv/mxft-host", python=sys.executable, progress=lambda *report: None)
    assert again.files_sent == 0 and again.data_bytes_sent == 0 and again.files_present == 2
    assert again.bytes_sent < 100  # the end frame alone


def test_a_host_that_cannot_reach_the_scheduler_is_refused_before_anything_starts(hosts3, tmp_path, demo_assets):
    h3 = hosts3.hosts[2]
    h3.exec("ip", "route", "add", "blackhole", f"{hosts3.hosts[0].address}/32")  # h3 loses its way to h1
    try:
        job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"workers": 3, "servers": 2,
                                                                              "startup_timeout_s": 10}))
        result = run_launch(ssh_args(hosts3, hosts_file(hosts3, tmp_path)) +
                            [job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    finally:
        h3.exec("ip", "route", "del", "blackhole", f"{hosts3.hosts[0].address}/32")
    # Found before any ps-lite process starts (launcher/run/reach.py), not at the start-up deadline: exit 2.
    assert result.returncode == 2, result.stdout + result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"mxft-launch: error: host {h3.address}: cannot open a TCP connection to the ps-lite "
                            f"scheduler at {hosts3.hosts[0].address}:"), first
    assert "[mxft] run " not in result.stdout and not (tmp_path / "runs").exists()


def test_check_prints_a_row_per_host_and_fails_on_any_bad_one(hosts3, tmp_path, demo_assets):
    config = ["--ssh-config", hosts3.ssh_config, "--remote-dir", "/srv/mxft-host"]
    good = hosts_file(hosts3, tmp_path)
    done = run_launch(["check", "--hosts", good, *config], cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["host", "ssh", "host", "key", "python", "mxnet", "ps-lite", "cuda", "gpus", "cpus",
                              "free", "GB", "clock", "skew", "s", "verdict"]
    import mxnet
    for row, host in zip(rows, hosts3.hosts):
        cells = row.split()
        assert cells[:4] == [host.address, "ok", "ok", sys.version.split()[0]] and cells[4:7] == \
            [mxnet.__version__, "yes", "no"] and cells[-1] == "ok", row
        assert abs(float(cells[-2])) < 1.0  # same machine, same clock
    gpu_job = write_job(tmp_path / "gpu.yaml", demo_job(demo_assets, cluster={"workers": 3, "devices": [0]}))
    on_gpus = run_launch(["check", "--hosts", good, *config, gpu_job, "--json"], cwd=str(tmp_path))
    assert on_gpus.returncode == 2
    rows = json.loads(on_gpus.stdout)["hosts"]  # issue 28: check --json
    assert [(row["host"], row["ssh"], row["host_key"], row["fit"]) for row in rows] == [
        (host.address, "ok", "ok", False) for host in hosts3.hosts]
    assert {row["verdict"] for row in rows} == {"the job puts 1 GPUs there but its mxnet has no CUDA"}, rows

    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"10.231.77.11 {python_field()}\n10.231.77.13 python=/usr/bin/python3\n"
                     f"10.231.77.99 {python_field()}\n")
    bad = run_launch(["check", "--hosts", str(mixed), *config], cwd=str(tmp_path))
    assert bad.returncode == 2
    rows = bad.stdout.splitlines()[1:]
    assert rows[0].endswith("  ok")
    assert "missing" in rows[1] and rows[1].rstrip().endswith("No module named 'mxnet'"), rows[1]
    assert rows[2].split()[:2] == ["10.231.77.99", "unreachable"] and "unreachable over SSH" in rows[2]


@pytest.mark.timeout(180)
def test_a_saved_plan_for_these_hosts_is_refused_when_a_hosts_fact_changed_and_nothing_starts(hosts3, tmp_path,
                                                                                              demo_assets):
    """Issue 25: ``--plan`` probes the hosts again before it runs a saved plan; h2 with a new network interface is a
    changed fact (ps-lite's address may be chosen from it), named, exit 2, no run folder."""
    config = ["--ssh-config", hosts3.ssh_config, "--remote-dir", "/srv/mxft-host"]
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, cluster={"workers": 3}))
    saved, runs = str(tmp_path / "plan.json"), str(tmp_path / "runs")
    dry = run_launch([job, "--hosts", hosts_file(hosts3, tmp_path), *config, "--run-root", runs, "--dry-run",
                      "--probe", "--save-plan", saved], cwd=str(tmp_path))
    assert dry.returncode == 0 and f"plan saved to {saved}" in dry.stdout, dry.stdout[-2000:] + dry.stderr
    h2 = hosts3.hosts[1]
    h2.exec("ip", "link", "add", "mxft-new", "type", "veth", "peer", "name", "mxft-new-peer")  # no dummy module here
    try:
        h2.exec("ip", "addr", "add", "10.251.0.2/24", "dev", "mxft-new")
        refused = run_launch(["--plan", saved], cwd=str(tmp_path))
    finally:
        h2.exec("ip", "link", "del", "mxft-new", check=False)
    line = refusal_line(refused)
    assert line.startswith(f"mxft-launch: error: {saved}: a fact this plan was made from has changed: host "
                           f"{h2.address}: interfaces "), line
    assert "mxft-new" in line and "(make the plan again: mxft-launch ... --dry-run --probe --save-plan FILE)" in line
    assert "[mxft] run " not in refused.stdout and not os.path.exists(runs)


def _link(host, state: str) -> None:
    subprocess.run(["ip", "link", "set", f"mxv-{host.name}", state], check=True)


@pytest.mark.timeout(240)
def test_a_host_that_vanishes_is_named_and_the_others_are_stopped(hosts3, tmp_path, demo_assets):
    """h3's link is cut mid-run: no process exits, ps-lite waits forever; the keepalives name h3."""
    h3 = hosts3.hosts[2]
    proc, run_id = start_remote_run(hosts3, tmp_path, demo_assets)
    cut = time.monotonic()
    _link(h3, "down")
    try:
        out, err = proc.communicate(timeout=120)
        print(f"named {time.monotonic() - cut:.1f} s after the cut")  # the goal: within 30 s
    finally:
        _link(h3, "up")
    assert proc.returncode == 1, out[-2000:] + err
    first = err.strip().splitlines()[0]
    assert first.startswith(f"mxft-launch: job failed: host {h3.address} stopped answering (no reply for 20 s)"), \
        first
    assert f"no answer from worker 2 on {h3.address}" in out
    # h1 and h2 at once; h3's processes end once their sessions' closing reaches it over the restored link
    assert no_processes_left(hosts3, run_id, timeout_s=60) == {}


@pytest.mark.timeout(240)
def test_sigterm_with_a_host_gone_still_ends_the_launch(hosts3, tmp_path, demo_assets):
    h3 = hosts3.hosts[2]
    proc, run_id = start_remote_run(hosts3, tmp_path, demo_assets)
    _link(h3, "down")
    try:
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        print(f"ended {time.monotonic() - stopped:.1f} s after SIGTERM")  # the goal: within 10 s
    finally:
        _link(h3, "up")
    assert proc.returncode == 143, out[-2000:] + err
    assert f"no answer from worker 2 on {h3.address}" in out, out[-2000:]
    assert no_processes_left(hosts3, run_id, timeout_s=60) == {}


@pytest.mark.timeout(300)
def test_a_run_restarts_without_the_host_that_vanished(hosts3, tmp_path, demo_assets):
    """max_restarts 1, min_hosts 2: h3's link is cut; the run resumes on h1 and h2 from its last epoch."""
    h3 = hosts3.hosts[2]
    proc, run_id = start_remote_run(hosts3, tmp_path, demo_assets, epochs=10, until="epoch 2 done", max_restarts=1,
                                    min_hosts=2)
    _link(h3, "down")
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        _link(h3, "up")
    assert proc.returncode == 0, out[-3000:] + err
    assert f"[mxft] leaving out host {h3.address} (failed; cluster.min_hosts 2)" in out
    with open(tmp_path / "runs" / run_id / "result.json", encoding="utf-8") as handle:
        result = json.load(handle)
    first, second = result["attempts"]
    assert first["outcome"] == "failed" and "stopped answering" in first["reason"]
    assert (first["failure"]["kind"], first["failure"]["host"]) == ("host silent", h3.address)  # what the restart read
    assert first["hosts"] == [h.address for h in hosts3.hosts]
    assert second["hosts"] == [h.address for h in hosts3.hosts[:2]] and second["outcome"] == "succeeded"
    assert second["begin_epoch"] == first["epochs_done"] >= 1
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 11))
    assert result["val_accuracy"] >= 0.72  # the demo's own bar: in the band of an unbroken run
    assert no_processes_left(hosts3, run_id, timeout_s=60) == {}
    assert_each_epoch_read_its_documented_order(tmp_path / "runs" / run_id, attempt=2)
