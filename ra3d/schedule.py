"""Step-dependent hyper-parameters in threestudio's notation.

A value is either a constant or ``[start_step, start_value, end_value, end_step]``: constant
``start_value`` before ``start_step``, linear to ``end_value`` at ``end_step``, constant after.
ProlificDreamer uses this for the max diffusion step (``[5000, 0.98, 0.5, 5001]``) and for loss
weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from ra3d.errors import ConfigError

Scheduled = float | int | Sequence[float]


def check_scheduled(value: Scheduled, name: str) -> None:
    """Raise a :class:`ConfigError` naming ``name`` if ``value`` is not a valid schedule."""
    if isinstance(value, int | float):
        return
    if not isinstance(value, Sequence) or len(value) != 4:
        raise ConfigError(
            f"{name} must be a number or [start_step, start_value, end_value, end_step], "
            f"got {value!r}"
        )
    start_step, _, _, end_step = value
    if end_step < start_step:
        raise ConfigError(f"{name}: end_step ({end_step}) is before start_step ({start_step})")


def scheduled_value(value: Scheduled, global_step: int) -> float:
    """The value of a (possibly scheduled) hyper-parameter at ``global_step``."""
    if isinstance(value, int | float):
        return float(value)
    start_step, start_value, end_value, end_step = (float(v) for v in value)
    if global_step <= start_step:
        return start_value
    if global_step >= end_step:
        return end_value
    frac = (global_step - start_step) / (end_step - start_step)
    return start_value + frac * (end_value - start_value)
