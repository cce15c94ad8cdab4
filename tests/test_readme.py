"""Every shell command the README shows (its ``sh`` and ``bash`` blocks, and each ``mxft-launch``/``mxft-prepare``
in its text), checked (issue 28): mxft's own commands against the parsers the programs use, make targets against
the Makefile, pip's extras and pins against pyproject.toml, benchmark names against ``bench``'s list, files named
against the checkout. A command no rule here knows fails the test: a new kind of command needs a rule."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import tomllib

import pytest

from tests.helpers import REPO

README = os.path.join(REPO, "README.md")
FOREIGN = {("python", "~/mxnet/tools/launch.py"), ("tensorboard", "--logdir")}  # other projects' commands, shown
PLACEHOLDER = re.compile(r"\[[^\]]*\]")  # "[JOB]", "[--older-than DAYS]": a synopsis's optional parts


class _Parsed(BaseException):
    """Raised right after a program's parser took its arguments: nothing runs."""


def shell_lines(text: str) -> list[str]:
    """The lines of the README's sh and bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def commands(line: str) -> list[list[str]]:
    """The commands of one line: comments dropped, ``&&`` split, ``exec`` and ``NAME=value`` prefixes off."""
    words = shlex.split(line, comments=True)
    found, current = [], []
    for word in words + ["&&"]:
        if word != "&&":
            current.append(word)
            continue
        while current and (current[0] == "exec" or re.fullmatch(r"[A-Z_]+=\S*", current[0])):
            current = current[1:]
        if current:
            found.append(current)
        current = []
    return found


def inline_commands(text: str) -> list[list[str]]:
    """mxft's commands written in the README's text, `like this`, optional parts left out."""
    spans = re.findall(r"`((?:mxft-launch|mxft-prepare) [^`]*)`", text)
    found = [shlex.split(PLACEHOLDER.sub("", span)) for span in spans if "..." not in span]
    return [argv for argv in found if len(argv) > 2 or argv[1] == "runs"]  # "`mxft-launch clean`" names a command


def readme_commands() -> list[list[str]]:
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    return [argv for line in shell_lines(text) for argv in commands(line)] + inline_commands(text)


def parse_only(main, argv: list[str]) -> str | None:
    """None if ``main(argv)`` got past its parser; else what it said (argparse's error, or its exit code)."""
    real = argparse.ArgumentParser.parse_args

    def parsed(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        argparse.ArgumentParser.parse_args = parsed
        try:
            code = main(argv)
        except _Parsed:
            return None
        except SystemExit as exit_:
            code = exit_.code
        finally:
            argparse.ArgumentParser.parse_args = real
    return None if code == 0 else f"exit {code}: {err.getvalue().strip()}"


def _makefile_targets() -> set[str]:
    with open(os.path.join(REPO, "Makefile"), encoding="utf-8") as handle:
        return set(re.findall(r"^([\w-]+):", handle.read(), flags=re.M))


def _pip_is_known(argv: list[str]) -> str | None:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    pinned = {re.split(r"[<>=!~ ]", d)[0]: d for d in project["dependencies"]}
    for word in argv[2:]:
        extras = re.fullmatch(r"\.(?:\[([\w,]+)\])?", word)
        if word.startswith("-"):
            continue
        if extras:
            unknown = set((extras.group(1) or "").split(",")) - set(project["optional-dependencies"]) - {""}
            if unknown:
                return f"no extra {sorted(unknown)} in pyproject.toml"
            continue
        name = re.split(r"[<>=!~ ]", word)[0]
        base = "mxnet" if name.startswith("mxnet-cu") else name
        if base not in pinned:
            return f"{name} is not one of mxft's dependencies"
        if base in ("mxnet", "numpy") and word.replace(name, base) != pinned[base].replace(" ", ""):
            return f"{word} is not pyproject.toml's {pinned[base]}"
    return None


def check(argv: list[str]) -> str | None:
    """Why the README's command ``argv`` would not work, or None."""
    from bench.__main__ import BENCHES
    from launcher import cli, prepare_cli
    head = argv[0]
    if head == "mxft-launch":
        return parse_only(cli.main, argv[1:])
    if head == "mxft-prepare":
        return parse_only(prepare_cli.main, argv[1:])
    if head == "make":
        missing = set(argv[1:]) - _makefile_targets()
        return f"no make target {sorted(missing)}" if missing else None
    if head == "pip" and argv[1:2] == ["install"]:
        return _pip_is_known(argv)
    if argv[:3] == ["python", "-m", "bench"]:
        return None if set(argv[3:]) <= set(BENCHES) else f"no benchmark {argv[3:]}"
    if head == "bash":
        return None if os.path.isfile(os.path.join(REPO, argv[1])) else f"no file {argv[1]}"
    if tuple(argv[:2]) in FOREIGN:
        return None
    return "a command this test has no rule for"


def test_the_readme_shows_commands_and_this_test_reads_them():
    found = readme_commands()
    heads = {argv[0] for argv in found}
    assert {"make", "mxft-launch", "mxft-prepare", "pip"} <= heads, heads
    assert ["make", "demo"] in found and ["make", "test"] in found
    with open(README, encoding="utf-8") as handle:
        first_screen = "".join(handle.readlines()[:45])
    assert "make demo" in first_screen and "make test" in first_screen and "Status" in first_screen


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv)[:80])
def test_each_command_of_the_readme_works_as_written(argv, monkeypatch):
    monkeypatch.chdir(REPO)
    assert check(argv) is None, (" ".join(argv), check(argv))


@pytest.mark.parametrize("argv, why", [
    (["mxft-launch", "--hosts", "hosts.txt", "jobs/demo.yaml", "--dry-rn"], "exit 2"),
    (["mxft-launch", "status"], "exit 2"),
    (["mxft-prepare", "folder"], "exit 2"),
    (["make", "tests"], "no make target"),
    (["pip", "install", "-e", ".[gpu]"], "no extra"),
    (["pip", "install", "mxnet-cu112==1.9.0"], "is not pyproject.toml's"),
    (["python", "-m", "bench", "relays"], "no benchmark"),
    (["rm", "-rf", "runs"], "no rule"),
])
def test_a_command_that_would_not_work_is_caught(argv, why, monkeypatch):
    monkeypatch.chdir(REPO)
    assert why in (check(argv) or ""), check(argv)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_of_the_readme_and_docs_reaches_a_file_and_heading_that_exist():
    pages = ["README.md"] + [os.path.join("docs", name) for name in os.listdir(os.path.join(REPO, "docs"))
                             if name.endswith(".md")]
    checked = 0
    for page in pages:
        with open(os.path.join(REPO, page), encoding="utf-8") as handle:
            text = handle.read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith("http"):
                continue
            path, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path else \
                os.path.join(REPO, page)
            assert os.path.exists(file), (page, target)
            if anchor:
                with open(file, encoding="utf-8") as handle:
                    headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", handle.read(), flags=re.M)}
                assert anchor in headings, (page, target, sorted(headings))
            checked += 1
    assert checked >= 10, checked


def test_the_job_files_the_readme_shows_are_jobs_mxft_reads():
    from launcher.spec.jobspec import parse_job
    with open(README, encoding="utf-8") as handle:
        blocks = [b for b in re.findall(r"```yaml\n(.*?)```", handle.read(), flags=re.S)
                  if b.startswith(("name:", "command:"))]
    assert len(blocks) == 2, blocks  # the fine-tuning job with its keys, and a command job
    kinds = {type(parse_job(block, "README.md")).__name__ for block in blocks}
    assert kinds == {"JobSpec", "CommandSpec"}
