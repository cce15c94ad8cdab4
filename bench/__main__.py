"""``python -m bench [NAME ...]``: run the named benchmarks and rewrite their BENCHMARKS.md sections.

Without names it runs the infrastructure set (staging, launch_overhead, multihost:
issue 6's items 1-6, about 15 minutes here); ``all`` adds the accuracy (demo vs scratch,
demo over seeds) and dataset preparation comparisons. The GPU check is separate: bench/gpu/README.md.
"""
from __future__ import annotations

import json
import sys
import time

from bench import (compression, control_plane, data_plane, data_scaling, demo_seeds, demo_vs_scratch, end_to_end,
                   evaluation, launch_overhead, lr_scaling, multihost, network, prepare_vs_im2rec, relay, sbcast,
                   staging, startup, trainer_step)

BENCHES = {"demo_vs_scratch": demo_vs_scratch.main, "demo_seeds": demo_seeds.main,
           "prepare_vs_im2rec": prepare_vs_im2rec.main, "lr_scaling": lr_scaling.main, "evaluation": evaluation.main,
           "network": network.main, "compression": compression.main,
           "startup": startup.main, "end_to_end": end_to_end.main, "trainer_step": trainer_step.main,
           "staging": staging.main, "launch_overhead": launch_overhead.main, "multihost": multihost.main,
           "data_plane": data_plane.main, "shared_data": data_plane.shared_main, "control_plane": control_plane.main,
           "relay": relay.main, "data_scaling": data_scaling.main,
           "sbcast": sbcast.main}
DEFAULT = ("staging", "launch_overhead", "multihost")


def gpu_report(argv: list[str]) -> int:
    """``python -m bench gpu_report [GPU.json]``: the GPU section from a run's result (none: 'not run yet')."""
    from bench import gpu
    from bench.report import write_section
    report = None
    if argv:
        with open(argv[0], encoding="utf-8") as handle:
            report = json.load(handle)
    write_section("gpu", gpu.section(report))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["gpu_report"]:
        return gpu_report(argv[1:])
    names = list(BENCHES) if argv == ["all"] else argv or list(DEFAULT)
    unknown = [name for name in names if name not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        started = time.monotonic()
        BENCHES[name]()
        print(f"[bench] {name}: {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
