"""Remote hosts over SSH: fabric for commands and processes, OpenSSH for bulk bytes.

Host keys are checked strictly, the same way on both stacks and for a ProxyJump bastion
too (fabric alone would accept any key): ``cluster.ssh_resolve`` reads the SSH config
once (OpenSSH's files, ``~`` from the password database), ``cluster.known_hosts``
decides for paramiko over every user and global known-hosts file under the
``HostKeyAlias``, and OpenSSH is given the same files, alias, host name and jump
explicitly. An unknown key is refused; ``accept_new_host_keys`` trusts and records a
key for a host no file knows, like OpenSSH's ``StrictHostKeyChecking=accept-new``; a key
that differs from one pinned in any file is always refused. ``~/.ssh/config`` (or
``ssh_config``) is honoured: host aliases, ports, users, identity files.

Commands are argv lists; ``remote_command`` is the one place they become a shell line.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import fabric
import paramiko

from cluster.errors import HostUnreachable
from cluster.hosts import HostSpec
from cluster.known_hosts import CheckKnownHosts, HostKeyError, keys_for, pinned_key_types, prefer_key_types
from cluster.lines import BoundedOutput, bounded_lines
from cluster.secret import ENV_FROM_STDIN, split_secrets
from cluster.ssh_resolve import SSHTarget, jump_of, resolve_target
from cluster.ssh_sessions import SessionPool, SharedConnection

# Fast ciphers first (AES-GCM runs on the AES instructions of any current CPU); the
# server picks the first one it also supports.
_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
CONNECTION_LOST = 255  # what OpenSSH exits with when the connection fails or dies
# Hosts contacted at once by probing, staging and the reach check: threads, descriptors and ssh
# processes stay bounded for a hosts file of thousands.
HOSTS_AT_ONCE = 32

Item = TypeVar("Item")
Result = TypeVar("Result")
# What a host's own trouble raises on either SSH path (unreachable, refused, a bad key, a dropped connection).
SSH_ERRORS = (HostKeyError, OSError, socket.timeout, paramiko.SSHException, EOFError)


def on_hosts(work: Callable[[Item], Result], items: Sequence[Item], *, name: str) -> list[Result]:
    """``work`` for every item (a host, or what names one), ``HOSTS_AT_ONCE`` at a time; results in order.

    A bounded pool: a thousand hosts cost 32 threads and their connections, not a thousand of each.

    >>> on_hosts(lambda n: n * n, [1, 2, 3], name="squares")
    [1, 4, 9]
    """
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(HOSTS_AT_ONCE, len(items)),
                                               thread_name_prefix=f"mxft-{name}") as pool:
        return list(pool.map(work, items))


def ssh_error_text(err: BaseException) -> str:
    """One line for a host's SSH trouble (one of ``SSH_ERRORS``), the same in every report."""
    if isinstance(err, (HostKeyError, HostUnreachable)):
        return str(err)
    if isinstance(err, paramiko.AuthenticationException):
        return f"SSH authentication failed ({err})"
    return f"unreachable over SSH: {err or type(err).__name__}"


@dataclasses.dataclass(frozen=True)
class SSHOptions:
    ssh_config: str | None = None          # None: ~/.ssh/config
    accept_new_host_keys: bool = False
    connect_timeout_s: float = 10.0


def remote_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """argv + env + cwd -> one POSIX shell line, every part quoted exactly once.

    >>> remote_command(["echo", "a b", "$HOME"], env={"X": "1"}, cwd="/tmp")
    "cd /tmp && exec env -- X=1 echo 'a b' '$HOME'"

    A folder or an assignment is never read as an option of ``cd`` or ``env``: ``-x`` is
    written ``./-x``, and ``--`` ends env's options (environment names are checked when
    parsed, too).
    """
    env_part = ["env", "--"] + [f"{key}={value}" for key, value in sorted((env or {}).items())] if env else []
    line = "exec " + shlex.join(env_part + list(argv))
    folder = f"./{cwd}" if cwd and cwd.startswith("-") else cwd
    return f"cd {shlex.quote(folder)} && {line}" if cwd else line


