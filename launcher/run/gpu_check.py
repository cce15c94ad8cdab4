"""Whether a host's GPUs can run its mxnet build: the decision on what ``launcher.remote.gpu_probe`` found there.

The published mxnet-cu* 1.9.1 wheels hold compiled kernels for sm_50, 60, 70, 80 and 86
and no PTX, so a Hopper GPU (H100/H200, compute capability 9.0) or newer imports mxnet,
counts its GPUs and then fails on the first batch. Preflight refuses such a host before
anything is staged, naming the GPU, its compute capability and the build's architectures.
Pure functions on the probe's JSON; nothing here touches a GPU.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU of a host as its probe saw it."""

    index: int                             # as mx.gpu(index) on that host
    name: str                              # "NVIDIA H200"; "?" when neither the driver nor nvidia-smi said
    capability: tuple[int, int] | None     # compute capability, (9, 0); None when unknown
    ran: bool | None = None                # the probe's test operation ran there (None: not tried)
    error: str = ""                        # what mxnet said when it did not


@dataclasses.dataclass(frozen=True)
class BuildArchs:
    """The SM numbers a build's fat binaries carry code for, e.g. elf=(50, 60, 70, 80, 86), ptx=()."""

    elf: tuple[int, ...]   # compiled kernels: run on the same major version, same or higher minor
    ptx: tuple[int, ...]   # PTX: the driver compiles it for that version and every newer one


def gpus_of(info: Mapping) -> tuple[Gpu, ...]:
    """The probe's ``gpu_devices`` as values; () when the probe tried no GPU (CPU builds, CPU hosts)."""
    gpus = []
    for raw in info.get("gpu_devices") or ():
        match = re.fullmatch(r"(\d+)\.(\d+)", str(raw.get("cc") or ""))
        gpus.append(Gpu(int(raw["index"]), str(raw.get("name") or "?"),
                        (int(match[1]), int(match[2])) if match else None, raw.get("ran"), str(raw.get("error") or "")))
    return tuple(gpus)


def build_archs_of(info: Mapping) -> BuildArchs | None:
    """The probe's ``build_archs`` (read from libmxnet.so's fat binaries), or None when it could not tell."""
    raw = info.get("build_archs")
    return BuildArchs(tuple(raw.get("elf") or ()), tuple(raw.get("ptx") or ())) if raw else None


def can_run(capability: tuple[int, int], build: BuildArchs) -> bool:
    """CUDA's rule: sm_XY code runs on X.Z for Z >= Y; PTX for sm_XY is compiled for X.Y and anything newer.

    >>> cu117 = BuildArchs((50, 60, 70, 80, 86), ())
    >>> can_run((9, 0), cu117), can_run((8, 9), cu117), can_run((7, 5), cu117), can_run((3, 7), cu117)
    (False, True, True, False)
    """
    major, minor = capability
    return (any(arch // 10 == major and arch % 10 <= minor for arch in build.elf)
            or any(arch <= major * 10 + minor for arch in build.ptx))


def describe(build: BuildArchs) -> str:
    """'kernels for sm_50, sm_80 and no PTX'; 'kernels for sm_80 and PTX for sm_80'."""
    kernels = ", ".join(f"sm_{arch}" for arch in build.elf) or "no architecture"
    ptx = f"PTX for {', '.join(f'sm_{arch}' for arch in build.ptx)}" if build.ptx else "no PTX"
    return f"kernels for {kernels} and {ptx}"


def error_line(text: str) -> str:
    """The line of an mxnet error that says what happened, not where (tracebacks and stack frames skipped)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.endswith("Traceback (most recent call last):") and not line.startswith(
                ("File ", "[bt]", "Stack trace")):
            return line[:300]
    return "no error text"


def why_not(gpu: Gpu, build: BuildArchs | None) -> str | None:
    """Why this GPU cannot run the build, or None. A test operation that ran outweighs the architectures."""
    if gpu.ran:
        return None
    if gpu.capability is not None and build is not None and not can_run(gpu.capability, build):
        return f"cannot run this mxnet build, which has {describe(build)}"
    if gpu.ran is False:
        return f"failed a test operation: {error_line(gpu.error)}"
    return None


def gpu_problem(gpus: Sequence[Gpu], wanted: Sequence[int], build: BuildArchs | None) -> tuple[str, str] | None:
    """The first of the ``wanted`` GPUs that cannot run the build, as (problem, what to do), or None.

    GPUs the probe did not see are left to the count check (``preflight.problems``).
    """
    by_index = {gpu.index: gpu for gpu in gpus}
    refused = [(by_index[i], why_not(by_index[i], build)) for i in wanted if i in by_index]
    refused = [(gpu, why) for gpu, why in refused if why is not None]
    if not refused:
        return None
    gpu, why = refused[0]
    capability = "%d.%d" % gpu.capability if gpu.capability else "unknown"
    more = len(refused) - 1
    others = f"; {more} more of the job's GPUs there {'fails' if more == 1 else 'fail'} too" if more else ""
    name = f"{gpu.name}, " if gpu.name != "?" else ""
    problem = f"GPU {gpu.index} ({name}compute capability {capability}) {why}{others}"
    if gpu.capability and (why.startswith("cannot run") or "no kernel image" in gpu.error):
        sm = "%d%d" % gpu.capability
        return problem, (f"install an mxnet build with kernels for sm_{sm}, e.g. built from source with "
                         f"MXNET_CUDA_ARCH={capability}")
    return problem, "check that GPU with nvidia-smi there (busy in exclusive mode, out of memory, faulty)"


def gpu_summary(info: Mapping) -> str:
    """The check table's ``gpus`` cell: '8x A100-SXM4-80GB (8.0)', '8x H200 (9.0) cannot run', '-' without CUDA.

    >>> gpu_summary({"cuda": True, "gpus": 2, "gpu_devices": [{"index": 0, "name": "NVIDIA A100-SXM4-80GB",
    ...     "cc": "8.0", "ran": True}, {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "cc": "8.0", "ran": False,
    ...     "error": "MXNetError: out of memory"}]})
    '1x A100-SXM4-80GB (8.0), 1x A100-SXM4-80GB (8.0) test failed'
    """
    gpus = gpus_of(info)
    if not gpus:
        return str(info["gpus"]) if info.get("cuda") else "-"
    build, groups = build_archs_of(info), {}
    for gpu in gpus:
        name = re.sub(r"^(NVIDIA |Tesla )+", "", gpu.name)
        capability = "%d.%d" % gpu.capability if gpu.capability else "?"
        why = why_not(gpu, build) or ""
        key = f"{name} ({capability})" + (" cannot run" if why.startswith("cannot") else " test failed" if why else "")
        groups[key] = groups.get(key, 0) + 1
    return ", ".join(f"{count}x {key}" for key, count in groups.items())
