"""Preflight's GPU check (issue 12, item 6): refuse a host whose GPUs cannot run its mxnet build.

No GPU here: the decision is tested at the probe's seam on literal probe answers, and the
host-side reader of a build's architectures on ELF files built byte by byte as nvcc lays
them out (checked against mxnet-cu117 1.9.1's libmxnet.so: 197 containers, sm_50/60/70/80/86).
"""
from __future__ import annotations

import importlib.util
import os
import re
import struct
import sys

import pytest

from cluster.errors import InputError
from cluster.failure import Failure, FailureKind
from cluster.fanout import HostFailed, HostResults
from launcher.remote.gpu_probe import fatbin_archs, parse_nvidia_smi
from launcher.run.check_table import host_row, table
from launcher.run.gpu_check import BuildArchs, Gpu, error_line, gpu_problem
from launcher.run.preflight import HostProbe, Requirements, require_fit

CU117 = BuildArchs(elf=(50, 60, 70, 80, 86), ptx=())
NO_KERNEL = ("MXNetError: Traceback (most recent call last):\n"
             '  File "../src/operator/tensor/./broadcast_reduce_op.h", line 620\n'
             "MXNetError: Check failed: err == cudaSuccess (209 vs. 0) : Name: reduce_kernel_M1 ErrStr:no kernel "
             "image is available for execution on the device")
H200_REFUSED = ("GPU 0 (NVIDIA H200, compute capability 9.0) cannot run this mxnet build, which has kernels for "
                "sm_50, sm_60, sm_70, sm_80, sm_86 and no PTX")
H200_HINT = "install an mxnet build with kernels for sm_90, e.g. built from source with MXNET_CUDA_ARCH=9.0"


def h200(index: int, ran: bool | None = False) -> Gpu:
    return Gpu(index, "NVIDIA H200", (9, 0), ran, NO_KERNEL if ran is False else "")


def test_an_h200_is_refused_against_the_cu117_wheel_whether_or_not_its_operation_ran():
    assert gpu_problem([h200(0)], [0], CU117) == (H200_REFUSED, H200_HINT)
    assert gpu_problem([h200(0, ran=None)], [0], CU117) == (H200_REFUSED, H200_HINT)
    assert gpu_problem([h200(i) for i in range(8)], range(8), CU117) == (
        H200_REFUSED + "; 7 more of the job's GPUs there fail too", H200_HINT)


def test_gpus_the_wheel_has_kernels_for_pass():
    assert gpu_problem([Gpu(0, "NVIDIA A100-SXM4-80GB", (8, 0), True)], [0], CU117) is None
    assert gpu_problem([Gpu(0, "Tesla V100-SXM2-16GB", (7, 0), True)], [0], CU117) is None
    assert gpu_problem([Gpu(0, "NVIDIA L40S", (8, 9), None)], [0], CU117) is None   # sm_86 code runs on 8.9
    assert gpu_problem([Gpu(0, "Tesla T4", (7, 5), None)], [0], CU117) is None      # sm_70 code runs on 7.5
    assert gpu_problem([h200(0, ran=None)], [0], BuildArchs((80,), (80,))) is None  # PTX compiles for 9.0


def test_a_failed_operation_on_a_good_architecture_is_refused_with_its_error():
    gpu = Gpu(3, "NVIDIA A100-SXM4-80GB", (8, 0), False,
              "MXNetError: [12:01:02] ../src/storage/./pooled_storage_manager.h:161: cudaMalloc retry failed: "
              "out of memory\nStack trace:\n  [bt] (0) /usr/lib/libmxnet.so(+0x1234) [0x7f]")
    assert gpu_problem([gpu], [3], CU117) == (
        "GPU 3 (NVIDIA A100-SXM4-80GB, compute capability 8.0) failed a test operation: MXNetError: [12:01:02] "
        "../src/storage/./pooled_storage_manager.h:161: cudaMalloc retry failed: out of memory",
        "check that GPU with nvidia-smi there (busy in exclusive mode, out of memory, faulty)")


def test_a_kernel_failure_with_unknown_build_architectures_names_the_error_and_the_arch_to_install():
    assert gpu_problem([h200(0)], [0], None) == (
        "GPU 0 (NVIDIA H200, compute capability 9.0) failed a test operation: MXNetError: Check failed: err == "
        "cudaSuccess (209 vs. 0) : Name: reduce_kernel_M1 ErrStr:no kernel image is available for execution on "
        "the device", H200_HINT)


