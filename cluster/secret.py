"""Values the user hands to the processes (``--env``, a command job's ``env:``): used, never written.

A ``Secret`` is the string it holds wherever a value is used (a local process's
environment, the JSON line a remote process reads from its SSH session), but its repr
and every rendering mxft writes (plan.txt, plan.json, job.yaml, ``--dry-run``) show
``shown`` instead, e.g. ``<from environment>``. On remote hosts the values never appear
on a command line (``ps`` shows command lines to every user): ``trainer.remote
--env-from-stdin`` reads them from the session's input.

>>> token = Secret("s3cr3t", "<from environment>")
>>> token == "s3cr3t", repr(token), f"{token!r}"
(True, "'<from environment>'", "'<from environment>'")
"""
from __future__ import annotations

from collections.abc import Mapping

ENV_FROM_STDIN = "--env-from-stdin"  # trainer.remote's option: the secret values arrive as one JSON line


class Secret(str):
    """A string whose value is passed on but never shown; ``shown`` says where it came from."""

    shown: str

    def __new__(cls, value: str, shown: str = "<hidden>") -> "Secret":
        obj = super().__new__(cls, value)
        obj.shown = shown
        return obj

    def __repr__(self) -> str:
        return repr(self.shown)


def split_secrets(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain values, secret values as plain strings) of an environment.

    >>> split_secrets({"DMLC_ROLE": "worker", "TOKEN": Secret("x")})
    ({'DMLC_ROLE': 'worker'}, {'TOKEN': 'x'})
    """
    plain = {key: value for key, value in env.items() if not isinstance(value, Secret)}
    hidden = {key: str.__str__(value) for key, value in env.items() if isinstance(value, Secret)}
    return plain, hidden
