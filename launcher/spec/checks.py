"""What a job key's value may be: each check takes the value YAML gave and returns it typed, or raises ValueError
saying what was expected (``launcher.spec.yamlfields`` adds the file and line)."""
from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Callable
from typing import Any

from cluster.secret import Secret

# Caps on counts, checked before anything is built from them (a list per process, per device).
MAX_PROCESSES = 4096        # workers or servers of one job
MAX_DEVICES = 256           # GPUs or CPU contexts of one worker
AUTO = "auto"  # cluster.workers / cluster.servers: decided from the hosts (launcher.plan.assign_workers)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")   # a run's name: one plain folder name, no path
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")            # an environment variable's name (never an option)


def at_least(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value
    return check


def count(value: Any) -> int:
    """A number of processes: 1 .. MAX_PROCESSES."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PROCESSES:
        raise ValueError(f"an integer from 1 to {MAX_PROCESSES}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value


def choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"one of {', '.join(options)}")
        return value
    return check


def interface(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", value) or value.startswith("-"):
        raise ValueError("a network interface name, e.g. eth1 or ib0")
    return value


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError("a number between 0 and 1")
    return float(value)


def positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1e6:
        raise ValueError("a number above 0")
    return float(value)


def sha256(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("64 hexadecimal digits")
    return value.lower()


def shape(value: Any) -> tuple[int, int, int]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
            or value[0] not in (1, 3)):
        raise ValueError("[channels, height, width] with 1 or 3 channels, e.g. [3, 224, 224]")
    return tuple(value)


def names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("a list of folder names")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class CPUContexts:
    """``devices: cpu`` (one context) or ``cpu:N``: each worker computes on ``mx.cpu(0)`` .. ``mx.cpu(N-1)``.

    MXNet's Module splits every batch over a worker's contexts and sums their gradients
    before the push, as on a multi-GPU worker (so that code path runs without GPUs); a
    ``cpu:N`` worker takes N of its host's ``slots=`` and N x batch_per_device images a step.
    """

    count: int = 1

    def __str__(self) -> str:
        return "cpu" if self.count == 1 else f"cpu:{self.count}"


def devices(value: Any) -> tuple[int, ...] | CPUContexts:
    """``cpu``, N CPU contexts ``cpu:2``, a GPU count ``gpu:4`` (ids 0-3), or a list of GPU ids ``[0, 1]``."""
    if value == "cpu":
        return CPUContexts(1)
    count = re.fullmatch(r"(cpu|gpu):([1-9][0-9]{0,5})", value) if isinstance(value, str) else None
    if count and int(count.group(2)) <= MAX_DEVICES:
        number = int(count.group(2))
        return CPUContexts(number) if count.group(1) == "cpu" else tuple(range(number))
    if (isinstance(value, list) and 0 < len(value) <= MAX_DEVICES
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_DEVICES for v in value)
            and len(set(value)) == len(value)):
        return tuple(value)
    raise ValueError(f"'cpu', 'cpu:N' or 'gpu:N' (N from 1 to {MAX_DEVICES}), or a list of distinct GPU ids "
                     "such as [0, 1]")


def count_or_auto(value: Any) -> int | str:
    if value == AUTO:
        return AUTO
    try:
        return count(value)
    except ValueError:
        raise ValueError(f"'auto' or an integer from 1 to {MAX_PROCESSES}") from None


def scalar_mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float, str, bool)) for k, v in value.items()):
        raise ValueError("a mapping of names to numbers or strings")
    return dict(value)


def job_name(value: Any) -> str:
    if not isinstance(value, str) or not RUN_NAME.fullmatch(value):
        raise ValueError("letters, digits, '.', '_' or '-' (at most 64)")
    return value


def argv(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = shlex.split(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int, float)) for v in value):
        raise ValueError("a non-empty list of arguments (or one command line)")
    return tuple(str(v) for v in value)


def env_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("a string or number")
    return Secret(str(value), "<from the job file>")  # passed to the processes, never written by mxft


def job_env(value: Any) -> dict[str, str]:
    """A fine-tuning job's ``env:``: NAME: value, the values part of the job (recorded with it; a secret goes on the
    command line as ``--env NAME``, which passes this machine's value and writes none)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k) for k in value) \
            or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()):
        raise ValueError("a mapping of NAME: value (a string or number), each NAME letters, digits and '_' "
                         "(not first a digit)")
    reserved = next((key for key in value if set_by_mxft(key)), None)
    if reserved is not None:
        raise ValueError(f"names mxft leaves to the job: {reserved} is set by mxft for every process (DMLC_*, "
                         f"{', '.join(sorted(MXFT_SETS))})")
    return {key: str(item) for key, item in value.items()}


MXFT_SETS = frozenset({"PYTHONPATH", "PYTHONSAFEPATH", "PORT", "MXFT_RUN_ID", "PYTHONUNBUFFERED"})
SECRET_LOOKING = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|PRIVATE|CREDENTIAL|(^|_)KEY$", re.IGNORECASE)


def set_by_mxft(name: str) -> bool:
    """Whether mxft sets ``name`` for every process of a fine-tuning job (a job's env: or --env may not)."""
    return name in MXFT_SETS or name.startswith("DMLC_")


def env_mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k) for k in value):
        raise ValueError("a mapping of NAME: value, each NAME letters, digits and '_' (not first a digit)")
    return {key: env_value(item) for key, item in value.items()}

