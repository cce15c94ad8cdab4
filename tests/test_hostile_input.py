"""Hostile and absurd input (issue 14, item 8): every parser either parses or raises InputError.

Property-based tests (hypothesis) feed random and mutated hosts files, job files, ``--set``
values, Slurm node lists and launch.py-style argv to the parsers; each example must give a
value or the project's input error (argparse's SystemExit(2) for argv) -- never another
exception -- within the deadline. The budgets are fixed and the examples derandomized, so
the fast tier stays fast and the same everywhere; ``MXFT_HYPOTHESIS=explore`` searches
longer with fresh random examples. Literal regression tests below name the inputs a
review found (an alias bomb, a recursive alias, counts of 10**12, ...).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.errors import InputError
from cluster.hosts import MAX_HOSTS, MAX_SLOTS, HostSpec, parse_hosts
from cluster.slurm import hosts_from_slurm
from launcher import cli
from launcher.cli_args import parse_command_args
from launcher.data import runstate
from launcher.report.metrics import MetricsWriter, read_events
from launcher.spec.checks import ENV_NAME, MAX_PROCESSES
from launcher.spec.command import parse_env
from launcher.spec.command_job import CommandSpec
from launcher.spec.jobspec import JobSpec, parse_job
from launcher.spec.yamlfields import MAX_VALUES
from launcher.status import status_lines

EXPLORE = os.environ.get("MXFT_HYPOTHESIS") == "explore"
BUDGET = settings(deadline=None if EXPLORE else timedelta(seconds=2), database=None, derandomize=not EXPLORE,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def examples(count: int) -> settings:
    return settings(BUDGET, max_examples=count * 50 if EXPLORE else count)


JOB = """\
name: small
num_classes: 3
model: {prefix: /m/net, epoch: 0}
data:
  train: /d/train.rec
  val: /d/val.rec
  shape: [3, 28, 28]
train: {epochs: 2, batch_per_device: 4, optimizer_params: {learning_rate: 0.1}}
cluster: {workers: 2, servers: auto, devices: cpu}
"""
COMMAND_JOB = """\
command: [python, train.py, --kv-store, dist_sync]
cluster: {workers: 3, servers: 2}
env: {OMP_NUM_THREADS: 2, worker: {MXNET_CPU_WORKER_NTHREADS: 2}}
sync_dir: ~/jobs/train
"""
HOSTS = """\
# hosts
gpu01 slots=8
gpu02:2222 slots=8 user=train python=/opt/py/bin/python3
10.0.0.7
[fe80::1]:22 slots=2
"""
# Pieces of YAML, hosts-file and shell syntax that parsers trip over.
HOSTILE = ["&a ", "*a", "&b [*a, *a, *a]", "!!int ", "!!python/object:os.system ", "!foo ", "!!set ", "<<: ", "? ",
           "[", "]", "{", "}", ": ", ", ", "\n- ", "\n  ", "'", '"', "\t", "#", "---\n", "...\n", "%YAML 1.1\n",
           "\x00", "\ufeff", "\x85", "\u2028", "1e999", "1000000000000", "-1", "0", "²", "٣", "9" * 5000, "~",
           "${X}", "\\", "=", "slots=", "user=", "python=", "addr=", ":", "-", "--", "-oProxyCommand=x", "\r\n",
           "null", "true", ".inf", ".nan", "2001-13-45", "0x1F", "0o17", "[" * 60, "{a: " * 60]


def mutated(base: str) -> st.SearchStrategy[str]:
    """``base`` with a few spans deleted, replaced or given a hostile piece or random text."""
    piece = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=12))

    @st.composite
    def build(draw) -> str:
        text = base
        for _ in range(draw(st.integers(1, 6))):
            start = draw(st.integers(0, len(text)))
            end = draw(st.integers(start, min(len(text), start + draw(st.integers(0, 8)))))
            text = text[:start] + (draw(piece) if draw(st.booleans()) else "") + text[end:]
        return text
    return build()


def any_text(base: str) -> st.SearchStrategy[str]:
    return st.one_of(mutated(base), st.text(max_size=200), st.lists(st.sampled_from(HOSTILE), max_size=12).map("".join))


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), children, max_size=4)),
    max_leaves=12)


def parses_or_input_error(parse, *args, **kwargs):
    """``parse``'s value, or None when it raised InputError; any other exception fails the test."""
    try:
        return parse(*args, **kwargs)
    except InputError as err:
        assert str(err) and "\n" not in err.message, repr(err.message)  # one line for the CLI to print
        return None


