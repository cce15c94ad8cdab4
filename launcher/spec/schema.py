"""One declaration per job key: ``key(...)`` and ``section(...)`` fields of frozen dataclasses, read from YAML
(``read_section``) and written back as a job file says it (``to_yaml_dict``) or as plain JSON values (``plain``)."""
from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cluster.secret import Secret
from launcher.spec.yamlfields import Fields


def key(default: Any = dataclasses.MISSING, *, check: Callable[[Any], Any], help: str,
        factory: Callable[[], Any] | None = None, path: bool = False,
        to_yaml: Callable[[Any], Any] | None = None) -> Any:
    """A job key: its check (raises ValueError saying what it expects), default and help.

    ``path``: a file path (``~``, ``${VAR}``, relative to the job file); ``to_yaml``: how
    the value is written back into a job file when its Python form differs.
    """
    metadata = {"check": check, "help": help, "path": path, "to_yaml": to_yaml}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, *, help: str, required: bool = False, optional: bool = False,
            read: Callable[["Fields", Callable], Any] | None = None, allowed: Sequence[str] | None = None,
            to_yaml: Callable[[Any], Any] | None = None) -> Any:
    """A mapping of keys (``cls``'s own ``key`` fields); ``optional``: None when absent.

    ``read``/``allowed``/``to_yaml`` replace the generic reading for a section whose YAML
    shape is not its dataclass's (the initializer's flat ``{type: xavier, magnitude: 2}``).
    """
    metadata = {"section": cls, "help": help, "read": read, "allowed": allowed, "to_yaml": to_yaml,
                "required": required, "optional": optional}
    if required:
        return dataclasses.field(metadata=metadata)
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(default_factory=cls, metadata=metadata)


def keys_of(cls: type) -> tuple[str, ...]:
    """The YAML keys of a section class, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if "check" in f.metadata or "section" in f.metadata)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def read_section(cls: type, fields: Fields, expand: Callable[[Fields, str, str], str], **given: Any) -> Any:
    """Build ``cls`` from one mapping of the file: every key checked, defaulted or refused."""
    values = dict(given)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "section" in meta:
            if meta["optional"] and fields.raw.get(field.name) is None:
                values[field.name] = None
                continue
            sub = fields.section(field.name, meta["allowed"] or keys_of(meta["section"]), required=meta["required"])
            values[field.name] = (meta["read"] or functools.partial(read_section, meta["section"]))(sub, expand)
        elif "check" in meta:
            value = fields.get(field.name, meta["check"], _default_of(field))
            values[field.name] = expand(fields, field.name, value) if meta["path"] and value else value
    return cls(**values)


def plain(value: Any) -> Any:
    """JSON/YAML-ready: enums as their values, tuples as lists, mappings as dicts, dataclasses as dicts,
    secrets as where they came from (never their value)."""
    if isinstance(value, Secret):
        return value.shown
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def to_yaml_dict(spec: Any) -> dict[str, Any]:
    """A section as a job file says it: ``read_section`` of it gives it back (unset keys left out)."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(spec):
        meta = field.metadata
        if "check" not in meta and "section" not in meta:
            continue
        value = getattr(spec, field.name)
        if meta["to_yaml"] is not None:
            value = meta["to_yaml"](value)
        elif "section" in meta:
            value = None if value is None else to_yaml_dict(value)
        else:
            value = plain(value)
        if value is not None and value != "" and not ("section" in meta and value == {}):
            out[field.name] = value  # unset keys and empty sections are left out; an empty mapping value stays
    return out

