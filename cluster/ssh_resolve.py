"""One reading of the SSH configuration, OpenSSH's own, used by both of mxft's SSH stacks.

fabric/paramiko (preflight, process starts) and OpenSSH (staging streams, fetching
results) must agree on where a host is and which keys it may have, or one trusts what
the other refuses. ``resolve_target`` asks OpenSSH what it makes of its configuration
(``ssh -G HOST``: every ``Include``, ``Match`` and default as OpenSSH follows them) and
both stacks use that answer: fabric connects to the resolved address, port, user and
identity files with no configuration of its own; OpenSSH is told the trust settings
explicitly (``cluster.ssh.openssh_options``).

What is read: ``HostName``, ``Port``, ``User``, ``IdentityFile``, ``UserKnownHostsFile``
(default ``~/.ssh/known_hosts ~/.ssh/known_hosts2``), ``GlobalKnownHostsFile``,
``HostKeyAlias``, ``HashKnownHosts``, ``ProxyJump``, ``ProxyCommand``. ``~`` is the
account's home directory from the password database, as in OpenSSH, not ``$HOME``; when
the two differ an unknown-key message says so.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import pwd
import re
import subprocess

import paramiko

from cluster.known_hosts import KnownHostsLookup

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


def openssh_reading(name: str, *, port: int | None = None, user: str | None = None,
                    ssh_config: str | None = None) -> dict[str, list[str]]:
    """What OpenSSH itself makes of its configuration for ``name`` (``ssh -G``: every option resolved, with its
    ``Include``, ``Match`` and defaults; nothing is contacted): option -> its values, as OpenSSH prints them."""
    argv = ["ssh", "-G", *(["-F", ssh_config] if ssh_config else []), *(["-p", str(port)] if port else []),
            *(["-l", user] if user else []), "--", name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=READ_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SSHConfigError("OpenSSH's ssh is not installed on this machine (mxft reads the SSH configuration "
                             "through ssh -G and copies files with it)") from None
    except subprocess.TimeoutExpired:
        raise SSHConfigError(f"ssh -G {name} did not answer within {READ_TIMEOUT_S} s") from None
    if done.returncode != 0:
        said = "; ".join(done.stderr.strip().splitlines()[:2])[:300] or "no reason given"
        raise SSHConfigError(f"OpenSSH cannot read its configuration for {name}: {said}")
    found: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        found.setdefault(key, []).append(value)
    return found


READ_TIMEOUT_S = 10


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
    identity_files: tuple[str, ...] = ()   # IdentityFile, expanded, those that exist


def resolve_target(name: str, *, port: int | None = None, user: str | None = None,
                   ssh_config: str | None = None) -> SSHTarget:
    """OpenSSH's reading of its config for ``name`` (``ssh -G``); ``port`` and ``user`` (the hosts file's) win
    over it, as ``-p``/``-l`` do."""
    found = openssh_reading(name, port=port, user=user, ssh_config=ssh_config)

    def one(key: str, default: str | None = None) -> str | None:
        return found.get(key, [default])[0]

    hostname, port, user = one("hostname", name), int(one("port", "22")), user or one("user")
    alias = one("hostkeyalias")
    key_name = alias or (hostname.lower() if port == 22 else f"[{hostname.lower()}]:{port}")
    tokens = {"d": account_home(), "u": _account_name(), "h": hostname, "n": name, "p": str(port),
              "r": user or _account_name(), "k": alias or name, "i": str(os.getuid()), "%": "%"}
    lookup = KnownHostsLookup(
        key_name, _file_list(one("userknownhostsfile", USER_KNOWN_HOSTS)),
        _file_list(one("globalknownhostsfile", GLOBAL_KNOWN_HOSTS)),
        hash_new=(one("hashknownhosts", "no") or "no").lower() == "yes", note=_home_note())
    jump = one("proxyjump", "none")
    hops = () if jump.lower() == "none" else tuple(hop.strip() for hop in jump.split(",") if hop.strip())
    command = one("proxycommand", "none")
    proxy = None if hops or command.lower() == "none" else _expand(command, tokens)
    identities = tuple(path for path in (_expand_path(f, tokens) for f in found.get("identityfile", ()))
                       if os.path.isabs(path) and os.path.isfile(path))
    return SSHTarget(name, hostname, port, user, alias, lookup, hops, proxy, ssh_config, identities)


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


def _file_list(value: str) -> tuple[str, ...]:
    """A known-hosts file list as ``ssh -G`` prints it (``~`` and tokens expanded already); ``none`` is no file.

    OpenSSH prints the list unquoted: a word that does not start with ``/`` or ``~`` continues the path before it
    (``/k/with space``), so paths with spaces come back whole unless a space is followed by ``/`` in one. An OpenSSH
    that leaves ``~`` unexpanded (8.3 and older) gets it expanded here, to the account's home; a path that is still
    not absolute is left out (it would name a file in whatever folder the launch started from).

    >>> _file_list("/root/.ssh/k1 /root/k 2 /k/10.0.0.7-2222"), _file_list("none")
    (('/root/.ssh/k1', '/root/k 2', '/k/10.0.0.7-2222'), ())
    """
    if value.strip().lower() == "none":
        return ()
    paths: list[str] = []
    for word in value.split(" "):
        if paths and not word.startswith(("/", "~")):
            paths[-1] += " " + word
        else:
            paths.append(word)
    expanded = (_expand_path(path, {}) if path.startswith("~") else path for path in paths if path)
    return tuple(os.path.normpath(path) for path in expanded if os.path.isabs(path))


def _expand(text: str, tokens: dict[str, str]) -> str:
    """OpenSSH's ``%`` tokens in ``text`` (a ProxyCommand), as ``ssh`` expands them when it connects."""
    return re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), text)


def _expand_path(word: str, tokens: dict[str, str]) -> str:
    """An IdentityFile as OpenSSH finds it: ``~`` (the account's home), ``~user``, ``%`` tokens (a path that is
    then not absolute is returned as it is: callers take absolute ones only)."""
    if word == "~" or word.startswith("~/"):
        word = account_home() + word[1:]
    elif word.startswith("~"):
        user, _, rest = word[1:].partition("/")
        try:
            word = os.path.join(pwd.getpwnam(user).pw_dir, rest)
        except KeyError:
            pass
    return _expand(word, tokens)


def _home_note() -> str:
    home = os.environ.get("HOME")
    if home and os.path.realpath(home) != os.path.realpath(account_home()):
        return (f"; note: ~ is {account_home()}, your account's home, for mxft as for OpenSSH, "
                f"not $HOME ({home})")
    return ""
