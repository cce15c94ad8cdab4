"""One reading of the SSH configuration, used by both of mxft's SSH stacks.

fabric/paramiko (preflight, process starts) and OpenSSH (staging streams, fetching
results) must agree on where a host is and which keys it may have, or one trusts what
the other refuses. ``resolve_target`` reads the config once per connection and both use
its answer: fabric gets the same parsed ``paramiko.SSHConfig``; OpenSSH is told the
trust settings explicitly (``cluster.ssh.openssh_options``), so an ``Include`` or
``Match`` that paramiko does not follow cannot change what it checks.

The files are OpenSSH's: ``--ssh-config FILE`` alone, else ``~/.ssh/config`` then
``/etc/ssh/ssh_config``; ``UserKnownHostsFile`` (default ``~/.ssh/known_hosts
~/.ssh/known_hosts2``), ``GlobalKnownHostsFile`` (default ``/etc/ssh/ssh_known_hosts
/etc/ssh/ssh_known_hosts2``), ``HostKeyAlias``, ``HashKnownHosts``, ``ProxyJump``. ``~``
is the account's home directory from the password database, as in OpenSSH, not
``$HOME``; when the two differ an unknown-key message says so.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import pwd
import re
import shlex

import paramiko

from cluster.known_hosts import KnownHostsLookup

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
MAX_JUMPS = 8   # ProxyJump hops followed before a chain is taken for a loop


class SSHConfigError(paramiko.SSHException):
    """The SSH config names something mxft cannot follow (a ProxyJump loop, a malformed hop)."""


def account_home() -> str:
    """The home directory OpenSSH uses: the password database's, whatever ``$HOME`` says."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def _account_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return getpass.getuser()


def config_files(ssh_config: str | None) -> tuple[str, ...]:
    """The config files OpenSSH reads: ``-F FILE`` alone, else the account's then the system's."""
    if ssh_config:
        return (os.path.abspath(ssh_config),)
    return (os.path.join(account_home(), ".ssh", "config"), SYSTEM_CONFIG)


def load_config(ssh_config: str | None) -> paramiko.SSHConfig:
    config = paramiko.SSHConfig()
    for path in config_files(ssh_config):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                config.parse(handle)
    return config


@dataclasses.dataclass(frozen=True)
class SSHTarget:
    """Where one host is and how its key is checked, as the SSH config says."""

    name: str                          # as the hosts file (or a ProxyJump) names it: what Host blocks match
    hostname: str                      # HostName
    port: int
    user: str | None
    host_key_alias: str | None
    known_hosts: KnownHostsLookup
    proxy_jump: tuple[str, ...]        # ProxyJump hops, first hop first; () for a direct connection
    proxy_command: str | None
    ssh_config: str | None             # --ssh-config, for the hops
    config: paramiko.SSHConfig = dataclasses.field(compare=False, repr=False, default=None)


def resolve_target(name: str, *, port: int | None = None, user: str | None = None,
                   ssh_config: str | None = None) -> SSHTarget:
    """Read the SSH config for ``name``; ``port`` and ``user`` (the hosts file's) win over it, as ``-p``/``-l`` do."""
    config = load_config(ssh_config)
    found = config.lookup(name)
    hostname = found.get("hostname", name)
    port = port or int(found.get("port", 22))
    user = user or found.get("user")
    alias = found.get("hostkeyalias")
    key_name = alias or (hostname.lower() if port == 22 else f"[{hostname.lower()}]:{port}")
    local_user = _account_name()
    tokens = {"d": account_home(), "u": local_user, "h": hostname, "n": name, "p": str(port),
              "r": user or local_user, "k": alias or name, "i": str(os.getuid()), "%": "%"}
    lookup = KnownHostsLookup(
        key_name, _paths(found.get("userknownhostsfile", USER_KNOWN_HOSTS), tokens),
        _paths(found.get("globalknownhostsfile", GLOBAL_KNOWN_HOSTS), tokens),
        hash_new=found.get("hashknownhosts", "no").lower() == "yes", note=_home_note())
    jump = found.get("proxyjump", "none")
    hops = () if jump.lower() == "none" else tuple(hop.strip() for hop in jump.split(",") if hop.strip())
    return SSHTarget(name, hostname, port, user, alias, lookup, hops,
                     None if hops else found.get("proxycommand"), ssh_config, config)


def jump_of(target: SSHTarget, *, depth: int = 0) -> SSHTarget | None:
    """The host ``target`` is reached through (ProxyJump's last hop), resolved like any host; None if direct.

    As in OpenSSH, the last hop is reached through the earlier hops, or, when it is the only
    one, through its own ProxyJump. A hop that is the target itself is ignored (as fabric does).
    """
    if not target.proxy_jump:
        return None
    if depth >= MAX_JUMPS:
        raise SSHConfigError(f"ProxyJump for {target.name} goes more than {MAX_JUMPS} hops deep (a loop?)")
    *earlier, last = target.proxy_jump
    hop_user, hop_name, hop_port = _parse_hop(last)
    jump = resolve_target(hop_name, port=hop_port, user=hop_user, ssh_config=target.ssh_config)
    if (jump.hostname, jump.port) == (target.hostname, target.port):
        return None
    if earlier:
        jump = dataclasses.replace(jump, proxy_jump=tuple(earlier), proxy_command=None)
    return jump


def _parse_hop(text: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` or ``ssh://[user@]host[:port]`` -> (user, host, port).

    >>> _parse_hop("ops@[fe80::1]:2222"), _parse_hop("bastion")
    (('ops', 'fe80::1', 2222), (None, 'bastion', None))
    """
    text = text[len("ssh://"):] if text.startswith("ssh://") else text
    user, _, rest = text.rpartition("@")
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<port6>\d+))?|(?P<name>[^:\[\]]+)(?::(?P<port>\d+))?", rest)
    if not match:
        raise SSHConfigError(f"ProxyJump hop '{text}' is not [user@]host[:port]")
    port = match.group("port6") or match.group("port")
    return user or None, match.group("v6") or match.group("name"), int(port) if port else None


def _paths(value: str, tokens: dict[str, str]) -> tuple[str, ...]:
    """A known-hosts file list as OpenSSH reads it: quoted words, ``~``, ``%`` tokens; ``none`` is no file.

    A token or ``~user`` mxft does not know stays as written: both stacks then read that same (literal) path.
    """
    if value.strip().lower() == "none":
        return ()
    paths = []
    for word in shlex.split(value):
        if word == "~" or word.startswith("~/"):
            word = account_home() + word[1:]
        elif word.startswith("~"):
            user, _, rest = word[1:].partition("/")
            try:
                word = os.path.join(pwd.getpwnam(user).pw_dir, rest)
            except KeyError:
                pass
        paths.append(os.path.abspath(re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), word)))
    return tuple(paths)


def _home_note() -> str:
    home = os.environ.get("HOME")
    if home and os.path.realpath(home) != os.path.realpath(account_home()):
        return (f"; note: ~ is {account_home()}, your account's home, for mxft as for OpenSSH, "
                f"not $HOME ({home})")
    return ""
