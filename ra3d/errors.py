"""User-facing errors. The CLI prints their message (which names the fix) and exits non-zero,
without a traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class Ra3dError(Exception):
    """Base class of errors caused by user input or the environment, not by a bug."""


class ConfigError(Ra3dError, ValueError):
    """A configuration value is invalid (empty prompt, bad range, …)."""


class ModelNotFoundError(Ra3dError, FileNotFoundError):
    """Model weights were not found where the configuration says (missing or incomplete folder)."""


class OfflineModelError(ModelNotFoundError):
    """Model weights are not available locally and the hub cannot be reached."""


class CheckpointError(Ra3dError, FileNotFoundError):
    """A checkpoint is missing or unreadable."""
