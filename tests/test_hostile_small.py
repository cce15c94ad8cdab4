"""The small holes a broken or hostile host, file or process could use (issue 24, Low): each is closed, and each
has its test here.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import psutil
import pytest

from cluster.errors import InputError
from cluster.failure import FailureKind
from cluster.local import LocalTransport
from launcher import cli
from launcher.data import paramsfile, recfile
from launcher.report.console import Console
from launcher.run.reach import _first_line
from tests.helpers import altered_worker_copy, demo_job, run_launch, write_job


def test_a_params_file_listing_half_a_million_arrays_is_refused_before_it_is_walked():
    header = struct.pack("<QQQ", paramsfile.LIST_MAGIC, 0, 500_000) + b"\0" * (500_000 * 12 + 8)
    refused = paramsfile.parse_layout(header)
    assert isinstance(refused, paramsfile.BadParams)
    assert refused.reason == "the header lists 500000 arrays; mxft takes at most 65536 (byte 16)"


def test_a_rec_that_starts_in_the_middle_of_a_record_is_refused_by_name(tmp_path):
    for cflag in (2, 3):
        rec = tmp_path / f"cut{cflag}.rec"
        rec.write_bytes(struct.pack("<II", recfile.MAGIC, (cflag << 29) | 4) + b"abcd")
        with pytest.raises(InputError, match=r"the record at byte 0 continues a record that never began"):
            recfile.scan_records(str(rec))


def test_an_index_line_without_end_is_refused_naming_its_line(tmp_path):
    rec = tmp_path / "a.rec"
    rec.write_bytes(struct.pack("<II", recfile.MAGIC, 4) + b"abcd")
    (tmp_path / "a.idx").write_text("0\t0\n" + "1" * 10_000_000)
    with pytest.raises(InputError, match=r"a\.idx:2: a line of more than 256 characters"):
        recfile.read_index(str(rec))


def test_a_symbol_file_nested_without_end_is_bad_input_not_a_traceback(tmp_path, demo_assets):
    assets = tmp_path / "assets"
    shutil.copytree(demo_assets, assets, ignore=shutil.ignore_patterns(".lock"))
    (assets / "pretrained-digits0to4-symbol.json").write_text("[" * 100_000 + "]" * 100_000)
    job = write_job(tmp_path / "job.yaml", demo_job(str(assets)))
    done = run_launch([job, "--run-root", str(tmp_path / "runs")], cwd=str(tmp_path), timeout_s=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "is not an MXNet symbol file" in done.stderr and not (tmp_path / "runs").exists()


def test_a_process_reaped_before_stop_is_not_signalled(monkeypatch):
    """Its pid (and group id) may be another process's by then: no killpg, no kill."""
    process = LocalTransport().start([sys.executable, "-c", "pass"], env={})
    process._popen.wait()  # reaped
    sent = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent.append(("killpg", pid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", pid, sig)))
    process.stop(grace_s=0.1)
    assert sent == []


def test_stop_signals_the_group_while_its_leader_is_unreaped_and_reaps_it_after():
    process = LocalTransport().start([sys.executable, "-c", "import signal, time; "
                                      "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                                      "time.sleep(60)"], env={})
    assert next(iter(process.stdout)) == "up"
    process.stop(grace_s=0.2)  # TERM is ignored: KILL follows, to the group
    assert process._popen.returncode == -signal.SIGKILL
    assert not psutil.pid_exists(process.pid)  # reaped, not left a zombie


def test_the_remote_wrapper_reaps_its_command_only_after_signalling_its_group():
    from trainer.remote import Group
    group = Group([sys.executable, "-c", "import sys; sys.exit(3)"])
    group.exited(block=True)
    assert psutil.Process(group.popen.pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped
    group.stop()  # the group's id is still the zombie's: no stranger can hold it
    assert group.reap() == 3


def test_control_characters_from_a_host_reach_the_terminal_as_text():
    out = io.StringIO()
    Console(out, interactive=False)("[worker 0] \x1b]0;owned\x07\x1b[2J done")
    assert out.getvalue() == "[worker 0] \\x1b]0;owned\\x07\\x1b[2J done\n"


@pytest.mark.timeout(120)
def test_a_failure_tail_with_escape_sequences_is_printed_as_text(tmp_path):
    program = tmp_path / "bad.py"
    program.write_text("import sys\nprint('\\x1b]0;owned\\x07\\x1b[2J', flush=True)\nsys.exit(3)\n")
    done = run_launch(["command", "-n", "1", "-s", "1", "--run-root", str(tmp_path / "runs"), "--",
                       sys.executable, str(program)], cwd=str(tmp_path), timeout_s=110)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr and "\x1b" not in done.stdout
    assert "\\x1b]0;owned\\x07\\x1b[2J" in done.stderr, done.stderr


def test_one_epoch_bar_at_a_time_whatever_order_progress_comes_in():
    console = Console(io.StringIO(), interactive=True)
    console.start_training(0, 40, 10)
    for epoch in (0, 7, 3, 39, 12):
        console.batch(epoch, 1)
        assert list(console._bars) == [f"epoch {epoch + 1}/40"]
    console.close()
    assert not console._bars


@pytest.mark.timeout(60)
def test_the_reach_listeners_first_line_is_read_to_a_cap_not_to_a_deadline():
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdout.write('x' * 10_000_000); "
                             "sys.stdout.flush(); time.sleep(600)"], stdout=subprocess.PIPE)
    try:
        line = _first_line(proc, timeout_s=600)  # without its cap this waits out the deadline (and the test's)
    finally:
        proc.kill()
        proc.wait()
    assert line == "x" * 4096


def test_every_command_runs_with_the_private_umask(monkeypatch):
    seen = []

    def clean_probe(argv):
        umask = os.umask(0)
        os.umask(umask)
        seen.append(umask)
        return 0

    monkeypatch.setitem(cli.TOOLS, "clean", clean_probe)
    monkeypatch.setitem(cli.TOOLS, "check", clean_probe)
    assert cli.main(["clean"]) == 0 and cli.main(["check"]) == 0
    assert seen == [0o077, 0o077]


def test_a_run_root_or_cache_others_can_write_to_is_refused_before_anything(tmp_path, demo_assets):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets))
    for args, named in ((["--run-root", str(shared / "runs")], "--run-root"),
                        (["--run-root", str(tmp_path / "runs"), "--cache-dir", str(shared)], "--cache-dir")):
        done = run_launch([job, "--dry-run", *args], cwd=str(tmp_path), timeout_s=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith(f"mxft-launch: error: {named} ") and "writable by others (mode 0777)" in \
            done.stderr, done.stderr
    assert os.listdir(shared) == [] and not (tmp_path / "runs").exists()


MALFORMED = '''

# --- added by tests/test_hostile_small.py: malformed events, and a result.json without its image count ---
_honest_write_result = _write_result


def _malformed(cfg):
    events.emit("epoch", index=cfg.index)
    events.emit("first_batch", time="x", epoch=0)


def _write_result(cfg, *args, **kwargs):
    _honest_write_result(cfg, *args, **kwargs)
    path = os.path.join(cfg.out_dir, "result.json")
    with open(path, encoding="utf-8") as handle:
        result = json.load(handle)
    del result["val_images"]
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
'''


@pytest.mark.timeout(240)
def test_malformed_events_are_refused_and_a_bad_result_is_a_named_failure_with_its_attempt_recorded(tmp_path,
                                                                                                    demo_assets):
    code = altered_worker_copy(tmp_path, after_joining="    _malformed(cfg)\n", appended=MALFORMED)
    job = write_job(tmp_path / "job.yaml", demo_job(demo_assets, train={"epochs": 1}))
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "launcher.cli", job, "--run-root", str(runs)], cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=str(code)), capture_output=True, text=True, timeout=220)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout[-3000:] + done.stderr
    assert done.stderr.splitlines()[0] == \
        "mxft-launch: job failed: worker 0's result.json is not taken: val_images is missing or not a count"
    assert "[mxft] ignored an event of worker 0 on localhost: it has no epoch" in done.stdout
    assert "[mxft] ignored an event of worker 1 on localhost: time x is not a time" in done.stdout
    (run_dir,) = runs.iterdir()
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert attempts[-1]["outcome"] == "failed" and "val_images" in attempts[-1]["reason"], attempts
    assert attempts[-1]["failure"]["kind"] == "bad result"


