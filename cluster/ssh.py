"""Remote hosts over SSH: fabric for commands and processes, OpenSSH for bulk bytes.

Host keys are checked strictly: the keys of ``~/.ssh/known_hosts`` and of every
``UserKnownHostsFile`` the SSH config names are loaded and an unknown key is refused
(fabric alone would accept any key). ``accept_new_host_keys`` trusts and records a
key seen for the first time, like OpenSSH's ``StrictHostKeyChecking=accept-new``; a
*changed* key is always refused. ``~/.ssh/config`` (or ``ssh_config``) is honoured by
both fabric and OpenSSH: host aliases, ports, users, identity files.

Commands are argv lists; ``remote_command`` is the one place they become a shell line.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

import fabric
import paramiko

from cluster.hosts import HostSpec

# Fast ciphers first (AES-GCM runs on the AES instructions of any current CPU); the
# server picks the first one it also supports.
_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
CONNECTION_LOST = 255  # what OpenSSH exits with when the connection fails or dies


@dataclasses.dataclass(frozen=True)
class SSHOptions:
    ssh_config: str | None = None          # None: ~/.ssh/config
    accept_new_host_keys: bool = False
    connect_timeout_s: float = 10.0


def remote_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """argv + env + cwd -> one POSIX shell line, every part quoted exactly once.

    >>> remote_command(["echo", "a b", "$HOME"], env={"X": "1"}, cwd="/tmp")
    "cd /tmp && exec env X=1 echo 'a b' '$HOME'"
    """
    env_part = ["env"] + [f"{key}={value}" for key, value in sorted((env or {}).items())] if env else []
    line = "exec " + shlex.join(env_part + list(argv))
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


class HostKeyError(Exception):
    """The host's key is unknown or changed; the message says which key and what to do."""


class _RecordNewKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        os.makedirs(os.path.dirname(self.known_hosts), exist_ok=True)
        with open(self.known_hosts, "a", encoding="ascii") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        fingerprint = _sha256_fingerprint(key)
        raise HostKeyError(
            f"unknown host key {key.get_name()} {fingerprint}; if that is the host's key, add it with "
            f"'ssh-keyscan -H {hostname} >> {self.known_hosts}' (after checking the fingerprint) "
            "or launch with --accept-new-host-keys")


def _sha256_fingerprint(key: paramiko.PKey) -> str:
    """The fingerprint OpenSSH prints: SHA256:base64-without-padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class SSHProcess:
    """A process started through an SSH channel, run under ``trainer.remote``.

    Closing the channel's stdin (``stop``) makes the remote wrapper end its process group.
    """

    pid = None  # the remote pid is in the run's pid files on that host

    def __init__(self, connection: fabric.Connection, channel: paramiko.Channel) -> None:
        self._connection = connection
        self._channel = channel
        self.stdout = _Lines(channel)

    def poll(self) -> int | None:
        if not self._channel.exit_status_ready():
            if self._connection.transport is not None and not self._connection.transport.is_active():
                return CONNECTION_LOST
            return None
        code = self._channel.recv_exit_status()
        return CONNECTION_LOST if code == -1 else code

    def stop(self, *, grace_s: float) -> None:
        try:
            self._channel.shutdown_write()  # EOF on the wrapper's stdin: it stops its group
        except (OSError, EOFError, paramiko.SSHException):
            pass
        self._channel.status_event.wait(grace_s + 6.0)
        self._channel.close()
        self._connection.close()


class _Lines:
    """Iterate a channel's stdout as text lines (stderr is merged into it)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._file = channel.makefile("rb")

    def __iter__(self):
        for raw in self._file:
            yield raw.decode("utf-8", errors="replace")


class SSHHost:
    """One remote host: commands, processes and the OpenSSH argv for bulk copies."""

    def __init__(self, spec: HostSpec, options: SSHOptions) -> None:
        self.spec = spec
        self.options = options
        self.label = spec.label

    def _config(self) -> fabric.Config:
        return fabric.Config(runtime_ssh_path=self.options.ssh_config) if self.options.ssh_config \
            else fabric.Config()

    def connect(self) -> fabric.Connection:
        """A new, open connection with strict host-key checking. Raises HostKeyError or OSError-likes."""
        conn = fabric.Connection(self.spec.name, user=self.spec.user, port=self.spec.port, config=self._config(),
                                 connect_timeout=self.options.connect_timeout_s)
        known_files = [os.path.expanduser("~/.ssh/known_hosts")]
        for path in conn.ssh_config.get("userknownhostsfile", "").split():
            known_files.append(os.path.expanduser(path))
        for path in known_files:
            if os.path.isfile(path):
                conn.client.load_host_keys(path)
        record_to = known_files[-1]
        policy = _RecordNewKey(record_to) if self.options.accept_new_host_keys else _RefuseUnknownKey(record_to)
        conn.client.set_missing_host_key_policy(policy)
        try:
            conn.open()
        except paramiko.BadHostKeyException as err:
            conn.close()
            raise HostKeyError(
                f"host key changed: it offers {_sha256_fingerprint(err.key)}, known_hosts has "
                f"{_sha256_fingerprint(err.expected_key)}; if the host was reinstalled, remove the old key with "
                f"'ssh-keygen -R {self.spec.name}', else someone may be intercepting the connection") from None
        except paramiko.SSHException as err:
            conn.close()
            if isinstance(err.__context__, HostKeyError):
                raise err.__context__ from None
            raise
        except HostKeyError:
            conn.close()
            raise
        return conn

    @property
    def address(self) -> str:
        """The address other hosts reach this one at: HostName from the SSH config, else the name."""
        conn = fabric.Connection(self.spec.name, user=self.spec.user, port=self.spec.port, config=self._config())
        return conn.host

    def run(self, argv: Sequence[str], *, timeout_s: float = 60.0):
        """Run a command to completion; returns (exit code, stdout, stderr)."""
        conn = self.connect()
        try:
            result = conn.run(remote_command(argv), hide=True, warn=True, timeout=timeout_s, in_stream=False)
            return result.exited, result.stdout, result.stderr
        finally:
            conn.close()

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> SSHProcess:
        conn = self.connect()
        channel = conn.transport.open_session()
        channel.set_combine_stderr(True)
        channel.exec_command(remote_command(argv, env=env, cwd=cwd))
        return SSHProcess(conn, channel)

    def openssh_argv(self) -> list[str]:
        """``ssh ... HOST`` with the same config, user, port and host-key strictness."""
        argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"Ciphers={_CIPHERS}",
                "-o", f"ConnectTimeout={int(self.options.connect_timeout_s)}",
                "-o", "StrictHostKeyChecking=" + ("accept-new" if self.options.accept_new_host_keys else "yes")]
        if self.options.ssh_config:
            argv += ["-F", self.options.ssh_config]
        if self.spec.port:
            argv += ["-p", str(self.spec.port)]
        if self.spec.user:
            argv += ["-l", self.spec.user]
        return argv + [self.spec.name]

    def stream_to(self, command: str) -> subprocess.Popen:
        """Start ``command`` on the host with a pipe to its stdin (for bulk copies)."""
        return subprocess.Popen(self.openssh_argv() + [command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, bufsize=0)

    def stream_from(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(self.openssh_argv() + [command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
