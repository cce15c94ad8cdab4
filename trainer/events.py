"""Structured progress lines from a worker to the launcher.

A worker prints ``@mxft {"event": ..., ...}`` lines on stdout among its ordinary log
lines; the launcher reads them from the stream it already has (no extra port or
file), records them in the run directory and keeps them off the console.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

PREFIX = "@mxft "


def emit(event: str, **fields: Any) -> None:
    """Print one event line (with the wall-clock time), flushed at once so the launcher sees it live."""
    sys.stdout.write(PREFIX + json.dumps({"event": event, "time": round(time.time(), 3), **fields},
                                         sort_keys=True) + "\n")
    sys.stdout.flush()


def parse(line: str) -> dict[str, Any] | None:
    """The event in ``line``, or None for an ordinary log line (or a garbled event)."""
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