class _AnswersWith:
    """A host's command runner that answers every command with ``out`` (the seam the probe's parsing sits behind)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def run(self, argv, *, timeout_s):
        return 0, self.out, ""


@pytest.mark.parametrize("out", ['{"python": "3.11.7"}', '{"time": "x"}', '[1, 2]', "[" * 100_000])
def test_a_probe_answer_without_its_time_is_the_hosts_error_not_a_traceback(out):
    from cluster.fanout import HostProblem
    from cluster.hosts import HostSpec
    from launcher.run.preflight import probe_host
    with pytest.raises(HostProblem, match=r"^unexpected preflight output from 'python3' \(") as refused:
        probe_host(_AnswersWith(out), HostSpec("gpu01"), "~/.mxft")
    assert refused.value.kind is FailureKind.HOST_REFUSED


@pytest.mark.parametrize("line, why", [
    ("Traceback (most recent call last):", "its last line is not JSON"),
    ('[1, 2]', "its answer is not a JSON object"),
    ('{"seen": [1, 1], "correct": [1], "correct_k": [1, 1], "loss_sum": 1.0, "top_k": 2}',
     "seen, correct and correct_k are not 2 counts each"),
    ('{"seen": [1, 1], "correct": [2, 0], "correct_k": [1, 1], "loss_sum": 1.0, "top_k": 2}', "more right than seen"),
    ('{"seen": [1, 1], "correct": [1, 0], "correct_k": [1, 1], "loss_sum": -1, "top_k": 2}',
     "loss_sum is not a sum of losses"),
    ('{"seen": [1, 1], "correct": [1, 0], "correct_k": [1, 1], "loss_sum": 1.0, "top_k": 5}', "top_k is not 2"),
], ids=["text", "list", "short", "more-right", "negative-loss", "top-k"])
def test_a_hosts_evaluation_counts_are_taken_only_in_the_shape_trainer_evaluate_writes(line, why):
    """``mxft-launch evaluate --hosts`` adds what each host prints: a claim, checked before it counts."""
    from launcher.run.evaluate_hosts import Evaluation, added, checked_counts, scores
    task = Evaluation("/r/demo", 3, "/d/val.rec", (3, 28, 28), 2, 2)
    assert checked_counts(line, task) == why
    good = checked_counts('{"seen": [3, 1], "correct": [2, 1], "correct_k": [3, 1], "loss_sum": 2.0, "top_k": 2}',
                          task)
    both = scores(added([good, good]))
    assert (both["images"], both["accuracy"], both["top2"], both["loss"]) == (8, 0.75, 1.0, 0.5)