# --------------------------------------------------------------------------- properties

@examples(150)
@given(any_text(HOSTS))
def test_hosts_files_parse_or_are_refused(text):
    hosts = parses_or_input_error(parse_hosts, text, "h.txt")
    for host in hosts or ():
        assert isinstance(host, HostSpec) and not host.name.startswith("-")
        assert host.slots is None or 1 <= host.slots <= MAX_SLOTS
        assert host.python is None or not host.python.startswith("~")


@examples(150)
@given(st.one_of(any_text(JOB), any_text(COMMAND_JOB)))
def test_job_files_parse_or_are_refused(text):
    job = parses_or_input_error(parse_job, text, "/jobs/x.yaml", environ={})
    assert job is None or isinstance(job, (JobSpec, CommandSpec))
    if isinstance(job, CommandSpec):
        assert all(ENV_NAME.fullmatch(name) for env in (job.env, *job.role_env.values()) for name in env)


@examples(100)
@given(st.sampled_from([JOB, COMMAND_JOB]), st.sampled_from(["name", "num_classes", "model", "model.epoch", "data",
                                                              "data.shape", "train", "train.optimizer_params",
                                                              "cluster.devices", "cluster.servers", "env",
                                                              "env.worker", "command", "expect"]), yaml_values)
def test_any_value_at_any_key_parses_or_is_refused(base, path, value):
    job = yaml.safe_load(base)
    *parents, last = path.split(".")
    node = job
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    parses_or_input_error(parse_job, yaml.safe_dump(job), "/jobs/x.yaml", environ={})


@examples(150)
@given(st.lists(st.one_of(mutated("train.epochs=4"), mutated("cluster.devices=[0, 1]"), st.text(max_size=30)),
                min_size=1, max_size=3))
def test_set_overrides_parse_or_are_refused(overrides):
    parses_or_input_error(parse_job, JOB, "/jobs/x.yaml", environ={}, overrides=overrides)


@examples(150)
@given(any_text("gpu[01-04,07],cpu9,r[1-2]-n[8-9]"), st.one_of(st.none(), any_text("2(x3),1")),
       st.one_of(st.none(), st.text(max_size=8)))
def test_slurm_node_lists_parse_or_are_refused(slurm_conf, nodelist, tasks, gpus):
    environ = {"SLURM_JOB_NODELIST": nodelist, "SLURM_CONF": slurm_conf}
    environ.update({"SLURM_TASKS_PER_NODE": tasks} if tasks is not None else {})
    environ.update({"SLURM_GPUS_ON_NODE": gpus} if gpus is not None else {})
    hosts = parses_or_input_error(hosts_from_slurm, environ)
    assert hosts is None or (len(hosts) <= MAX_HOSTS and not any(h.name.startswith("-") for h in hosts))


OPTIONS = ["-n", "-s", "-H", "--hosts", "--hostfile", "--launcher", "ssh", "local", "mpi", "--sync-dir",
           "--sync-dst-dir", "--env", "--env-worker", "--env-server", "--env-scheduler", "--name", "--p3", "-v",
           "--dry-run", "--probe", "--run-root", "--", "python", "train.py", "2", "0", "-1", "4097", "1" * 40,
           "A=1", "B:2", "-x=1", "A-B=1", "HOME", "NOPE", "../../x", "slurm", "--num-workers=3", "-n2"]