class SSHProcess:
    """A process started through an SSH session (channel), run under ``trainer.remote``.

    Closing the channel's stdin (``stop``) makes the remote wrapper end its process group.
    The session is given back to its host's pool once the process is over: stopped, its
    connection lost, or exited with all its output read (the last session closes the connection).
    """

    pid = None  # the remote pid is in the run's pid files on that host
    confirmed_stopped = True  # False: stop() had no answer from the host (it may still run there)
    connection_lost = False   # True: the process ended because its connection died (its code says nothing)

    def __init__(self, channel: paramiko.Channel, *, sessions: SessionPool, shared: SharedConnection,
                 unreachable: threading.Event | None = None) -> None:
        self._channel = channel
        self._unreachable = unreachable or threading.Event()
        self._sessions, self._shared = sessions, shared
        self._ended: set[str] = set()
        self._released = False
        self._lock = threading.Lock()
        self.stdout = _Lines(channel, on_end=lambda: self._end("output"))

    def poll(self) -> int | None:
        if not self._channel.exit_status_ready():
            if not self._shared.alive:
                self._end("lost")
                self.connection_lost = True
                return CONNECTION_LOST
            return None
        code = self._channel.recv_exit_status()
        self._end("exit")
        if code == -1:  # the channel closed without an exit status: the connection went first
            self.connection_lost = True
            return CONNECTION_LOST
        return code

    def stop(self, *, grace_s: float) -> None:
        try:
            self._channel.shutdown_write()  # EOF on the wrapper's stdin: it stops its group
        except (OSError, EOFError, paramiko.SSHException):
            pass
        if not self._unreachable.is_set() and self._shared.alive:  # a host that stopped answering never will
            self._channel.status_event.wait(grace_s + 3.0)
        self.confirmed_stopped = self._channel.exit_status_ready()
        self._end("stopped")

    def _end(self, what: str) -> None:
        """Record that the process ``what`` (exit, output, stopped, lost); give the session back once it is over."""
        with self._lock:
            self._ended.add(what)
            over = {"exit", "output"} <= self._ended or bool({"stopped", "lost"} & self._ended)
            if self._released or not over:
                return
            self._released = True
        self._channel.close()  # what was received stays readable
        self._sessions.release(self._shared)


class _Lines:
    """Iterate a channel's stdout as text lines of bounded length (``cluster.lines``; stderr is merged into it);
    ``on_end`` at its end."""

    def __init__(self, channel: paramiko.Channel, *, on_end: Callable[[], None]) -> None:
        self._channel = channel
        self._on_end = on_end

    def __iter__(self):
        try:
            yield from bounded_lines(self._channel.recv)
        finally:
            self._on_end()


