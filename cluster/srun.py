"""Nodes of this Slurm allocation reached through job steps, not SSH (``--launcher srun``).

Every probe, copy and process on a node is one job step of the allocation the launcher
runs in::

    srun --nodes=1 --ntasks=1 --nodelist=NODE --kill-on-bad-exit=1 --overlap --quiet ... -- ARGV

so a site that allows only ``srun`` between nodes works, Slurm accounts every process to
the job, and a step ends with the allocation. ``--overlap`` lets the steps of one node
share its resources (a scheduler, a server and a worker run side by side); without
``--exact`` a step may use all of the job's CPUs and GPUs on its node, as srun gives steps
by default. A step's stdin and stdout are pipes of its ``srun`` here, so ``SrunHost`` offers
what ``cluster.ssh.SSHHost`` offers (``run``, ``start``, ``stream_to``, ``stream_from``):
staging, fetching, probing and the reach check are unchanged.

A step's environment is built, not inherited: the allocation's ``SLURM_*`` variables, a few
of the session's (``STEP_ENVIRONMENT``: PATH, HOME, the locale) and the process's public
values, as a login shell plus the plan's values over SSH; secret values still arrive as the
first stdin line of ``trainer.remote``. srun carries stdin to the node over its own
connection, unencrypted (as ps-lite's traffic is): see the README's security model.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from cluster.errors import HostUnreachable, InputError
from cluster.hosts import HostSpec, Launcher
from cluster.lines import BoundedOutput
from cluster.local import LocalProcess, die_with_parent
from cluster.secret import ENV_FROM_STDIN, split_secrets
from cluster.slurm import hosts_from_slurm


def srun_argv(node: str, argv: Sequence[str], *, name: str = "mxft", cwd: str | None = None) -> list[str]:
    """One step of one task on ``node`` running ``argv``.

    >>> srun_argv("gpu01", ["python3", "-V"], name="mxft-worker-0", cwd="/w")
    ['srun', '--nodes=1', '--ntasks=1', '--nodelist=gpu01', '--kill-on-bad-exit=1', '--overlap', '--quiet', \
'--job-name=mxft-worker-0', '--export=ALL', '--chdir=/w', '--', 'python3', '-V']
    """
    options = ["--nodes=1", "--ntasks=1", f"--nodelist={node}", "--kill-on-bad-exit=1", "--overlap", "--quiet",
               f"--job-name={name}", "--export=ALL"]
    return ["srun", *options, *([f"--chdir={cwd}"] if cwd else []), "--", *argv]


def in_allocation(environ: Mapping[str, str]) -> bool:
    """Inside ``salloc`` or an ``sbatch`` script (a job id and its node list are set)."""
    return bool(environ.get("SLURM_JOB_ID") and (environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")))


def default_launcher(hosts_path: str | None, environ: Mapping[str, str]) -> Launcher:
    """``srun`` for the allocation's own nodes when ``srun`` is installed, else ``ssh``."""
    return Launcher.SRUN if hosts_path == "slurm" and in_allocation(environ) and shutil.which("srun") else Launcher.SSH


def require_srun(environ: Mapping[str, str]) -> None:
    """InputError unless this is inside a Slurm allocation with ``srun`` on PATH."""
    if not in_allocation(environ):
        raise InputError("--launcher srun", "SLURM_JOB_ID is not set: this is not inside a Slurm allocation",
                         hint="run under salloc or sbatch, or use --launcher ssh")
    if shutil.which("srun") is None:
        raise InputError("--launcher srun", "srun is not on PATH here", hint="use --launcher ssh")


def require_allocation_nodes(hosts: Sequence[HostSpec], environ: Mapping[str, str], *, where: str) -> None:
    """InputError unless this is an allocation with ``srun`` whose nodes include every host (named by line)."""
    require_srun(environ)
    nodes = {node.name for node in hosts_from_slurm(environ)}  # InputError for a list that does not parse
    listed = ", ".join(sorted(nodes)[:8]) + (f", ... ({len(nodes)} nodes)" if len(nodes) > 8 else "")
    for host in hosts:
        if host.name not in nodes or host.port is not None or host.user is not None:
            raise InputError(f"{where}:{host.line}" if host.line else where,
                             f"'{host.label}' is not a node of Slurm job {environ['SLURM_JOB_ID']} "
                             f"({listed})" if host.name not in nodes else
                             f"'{host.label}': port= and user= are SSH settings; srun reaches nodes by name",
                             hint="list the allocation's nodes (or give --hosts slurm), or use --launcher ssh")


# The launcher's own variables a step gets besides SLURM_*: a login shell's, and what ``module load`` or an
# activated environment sets for the Python and CUDA libraries the steps run (the nodes share this file system).
STEP_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                    "LD_LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CUDA_HOME", "CUDA_PATH")


def step_environment(environ: Mapping[str, str], public: Mapping[str, str] | None = None) -> dict[str, str]:
    """What srun exports to a step: the allocation's variables, the session's basics and ``public``.

    >>> step_environment({"SLURM_JOB_ID": "7", "PATH": "/bin", "SSH_CONNECTION": "x", "TOKEN": "s"}, {"A": "1"})
    {'SLURM_JOB_ID': '7', 'PATH': '/bin', 'A': '1'}
    """
    chosen = {k: v for k, v in environ.items() if k.startswith("SLURM_") or k in STEP_ENVIRONMENT
              or k.startswith("LC_")}
    return {**chosen, **(public or {})}