# Random words, but never a request for help (argparse would print it and exit 0, as it should).
words = st.text(max_size=12).filter(lambda word: not (word.startswith("-") and "h" in word))


@examples(200)
@given(st.lists(st.one_of(st.sampled_from(OPTIONS), words), max_size=10))
def test_launch_py_options_parse_or_are_refused(argv):
    with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage line on each refusal
        try:
            config = parses_or_input_error(parse_command_args, argv, environ={"HOME": "/root"})
        except SystemExit as exit_:
            assert exit_.code == 2, argv
            return
    if config is not None:
        spec = config.command
        assert 1 <= spec.workers <= MAX_PROCESSES and 1 <= spec.servers <= MAX_PROCESSES
        assert all(ENV_NAME.fullmatch(name) for env in (spec.env, *spec.role_env.values()) for name in env)
        assert "/" not in spec.name and not spec.name.startswith(".")


@examples(150)
@given(st.lists(st.one_of(st.sampled_from(OPTIONS), st.text(max_size=12)), max_size=6))
def test_env_options_give_names_that_are_never_options(items):
    env = parses_or_input_error(parse_env, items, environ={"HOME": "/root"}, option="--env")
    assert env is None or all(ENV_NAME.fullmatch(name) for name in env)


# --------------------------------------------------------------------------- literal regressions

def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs": each level a list of nine aliases of the one before."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefghij", "bcdefghijk"[:levels - 1]):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(1)
@pytest.mark.parametrize("levels", [9, 10])
def test_an_alias_bomb_is_refused_at_once(levels):
    text = alias_bomb(levels)
    assert len(text.encode()) <= 400
    with pytest.raises(InputError) as info:
        parse_job(text, "/jobs/bomb.yaml", environ={})
    assert str(info.value).startswith("/jobs/bomb.yaml:")
    assert f"more than {MAX_VALUES} values once the aliases are expanded" in str(info.value)


@pytest.mark.timeout(1)
def test_an_alias_bomb_in_a_set_value_is_refused_at_once():
    bomb = "{" + ", ".join(alias_bomb(8).splitlines()) + "}"  # the same, as one flow mapping
    with pytest.raises(InputError, match=rf"^--set train\.x=\{{a: .*: more than {MAX_VALUES} values"):
        parse_job(JOB, "/jobs/x.yaml", environ={}, overrides=[f"train.x={bomb}"])


def test_aliases_are_copies_and_still_work():
    job = parse_job(JOB.replace("num_classes: 3", "num_classes: &k 3").replace("epochs: 2", "epochs: *k"),
                    "/jobs/x.yaml", environ={})
    assert job.num_classes == job.train.epochs == 3
    text = "command: &c [prog, -x]\nenv: {worker: &w {A: 1}, server: *w}\n"
    spec = parse_job(text, "/jobs/c.yaml", environ={}, overrides=["env.worker.B=2"])
    assert spec.role_env == {"worker": {"A": "1", "B": "2"}, "server": {"A": "1"}}  # --set changed one place


