"""``python -m bench [NAME ...]``: run the named benchmarks (default: all)."""
from __future__ import annotations

import sys

from bench import demo_vs_scratch, launch_overhead, prepare_vs_im2rec, staging

BENCHES = {"demo_vs_scratch": demo_vs_scratch.main, "prepare_vs_im2rec": prepare_vs_im2rec.main,
           "staging": staging.main, "launch_overhead": launch_overhead.main}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        BENCHES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
