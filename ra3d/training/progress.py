"""A step-based training progress bar.

Score distillation has no dataset and no epochs: a run is ``max_steps`` steps of one endless
"epoch", so Lightning's default bar reads ``Epoch 0: 12/-2 [..., v_num: 0.000]``. This one keeps
Lightning's tqdm bar and shows what a user watches instead: ``step 120/150``, the loss and the
seconds per step (an exponential moving average, so a validation pause does not stick).
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """``step N/max_steps`` with ``loss`` and ``s/step`` (see the module docstring)."""

    EMA = 0.9  # weight of the previous average: ~10 steps of memory

    def __init__(self, refresh_rate: int = 1, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self._last_time: float | None = None
        self.seconds_per_step: float | None = None

    @property
    def train_description(self) -> str:
        return "step"  # from the bar's creation: not "Training", then "Epoch 0"

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # Lightning's own hook would label the bar "Epoch 0" first; a run has one endless epoch.
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)  # keeps "step"
        bar.update(trainer.global_step)  # a resumed run starts where it stopped
        self._last_time = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        if self._last_time is not None:
            dt = now - self._last_time
            prev = self.seconds_per_step
            self.seconds_per_step = dt if prev is None else self.EMA * prev + (1 - self.EMA) * dt
        self._last_time = now
        bar = self.train_progress_bar
        n = trainer.global_step
        total = bar.total
        if bar is not None and self.is_enabled and (n % self.refresh_rate == 0 or n == total):
            bar.update(n - bar.n)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._last_time = None  # the next step's time does not include validation

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        shown: dict[str, Any] = {}
        for key, value in items.items():
            shown[key.removeprefix("train/")] = value
        if self.seconds_per_step is not None:
            shown["s/step"] = f"{self.seconds_per_step:.3g}"
        return shown
