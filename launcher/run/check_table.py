"""The table ``mxft-launch check`` prints: the preflight alone, a row of what every host has.

    mxft-launch check --hosts hosts.txt [JOB]

Each host is probed in parallel exactly as a launch would (SSH with strict host keys,
the Python of the hosts file, mxnet and its features, GPUs with their model and compute
capability, free space in the work folder, clock). With a job, the last column says whether
the host can take its part of that job; without one, whether it could run mxft at all.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from cluster.failure import FailureKind
from cluster.fanout import HostResults
from launcher.run.gpu_check import gpu_summary
from launcher.run.preflight import HostProbe, Requirements, problems

COLUMNS = ("host", "ssh", "host key", "python", "mxnet", "ps-lite", "cuda", "gpus", "cpus", "free GB", "clock skew s",
           "verdict")
SKEW_WARN_S = 5.0  # beyond this, log times across hosts no longer line up (and Kerberos/NFS may fail)


@dataclasses.dataclass(frozen=True)
class HostRow:
    """One host's line of the table, and whether that host can take its part."""

    cells: tuple[str, ...]
    fit: bool

    def as_json(self) -> dict:
        """The row as ``check --json`` gives it: each column by a name (``host key`` as ``host_key``, ``ps-lite`` as
        ``ps_lite``), and ``fit``."""
        return {**{re.sub("[ -]", "_", column): cell for column, cell in zip(COLUMNS, self.cells)}, "fit": self.fit}


def host_row(label: str, probed: HostResults[HostProbe], need: Requirements) -> HostRow:
    """``label``'s row: what its probe found, or why there was none (``ssh`` unreachable, its ``host key`` refused)."""
    report, failed = probed.ok.get(label), probed.failed.get(label)
    info = report.info if report else {}
    yes_no = lambda key: ("yes" if info[key] else "no") if key in info else "-"  # noqa: E731
    problem = problems(report, need) if report else (failed.reason, failed.hint)
    skew = report.clock_skew_s if report else None
    verdict = "ok" if problem is None else problem[0]
    if problem is None and skew is not None and abs(skew) > SKEW_WARN_S:
        verdict = f"ok (clock {skew:+.1f} s off: run NTP)"
    kind = failed.failure.kind if failed else None
    return HostRow((label, "unreachable" if kind is FailureKind.UNREACHABLE else "ok",
                    {FailureKind.UNREACHABLE: "?", FailureKind.HOST_KEY: "refused"}.get(kind, "ok"),
                    info.get("python", "-"), info.get("mxnet", "missing" if "mxnet_error" in info else "-"),
                    yes_no("dist_kvstore"), yes_no("cuda"), gpu_summary(info), str(info.get("cpus", "-")),
                    f"{info['free_bytes'] / 1e9:.1f}" if "free_bytes" in info else "-",
                    f"{skew:+.2f}" if skew is not None else "-", verdict), problem is None)


def table(rows: Sequence[HostRow]) -> list[str]:
    cells = [COLUMNS, *(r.cells for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(c, widths)).rstrip() for c in cells]
