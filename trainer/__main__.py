"""Entry point of every mxft process: ``python -m trainer [--config WORKER.json]``.

The role comes from ``DMLC_ROLE`` as ps-lite defines it. A scheduler or server only
serves: importing mxnet with that role runs ps-lite's server loop until the workers
finish, then exits. A worker trains as its config says.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback


def main(argv: list[str] | None = None) -> int:
    role = os.environ.get("DMLC_ROLE", "")
    if role in ("server", "worker"):
        from trainer import probe
        probe.start()
    if role in ("scheduler", "server"):
        print(f"mxft {role}: serving ps-lite on {os.environ.get('DMLC_NODE_HOST', '?')}", flush=True)
        import mxnet  # noqa: F401  (blocks in the server loop, then calls sys.exit)
        return 0
    parser = argparse.ArgumentParser(prog="python -m trainer")
    parser.add_argument("--config", required=True, help="worker config JSON written by mxft-launch")
    args = parser.parse_args(argv)
    from trainer.config import WorkerConfig
    from trainer.worker import run_worker
    return run_worker(WorkerConfig.load(args.config))


def run_and_end(entry) -> None:
    """Run ``entry`` and end the process with its code; after an uncaught exception, end at once with code 1 once
    the traceback is out. A normal exit would run MXNet's kvstore finalisation, which waits for the other workers,
    who wait for this one: the whole run hung until its progress timeout (30 minutes by default)."""
    try:
        code = entry()
    except Exception:  # noqa: BLE001 - any: the traceback is the report, the exit code the launcher's signal
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.exit(code)


if __name__ == "__main__":
    run_and_end(main)