def test_only_the_gpus_the_job_uses_count():
    busy = Gpu(0, "NVIDIA A100-SXM4-80GB", (8, 0), False, "MXNetError: all CUDA-capable devices are busy")
    free = [Gpu(i, "NVIDIA A100-SXM4-80GB", (8, 0), True) for i in range(1, 4)]
    assert gpu_problem([busy, *free], [1, 2, 3], CU117) is None
    assert gpu_problem([busy, *free], [0, 1], CU117)[0].startswith("GPU 0 (NVIDIA A100-SXM4-80GB, compute")


def test_error_line_skips_tracebacks():
    assert error_line(NO_KERNEL).endswith("ErrStr:no kernel image is available for execution on the device")
    assert error_line("RuntimeError: boom\nmore") == "RuntimeError: boom"
    assert error_line("") == "no error text"


def probed(label: str, **info) -> HostProbe:
    base = {"python": "3.10.12", "mxnet": "1.9.1", "dist_kvstore": True, "cuda": True, "gpus": 0, "cpus": 96,
            "free_bytes": 500 * 10**9, "work_dir": "/scratch/mxft", "python_path": "python3"}
    return HostProbe(label, {**base, **info}, clock_skew_s=0.01)


def results(*probes: HostProbe, failed: tuple[HostFailed, ...] = ()) -> HostResults[HostProbe]:
    """A preflight's outcome as ``probe_all`` gives it: the probes, then the hosts that could not be probed."""
    return HostResults(tuple(p.label for p in probes) + tuple(f.host for f in failed),
                       {p.label: p for p in probes}, {f.host: f for f in failed})


def gpu_info(name: str, cc: str, count: int, ran: bool, error: str = "") -> dict:
    return {"gpus": count, "build_archs": {"elf": [50, 60, 70, 80, 86], "ptx": []},
            "gpu_devices": [{"index": i, "name": name, "cc": cc, "ran": ran, "error": error} for i in range(count)]}


def test_preflight_refuses_the_h200_host_before_staging_and_keeps_the_count_message():
    need = Requirements("1.9.1", {"a100": 8, "h200": 8, "small": 8}, {}, "/scratch/mxft")
    reports = results(probed("a100", **gpu_info("NVIDIA A100-SXM4-80GB", "8.0", 8, True)),
                      probed("h200", **gpu_info("NVIDIA H200", "9.0", 8, False, NO_KERNEL)),
                      probed("small", **gpu_info("NVIDIA A100-SXM4-80GB", "8.0", 4, True)))
    with pytest.raises(InputError) as raised:
        require_fit(reports, need)
    assert str(raised.value).splitlines() == [
        f"host h200: {H200_REFUSED}; 7 more of the job's GPUs there fail too ({H200_HINT})",
        "host small: the job puts 8 GPUs there but it has 4"]


def test_the_job_s_own_gpu_ids_are_the_ones_checked():
    info = gpu_info("NVIDIA A100-SXM4-80GB", "8.0", 8, True)
    info["gpu_devices"][0].update(ran=False, error="MXNetError: all CUDA-capable devices are busy or unavailable")
    report = probed("h1", **info)
    require_fit(results(report), Requirements("1.9.1", {"h1": 4}, {}, "/w", gpu_ids_per_host={"h1": (4, 5, 6, 7)}))
    with pytest.raises(InputError, match="host h1: GPU 0 .* failed a test operation: MXNetError: all CUDA"):
        require_fit(results(report), Requirements("1.9.1", {"h1": 4}, {}, "/w"))


def test_check_table_shows_model_and_compute_capability_and_why_a_host_has_no_probe():
    need = Requirements("1.9.1", {"a100": 8, "h200": 8}, {}, "/scratch/mxft")
    probed_now = results(probed("a100", **gpu_info("NVIDIA A100-SXM4-80GB", "8.0", 8, True)),
                         probed("h200", **gpu_info("NVIDIA H200", "9.0", 8, False, NO_KERNEL)),
                         probed("cpu1", cuda=False),
                         failed=(HostFailed("gone", "unreachable over SSH: timed out",
                                            Failure(FailureKind.UNREACHABLE, host="gone"), "check the network"),
                                 HostFailed("new", "unknown host key ssh-ed25519 SHA256:x",
                                            Failure(FailureKind.HOST_KEY, host="new"))))
    rows = [host_row(label, probed_now, need) for label in probed_now.hosts]
    assert [row.fit for row in rows] == [True, False, True, False, False]
    with pytest.raises(InputError) as raised:
        require_fit(probed_now, need)
    assert str(raised.value).splitlines()[1:] == ["host gone: unreachable over SSH: timed out (check the network)",
                                                  "host new: unknown host key ssh-ed25519 SHA256:x"]
    assert table(rows[:3]) == [
        "host  ssh  host key  python   mxnet  ps-lite  cuda  gpus                      cpus  free GB  clock skew s  "
        "verdict",
        "a100  ok   ok        3.10.12  1.9.1  yes      yes   8x A100-SXM4-80GB (8.0)   96    500.0    +0.01         ok",
        "h200  ok   ok        3.10.12  1.9.1  yes      yes   8x H200 (9.0) cannot run  96    500.0    +0.01         "
        f"{H200_REFUSED}; 7 more of the job's GPUs there fail too",
        "cpu1  ok   ok        3.10.12  1.9.1  yes      no    -                         96    500.0    +0.01         ok"]
    assert rows[3].as_json() == {"host": "gone", "ssh": "unreachable", "host_key": "?", "python": "-", "mxnet": "-",
                                 "ps_lite": "-", "cuda": "-", "gpus": "-", "cpus": "-", "free_GB": "-",
                                 "clock_skew_s": "-", "verdict": "unreachable over SSH: timed out", "fit": False}
    assert [re.split(r" {2,}", line) for line in table(rows)[4:]] == [
        ["gone", "unreachable", "?", *"-" * 8, "unreachable over SSH: timed out"],
        ["new", "ok", "refused", *"-" * 8, "unknown host key ssh-ed25519 SHA256:x"]]


