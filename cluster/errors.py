"""The errors mxft raises, one tree, so the CLI can map each kind to an exit code.

    MxftError
     +-- InputError        bad hosts file, job file, data or checkpoint: exit 2, nothing started
     +-- JobFailed         a process of the run failed or the job missed its expectation: exit 1
     +-- Interrupted       the launcher was asked to stop (SIGINT/SIGTERM/SIGUSR1): exit 130/143/138

Library code raises these; only ``launcher.cli`` prints them and exits.
"""
from __future__ import annotations

from cluster.failure import Failure


class MxftError(Exception):
    """Base of every error mxft reports to a user."""


class InputError(MxftError):
    """Something the user gave us is wrong; ``where`` names the file:line or host.

    ``str(err)`` is the single line the CLI prints, e.g.
    ``jobs/x.yaml:7: unknown key 'epocs' in train; did you mean 'epochs'?``
    """

    def __init__(self, where: str, message: str, *, hint: str = "") -> None:
        self.where = where
        self.message = message
        self.hint = hint
        text = f"{where}: {message}" if where else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class HostUnreachable(OSError):
    """A host could not be reached by the way the launcher reaches it; ``str(err)`` says it all."""


class JobFailed(MxftError):
    """The run started but did not succeed; the message puts the root cause first.

    ``failure`` is the root cause as a value (``cluster.failure.Failure``: its kind, host,
    process, exit code or signal), what restarts and the run's records read; ``reason`` is
    its one line for people; ``process`` the outcome of the process that failed first, when
    a process did (``cluster.supervise.ProcessOutcome``).
    """

    def __init__(self, message: str, *, failure: Failure, reason: str = "", process=None) -> None:
        super().__init__(message)
        self.failure = failure
        self.reason = reason or message.splitlines()[0]
        self.process = process

    @property
    def host(self) -> str | None:
        """The host that failed as a whole (it stopped answering, its connection died), if one did."""
        return self.failure.lost_host


class Interrupted(MxftError):
    """The launcher received SIGINT, SIGTERM or SIGUSR1 (Slurm's warning before a time limit) and tore the
    run down; ``resume_dir``: the run folder that ``--resume`` continues from its last complete epoch."""

    def __init__(self, signum: int, *, resume_dir: str | None = None) -> None:
        self.signum = signum
        self.resume_dir = resume_dir
        text = f"interrupted by {_signal_name(signum)}; every process of the run was stopped"
        super().__init__(text + (f"; continue with: mxft-launch --resume {resume_dir}" if resume_dir else ""))


def _signal_name(signum: int) -> str:
    import signal
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
