"""What a person sees: the quiet console, progress, a calm start-up, help texts, `runs`, missing packages."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest
import yaml

from cluster.failure import Failure, FailureKind
from cluster.hosts import HostSpec
from cluster.supervise import Member
from launcher import cli, prepare_cli
from launcher.data import run_index, runstate
from launcher.data.attempt_result import RunResult, Verdict
from launcher.plan import make_plan
from launcher.report.console import Console
from launcher.run.run_events import RunEvents
from launcher.spec.jobspec import parse_job
from launcher.status import run_state, runs_lines
from testing.processes import run_id_from
from tests.helpers import CACHE_DIR, LAUNCH, REPO, run_launch
from tests.plan_literals import FACTS, JOB, inventory
from trainer import events
from trainer.probe import probe_scheduler

ROW = {"epoch": 1, "train_accuracy": 0.5, "train_loss": 1.25, "val_accuracy": 0.75, "images_per_s_total": 99.6}


def test_quiet_console_relays_only_alarms_and_verbose_relays_all():
    out = io.StringIO()
    quiet, loud = Console(out, interactive=False), Console(io.StringIO(), verbose=True, interactive=False)
    for console in (quiet, loud):
        console.relay("worker 0", "[21:02:26] ../src/executor/graph_executor.cc:1991: Subgraph backend MKLDNN is "
                                  "activated.")
        console.relay("worker 0", "epoch 0 batch 2: 85.4 images/s, train accuracy=0.0625")
        console.relay("worker 1", "mxnet.base.MXNetError: [21:02:27] Invalid NDArray file format")
        console("[mxft] said by the launcher")
    assert out.getvalue().splitlines() == ["[worker 1] mxnet.base.MXNetError: [21:02:27] Invalid NDArray file format",
                                           "[mxft] said by the launcher"]
    assert len(loud.stream.getvalue().splitlines()) == 4


def test_plain_progress_is_rate_limited_and_epochs_get_one_line_each():
    out = io.StringIO()
    console = Console(out, interactive=False, plain_every_s=3600)
    console.start_training(0, 2, 50)
    for batch in range(1, 51):
        console.batch(0, batch)  # a non-terminal gets no line per batch
    console.epoch(ROW)
    console.plain_every_s = 0.0
    console.batch(1, 25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("epoch 1/2: train accuracy 0.5000, loss 1.2500 (worker 0); val accuracy 0.7500; "
                               "100 images/s; 0:0"), lines[0]
    assert lines[0].endswith(" left")  # an estimate once an epoch is done
    assert lines[1].startswith("[mxft] epoch 2/2: 25/50 batch (50%)"), lines[1]


def test_the_epoch_clock_starts_with_the_run_not_with_building_the_demos_files():
    """Issue 28: the first epoch's time once included building the demo's assets (before the run started)."""
    out = io.StringIO()
    console = Console(out, interactive=False)
    console.started -= 95.0  # what building the demo's files took, before the run
    console.run_started()
    console.start_training(0, 2, 50)
    console.epoch(ROW)
    assert out.getvalue().rstrip().endswith("100 images/s; 0:00"), out.getvalue()  # 1:35 before


def test_terminal_gets_a_bar_and_lines_above_it():
    out = io.StringIO()
    console = Console(out, interactive=True)
    console.start_training(0, 1, 4)
    console.batch(0, 1)
    console("[mxft] a line while the bar is up")
    console.batch(0, 4)
    console.epoch(dict(ROW, epoch=1))
    console.close()
    text = out.getvalue()
    assert "epoch 1/1:  25%|" in text and "1/4" in text  # tqdm's bar, in batches
    assert "[mxft] a line while the bar is up\n" in text
    assert text.rstrip().endswith("100 images/s; 0:00")  # the last epoch: no time left to estimate


def test_scheduler_probe_waits_quietly_and_reports_as_events(capsys, monkeypatch):
    """A scheduler slow to start is normal: nothing on stderr, events for the launcher (which words it as a wait)."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
    monkeypatch.setenv("DMLC_PS_ROOT_URI", "127.0.0.1")
    monkeypatch.setenv("DMLC_PS_ROOT_PORT", str(port))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    waited_twice = threading.Event()  # the scheduler comes up once the probe has said both of its waits
    unreachable: list[str] = []
    emit = events.emit

    def emit_and_count(kind: str, **fields) -> None:
        emit(kind, **fields)
        if kind == "scheduler_unreachable":
            unreachable.append(kind)
            if len(unreachable) == 2:
                waited_twice.set()

    def listen_once_waited_twice():
        if waited_twice.wait(timeout=60):
            listener.bind(("127.0.0.1", port))
            listener.listen()

    monkeypatch.setattr(events, "emit", emit_and_count)
    threading.Thread(target=listen_once_waited_twice, daemon=True).start()
    try:
        probe_scheduler(retry_s=0.05, report_after_s=0.1, wait_note_after_s=0.3)
    finally:
        listener.close()
    captured = capsys.readouterr()
    assert captured.err == ""
    said = [events.parse(line) for line in captured.out.splitlines()]
    kinds = [event["event"] for event in said]
    assert kinds == ["scheduler_unreachable", "scheduler_unreachable", "scheduler_reachable"], said
    assert said[0]["waited_s"] < said[1]["waited_s"] and said[1]["waited_s"] >= 0.3
    assert "refused" in said[0]["error"]


