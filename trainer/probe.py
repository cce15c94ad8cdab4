"""Can this process reach the ps-lite scheduler? Said early, since ps-lite never says.

Started by ``trainer.__main__`` for servers and workers before mxnet is imported (which
takes seconds), it runs beside ps-lite's start-up.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

from trainer import events


def probe_scheduler(*, retry_s: float = 1.0, report_after_s: float = 3.0) -> None:
    """Keep trying to open a TCP connection to the scheduler until one succeeds.

    ps-lite itself retries silently forever. Once connecting has failed for
    ``report_after_s``, this emits ``scheduler_unreachable`` with the error (again when
    the error changes), and ``scheduler_reachable`` if a later try succeeds (a scheduler
    that was merely slow to start), so the launcher's start-up deadline can name the
    processes that really are cut off, and say why.
    """
    address = (os.environ.get("DMLC_PS_ROOT_URI", ""), int(os.environ.get("DMLC_PS_ROOT_PORT", "0")))
    started, reported = time.time(), None
    while True:
        try:
            with socket.create_connection(address, timeout=retry_s):
                if reported is not None:
                    events.emit("scheduler_reachable", address=f"{address[0]}:{address[1]}")
                return
        except OSError as err:
            error = str(err) or type(err).__name__
            if time.time() - started >= report_after_s and error != reported:
                print(f"mxft: cannot connect to the ps-lite scheduler at {address[0]}:{address[1]}: {error}",
                      file=sys.stderr, flush=True)
                events.emit("scheduler_unreachable", address=f"{address[0]}:{address[1]}", error=error)
                reported = error
        time.sleep(retry_s)


def start() -> None:
    threading.Thread(target=probe_scheduler, name="probe scheduler", daemon=True).start()