def elf_file(path, section: bytes, data: bytes) -> str:
    """A 64-bit ELF holding ``data`` as section ``section`` (and the section-name table), as a linker lays it out."""
    names = b"\0" + section + b"\0.shstrtab\0"
    data_at, names_at = 64, 64 + len(data)
    table_at = (names_at + len(names) + 7) // 8 * 8
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, table_at, 0, 64, 0, 0,
                                                             64, 3, 2)
    sections = [bytes(64), struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, data_at, len(data), 0, 0, 8, 0),
                struct.pack("<IIQQQQIIQQ", len(section) + 2, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)]
    path.write_bytes(header + data + names + bytes(table_at - names_at - len(names)) + b"".join(sections))
    return str(path)


def container(*entries: tuple[int, int]) -> bytes:
    """A fat binary: 16-byte header, then per (kind, sm) a 64-byte entry header and its 8-byte-aligned payload."""
    body = b""
    for kind, arch in entries:
        payload = bytes(13) + bytes(3)
        entry = struct.pack("<HHIQIIHHI", kind, 0x0101, 64, len(payload), 13, 0, 7, 1, arch)
        body += entry.ljust(64, b"\0") + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_fatbin_archs_reads_the_architectures_of_a_build(tmp_path):
    cu117 = container(*((2, arch) for arch in (50, 60, 70, 80, 86)))
    assert fatbin_archs(elf_file(tmp_path / "cu117.so", b".nv_fatbin", cu117 + bytes(8) + cu117 + cu117)) == {
        "elf": [50, 60, 70, 80, 86], "ptx": []}
    assert fatbin_archs(elf_file(tmp_path / "ptx.so", b".nv_fatbin", container((2, 80), (1, 80)))) == {
        "elf": [80], "ptx": [80]}


def test_fatbin_archs_is_unknown_rather_than_wrong(tmp_path):
    good = container(*((2, arch) for arch in (50, 60, 70, 80, 86)))
    assert fatbin_archs(elf_file(tmp_path / "junk.so", b".nv_fatbin", good + b"not a fat binary")) is None
    assert fatbin_archs(elf_file(tmp_path / "cut.so", b".nv_fatbin", good[:-16])) is None
    assert fatbin_archs(elf_file(tmp_path / "long.so", b".nv_fatbin", good * 4), max_reads=10) is None
    assert fatbin_archs(elf_file(tmp_path / "other.so", b".text", good)) is None
    cpu_build = os.path.join(os.path.dirname(importlib.util.find_spec("mxnet").origin), "libmxnet.so")
    assert fatbin_archs(cpu_build) is None and fatbin_archs(sys.executable) is None
    assert fatbin_archs(str(tmp_path / "missing.so")) is None


def test_nvidia_smi_rows_follow_cuda_visible_devices():
    text = "NVIDIA A100-SXM4-80GB, 8.0\nNVIDIA H200, 9.0\n"
    assert parse_nvidia_smi(text, None) == [{"index": 0, "name": "NVIDIA A100-SXM4-80GB", "cc": "8.0"},
                                            {"index": 1, "name": "NVIDIA H200", "cc": "9.0"}]
    assert parse_nvidia_smi(text, "1") == [{"index": 0, "name": "NVIDIA H200", "cc": "9.0"}]
    assert parse_nvidia_smi(text, "GPU-8f1c") is None
    assert parse_nvidia_smi("Tesla K80, [N/A]\n", None) == [{"index": 0, "name": "Tesla K80", "cc": None}]