class SSHHost:
    """One remote host: commands, processes and the OpenSSH argv for bulk copies."""

    starts_in_pool = True           # a session of the host's shared connections (cluster.supervise.Transport)
    watched_by_keepalive = True     # cluster.hostwatch

    def __init__(self, spec: HostSpec, options: SSHOptions) -> None:
        self.spec = spec
        self.options = options
        self.label = spec.label
        # Every process started here is a session of a few shared connections (cluster.ssh_sessions).
        self._sessions = SessionPool(self.connect, open_timeout_s=options.connect_timeout_s + 20.0)
        self.unreachable = threading.Event()  # set by cluster.hostwatch: the host stopped answering
        self._target: SSHTarget | None = None

    def target(self) -> SSHTarget:
        """Where the host is and how its key is checked: OpenSSH's reading of its config, for both stacks (read
        once for this object: an attempt's connections and copies all go where the first went)."""
        if self._target is None:
            self._target = resolve_target(self.spec.name, port=self.spec.port, user=self.spec.user,
                                          ssh_config=self.options.ssh_config)
        return self._target

    def connect(self) -> fabric.Connection:
        """A new, open connection with strict host-key checking (a bastion's too).

        Raises HostKeyError, or OSError / paramiko.SSHException-likes.
        """
        conn = _connection(self.target(), self.options)
        try:
            conn.open()
        except paramiko.SSHException as err:
            conn.close()
            if isinstance(err.__context__, HostKeyError):
                raise err.__context__ from None
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def hold_connection(self) -> SharedConnection:
        """One of the connections this host's processes share, held open until ``release_connection``
        (``cluster.hostwatch``: the watch of a host is its processes' own connection)."""
        return self._sessions.hold()

    def release_connection(self, held: SharedConnection) -> None:
        self._sessions.release(held)

    @property
    def address(self) -> str:
        """The address other hosts reach this one at: HostName from the SSH config, else the name."""
        return self.target().hostname

    def run(self, argv: Sequence[str], *, timeout_s: float = 60.0):
        """Run a command to completion; returns (exit code, stdout, stderr). What the host sends is bounded
        (``cluster.lines.BoundedOutput``: HostSaidTooMuch past its cap), and so is the wait (HostUnreachable)."""
        conn = self.connect()
        try:
            channel = conn.client.get_transport().open_session(timeout=timeout_s)
            channel.exec_command(remote_command(argv))
            channel.shutdown_write()
            taken = BoundedOutput(self.label)
            deadline = time.monotonic() + timeout_s
            while not (channel.exit_status_ready() and channel.eof_received and not channel.recv_ready()
                       and not channel.recv_stderr_ready()):
                if time.monotonic() > deadline:
                    raise HostUnreachable(f"{self.label}: no answer within {timeout_s:.0f} s")
                select.select([channel], [], [], 0.05)  # stdout wakes it at once; stderr within 50 ms
                while channel.recv_ready():
                    taken.out(channel.recv(65536))
                while channel.recv_stderr_ready():
                    taken.err(channel.recv_stderr(65536))
            return (channel.recv_exit_status(), *taken.texts())
        finally:
            conn.close()

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> SSHProcess:
        """Start ``argv`` on the host; secret values (``cluster.secret``) go on the session's input, never
        on the command line, and only to a command that reads them there (``trainer.remote --env-from-stdin``)."""
        public, secrets = split_secrets(env)
        if secrets and ENV_FROM_STDIN not in argv:
            raise ValueError(f"secret environment values for a command that does not read {ENV_FROM_STDIN}")
        shared, channel = self._sessions.open_session()
        try:
            channel.set_combine_stderr(True)
            channel.exec_command(remote_command(argv, env=public, cwd=cwd))
            if secrets:
                channel.sendall((json.dumps(secrets) + "\n").encode())
        except BaseException:
            channel.close()
            self._sessions.release(shared)
            raise
        return SSHProcess(channel, sessions=self._sessions, shared=shared, unreachable=self.unreachable)

    def openssh_argv(self) -> list[str]:
        """``ssh ... HOST`` with the same config, user, port and host-key strictness."""
        argv = ["ssh", "-T"] + openssh_options(self.target(), self.options)
        if self.options.ssh_config:
            argv += ["-F", self.options.ssh_config]
        if self.spec.port:
            argv += ["-p", str(self.spec.port)]
        if self.spec.user:
            argv += ["-l", self.spec.user]
        return argv + ["--", self.spec.name]  # "--": a host name is never read as an option

    def close(self) -> None:
        """Close the connections this host's processes shared (``cluster.ssh_sessions``)."""
        self._sessions.close()

    def stream_to(self, command: str) -> subprocess.Popen:
        """Start ``command`` on the host with a pipe to its stdin (for bulk copies)."""
        return subprocess.Popen(self.openssh_argv() + [command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)

    def stream_from(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(self.openssh_argv() + [command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)


class _Connection(fabric.Connection):
    """A fabric connection that also closes the bastion connection it was opened through."""

    def close(self) -> None:
        super().close()
        if isinstance(self.gateway, fabric.Connection):
            self.gateway.close()


def _connection(target: SSHTarget, options: SSHOptions, *, depth: int = 0, who: str = "") -> fabric.Connection:
    """An unopened connection to ``target`` whose key (and every bastion's) is checked by ``CheckKnownHosts``.

    fabric would build a ProxyJump gateway itself, with paramiko's AutoAddPolicy; here each hop
    is a connection of its own with the same policy.
    """
    jump = jump_of(target, depth=depth)
    gateway = (_connection(jump, options, depth=depth + 1, who=f"ProxyJump host {jump.name}: ") if jump
               else target.proxy_command or False)
    pinned = keys_for(target.known_hosts.name, target.known_hosts.files)
    # The address, port, user and keys are OpenSSH's reading (cluster.ssh_resolve); fabric reads no config itself.
    conn = _Connection(target.hostname, user=target.user, port=target.port,
                       config=fabric.Config(ssh_config=paramiko.SSHConfig()), connect_timeout=options.connect_timeout_s,
                       gateway=gateway,
                       connect_kwargs={"transport_factory": prefer_key_types(pinned_key_types(pinned)),
                                       **({"key_filename": list(target.identity_files)} if target.identity_files
                                          else {})})
    conn.client.set_missing_host_key_policy(
        CheckKnownHosts(target.known_hosts, accept_new=options.accept_new_host_keys, who=who))
    return conn


def openssh_options(target: SSHTarget, options: SSHOptions, *, depth: int = 0) -> list[str]:
    """OpenSSH ``-o`` options that make it check exactly what ``_connection`` checks.

    The host name, known-hosts files, alias and jump come from the same reading of the
    config, given on the command line (which wins over any file). A bastion is reached by a
    ProxyCommand that is this same ``ssh`` with the bastion's options (OpenSSH's own
    ProxyJump would start it without them).
    """
    argv = ["-o", "BatchMode=yes", "-o", f"Ciphers={_CIPHERS}", "-o", f"ConnectTimeout={int(options.connect_timeout_s)}",
            # Always yes: preflight's paramiko connection already recorded any new key (accept-new), and OpenSSH's
            # accept-new would also take a key of a new type for a host pinned with another type.
            "-o", "StrictHostKeyChecking=yes",
            "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=4",  # a host that stops answering ends the stream in about 20 s
            "-o", "HostName=" + _percent(target.hostname),
            "-o", "UserKnownHostsFile=" + _file_list(target.known_hosts.user_files),
            "-o", "GlobalKnownHostsFile=" + _file_list(target.known_hosts.global_files),
            "-o", "HashKnownHosts=" + ("yes" if target.known_hosts.hash_new else "no")]
    if target.host_key_alias:
        argv += ["-o", "HostKeyAlias=" + target.host_key_alias]
    jump = jump_of(target, depth=depth)
    if jump is not None:
        argv += ["-o", "ProxyCommand=" + _proxy_command(jump, options, depth=depth + 1)]
    elif not target.proxy_command:
        argv += ["-o", "ProxyJump=none"]  # none that paramiko did not see either (an Include, a Match)
    return argv


def _proxy_command(jump: SSHTarget, options: SSHOptions, *, depth: int) -> str:
    """``ssh OPTIONS -W [%h]:%p -- BASTION``, quoted for the shell and with ``%`` kept from OpenSSH's tokens."""
    argv = ["ssh", "-T"] + openssh_options(jump, options, depth=depth) + ["-p", str(jump.port)]
    if options.ssh_config:
        argv += ["-F", options.ssh_config]
    if jump.user:
        argv += ["-l", jump.user]
    return f"{_percent(shlex.join(argv))} -W '[%h]:%p' -- {_percent(shlex.quote(jump.name))}"


def _percent(text: str) -> str:
    return text.replace("%", "%%")


def _file_list(paths: tuple[str, ...]) -> str:
    """Known-hosts files as one OpenSSH option value: each double-quoted, ``none`` for no file."""
    return " ".join('"' + _percent(path) + '"' for path in paths) or "none"