@pytest.mark.parametrize("text, expected", [
    ("name: &x [a, *x]\n", "/jobs/x.yaml:1: a recursive alias (an anchor used inside its own value)"),
    ("train: &t\n  epochs: *t\n", "/jobs/x.yaml:1: a recursive alias"),
    ("num_classes: 3\n? [1, 2]\n: x\n", "/jobs/x.yaml:2: a key must be a plain name or number, not a mapping or list"),
    ("num_classes: 3\n? {a: 1}\n: x\n", "/jobs/x.yaml:2: a key must be a plain name"),
    ("num_classes: 3\nname: !foo x\n", "/jobs/x.yaml:2: unsupported tag !foo"),
    ("num_classes: !!python/object:os.system x\n", "/jobs/x.yaml:1: unsupported tag !!python/object:os.system"),
    ("num_classes: 3\ntrain: !!set {a}\n", "/jobs/x.yaml:2: unsupported tag !!set on a mapping"),
    ("num_classes: 3\ntrain:\n  <<: {epochs: 2}\n", "/jobs/x.yaml:3: unsupported tag !!merge (merge keys are not"),
    ("num_classes: !!int three\n", "/jobs/x.yaml:1: cannot read 'three' as !!int"),
    ("num_classes: 3\nname: !!timestamp soon\n", "/jobs/x.yaml:2: cannot read 'soon' as !!timestamp"),
    ("num_classes: 3\nname: 2026-13-45\n", "/jobs/x.yaml:2: cannot read '2026-13-45' as !!timestamp: month must be"),
    ("num_classes: " + "9" * 5000 + "\n", "/jobs/x.yaml:1: cannot read '9999"),
    ("num_classes: 3\nname: a\x01\n", "/jobs/x.yaml:2: not valid YAML: the character '\\x01' is not allowed"),
    ("x: " + "[" * 200 + "]" * 200 + "\n", "/jobs/x.yaml:1: not valid YAML: nested more than 50 levels deep"),
])
def test_yaml_mistakes_are_named_at_their_line(text, expected):
    with pytest.raises(InputError) as info:
        parse_job(text, "/jobs/x.yaml", environ={})
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize("key, value, expected", [
    ("cluster.servers", "1000000000000", "cluster.servers must be 'auto' or an integer from 1 to 4096, "
                                         "got 1000000000000"),
    ("cluster.workers", "4097", "cluster.workers must be 'auto' or an integer from 1 to 4096, got 4097"),
    ("cluster.devices", "gpu:100000000", "cluster.devices must be 'cpu', 'cpu:N' or 'gpu:N' (N from 1 to 256)"),
    ("cluster.devices", "cpu:" + "9" * 5000, "cluster.devices must be 'cpu', 'cpu:N' or 'gpu:N' (N from 1 to 256)"),
    ("cluster.devices", "[[0], [1]]", "cluster.devices must be 'cpu', 'cpu:N' or 'gpu:N'"),
])
def test_counts_are_capped_before_anything_is_built(key, value, expected):
    name = key.split(".")[1]
    with pytest.raises(InputError) as info:
        parse_job(JOB.replace("cluster: {workers: 2, servers: auto, devices: cpu}",
                              f"cluster:\n  {name}: {value}"), "/jobs/x.yaml", environ={})
    assert str(info.value).startswith(f"/jobs/x.yaml:10: {expected}"), str(info.value)


def test_command_job_counts_and_env_names_are_checked():
    with pytest.raises(InputError, match=r"^/jobs/c.yaml:2: cluster.servers must be an integer from 1 to 4096"):
        parse_job("command: [prog]\ncluster: {servers: 1000000000000}\n", "/jobs/c.yaml", environ={})
    with pytest.raises(InputError, match=r"^/jobs/c.yaml:2: env.worker must be a mapping of NAME: value"):
        parse_job("command: [prog]\nenv: {worker: {-x: 1}}\n", "/jobs/c.yaml", environ={})
    with pytest.raises(InputError, match=r"^/jobs/c.yaml:2: '--help' is not an environment variable name"):
        parse_job("command: [prog]\nenv: {--help: 1}\n", "/jobs/c.yaml", environ={})


