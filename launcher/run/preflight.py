"""Preflight: check every host in parallel (32 at a time) before anything starts on any of them.

Each host must be reachable over SSH with a known host key, have the Python named in
the hosts file (default ``python3``), import the same mxnet version as this machine
with ps-lite (``DIST_KVSTORE``; and CUDA with enough GPUs when the job wants GPUs, each
of which ran a small operation of that build: ``launcher.run.gpu_check``), and have room in
its work folder for what will be staged. The work folder (and command mode's sync folder) must
be safe to run programs from: owned by the user or root and not writable by others, up to ``/``
(``launcher.remote.folder_check``), checked before anything is written there. All failures are
reported together, one line per host.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import ipaddress
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from importlib import metadata

import paramiko

from cluster.backend import RemoteHost
from cluster.errors import InputError
from cluster.failure import FailureKind
from cluster.fanout import HostProblem, HostResults, on_each_host
from cluster.hosts import HostSpec, Launcher
from cluster.lines import HostSaidTooMuch
from cluster.local import LocalTransport
from cluster.ssh import SSH_ERRORS, HostKeyError, SSHOptions, ssh_error_text
from cluster.ssh_resolve import account_home
from launcher.data import cachefile
from launcher.plan import HostFacts
from launcher.remote import folder_check, gpu_probe, host_probe
from launcher.run.gpu_check import build_archs_of, gpu_problem, gpus_of
from launcher.run.probe_answer import parsed_answer

# Runs on the host with its Python; prints one JSON line. Imports mxnet last so a
# missing mxnet still reports the rest. ``import mxnet`` costs ~2.5 s of CPU, so a
# CPU build's result is cached on the host (~/.cache/mxft/preflight, not the work
# folder, which preflight leaves untouched) under a key that changes whenever
# the interpreter or the files of mxnet, its library or numpy change (a numpy upgrade
# is what breaks mxnet 1.x most often). CUDA builds are always imported: GPUs come and go; and
# on every GPU they see, one small operation runs (``launcher.remote.gpu_probe``, whose source heads
# the script), then the probe exits without mxnet's teardown, which a failed kernel can crash.
# argv: the work folder, then any other folder the launch writes programs into (command mode's
# sync folder); each is checked by ``launcher.remote.folder_check`` (source included) and reported unsafe.
_PROBE = inspect.getsource(gpu_probe) + inspect.getsource(folder_check) + inspect.getsource(host_probe)


@functools.lru_cache(maxsize=1)
def local_mxnet_version() -> str | None:
    """The installed mxnet's version, read from package metadata (no import; looked up once per process)."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "mxnet" or name.startswith("mxnet-"):
            return dist.version
    return None


@dataclasses.dataclass(frozen=True)
class Requirements:
    mxnet_version: str | None
    gpus_per_host: Mapping[str, int]          # devices the job puts on each host (0: CPU job)
    bytes_per_host: Mapping[str, int]         # what staging may write there
    work_dir: str
    # The GPU ids (mx.gpu(i)) the job's workers use on each host; a host missing here is taken
    # to use GPUs 0..N-1 for its gpus_per_host N (auto workers, cluster.devices gpu:N, blocks 0-3, 4-7).
    gpu_ids_per_host: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class HostProbe:
    """What probing one host found: its answer (``launcher.run.probe_answer``), with the Python it was run with."""

    label: str
    info: Mapping                         # python, python_path, cpus, mxnet, gpus, free_bytes, ...
    clock_skew_s: float                   # the host's clock minus this machine's (less one-way latency)


def basic_requirements(work_dir: str) -> Requirements:
    """What any host needs to run mxft at all, whatever the job: this machine's mxnet version, with ps-lite."""
    return Requirements(local_mxnet_version(), {}, {}, work_dir)


