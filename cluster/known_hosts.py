"""Host keys checked as OpenSSH checks them, for paramiko (fabric) connections.

paramiko's own check looks a host up under its address only (never ``HostKeyAlias``),
trusts whichever of the files it was given names the host first, reads no
``GlobalKnownHostsFile`` unless told, and ignores ``@revoked`` lines. mxft therefore
keeps paramiko's key store empty and decides here, for every connection it opens,
a ProxyJump bastion's included (``CheckKnownHosts``):

- the name looked up is the ``HostKeyAlias`` if the SSH config sets one, else the host
  name (``[name]:port`` off port 22), matched against hashed names and ``*``/``?``/``!``
  patterns as OpenSSH matches them;
- every user and global known-hosts file is read (``KnownHostsLookup``);
- a key listed ``@revoked`` is refused; a key pinned for the name in any file is accepted;
- a name with other pinned keys (any file, any type) or a ``@cert-authority`` line is
  refused as a *changed* key, with or without ``--accept-new-host-keys``;
- only a name no file knows is new: refused, or with accept-new recorded in the first
  user file (hashed when ``HashKnownHosts`` is on), where OpenSSH finds it too.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Sequence

import paramiko


class HostKeyError(Exception):
    """The host's key is unknown, changed or revoked (``state``); the message says which key and what to do."""

    def __init__(self, message: str, *, state: str = "unknown") -> None:
        super().__init__(message)
        self.state = state   # unknown | changed | revoked


@dataclasses.dataclass(frozen=True)
class KnownKey:
    """One known-hosts line that names the host being checked."""

    path: str
    line: int
    marker: str         # "", "@revoked" or "@cert-authority"
    key_type: str
    blob: bytes         # the public key as the server sends it


@dataclasses.dataclass(frozen=True)
class KnownHostsLookup:
    """Where a host's pinned keys are: the name to look up and the files, as the SSH config says."""

    name: str                              # HostKeyAlias, or host / [host]:port
    user_files: tuple[str, ...]            # UserKnownHostsFile (new keys go to the first)
    global_files: tuple[str, ...]          # GlobalKnownHostsFile
    hash_new: bool = False                 # HashKnownHosts: record new keys under a hashed name
    note: str = ""                         # appended to an "unknown key" message (e.g. about $HOME)

    @property
    def files(self) -> tuple[str, ...]:
        return self.user_files + self.global_files


def fingerprint(blob: bytes) -> str:
    """The fingerprint OpenSSH prints: SHA256:base64-without-padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _pattern_regex(pattern: str) -> re.Pattern:
    """OpenSSH's host patterns: ``*`` and ``?`` only (``[`` is literal: ``[host]:2222``)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()))


def host_matches(hosts_field: str, name: str) -> bool:
    """Whether a known-hosts line's first field names ``name``.

    >>> host_matches("10.0.0.*,!10.0.0.9", "10.0.0.7"), host_matches("10.0.0.*,!10.0.0.9", "10.0.0.9")
    (True, False)
    """
    if hosts_field.startswith("|1|"):
        parts = hosts_field.split("|")
        try:
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
        except (IndexError, binascii.Error):
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    matched = False
    for pattern in hosts_field.split(","):
        negated = pattern.startswith("!")
        if _pattern_regex(pattern[1:] if negated else pattern).fullmatch(name.lower()):
            if negated:
                return False
            matched = True
    return matched


def _parse_line(text: str) -> tuple[str, str, str, bytes] | None:
    """``[@marker] hosts type base64 [comment]`` -> (marker, hosts, type, key bytes); None if not a key line."""
    fields = text.split()
    marker = fields.pop(0) if fields and fields[0].startswith("@") else ""
    if len(fields) < 3 or marker not in ("", "@revoked", "@cert-authority"):
        return None
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except binascii.Error:
        return None
    return marker, fields[0], fields[1], blob


def keys_for(name: str, files: Sequence[str]) -> list[KnownKey]:
    """Every line of ``files`` (missing or unreadable ones skipped, as OpenSSH does) that names ``name``."""
    found = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for number, text in enumerate(lines, 1):
            text = text.strip()
            parsed = _parse_line(text) if text and not text.startswith("#") else None
            if parsed and host_matches(parsed[1], name):
                found.append(KnownKey(path, number, parsed[0], parsed[2], parsed[3]))
    return found