@pytest.mark.timeout(30)
@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_JOB_NODELIST": "n[1-100000000]"}, "SLURM_JOB_NODELIST: Slurm cannot expand node list 'n[1-100000000]': "
                                               "Invalid hostlist"),
    ({"SLURM_JOB_NODELIST": "a[1-9000],b[1-9000]"}, "SLURM_JOB_NODELIST: node list 'a[1-9000],b[1-9000]' names more "
                                                    "than 10000 nodes"),
    ({"SLURM_JOB_NODELIST": "n[1-" + "9" * 5000 + "]"}, "SLURM_JOB_NODELIST: Slurm cannot expand node list"),
    ({"SLURM_JOB_NODELIST": "-oProxyCommand=x,n1"}, "SLURM_JOB_NODELIST: Slurm expands node list "
                                                    "'-oProxyCommand=x,n1' to '-oProxyCommand=x', which is not"),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "1(x100000)"},
     "SLURM_TASKS_PER_NODE: '1(x100000)' gives counts for more than 10000 nodes"),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_TASKS_PER_NODE": "1(x100000000)"}, "SLURM_TASKS_PER_NODE: bad count"),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_ON_NODE": "100000"}, "SLURM_GPUS_ON_NODE: gives a node more than"),
    ({"SLURM_JOB_NODELIST": "n1", "SLURM_GPUS_ON_NODE": "²"}, "SLURM_GPUS_ON_NODE: '²' is not a number of GPUs"),
])
def test_an_allocations_hostile_lists_are_refused_within_bounds(environ, expected, slurm_conf):
    with pytest.raises(InputError) as info:
        hosts_from_slurm({**environ, "SLURM_CONF": slurm_conf})
    assert str(info.value).startswith(expected), str(info.value)


@pytest.mark.parametrize("line, expected", [
    ("-oProxyCommand=x", "h.txt:1: '-oProxyCommand=x' is not a host name or address"),
    ("-T", "h.txt:1: '-T' is not a host name: it starts with '-'"),
    ("-gpu01:22 slots=2", "h.txt:1: '-gpu01' is not a host name: it starts with '-'"),
    ("gpu01 python=~/venv/bin/python", "h.txt:1: python=~/venv/bin/python: '~' is not expanded on the host "
                                       "(give the full path, e.g. python=/home/USER/venv/bin/python)"),
    ("gpu01 slots=1000000000000", "h.txt:1: slots=1000000000000 is more than 1024"),
    ("gpu01 slots=²", "h.txt:1: slots must be a whole number >= 1, got '²'"),
    ("gpu01:" + "9" * 5000, "h.txt:1: 'gpu01:999"),
])
def test_hosts_file_refusals(line, expected):
    with pytest.raises(InputError) as info:
        parse_hosts(line + "\n", "h.txt")
    assert str(info.value).startswith(expected), str(info.value)


def test_a_hosts_file_of_too_many_hosts_is_refused():
    with pytest.raises(InputError, match=rf"^h.txt:{MAX_HOSTS + 1}: more than {MAX_HOSTS} hosts"):
        parse_hosts("".join(f"h{i}\n" for i in range(MAX_HOSTS + 1)), "h.txt")


def test_the_ssh_argv_ends_options_before_the_host():
    from cluster.ssh import SSHHost, SSHOptions, remote_command
    assert SSHHost(HostSpec("gpu01", port=2222), SSHOptions()).openssh_argv()[-4:] == ["-p", "2222", "--", "gpu01"]
    assert remote_command(["prog"], env={"A": "1"}, cwd="-x") == "cd ./-x && exec env -- A=1 prog"


@pytest.mark.parametrize("argv, expected", [
    (["-n", "1", "--name", "../../x", "--", "prog"], "--name ../../x: is not a run name"),
    (["-n", "1", "--name", ".hidden", "--", "prog"], "--name .hidden: is not a run name"),
    (["-n", "1", "--env-worker=-x=1", "--", "prog"], "--env-worker -x=1: '-x' is not an environment variable"),
    (["-n", "1", "--env-server=--help:1", "--", "prog"], "--env-server --help:1: '--help' is not an environment"),
    (["-n", "1", "--env", "é=1", "--", "prog"], "--env é=1: 'é' is not an environment variable name"),
])
def test_command_line_names_are_checked(argv, expected):
    with pytest.raises(InputError) as info:
        parse_command_args(argv, environ={})
    assert str(info.value).startswith(expected), str(info.value)


def test_worker_counts_on_the_command_line_are_capped():
    with contextlib.redirect_stderr(io.StringIO()) as stderr, pytest.raises(SystemExit) as info:
        parse_command_args(["-n", "1000000000000", "--", "prog"], environ={})
    assert info.value.code == 2 and "-n and -s must be from 1 to 4096" in stderr.getvalue()


