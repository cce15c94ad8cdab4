"""The table ``mxft-launch check`` prints: the preflight alone, a row of what every host has.

    mxft-launch check --hosts hosts.txt [JOB]

Each host is probed in parallel exactly as a launch would (SSH with strict host keys,
the Python of the hosts file, mxnet and its features, GPUs with their model and compute
capability, free space in the work folder, clock). With a job, the last column says whether
the host can take its part of that job; without one, whether it could run mxft at all.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from launcher.run.gpu_check import gpu_summary
from launcher.run.preflight import HostReport, Requirements, problems

COLUMNS = ("host", "ssh", "host key", "python", "mxnet", "ps-lite", "cuda", "gpus", "cpus", "free GB", "clock skew s",
           "verdict")
SKEW_WARN_S = 5.0  # beyond this, log times across hosts no longer line up (and Kerberos/NFS may fail)


@dataclasses.dataclass(frozen=True)
class HostRow:
    """One host's line of the table, and whether that host can take its part."""

    cells: tuple[str, ...]
    fit: bool


def host_row(report: HostReport, need: Requirements) -> HostRow:
    info = report.info
    yes_no = lambda key: ("yes" if info[key] else "no") if key in info else "-"  # noqa: E731
    problem = problems(report, need)
    skew = report.clock_skew_s
    verdict = "ok" if problem is None else problem[0]
    if problem is None and skew is not None and abs(skew) > SKEW_WARN_S:
        verdict = f"ok (clock {skew:+.1f} s off: run NTP)"
    return HostRow((report.label, "ok" if report.reachable else "unreachable", report.host_key,
                    info.get("python", "-"), info.get("mxnet", "missing" if "mxnet_error" in info else "-"),
                    yes_no("dist_kvstore"), yes_no("cuda"), gpu_summary(info), str(info.get("cpus", "-")),
                    f"{info['free_bytes'] / 1e9:.1f}" if "free_bytes" in info else "-",
                    f"{skew:+.2f}" if skew is not None else "-", verdict), problem is None)


def table(rows: Sequence[HostRow]) -> list[str]:
    cells = [COLUMNS, *(r.cells for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(c, widths)).rstrip() for c in cells]
