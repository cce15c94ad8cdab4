"""Rewrite one named section of BENCHMARKS.md, leaving the others as they are."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")
HEADER = ("# Benchmarks\n\nWritten by `make bench` (`python -m bench`: staging, launch overhead and the three-host "
          "section, about 10 minutes here); `python -m bench all` adds the accuracy and dataset-preparation "
          "comparisons; the GPU section comes from `bench/gpu.sh` on a GPU machine. Each section is rewritten by "
          "its own script in `bench/` and says its date, machine and git revision. Every goal is stated where "
          "it is measured.\n")


def demo_assets_dir() -> str:
    """The demo's checkpoint and .rec files in the cache (``MXFT_CACHE``), built first if missing."""
    folder = os.path.join(os.environ.get("MXFT_CACHE") or os.path.expanduser("~/.cache/mxft"), "digits")
    subprocess.run([sys.executable, "-m", "launcher.data.demo_assets", folder], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))
    return folder


def provenance() -> str:
    """Date, machine and git revision, for the line under each table."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "unknown"
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()} with "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, git {rev}")


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """'median (min-max)' of repeated measurements."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = open(BENCHMARKS, encoding="utf-8").read() if os.path.exists(BENCHMARKS) else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(BENCHMARKS, "w", encoding="utf-8") as handle:
        handle.write(text)


def events_in(paths: list[str]) -> list[dict]:
    """The ``@mxft`` events in process output files (a hand launch's logs)."""
    from trainer import events
    found = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            found += [e for e in map(events.parse, handle) if e is not None]
    return found
