"""Hosts files: ``HOST[:PORT] [slots=N] [user=NAME] [python=PATH] [addr=IP]`` per line.

``#`` starts a comment; blank lines are ignored; a bare IP per line (the format of
MXNet's tools/launch.py) is valid. ``slots`` is how many devices (GPUs) the host
offers, as in DeepSpeed's and MPI's hostfiles; ``python`` the interpreter with mxnet
there (default ``python3``); ``addr`` the address ps-lite binds and advertises on that
host, for a training network other than the one SSH reaches (default: the SSH address).
Example::

    # hosts.txt
    gpu01 slots=8
    gpu02:2222 slots=8 user=train addr=10.1.0.7
    10.0.0.7
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re

from cluster.errors import InputError

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*))"
                   r"(?::(?P<port>[0-9]{1,5}))?$")
MAX_HOSTS = 10_000    # lines of one hosts file (or nodes of a Slurm allocation)
MAX_SLOTS = 1024      # slots= of one host
_LOWEST_ODD_PORT = 100  # HOST:N with N below this (but 22) reads as horovodrun's HOST:SLOTS, and is refused


class Launcher(str, enum.Enum):
    """How the processes of the hosts that are not this machine start (``--launcher``; a plan's JSON has the value)."""

    SSH = "ssh"
    SRUN = "srun"   # job steps of the Slurm allocation the launcher runs in (cluster.srun)


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """One line of a hosts file."""

    name: str
    port: int | None = None
    slots: int | None = None
    user: str | None = None
    line: int = 0
    python: str | None = None
    addr: str | None = None        # ps-lite's address on this host (the training network), if not the SSH one
    source: str = dataclasses.field(default="", compare=False)  # the hosts file it was read from, for messages

    @property
    def where(self) -> str:
        """Where a message about this host points: ``hosts.txt:3``, or the host when it came from no file."""
        return f"{self.source}:{self.line}" if self.source and self.line else f"line {self.line}" if self.line \
            else self.label

    @property
    def is_local(self) -> bool:
        return self.name in LOCAL_NAMES and self.port is None

    @property
    def label(self) -> str:
        return self.name if self.port is None else f"{self.name}:{self.port}"


def _parse_line(text: str, where: str, line_no: int) -> HostSpec:
    fields = text.split()
    match = _HOST.match(fields[0])
    if not match and "@" in fields[0]:
        user, _, host = fields[0].rpartition("@")
        raise InputError(where, f"'{fields[0]}': a user goes in a field of its own",
                         hint=f"write it as '{host} user={user}'")
    if not match:
        raise InputError(where, f"'{fields[0]}' is not a host name or address", hint="expected HOST[:PORT]")
    name = match.group("v6") or match.group("name")
    if name.startswith("-"):  # ssh and other tools would read it as an option
        raise InputError(where, f"'{name}' is not a host name: it starts with '-'")
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise InputError(where, f"port {port} is not in 1-65535")
    if port is not None and int(port) < _LOWEST_ODD_PORT and int(port) != 22:
        raise InputError(where, f"'{fields[0]}': SSH port {int(port)}? horovodrun and MPI hostfiles write a "
                         "host's slots this way", hint=f"write '{name} slots={int(port)}' for {int(port)} "
                         f"slots, or give the SSH port (22, or {_LOWEST_ODD_PORT} and up)")
    options: dict[str, str] = {}
    for field in fields[1:]:
        key, sep, value = field.partition("=")
        if not sep or key not in ("slots", "user", "python", "addr"):
            raise InputError(where, f"unknown field '{field}'",
                             hint="expected slots=N, user=NAME, python=PATH or addr=IP")
        if key in options:
            raise InputError(where, f"'{key}' is given twice")
        options[key] = value
    slots = options.get("slots")
    if slots is not None and not (re.fullmatch(r"[0-9]+", slots) and slots.lstrip("0")):
        raise InputError(where, f"slots must be a whole number >= 1, got '{slots}'")
    if slots is not None and (len(slots.lstrip("0")) > 6 or int(slots) > MAX_SLOTS):
        raise InputError(where, f"slots={slots} is more than {MAX_SLOTS}")
    user = options.get("user")
    if user is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", user):
        raise InputError(where, f"'{user}' is not a user name")
    python = options.get("python")
    if python is not None and not python:
        raise InputError(where, "python= needs a path")
    if python is not None and python.startswith("~"):  # run as one quoted word there: no shell expands it
        raise InputError(where, f"python={python}: '~' is not expanded on the host",
                         hint="give the full path, e.g. python=/home/USER/venv/bin/python")
    return HostSpec(name, int(port) if port else None, int(slots) if slots else None, user, line_no, python,
                    _address(options.get("addr"), where))


def _address(text: str | None, where: str) -> str | None:
    """``addr=``: an IPv4 address (what ps-lite binds and advertises; its zmq transport takes no IPv6), not a name."""
    if text is None:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InputError(where, f"addr={text} is not an IPv4 address (ps-lite cannot use IPv6 or names)",
                         hint="give the host's address on the training network, e.g. addr=10.1.0.7") from None


def parse_hosts(text: str, source: str) -> tuple[HostSpec, ...]:
    """Parse the text of a hosts file; raises InputError naming ``source:line``."""
    hosts: list[HostSpec] = []
    seen: dict[tuple[str, int | None], int] = {}
    for line_no, raw in enumerate(text.splitlines(), 1):
        text_part = raw.split("#", 1)[0].strip()
        if not text_part:
            continue
        where = f"{source}:{line_no}"
        if len(hosts) == MAX_HOSTS:
            raise InputError(where, f"more than {MAX_HOSTS} hosts")
        host = dataclasses.replace(_parse_line(text_part, where, line_no), source=source)
        key = (host.name, host.port)
        if key in seen:
            raise InputError(where, f"host '{host.label}' is already listed on line {seen[key]}")
        seen[key] = line_no
        hosts.append(host)
    if not hosts:
        raise InputError(source, "lists no hosts",
                         hint="one HOST[:PORT] [slots=N] [user=NAME] [python=PATH] [addr=IP] per line")
    return tuple(hosts)


def load_hosts(path: str) -> tuple[HostSpec, ...]:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_hosts(handle.read(), path)
    except FileNotFoundError:
        raise InputError(path, "hosts file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the hosts file: {err}") from None


def select_hosts(hosts: tuple[HostSpec, ...], *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                 where: str = "the hosts file") -> tuple[HostSpec, ...]:
    """The hosts ``--include`` keeps (all when empty) less those ``--exclude`` drops, in the file's order; each name
    (a host's name, or NAME:PORT) must be one of ``hosts``, and at least one host must remain.

    >>> hosts = (HostSpec("gpu01"), HostSpec("gpu02"), HostSpec("gpu03", port=2222))
    >>> [h.label for h in select_hosts(hosts, include=("gpu03:2222", "gpu01"))]
    ['gpu01', 'gpu03:2222']
    >>> [h.label for h in select_hosts(hosts, exclude=("gpu02",))]
    ['gpu01', 'gpu03:2222']
    >>> select_hosts(hosts, exclude=("gpu04",))
    Traceback (most recent call last):
    cluster.errors.InputError: --exclude gpu04: not a host of the hosts file (its hosts: gpu01, gpu02, gpu03:2222)
    """
    known = {name: host for host in hosts for name in (host.label, host.name)}
    for option, names in (("--include", include), ("--exclude", exclude)):
        for name in names:
            if name not in known:
                shown = ", ".join(h.label for h in hosts[:8]) + (", ..." if len(hosts) > 8 else "")
                raise InputError(f"{option} {name}", f"not a host of {where} (its hosts: {shown})")
    kept = {known[name].label for name in include} if include else {h.label for h in hosts}
    kept -= {known[name].label for name in exclude}
    if not kept:
        raise InputError("--exclude" if exclude else "--include", f"leaves none of the hosts of {where}")
    return tuple(h for h in hosts if h.label in kept)
