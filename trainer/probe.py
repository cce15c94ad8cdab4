"""Can this process reach the ps-lite scheduler? Said early, since ps-lite never says.

Started by ``trainer.__main__`` for servers and workers before mxnet is imported (which
takes seconds), it runs beside ps-lite's start-up.
"""
from __future__ import annotations

import os
import socket
import threading
import time

from trainer import events


def probe_scheduler(*, retry_s: float = 1.0, report_after_s: float = 3.0, wait_note_after_s: float = 30.0) -> None:
    """Keep trying to open a TCP connection to the scheduler until one succeeds.

    ps-lite itself retries silently forever, and a scheduler that takes seconds to
    import mxnet on a loaded machine is normal, so nothing is printed. Once connecting
    has failed for ``report_after_s``, this emits ``scheduler_unreachable`` with the error
    and how long it has waited (again when the error changes, and once more after
    ``wait_note_after_s``, when the launcher says that this process is still waiting), and
    ``scheduler_reachable`` if a later try succeeds. The launcher's start-up deadline names
    the processes that really are cut off, and why.
    """
    address = (os.environ.get("DMLC_PS_ROOT_URI", ""), int(os.environ.get("DMLC_PS_ROOT_PORT", "0")))
    where = f"{address[0]}:{address[1]}"
    started, reported, noted = time.time(), None, False
    while True:
        try:
            with socket.create_connection(address, timeout=retry_s):
                if reported is not None:
                    events.emit("scheduler_reachable", address=where, waited_s=round(time.time() - started, 1))
                return
        except OSError as err:
            error, waited = str(err) or type(err).__name__, time.time() - started
            note = waited >= wait_note_after_s and not noted
            if waited >= report_after_s and (error != reported or note):
                events.emit("scheduler_unreachable", address=where, error=error, waited_s=round(waited, 1))
                reported, noted = error, noted or note
        time.sleep(retry_s)


def start() -> None:
    threading.Thread(target=probe_scheduler, name="probe scheduler", daemon=True).start()