class SrunProcess(LocalProcess):
    """A process on a node: its ``srun`` here, whose stdin is the remote ``trainer.remote``'s.

    Stopping closes that stdin first (the wrapper then ends its process group, and srun exits
    with its code), then signals srun as any local process (srun passes SIGTERM to the step).
    """

    confirmed_stopped = True

    def __init__(self, popen: subprocess.Popen) -> None:
        super().__init__(popen)
        self.pid = None  # srun's pid here is not the process's; that one is in the run's pid files on the node

    def stop(self, *, grace_s: float) -> None:
        try:
            self._popen.stdin.close()
            self._popen.wait(timeout=grace_s + 3.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        super().stop(grace_s=grace_s)


class SrunHost:
    """One node of the allocation: commands, processes and byte streams, each a job step."""

    starts_in_pool = False          # each step is a local srun child (cluster.supervise.Transport)
    watched_by_keepalive = False    # Slurm ends a job whose node stops answering (SlurmdTimeout)

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.label = spec.label
        self.unreachable = threading.Event()  # the same attribute as SSHHost's (no keepalive watch here)

    @property
    def address(self) -> str:
        return self.spec.name

    def run(self, argv: Sequence[str], *, timeout_s: float = 60.0):
        """Run a command to completion on the node; (exit code, stdout, stderr). HostUnreachable when srun
        itself could not run the step (a node down, not in the allocation, the allocation gone)."""
        proc = self._step(argv, stdin=subprocess.DEVNULL)
        taken = BoundedOutput(self.label)  # what the node sends is bounded (HostSaidTooMuch past the cap)
        try:
            taken.read(proc, timeout_s=timeout_s, end=_end)
        except (TimeoutError, subprocess.TimeoutExpired):
            raise HostUnreachable(f"node {self.label}: no answer through srun within {timeout_s:.0f} s") from None
        out, err = taken.texts()
        refusal = _srun_refusal(err)
        if proc.returncode != 0 and refusal:
            raise HostUnreachable(f"node {self.label}: {refusal}")
        return proc.returncode, out, err

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None,
              name: str = "mxft") -> SrunProcess:
        """Start ``argv`` as a step on the node (from the calling thread: srun dies with the launcher)."""
        public, secrets = split_secrets(env)
        if secrets and ENV_FROM_STDIN not in argv:
            raise ValueError(f"secret environment values for a command that does not read {ENV_FROM_STDIN}")
        popen = subprocess.Popen(
            srun_argv(self.spec.name, argv, name=name, cwd=cwd), env=step_environment(os.environ, public),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
            start_new_session=True, preexec_fn=_term_with_parent)
        if secrets:
            popen.stdin.write((json.dumps(dict(secrets)) + "\n").encode())
        return SrunProcess(popen)

    def close(self) -> None:
        """Nothing to close: each step is a process of its own, ended with it."""

    def stream_to(self, command: str) -> subprocess.Popen:
        """Start the shell ``command`` on the node with a pipe to its stdin (for bulk copies)."""
        return self._step(["sh", "-c", command], stdin=subprocess.PIPE)

    def stream_from(self, command: str) -> subprocess.Popen:
        return self._step(["sh", "-c", command], stdin=subprocess.DEVNULL)

    def _step(self, argv: Sequence[str], *, stdin) -> subprocess.Popen:
        """A step in ``/`` with bytes on its pipes, in a session of its own (a Ctrl-C reaches the launcher only)."""
        return subprocess.Popen(srun_argv(self.spec.name, argv, cwd="/"), env=step_environment(os.environ),
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                start_new_session=True, preexec_fn=_term_with_parent)


def _term_with_parent() -> None:
    """SIGTERM, not SIGKILL, when the launcher dies: srun passes it on and ends the step (a killed srun cannot)."""
    die_with_parent(signal.SIGTERM)


def _end(proc: subprocess.Popen) -> None:
    proc.terminate()  # srun ends its step on SIGTERM
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# srun's and slurmstepd's report of how a step's task ended: the command's outcome (which the launcher reports
# itself, with its cause), not a refusal to run it.
STEP_ENDED = re.compile(r"srun: error: \S+: tasks? [0-9,-]+: |slurmstepd-\S+: error: \*\*\* STEP \S+ ON \S+ CANCELLED")


def _srun_refusal(stderr: str) -> str:
    """srun's own error (not the command's), e.g. ``Required node not available``; "" if none.

    >>> _srun_refusal("srun: error: h1: task 0: Exited with exit code 127")
    ''
    >>> _srun_refusal("srun: error: Unable to create step for job 7: Invalid node name specified")
    'Unable to create step for job 7: Invalid node name specified'
    """
    lines = [line for line in stderr.splitlines() if line.startswith("srun: error:") and not STEP_ENDED.match(line)]
    return lines[0].removeprefix("srun: error:").strip() if lines else ""