# --------------------------------------------------------------------------- run folders (issue 14, item 9)

def test_stop_signals_only_a_launcher_holding_the_run_open(tmp_path):
    """A forged launcher.json naming another process (pid and start time right) gets nobody signalled."""
    import psutil
    victim = subprocess.Popen(["sleep", "60"])
    try:
        forged = tmp_path / "forged"
        forged.mkdir()
        (forged / "job.yaml").write_text("name: x\n")
        start = psutil.Process(victim.pid).create_time()
        (forged / "launcher.json").write_text(f'{{"pid": {victim.pid}, "create_time": {start}, "run_id": "x"}}')
        assert runstate.running_launcher(str(forged)) is None
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            assert cli.main(["stop", str(forged), "--timeout", "1"]) == 1
        assert "no launcher of this run is running" in stderr.getvalue()
        assert victim.poll() is None
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    real = tmp_path / "real"
    real.mkdir()
    runstate.write_launcher(str(real), "real")  # this process, holding its launcher.json open
    assert runstate.running_launcher(str(real)).pid == os.getpid()
    runstate.write_launcher(str(forged), "next")  # a process launches one run at a time
    assert runstate.running_launcher(str(real)) is None


@pytest.mark.timeout(60)
def test_stop_still_stops_a_real_launcher(tmp_path):
    """Another process that wrote the run's launcher.json (as a launch does) is found and stopped."""
    from tests.helpers import REPO
    code = (f"import sys, time; from launcher.data import runstate; runstate.write_launcher({str(tmp_path)!r}, 'r'); "
            "print('ready', flush=True); time.sleep(60)")
    launcher = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout.readline() == "ready\n"
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            assert cli.main(["stop", str(tmp_path), "--timeout", "30"]) == 0
        assert stdout.getvalue() == f"stopped {tmp_path}\n"
        assert launcher.wait(timeout=30) == -signal.SIGTERM
    finally:
        launcher.kill()
        launcher.wait()


def test_a_torn_last_event_line_is_skipped(tmp_path):
    (tmp_path / "job.yaml").write_text("name: x\n")
    good = '{"event": "epoch", "process": "worker-0", "epoch": 1, "worker": 0}\n'
    (tmp_path / "events.jsonl").write_bytes(good.encode() + b'7\n{"event": "epoch", "process": "wor\xc3')
    assert read_events(str(tmp_path)) == [{"event": "epoch", "process": "worker-0", "epoch": 1, "worker": 0}]
    assert "  epochs done: worker-0 1" in status_lines(str(tmp_path))
    MetricsWriter(str(tmp_path), 1)  # what --resume starts from


def test_trainer_processes_ignore_a_trainer_folder_where_they_start(tmp_path):
    """PYTHONSAFEPATH (in every recipe process's env): ``-m trainer`` finds mxft's, not the launch folder's."""
    from tests.plan_literals import FACTS, JOB as PLAN_JOB, inventory
    from launcher.plan import make_plan
    from tests.helpers import REPO
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("raise SystemExit('the launch folder shadows mxft')\n")
    plan = make_plan(parse_job(PLAN_JOB, "/jobs/small.yaml", environ={}), [HostSpec("localhost")], FACTS,
                     inventory=inventory())
    env = {**os.environ, **plan.processes[0].env_dict, "PYTHONPATH": REPO}  # the scheduler's, with this checkout
    found = subprocess.run([sys.executable, "-m", "trainer.config"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 0 and found.stderr == "", found.stderr
    shadowed = subprocess.run([sys.executable, "-m", "trainer.config"], cwd=tmp_path, capture_output=True, text=True,
                              env={**env, "PYTHONSAFEPATH": ""}, timeout=60)
    assert "the launch folder shadows mxft" in shadowed.stderr  # what the variable prevents