def probe_host(ssh: RemoteHost | LocalTransport, spec: HostSpec, work_dir: str, *,
               other_folders: Sequence[str] = (), files: Sequence[str] = ()) -> HostProbe:
    """Run the probe on one host; a HostProblem (its kind, one line, what to do) when the host cannot answer.

    ``other_folders``: folders besides the work folder the launch copies programs into (checked like it);
    ``files``: paths whose ``file_id`` there the launch compares with this machine's (data read in place).
    """
    python = spec.python or "python3"
    try:
        asked = ("--files", *files) if files else ()
        code, out, err = ssh.run([python, "-c", _PROBE, work_dir, *other_folders, *asked], timeout_s=60)
        after = time.time()
    except HostKeyError as err:
        raise HostProblem(str(err), kind=FailureKind.HOST_KEY) from None
    except HostSaidTooMuch as err:
        raise HostProblem(f"'{python}' {err}", kind=FailureKind.HOST_REFUSED) from None
    except paramiko.AuthenticationException as err:
        raise HostProblem(ssh_error_text(err), kind=FailureKind.HOST_REFUSED,
                          hint="check the user and identity file in ~/.ssh/config") from None
    except SSH_ERRORS as err:
        raise HostProblem(ssh_error_text(err), kind=FailureKind.UNREACHABLE,
                          hint="check the name, port and network, then retry") from None
    if code == 127:
        raise HostProblem(f"'{python}' not found", kind=FailureKind.HOST_REFUSED,
                          hint="install Python 3 there or set python=PATH in the hosts file")
    if code != 0:
        raise HostProblem(f"'{python}' failed: {(err or out).strip().splitlines()[-1:] or ['?']}",
                          kind=FailureKind.HOST_REFUSED)
    try:
        info = parsed_answer((out.strip().splitlines() or [""])[-1])
    except ValueError as why:
        raise HostProblem(f"unexpected preflight output from '{python}' ({why}): {out.strip()[-200:]!r}",
                          kind=FailureKind.HOST_REFUSED) from None
    # The probe's clock was read just before its output left; it arrived at ``after`` (off by one-way latency).
    return HostProbe(spec.label, dict(info, python_path=python), round(info["time"] - after, 3))


def problems(report: HostProbe, need: Requirements) -> tuple[str, str] | None:
    """The first reason a probed host cannot take the job, with what to do, or None."""
    info = report.info
    for folder, reason in info.get("unsafe_folders", ()):
        option = "--remote-dir" if folder == need.work_dir else "--sync-dir"
        return (f"unsafe folder {folder}: {reason}; another user could plant programs there that run as you",
                f"choose a {option} of your own, e.g. under your home directory")
    python = info["python_path"]
    if "mxnet_error" in info:
        return (f"mxnet is not importable by {python}: {info['mxnet_error']}",
                f"pip install mxnet=={need.mxnet_version}" if need.mxnet_version else "install mxnet there")
    if need.mxnet_version and info["mxnet"] != need.mxnet_version:
        return f"mxnet {info['mxnet']} there, {need.mxnet_version} here", "install the same version on every host"
    if not info["dist_kvstore"]:
        return (f"mxnet {info['mxnet']} there was built without DIST_KVSTORE (ps-lite)",
                "install a build with the distributed kvstore, e.g. the PyPI wheels")
    gpus = need.gpus_per_host.get(report.label, 0)
    if gpus and not info["cuda"]:
        return f"the job puts {gpus} GPUs there but its mxnet has no CUDA", "install mxnet-cu* there"
    if gpus > info.get("gpus", 0):
        return f"the job puts {gpus} GPUs there but it has {info.get('gpus', 0)}", ""
    if gpus:
        gpu_ids = need.gpu_ids_per_host.get(report.label) or tuple(range(gpus))
        problem = gpu_problem(gpus_of(info), gpu_ids, build_archs_of(info))
        if problem is not None:
            return problem
    wanted = need.bytes_per_host.get(report.label, 0)
    if wanted > info["free_bytes"]:
        return (f"{info['work_dir']} has {info['free_bytes'] / 1e9:.1f} GB free, staging needs {wanted / 1e9:.1f} GB",
                "free space or choose another --remote-dir")
    return None


def probe_all(hosts: Sequence[tuple[HostSpec, RemoteHost | LocalTransport]], work_dir: str, *,
              other_folders: Sequence[str] = (), files: Sequence[str] = ()) -> HostResults[HostProbe]:
    """Probe every host, ``HOSTS_AT_ONCE`` at a time (a thousand hosts cost 32 threads, not a thousand): what each
    answered, or why it could not (``cluster.fanout.HostResults``)."""
    by_label = {spec.label: (spec, transport) for spec, transport in hosts}
    return on_each_host(lambda label: probe_host(by_label[label][1], by_label[label][0], work_dir,
                                                 other_folders=other_folders, files=files),
                        list(by_label), name="probe", kind=FailureKind.HOST_REFUSED)


