"""Lightning callbacks that keep what a run made safe."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as pl

log = logging.getLogger("ra3d.callbacks")


def save_checkpoint_atomic(trainer: pl.Trainer, path: Path) -> None:
    """Write a checkpoint beside its final name, then rename: an interrupted save never
    replaces a good ``last.ckpt`` with a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, path)


class FinalCheckpoint(pl.Callback):
    """Save ``checkpoints/last.ckpt`` every ``every_n_train_steps`` steps and when training ends
    (also on Ctrl-C), so ``--ckpt_path .../last.ckpt`` always resumes the latest state."""

    def __init__(self, every_n_train_steps: int = 1000, filename: str = "last.ckpt") -> None:
        super().__init__()
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.filename = filename

    def _path(self, trainer: pl.Trainer) -> Path:
        root = trainer.log_dir if trainer.logger is not None else None
        return Path(root or trainer.default_root_dir) / "checkpoints" / self.filename

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if trainer.global_step % self.every_n_train_steps == 0:
            save_checkpoint_atomic(trainer, self._path(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self._path(trainer)
        save_checkpoint_atomic(trainer, path)
        log.info("saved checkpoint %s (step %d)", path, trainer.global_step)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.global_step > 0:
            path = self._path(trainer)
            save_checkpoint_atomic(trainer, path)
            log.info("interrupted: saved checkpoint %s (step %d)", path, trainer.global_step)