@pytest.mark.parametrize("argv", [["--help"], ["launch", "--help"], ["command", "--help"], ["check", "--help"],
                                  ["status", "--help"], ["stop", "--help"], ["runs", "--help"], ["clean", "--help"]])
def test_every_command_has_help_for_users(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    text = capsys.readouterr().out
    assert code == 0
    assert "exit codes:" in text and "usage: mxft-launch" in text
    assert "``" not in text and ":func:" not in text and "the only module" not in text
    if argv == ["--help"]:
        for name in ("launch", "command", "check", "status", "stop", "runs", "clean"):
            assert f"\n  {name} " in text, name
        assert "130" in text and "bad input" in text


def test_help_as_a_word_and_the_exit_codes_it_lists(capsys):
    assert cli.main(["help"]) == 0
    overview = capsys.readouterr().out
    assert overview.startswith("usage: mxft-launch") and "138  stopped by SIGUSR1" in overview
    with pytest.raises(SystemExit) as exit_:
        cli.main(["help", "check"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: mxft-launch check")
    with pytest.raises(SystemExit):
        cli.main(["command", "--help"])
    command_help = capsys.readouterr().out
    assert "138  stopped by SIGUSR1" in command_help and "min_accuracy" not in command_help


def test_a_mistyped_command_is_named_with_the_one_it_resembles(tmp_path):
    done = run_launch(["lanch", "jobs/demo.yaml"], cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "mxft-launch: error: mxft-launch lanch: is neither a command nor a job file (did you " \
                          "mean 'mxft-launch launch'? (mxft-launch --help lists them))\n"


def test_prepare_help_has_no_markup(capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_cli.main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "``" not in text and "exit codes:" in text


def test_no_arguments_shows_the_overview_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().err


def _run_folder(root, name: str, attempts: list[str], result: dict | None = None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "job.yaml").write_text("name: x\n")
    (folder / "attempts.jsonl").write_text("".join(line + "\n" for line in attempts))
    if result is not None:
        (folder / "result.json").write_text(json.dumps(result))


def test_runs_lists_state_accuracy_and_duration(tmp_path, capsys):
    _run_folder(tmp_path, "a", ['{"time": "2026-11-28T10:00:00", "attempt": 1, "outcome": "started"}',
                                '{"time": "2026-11-28T10:01:15", "attempt": 1, "outcome": "succeeded"}'],
                {"val_accuracy": 0.8310})
    _run_folder(tmp_path, "b", ['{"time": "2026-11-28T11:00:00", "attempt": 1, "outcome": "started"}',
                                '{"time": "2026-11-28T12:02:05", "attempt": 1, "outcome": "failed", '
                                '"reason": "worker 1 on h2 exited 1"}',
                                '{"time": "2026-11-28T12:0'])  # torn by a crash mid-write: skipped
    _run_folder(tmp_path, "c", ['{"time": "2026-11-28T09:00:00", "attempt": 1, "outcome": "started"}',
                                '{"time": "2026-11-28T09:00:30", "attempt": 1, "outcome": "failed", '
                                '"reason": "worker 0 on h3 exited with code 255", '
                                '"failure": {"kind": "exited", "host": "h3", "exit_code": 255}}'])
    os.utime(tmp_path / "a" / "job.yaml", (2, 2))  # older
    os.utime(tmp_path / "c" / "job.yaml", (1, 1))  # oldest
    (tmp_path / "not-a-run").mkdir()
    lines = runs_lines(str(tmp_path))
    assert lines[0].split() == ["started", "state", "accuracy", "duration", "cause", "folder", "reason"]
    assert lines[1].split()[:7] == ["2026-11-28", "11:00:00", "failed", "-", "1:02:05", "-", str(tmp_path / "b")]
    assert lines[1].endswith(f"{tmp_path / 'b'}  worker 1 on h2 exited 1")
    assert lines[2].split() == ["2026-11-28", "10:00:00", "succeeded", "0.8310", "1:15", "-", str(tmp_path / "a"),
                                "-"]
    assert lines[3].split()[:7] == ["2026-11-28", "09:00:00", "failed", "-", "0:30", "exited", str(tmp_path / "c")]
    assert lines[3].endswith("  worker 0 on h3 exited with code 255") and len(lines) == 4
    assert cli.main(["runs", "--run-root", str(tmp_path), "--json", "--limit", "2"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == {"older": 1, "runs": [
        {"started": "2026-11-28 11:00:00", "state": "failed", "accuracy": None, "duration": "1:02:05", "cause": None,
         "reason": "worker 1 on h2 exited 1", "folder": str(tmp_path / "b")},
        {"started": "2026-11-28 10:00:00", "state": "succeeded", "accuracy": "0.8310", "duration": "1:15",
         "cause": None, "reason": None, "folder": str(tmp_path / "a")}]}


def test_runs_lists_every_recorded_run_from_any_folder_and_forgets_removed_ones(tmp_path, monkeypatch, capsys):
    """Issue 28: ``mxft-launch runs`` without --run-root lists the runs a launch recorded (run_index), wherever they
    were started; a folder since removed is left out, and a run recorded twice is listed once."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert runs_lines(None) == [f"no runs recorded in {tmp_path / 'data' / 'mxft' / 'runs.list'}"]
    for root, name in (("here", "a"), ("there", "b"), ("gone", "c")):
        _run_folder(tmp_path / root, name, ['{"time": "2026-11-28T10:00:00", "attempt": 1, "outcome": "started"}'])
        run_index.record_run(str(tmp_path / root / name))
    run_index.record_run(str(tmp_path / "here" / "a"))
    shutil.rmtree(tmp_path / "gone")
    os.utime(tmp_path / "here" / "a" / "job.yaml", (2, 2))  # the older
    assert cli.main(["runs", "--json"]) == 0
    assert [row["folder"] for row in json.loads(capsys.readouterr().out)["runs"]] == [
        str(tmp_path / "there" / "b"), str(tmp_path / "here" / "a")]


def test_status_json_of_a_failed_run_has_its_cause_the_log_tail_and_the_resume_command(tmp_path, capsys):
    log = tmp_path / "logs" / "worker-1.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(20)))
    failure = Failure(FailureKind.EXITED, "h2", "worker 1", 3, log_path=str(log), time=1.0)
    _run_folder(tmp_path, "r", [json.dumps({"attempt": 1, "outcome": "started"}),
                                json.dumps(RunResult(1, Verdict.FAILED, "worker 1 on h2 exited 3", failure,
                                                     epochs_done=0).record())])
    assert cli.main(["status", str(tmp_path / "r"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["reason"], shown["cause"], shown["log"]) == (
        "failed", "worker 1 on h2 exited 3", "exited", str(log))
    assert shown["log_tail"] == [f"line {i}" for i in range(12, 20)] and shown["resume"] is None  # no checkpoint
    assert cli.main(["status", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "run r: failed: worker 1 on h2 exited 3"


def test_status_reads_each_verdict_an_attempt_records_and_the_failures_kind(tmp_path):
    """What the restart loop records (``RunResult.record``) is what status and runs read back, by verdict and kind."""
    lost = Failure(FailureKind.HOST_SILENT, host="h2", time=1.0)
    ends = [RunResult(1, Verdict.SUCCEEDED), RunResult(1, Verdict.MISSED, "validation accuracy 0.6 is below 0.7"),
            RunResult(2, Verdict.FAILED, "host h2 stopped answering", lost, epochs_done=3),
            RunResult(1, Verdict.INTERRUPTED, epochs_done=1)]
    states = []
    for ended in ends:
        (tmp_path / "attempts.jsonl").write_text(json.dumps({"attempt": ended.attempt, "outcome": "started"}) + "\n"
                                                 + json.dumps(ended.record()) + "\n")
        assert RunResult.from_record(runstate.read_attempts(str(tmp_path))[-1]) == ended
        state = run_state(str(tmp_path), runstate.read_attempts(str(tmp_path)))
        states.append((state.kind, state.text, state.failure))
    assert states == [("succeeded", "succeeded", None),
                      ("missed", "missed: validation accuracy 0.6 is below 0.7", None),
                      ("failed", "failed: host h2 stopped answering", lost),
                      ("stopped", "stopped (interrupted)", None)]


def test_missing_optional_package_is_one_line_and_exit_2(tmp_path):
    """Without scikit-learn the demo's assets cannot be built: one line with the pip command, nothing started."""
    program = ("import sys; sys.modules['sklearn'] = None\n"
               "from launcher.cli import main\n"
               f"sys.exit(main(['{REPO}/jobs/demo.yaml', '--run-root', '{tmp_path}/runs']))")
    env = dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"mxft-launch: error: {REPO}/jobs/demo.yaml: building the digits demo assets needs scikit-learn, which is "
        f"not installed (pip install -e '{REPO}[demo]', or pip install scikit-learn)"], result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "digits").exists()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_demo_console_is_short_and_the_logs_hold_everything(tmp_path, demo_assets):
    """`make demo`'s console on a non-terminal: at most ~20 lines, none of MXNet's; every line in the logs."""
    runs = tmp_path / "runs"
    result = run_launch([os.path.join(REPO, "jobs", "demo.yaml"), "--run-root", str(runs)], cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 20, result.stdout
    with open(os.path.join(REPO, "jobs", "demo.yaml"), encoding="utf-8") as handle:
        epochs = yaml.safe_load(handle)["train"]["epochs"]
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == \
        [f"epoch {e}/{epochs}" for e in range(1, epochs + 1)]
    for internal in ("Subgraph backend", "ImageRecordIOParser2", "src/", "[worker", "[scheduler", "Train-accuracy"):
        assert internal not in result.stdout + result.stderr, internal
    run_id = run_id_from(result.stdout)
    logs = runs / run_id / "logs"
    worker0 = (logs / "worker-0.log").read_text()
    assert "ImageRecordIOParser2" in worker0 and f"epoch {epochs} done" in worker0 and "batch 2:" in worker0
    assert "serving ps-lite" in (logs / "scheduler.log").read_text()
    listed = subprocess.run([sys.executable, "-m", "launcher.cli", "runs", "--run-root", str(runs)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and run_id in listed.stdout.splitlines()[1]
    assert " succeeded " in listed.stdout and result.stdout.splitlines()[-1].split()[2] in listed.stdout


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_verbose_brings_every_process_line_back(tmp_path, demo_assets):
    result = run_launch([os.path.join(REPO, "jobs", "demo.yaml"), "-v", "--set", "train.epochs=1", "--set",
                         "expect.min_accuracy=0", "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "[worker 0] " in result.stdout and "[scheduler] " in result.stdout and "[server 0] " in result.stdout


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_an_accuracy_miss_says_the_accuracy_before_the_failure_and_is_one_verdict(tmp_path, demo_assets):
    done = subprocess.run([*LAUNCH, os.path.join(REPO, "jobs", "demo.yaml"), "--set", "train.epochs=1", "--set",
                           "expect.min_accuracy=1", "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=220,
                          env=dict(os.environ, PYTHONPATH=REPO, MXFT_CACHE=CACHE_DIR))
    assert done.returncode == 1, done.stdout[-3000:]
    last = done.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("validation accuracy: ") and \
        last[1].startswith("mxft-launch: job failed: validation accuracy ") and "expect.min_accuracy 1" in last[1]
    # One verdict: result.json, status and runs say what the exit code says (issue 27).
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    reason = last[1][len("mxft-launch: job failed: "):]
    assert (result["outcome"], result["reason"]) == ("missed", reason)
    status = run_launch(["status", str(run_dir)], cwd=str(tmp_path))
    assert status.stdout.splitlines()[0] == f"run {run_dir.name}: missed: {reason}"
    listed = run_launch(["runs", "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path))
    assert listed.stdout.splitlines()[1].split()[2] == "missed"


def test_launcher_words_a_long_scheduler_wait_once_and_prints_each_epoch_once(tmp_path):
    """RunEvents (the launcher's side of the event lines), fed lines as the log pumps would."""
    facts = dataclasses.replace(FACTS, run_dir=str(tmp_path))
    plan = make_plan(parse_job(JOB, "/jobs/small.yaml", environ={}), [HostSpec("localhost")], facts,
                     inventory=inventory())
    out = io.StringIO()
    console = Console(out, interactive=False)
    console.start_training(0, plan.component.job.train.epochs, plan.component.batches_per_epoch)  # as execute() does
    run_events = RunEvents(plan, {}, console=console)
    server = Member("server 0", "localhost", None, False, "/dev/null", "server", 0)
    workers = [Member(f"worker {i}", "localhost", None, True, "/dev/null", "worker", i) for i in range(2)]
    wait = {"event": "scheduler_unreachable", "address": "127.0.0.1:9000", "error": "[Errno 111] Connection refused"}
    for waited in (3.0, 30.2, 31.0):
        run_events.on_line(server, "@mxft " + json.dumps(dict(wait, waited_s=waited)))
    epoch = {"event": "epoch", "epoch": 1, "epoch_s": 1.0, "images_per_s": 50.0, "train_accuracy": 0.5,
             "train_loss": 1.0}
    run_events.on_line(workers[1], "@mxft " + json.dumps(dict(epoch, index=1, rank=0)))
    run_events.on_line(workers[0], "@mxft " + json.dumps(dict(epoch, index=0, rank=1, val_accuracy=0.7)))
    run_events.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == ("[mxft] server 0 on localhost is still waiting for the ps-lite scheduler at 127.0.0.1:9000 "
                        "after 30 s ([Errno 111] Connection refused); the launch gives up after 300 s "
                        "(cluster.startup_timeout_s)"), lines
    assert len(lines) == 2 and lines[1].startswith("epoch 1/2: train accuracy 0.5000, loss 1.0000 (worker 0); "
                                                  "val accuracy 0.7000; 100 images/s;"), lines
