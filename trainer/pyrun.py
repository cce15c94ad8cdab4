"""Run a Python program as ``python`` would, but end its process at once after an uncaught exception.

    python pyrun.py train.py ARGS...        as: python train.py ARGS...
    python pyrun.py -m package.module ARGS  as: python -m package.module ARGS

Command mode starts ``python ...`` commands through this file (``--plain-python`` turns it off). A
ps-lite program whose main thread raises would otherwise go on into MXNet's kvstore
finalisation, which waits for the other workers, who wait for it: the whole run hangs. Here
the traceback is printed and the process exits with code 1 straight away, so the launch
ends within seconds, naming the process. Runs as a file (not ``-m``): nothing of mxft is
on the program's path, and ``sys.path[0]`` is what ``python`` would make it (the script's
folder, or the working folder for ``-m``).
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback


def main(argv: list[str]) -> None:
    if not argv or (argv[0] == "-m" and len(argv) < 2):
        sys.exit("usage: python pyrun.py SCRIPT [ARGS...] | -m MODULE [ARGS...]")
    first = os.getcwd() if argv[0] == "-m" else os.path.dirname(os.path.abspath(argv[0]))
    if not sys.flags.safe_path:  # -P / PYTHONSAFEPATH: python puts neither there, and neither does this
        sys.path[0] = first      # instead of this file's folder (nothing of mxft is on the program's path)
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as leaving:
        if leaving.code in (None, 0):
            raise  # a clean exit goes the usual way
        _end(1 if not isinstance(leaving.code, int) else leaving.code, None if isinstance(leaving.code, int)
             else str(leaving.code))
    except BaseException:  # noqa: BLE001 - any: the traceback is the report, the exit code the launcher's signal
        _end(1, traceback.format_exc())


def _end(code: int, said: str | None) -> None:
    """Out at once with ``code`` once ``said`` is written: not through MXNet's finalisation, which may wait for the
    other workers (a program that calls sys.exit(2) after a failed check meant to stop, not to hang)."""
    if said:
        sys.stderr.write(said if said.endswith("\n") else said + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
