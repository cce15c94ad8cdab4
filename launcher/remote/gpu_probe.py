"""The GPU half of preflight's probe: what each GPU is, and whether this mxnet build runs on it.

This file's source is sent to every host as the head of ``launcher.run.preflight._PROBE`` and
runs there on the host's Python, so it uses the standard library only, no annotations
(Python 3.6 and newer) and nothing from mxft. The probe calls ``gpu_facts`` only for a CUDA
build of mxnet that sees GPUs: a CPU build never loads libcuda. Example on an H200 with
mxnet-cu117 1.9.1 (whose kernels stop at sm_86)::

    gpu_facts(mxnet, 1, "/venv/lib/python3.10/site-packages/mxnet/libmxnet.so")
    {"gpu_devices": [{"index": 0, "name": "NVIDIA H200", "cc": "9.0", "ran": false,
                      "error": "MXNetError: ... no kernel image is available for execution on the device"}],
     "build_archs": {"elf": [50, 60, 70, 80, 86], "ptx": []}}

Names and compute capabilities come from the driver (libcuda.so.1), else from nvidia-smi,
so they are known even when no kernel of the build can run.
"""
import ctypes
import os
import re
import struct
import subprocess

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
FATBIN_MAGICS = (0xBA55ED50, 0x466243B1)  # a fat binary container (executable, relocatable)
FATBIN_PTX, FATBIN_ELF = 1, (2, 0x10)     # entry kinds: PTX text, compiled code (ELF cubin)
MAX_FATBIN_READS = 100000  # mxnet-cu117 1.9.1's libmxnet.so takes 1,182 (197 containers of 5 entries)
ERROR_CHARS = 4000


def gpu_facts(mx, count, lib_path):
    """Every visible GPU (index, name, cc, whether a small operation ran there, its error) and the build's archs."""
    known = {gpu["index"]: gpu for gpu in (devices_from_libcuda() or devices_from_nvidia_smi() or [])}
    gpus = []
    for index in range(count):
        gpu = dict(known.get(index) or {"index": index, "name": "?", "cc": None})
        gpu["error"] = kernel_error(mx, index)
        gpu["ran"] = not gpu["error"]
        gpus.append(gpu)
    return {"gpu_devices": gpus, "build_archs": fatbin_archs(lib_path)}


def kernel_error(mx, index):
    """'' when a 2x2 sum runs on GPU ``index`` and gives 4, else what went wrong (as mxnet said it)."""
    try:
        total = mx.nd.ones((2, 2), ctx=mx.gpu(index)).sum().asscalar()
    except Exception as err:  # noqa: BLE001 - whatever stops the kernel is the answer
        return ("%s: %s" % (type(err).__name__, err))[:ERROR_CHARS]
    return "" if total == 4 else "ones((2, 2)).sum() on the GPU gave %r, not 4" % (total,)


def devices_from_libcuda():
    """[{index, name, cc}] from the CUDA driver, in CUDA's order (as mx.gpu(i)); None without a driver."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count, found = ctypes.c_int(0), []
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    for index in range(count.value):
        device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        if (cuda.cuDeviceGet(ctypes.byref(device), index) != 0 or cuda.cuDeviceGetName(name, 256, device) != 0
                or cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                             device) != 0
                or cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                             device) != 0):
            return None
        found.append({"index": index, "name": name.value.decode("utf-8", "replace"),
                      "cc": "%d.%d" % (major.value, minor.value)})
    return found


def devices_from_nvidia_smi():
    """The same from ``nvidia-smi`` (driver 510 or newer for compute_cap); None if it does not answer."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_nvidia_smi(done.stdout, os.environ.get("CUDA_VISIBLE_DEVICES"))


def parse_nvidia_smi(text, visible):
    """Rows of ``name, compute_cap`` as [{index, name, cc}], renumbered as CUDA_VISIBLE_DEVICES=``visible`` does.

    nvidia-smi lists every GPU in PCI order and ignores CUDA_VISIBLE_DEVICES; a value that is not
    a list of numbers (GPU UUIDs) cannot be mapped, so that gives None.

    >>> parse_nvidia_smi("NVIDIA H200, 9.0\\nNVIDIA H200, 9.0\\n", "1")
    [{'index': 0, 'name': 'NVIDIA H200', 'cc': '9.0'}]
    """
    rows = []
    for line in text.splitlines():
        name, _, cc = line.rpartition(",")
        if name.strip():
            rows.append((name.strip(), cc.strip() if re.match(r"^\d+\.\d+$", cc.strip()) else None))
    if visible is not None:
        try:
            rows = [rows[int(part)] for part in visible.split(",") if part.strip()]
        except (ValueError, IndexError):
            return None
    return [{"index": i, "name": name, "cc": cc} for i, (name, cc) in enumerate(rows)] or None


def fatbin_archs(lib_path, max_reads=MAX_FATBIN_READS):
    """{"elf": [...], "ptx": [...]}: the SM numbers the library's fat binaries carry code for; None if unknown.

    Reads only the ELF section headers and the headers of the fat binaries in ``.nv_fatbin``
    (a container header, then entries of 64 bytes or more, each followed by its payload), so
    a 900 MB libmxnet.so takes about a thousand small reads. Anything unexpected, or more
    than ``max_reads`` reads, gives None: a partial list would name architectures wrongly.
    """
    try:
        with open(lib_path, "rb") as handle:
            section = elf_section(handle, b".nv_fatbin")
            return walk_fatbins(handle, section[0], section[0] + section[1], max_reads) if section else None
    except (OSError, struct.error, ValueError):
        return None


def elf_section(handle, wanted):
    """(file offset, size) of the section named ``wanted`` of a 64-bit little-endian ELF file, or None."""
    header = handle.read(64)
    if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
        return None
    table_at, = struct.unpack_from("<Q", header, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", header, 0x3A)
    handle.seek(table_at)
    table = handle.read(entry_size * count)
    sections = [struct.unpack_from("<IIQQQQ", table, i * entry_size) for i in range(count)]
    handle.seek(sections[names_index][4])
    names = handle.read(sections[names_index][5])
    for name_at, _type, _flags, _address, offset, size in sections:
        if names[name_at:names.find(b"\0", name_at)] == wanted:
            return offset, size
    return None


def walk_fatbins(handle, start, end, max_reads):
    """The entry kinds and SM numbers of the containers laid one after another in [start, end)."""
    elf, ptx, reads, at = set(), set(), 0, start
    while at + 16 <= end:
        if reads >= max_reads:
            return None
        handle.seek(at)
        magic, _version, header_size, fat_size = struct.unpack("<IHHQ", handle.read(16))
        reads += 1
        if magic not in FATBIN_MAGICS:
            if magic or _version or header_size:  # only zero padding may lie between containers
                return None
            at += 8
            continue
        entry, stop = at + header_size, at + header_size + fat_size
        if stop > end:  # a container cut short
            return None
        while entry + 64 <= stop and reads < max_reads:
            handle.seek(entry)
            raw = handle.read(64)
            reads += 1
            kind, _flags, entry_size, payload_size = struct.unpack_from("<HHIQ", raw, 0)
            arch, = struct.unpack_from("<I", raw, 28)  # after the code version: SM number, e.g. 86
            if entry_size < 64:
                return None
            if kind == FATBIN_PTX:
                ptx.add(arch)
            elif kind in FATBIN_ELF:
                elf.add(arch)
            entry += entry_size + payload_size
        if entry != stop and reads < max_reads:  # the entries did not fill their container exactly
            return None
        at = stop
    return {"elf": sorted(elf), "ptx": sorted(ptx)} if elf or ptx else None
