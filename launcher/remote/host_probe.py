"""What preflight asks of each host, answered on the host: one JSON line (``launcher.run.preflight`` reads it).

    python -c SOURCE WORK_DIR [FOLDER ...] [--files PATH ...]

The line holds the host's Python and CPUs, its home, the free space under the work folder,
each folder the launch writes programs into that is not safe (``launcher.remote.folder_check``), its
IPv4 interfaces, the address the launcher reached it at, and mxnet's version, its build's
features and GPUs (``launcher.remote.gpu_probe``), cached on the host per Python and mxnet build for
CPU builds, and what each file after ``--files`` is there (``file_id``: the launcher compares it with its own
file at that path, to read the data in place where the host sees the same one). The clock is read last: the
launcher compares it with when the line arrives. With GPUs the process ends without mxnet's teardown, which a
failed kernel can crash.

The source sent is ``launcher.remote.gpu_probe``'s, then ``launcher.remote.folder_check``'s, then this file's:
standard library only, no annotations (Python 3.6 and newer).
"""
import hashlib
import importlib.util
import json
import os
import stat
import sys
import time

try:  # on the host these come first in the same script (launcher.run.preflight._PROBE)
    gpu_facts, folder_unsafe_reason  # noqa: B018
except NameError:
    from launcher.remote.folder_check import folder_unsafe_reason
    from launcher.remote.gpu_probe import gpu_facts


def free_bytes(work):
    """Free space for this user under the work folder (or its nearest existing parent)."""
    probe = work
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe) or "/"
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def interfaces():
    """Interface name -> its IPv4 address (SIOCGIFADDR), for cluster.interface."""
    import fcntl
    import socket
    import struct
    found = {}
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue
            found[name] = socket.inet_ntoa(packed[20:24])
    return found


def reached_ip():
    """In an srun step, this host's address on the route to the launcher; else the address SSH reached."""
    launcher = os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "") if os.environ.get("SLURM_STEP_ID") else ""
    if not launcher:
        return (os.environ.get("SSH_CONNECTION", "").split()[2:3] or [""])[0]
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((launcher, 9))  # UDP: chooses the route, sends nothing
        return sock.getsockname()[0]


def cache_path():
    """Where this Python and mxnet build's facts are kept on the host (a new build: a new file)."""
    parts = [os.path.realpath(sys.executable), sys.version]
    for name in ("mxnet", "numpy"):
        spec = importlib.util.find_spec(name)
        files = [spec.origin, os.path.join(os.path.dirname(spec.origin), "libmxnet.so")] if spec and spec.origin \
            else []
        for path in files:
            if os.path.exists(path):
                info = os.stat(path)
                parts.append("%s %d %d" % (path, info.st_size, info.st_mtime_ns))
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mxft", "preflight",
                        hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20] + ".json")


def mxnet_facts():
    """mxnet's version, its distributed kvstore and CUDA, and the GPUs (with what each can run)."""
    found = {}
    try:
        os.environ.setdefault("CUDA_MODULE_LOADING", "LAZY")  # CUDA 11.7+: load kernels when used, not all at once
        import mxnet
        from mxnet.runtime import Features
        features = Features()
        found["mxnet"] = mxnet.__version__
        found["dist_kvstore"] = features.is_enabled("DIST_KVSTORE")
        found["cuda"] = features.is_enabled("CUDA")
        found["gpus"] = mxnet.context.num_gpus() if found["cuda"] else 0
    except Exception as err:
        found["mxnet_error"] = "%s: %s" % (type(err).__name__, err)
    if found.get("gpus"):
        found.update(gpu_facts(mxnet, found["gpus"], getattr(mxnet.base._LIB, "_name", "")))
    return found


def cached_mxnet_facts(cache):
    """The facts kept for this build, else found now (and kept, for a CPU build that imported)."""
    try:
        with open(cache) as handle:
            return dict(json.load(handle), cached=True)
    except (OSError, ValueError):
        pass
    found = mxnet_facts()
    if "mxnet_error" not in found and not found["cuda"]:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            with open(cache + ".partial", "w") as handle:
                json.dump(found, handle)
            os.replace(cache + ".partial", cache)
        except OSError:
            pass
    return found


def facts(folders):
    """Everything but mxnet's facts: Python, CPUs, home, space, unsafe folders, interfaces, the reached address."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # a step's own
    work = os.path.expanduser(folders[0])
    out = {"python": sys.version.split()[0], "cpus": cpus or 1, "home": os.path.expanduser("~"),
           "free_bytes": free_bytes(work), "work_dir": os.path.abspath(work),
           "unsafe_folders": [[folder, reason] for folder, reason in ((f, folder_unsafe_reason(f)) for f in folders)
                              if reason is not None]}
    try:
        out["interfaces"] = interfaces()
    except Exception:
        out["interfaces"] = {}
    try:
        out["reached_ip"] = reached_ip()
    except OSError:
        out["reached_ip"] = ""
    return out


MIB = 1 << 20
WHOLE_INDEX_MAX = 64 * MIB  # an .idx up to this size is hashed whole (ImageNet's 1.28M records: about 20 MB)


def file_id(path):
    """What a file is, as two machines can compare it without sending it: its size, its modification time (whole
    seconds: filesystems keep different precisions) and a digest of its first and last MiB (the whole file for an
    ``.idx`` of up to 64 MiB); "" when there is no readable regular file at ``path``."""
    try:  # non-blocking: a FIFO at the path must not hold the probe
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return ""
            whole = path.endswith(".idx") and info.st_size <= WHOLE_INDEX_MAX
            spans = [(0, info.st_size)] if whole else [(0, MIB), (max(MIB, info.st_size - MIB), MIB)]
            digest = hashlib.sha256()
            for start, length in spans:
                handle.seek(start)
                while length > 0:
                    chunk = handle.read(min(length, MIB))
                    if not chunk:
                        break
                    digest.update(chunk)
                    length -= len(chunk)
    except OSError:
        return ""
    return "%d:%d:%s" % (info.st_size, int(info.st_mtime), digest.hexdigest()[:32])


def main(argv):
    files = argv[argv.index("--files") + 1:] if "--files" in argv else []
    out = facts(argv[:len(argv) - len(files) - (1 if "--files" in argv else 0)])
    out["files"] = {path: file_id(path) for path in files}
    out.update(cached_mxnet_facts(cache_path()))
    out["time"] = time.time()  # last: the launcher compares it with when this line arrives
    print(json.dumps(out), flush=True)
    if out.get("gpu_devices"):
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
