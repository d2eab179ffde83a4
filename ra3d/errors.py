"""User-facing errors. The CLI prints their message (which names the fix) and exits non-zero,
without a traceback; anything else is a bug and keeps its traceback.

Exit codes of ``ra3d`` (each error class carries its own ``exit_code``):

====  ==============================================================================
0     success
1     an unexpected error (a bug: the traceback is printed)
2     bad input or environment (:class:`Ra3dError` and subclasses)
3     training diverged (:class:`TrainingDiverged`): the last good checkpoint is kept
4     the run folder is in use by another run (:class:`RunFolderBusy`)
130   stopped by SIGINT (Ctrl-C) — a checkpoint of the last finished step was saved
143   stopped by SIGTERM (``timeout``, ``docker stop``, SLURM preemption) — likewise
====  ==============================================================================
"""

from __future__ import annotations

import signal


class Ra3dError(Exception):
    """Base class of errors caused by user input or the environment, not by a bug."""

    exit_code = 2


class ConfigError(Ra3dError, ValueError):
    """A configuration value is invalid (empty prompt, bad range, …)."""


class ModelNotFoundError(Ra3dError, FileNotFoundError):
    """Model weights were not found where the configuration says (missing or incomplete folder)."""


class OfflineModelError(ModelNotFoundError):
    """Model weights are not available locally and the hub cannot be reached."""


class CheckpointError(Ra3dError, FileNotFoundError):
    """A checkpoint is missing or unreadable."""


class DiskFullError(Ra3dError, OSError):
    """A file could not be written because its file system is full (or the user's quota is).

    Raised by :mod:`ra3d.io` instead of the bare ``ENOSPC`` so every command reports it as one line
    that names the folder, the space needed and free, and the fix. It is also an ``OSError`` (with
    ``errno`` set), so code that already handled write failures as ``OSError`` still does.
    """


class TrainingDiverged(Ra3dError):
    """The loss, the gradients or the weights stayed non-finite for several steps in a row."""

    exit_code = 3


class RunFolderBusy(Ra3dError):
    """Another live process is writing the same run folder."""

    exit_code = 4


class Interrupted(BaseException):
    """SIGINT or SIGTERM asked the run to stop.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` swallows it;
    Lightning still calls its callbacks' ``on_exception`` with it, which is where the checkpoint of
    the last finished step is written. ``exit_code`` is the shell convention ``128 + signum``.
    """

    def __init__(self, signum: int, at_step_boundary: bool = False) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.at_step_boundary = at_step_boundary  # raised between steps: safe to checkpoint
        self.saved: str | None = None  # the checkpoint written on the way out, if any
        self.kept: str | None = None  # else the last checkpoint saved before the stop, if any

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
