"""Compatibility: configs saved before the layout change name ``ra3d.callbacks.*``."""

from ra3d.training.callbacks import DivergenceGuard, FinalCheckpoint, GracefulStop  # noqa: F401
