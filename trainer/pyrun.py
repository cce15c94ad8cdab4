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
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit:
        raise  # the program's own exit, with its own code
    except BaseException:  # noqa: BLE001 - any: the traceback is the report, the exit code the launcher's signal
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