def unfit_hosts(probed: HostResults[HostProbe], need: Requirements) -> dict[str, tuple[str, str]]:
    """Every host that cannot take the job, in the order probed: (why, what to do)."""
    found = {label: problems(probed.ok[label], need) if label in probed.ok
             else (probed.failed[label].reason, probed.failed[label].hint) for label in probed.hosts}
    return {label: problem for label, problem in found.items() if problem is not None}


def require_fit(probed: HostResults[HostProbe], need: Requirements) -> None:
    """Raise one InputError listing every host that cannot take the job (one line each)."""
    failures = [str(InputError(f"host {label}", why, hint=hint)) for label, (why, hint) in
                unfit_hosts(probed, need).items()]
    if failures:
        raise InputError("", "\n".join(failures))


def facts_of(report: HostProbe, address: str, files: Sequence[str] = ()) -> HostFacts:
    """What planning needs from a probed host; ``address`` is where the SSH config says it is; ``files``: the paths
    the probe was asked about (the host's answer for any other path is dropped)."""
    info = report.info
    interfaces = info.get("interfaces")
    return HostFacts(address=address, python=info["python_path"], cpu_count=int(info["cpus"]),
                     work_dir=info["work_dir"], home=info["home"], ip=_ip_or_empty(info.get("reached_ip")),
                     interfaces={str(k): str(v) for k, v in interfaces.items()} if isinstance(interfaces, dict) else {},
                     files=_file_ids(info.get("files"), files))


FILE_ID = re.compile(r"[0-9]{1,20}:-?[0-9]{1,20}:[0-9a-f]{32}")


def _file_ids(answer, asked: Sequence[str]) -> dict[str, str]:
    """What the host says each asked path is (``host_probe.file_id``); "" for a path it has not, or answered in a
    shape no probe writes."""
    answer = answer if isinstance(answer, dict) else {}
    return {path: answer[path] if isinstance(answer.get(path), str) and FILE_ID.fullmatch(answer[path]) else ""
            for path in asked}


def _ip_or_empty(text) -> str:
    """An IPv4 address, else "" (ps-lite's zmq transport takes no IPv6)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return ""


def assumed_facts(spec: HostSpec, address: str, remote_dir: str) -> HostFacts:
    """What a dry run plans with for a host never probed: the hosts file's Python, one CPU."""
    return HostFacts(address=address, python=spec.python or "python3", cpu_count=1, work_dir=remote_dir,
                     home="~", assumed=True)


def _facts_file(cache_dir: str, host: HostSpec, remote_dir: str, ssh: SSHOptions, launcher: Launcher) -> str:
    """One file per host, hosts-file line, work folder, SSH config and launcher: a change to any is a new probe."""
    config = ssh.ssh_config or os.path.join(account_home(), ".ssh", "config")
    stamp = os.stat(config).st_mtime_ns if os.path.isfile(config) else 0
    key = hashlib.sha256(repr((host.name, host.port, host.user, host.python, remote_dir, config, stamp)
                              + ((Launcher(launcher).value,) if launcher != Launcher.SSH else ())).encode())
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", host.label)
    return os.path.join(cache_dir, "hosts", f"{label}-{key.hexdigest()[:16]}.json")


def remember_facts(cache_dir: str, host: HostSpec, remote_dir: str, ssh: SSHOptions, facts: HostFacts, *,
                   launcher: Launcher = Launcher.SSH) -> None:
    """Keep a host's probed facts for later dry runs (``CACHE/hosts/LABEL-KEY.json``, replaced atomically)."""
    path = _facts_file(cache_dir, host, remote_dir, ssh, launcher)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with cachefile.replacing(path, "w") as handle:
        json.dump(dataclasses.asdict(facts), handle)


def cached_facts(cache_dir: str, host: HostSpec, remote_dir: str, ssh: SSHOptions, address: str, *,
                 launcher: Launcher = Launcher.SSH) -> HostFacts | None:
    """Facts an earlier launch or ``check`` probed for this host as it is configured now, if any."""
    try:
        with open(_facts_file(cache_dir, host, remote_dir, ssh, launcher), encoding="utf-8") as handle:
            facts = HostFacts(**json.load(handle))
    except (OSError, ValueError, TypeError):
        return None
    return facts if facts.address == address else None