def decide(key_type: str, blob: bytes, pinned: Sequence[KnownKey]) -> tuple[str, KnownKey | None]:
    """``known`` | ``new`` | ``changed`` | ``revoked``, with the line that decided it.

    A name with any pinned key (or a certificate authority) that is not this key is ``changed``.
    """
    for entry in pinned:
        if entry.marker == "@revoked" and entry.blob == blob:
            return "revoked", entry
    for entry in pinned:
        if not entry.marker and entry.blob == blob:
            return "known", entry
    others = [entry for entry in pinned if entry.marker != "@revoked"]
    if others:
        return "changed", next((e for e in others if e.key_type == key_type and not e.marker), others[0])
    return "new", None


def pinned_key_types(pinned: Sequence[KnownKey]) -> tuple[str, ...]:
    """The host-key algorithms to ask the server for first, so it offers a key we know."""
    types: list[str] = []
    for entry in pinned:
        if not entry.marker:
            types += ["rsa-sha2-512", "rsa-sha2-256"] if entry.key_type == "ssh-rsa" else [entry.key_type]
    return tuple(dict.fromkeys(types))


def prefer_key_types(key_types: Sequence[str]):
    """A paramiko ``transport_factory`` that asks for ``key_types`` first (OpenSSH orders them the same way)."""
    def make(sock, **kwargs) -> paramiko.Transport:  # paramiko 2.12-3.x also pass gss_kex, gss_deleg_creds
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        offered = list(options.key_types)
        options.key_types = [t for t in offered if t in key_types] + [t for t in offered if t not in key_types]
        return transport
    return make


def record_line(name: str, key: paramiko.PKey, *, hashed: bool) -> str:
    """The known-hosts line OpenSSH writes for a newly accepted key."""
    if hashed:
        salt = os.urandom(20)
        digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        name = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{name} {key.get_name()} {key.get_base64()}\n"


class CheckKnownHosts(paramiko.MissingHostKeyPolicy):
    """The one host-key decision for a paramiko client whose own key store is empty.

    ``who`` prefixes messages about a host other than the one the user named (a bastion).
    """

    def __init__(self, lookup: KnownHostsLookup, *, accept_new: bool, who: str = "") -> None:
        self.lookup = lookup
        self.accept_new = accept_new
        self.who = who

    def missing_host_key(self, client, hostname, key) -> None:
        blob = key.asbytes()
        verdict, entry = decide(key.get_name(), blob, keys_for(self.lookup.name, self.lookup.files))
        if verdict == "known":
            return
        if verdict == "new" and self.accept_new:
            self._record(key)
            return
        raise HostKeyError(self.who + _refusal(verdict, entry, key.get_name(), blob, self.lookup),
                           state=verdict if verdict in ("changed", "revoked") else "unknown")

    def _record(self, key: paramiko.PKey) -> None:
        if not self.lookup.user_files:
            raise HostKeyError(f"{self.who}cannot record the new host key of {self.lookup.name}: "
                               "UserKnownHostsFile is none")
        path = self.lookup.user_files[0]
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            with open(path, "a", encoding="ascii") as handle:
                handle.write(record_line(self.lookup.name, key, hashed=self.lookup.hash_new))
        except OSError as err:
            raise HostKeyError(f"{self.who}cannot record the new host key of {self.lookup.name} in {path}: "
                               f"{err.strerror}") from None


def _refusal(verdict: str, entry: KnownKey | None, key_type: str, blob: bytes, lookup: KnownHostsLookup) -> str:
    """One line: what was offered, which file line disagrees (or that none knows it), what to do."""
    offered = f"{key_type} {fingerprint(blob)}"
    if verdict == "revoked":
        return f"host key revoked: {offered} is marked @revoked in {entry.path}:{entry.line}"
    if verdict == "changed" and entry.marker == "@cert-authority":
        return (f"host key changed: it offers {offered}, but {entry.path}:{entry.line} trusts a certificate "
                f"authority for {lookup.name}, which mxft cannot check; add the host's own key to "
                f"{entry.path} after checking it")
    if verdict == "changed":
        return (f"host key changed: it offers {offered}, {entry.path}:{entry.line} has {entry.key_type} "
                f"{fingerprint(entry.blob)} for {lookup.name}; if the host was reinstalled, remove the old key "
                f"with 'ssh-keygen -R {lookup.name} -f {entry.path}', else someone may be intercepting the connection")
    record_to = lookup.user_files[0] if lookup.user_files else "a known-hosts file"
    return (f"unknown host key {offered}: no known-hosts file lists {lookup.name} "
            f"(read: {', '.join(lookup.files) or 'none'}); if that is the host's key, add it to {record_to} "
            f"(e.g. ssh-keyscan, after checking the fingerprint) or launch with --accept-new-host-keys"
            + lookup.note)
