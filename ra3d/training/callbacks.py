"""Lightning callbacks that keep what a run made safe.

* :class:`FinalCheckpoint` writes ``checkpoints/last.ckpt`` periodically, at the end, and when a
  run is stopped (SIGINT, SIGTERM, divergence) — atomically and never with non-finite weights.
* :class:`DivergenceGuard` skips updates whose loss or gradients are non-finite and stops the run
  (exit code 3) after ``max_consecutive`` such steps in a row.
* :class:`GracefulStop` turns a SIGINT/SIGTERM received during a step into a stop at the end of
  that step (see :mod:`ra3d.training.signals`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ra3d.errors import Interrupted, TrainingDiverged
from ra3d.io import disk_full_error, is_disk_full
from ra3d.io import fsync_dir as _fsync_dir
from ra3d.io import fsync_file as _fsync_file  # a module name: tests stall a save through it
from ra3d.training.signals import STOP

logger = logging.getLogger(__name__)


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the trainable floating-point parameters holding a NaN or an infinity."""
    names = []
    for name, param in module.named_parameters():
        if param.requires_grad and param.is_floating_point():
            if not bool(torch.isfinite(param.detach()).all()):
                names.append(name)
    return names


def save_checkpoint_atomic(trainer: pl.Trainer, path: Path) -> bool:
    """Write a checkpoint beside its final name, flush it to disk, then rename: an interrupted
    save (even ``kill -9`` or a power cut) never replaces a good ``last.ckpt`` with a truncated one.

    Refuses (returns False, logs an error) when the trainable weights are non-finite: a diverged
    state must never replace the last good checkpoint.
    """
    module = trainer.lightning_module
    bad = non_finite_parameters(module) if module is not None else []
    if bad:
        kept = f"{path} (the last good state) is kept" if path.is_file() else "nothing was saved"
        logger.error(
            "not saving step %d: weights are non-finite (%s%s); %s",
            trainer.global_step,
            ", ".join(bad[:3]),
            ", ..." if len(bad) > 3 else "",
            kept,
        )
        return False
    # Lightning writes the file itself (by name), so this cannot use ra3d.io.atomic_write; it
    # follows the same rule by hand: a sibling temporary, fsync, rename, fsync of the folder.
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            _fsync_file(tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
    except BaseException as error:
        written = tmp.stat().st_size if tmp.is_file() else 0
        if trainer.is_global_zero:
            tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            # The previous checkpoint has the same tensors, so its size is what this one needs.
            needed = path.stat().st_size if path.is_file() else None
            raise disk_full_error(path, needed=needed, written=written) from error
        raise
    return True


class FinalCheckpoint(pl.Callback):
    """Save ``checkpoints/last.ckpt`` every ``every_n_train_steps`` steps, when training ends and
    when it is stopped between steps (Ctrl-C, SIGTERM, divergence), so ``--ckpt_path
    .../last.ckpt`` always resumes the latest good state."""

    def __init__(self, every_n_train_steps: int = 1000, filename: str = "last.ckpt") -> None:
        super().__init__()
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.filename = filename
        self.saved_step: int | None = None
        self.saved_on_stop: str | None = None

    def path(self, trainer: pl.Trainer) -> Path:
        root = trainer.log_dir if trainer.logger is not None else None
        return Path(root or trainer.default_root_dir) / "checkpoints" / self.filename

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A save killed between write and rename leaves ``last.ckpt.tmp``: never a valid file
        (the rename did not happen), so it is removed."""
        tmp = self.path(trainer).with_name(self.filename + ".tmp")
        if trainer.is_global_zero and tmp.exists():
            tmp.unlink()
            logger.info("removed %s left by an interrupted save", tmp)

    def _save(self, trainer: pl.Trainer) -> bool:
        path = self.path(trainer)
        if save_checkpoint_atomic(trainer, path):
            self.saved_step = trainer.global_step
            return True
        return False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        """Also saves after the last step (``max_steps``): Lightning restores the loop counters
        exactly from a save made here, while one made in ``on_train_end`` resumes with every
        metrics.csv step label one too high."""
        step = trainer.global_step
        last = 0 < trainer.max_steps <= step
        if step % self.every_n_train_steps == 0 or last:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.path(trainer)
        if self.saved_step == trainer.global_step or self._save(trainer):
            logger.info("saved checkpoint %s (step %d)", path, trainer.global_step)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.global_step == 0 or trainer.state.fn != TrainerFn.FITTING:
            return
        path = self.path(trainer)
        between_steps = isinstance(
            exception, SIGTERMException | TrainingDiverged | KeyboardInterrupt
        )
        if isinstance(exception, Interrupted):
            between_steps = exception.at_step_boundary
        if not between_steps:
            if isinstance(exception, Interrupted) and path.is_file():
                logger.warning("stopped mid-step: %s keeps the last periodic save", path)
            return
        if self.saved_step == trainer.global_step or self._save(trainer):
            logger.info("saved checkpoint %s (step %d)", path, trainer.global_step)
            self.saved_on_stop = str(path)  # also for Lightning's own SIGTERM stop (validation)
            if isinstance(exception, Interrupted):
                exception.saved = str(path)


class DivergenceGuard(pl.Callback):
    """Skip updates with a non-finite loss or gradient; stop after ``max_consecutive`` in a row.

    A single NaN (a degenerate view, an fp16 overflow in the prior) should not end a run of hours,
    but a run whose loss stays non-finite only burns compute and, without this guard, overwrites
    its good checkpoint with NaN weights. The check runs after backward
    (``on_before_optimizer_step``): if any gradient is non-finite all gradients are dropped, so
    AdamW leaves every parameter and its moments untouched for that step. The stop is raised at
    the end of the step, so :class:`FinalCheckpoint` saves the (finite) weights of the last good
    update.
    """

    def __init__(self, max_consecutive: int = 3) -> None:
        super().__init__()
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_total = 0
        self._reason: str | None = None

    def on_train_batch_start(self, *args: Any) -> None:
        self._reason = None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if not bool(finite):
            optimizer.zero_grad(set_to_none=True)  # AdamW skips parameters without a gradient
            self._reason = "non-finite gradient"

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        step = trainer.global_step - 1  # the step just taken or skipped (metrics.csv's label)
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            self._reason = f"non-finite loss ({float(loss.detach().float().sum())})"
        if self._reason is None:
            self.consecutive = 0
            bad = non_finite_parameters(pl_module)
            if bad:
                raise TrainingDiverged(
                    f"step {step}: the weights became non-finite ({', '.join(bad[:3])}) although "
                    "loss and gradients were finite: a learning rate is far too large. Lower "
                    "model.learning_rates and resume from the last good checkpoint."
                )
            return
        self.consecutive += 1
        self.skipped_total += 1
        logger.warning(
            "step %d: %s, update skipped (%d in a row; the run stops at %d)",
            step,
            self._reason,
            self.consecutive,
            self.max_consecutive,
        )
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"training diverged: {self._reason} in {self.consecutive} steps in a row "
                f"(up to step {step}); the updates were skipped, so the saved checkpoint holds the "
                "last good weights. Lower the learning rates or loss weights "
                "(model.learning_rates, model.loss_weights) and resume with --ckpt_path; to tolerate "
                "more bad steps, list ra3d.training.callbacks.DivergenceGuard in trainer.callbacks with "
                "init_args max_consecutive."
            )


class GracefulStop(pl.Callback):
    """Between steps, turn a recorded SIGINT/SIGTERM into :class:`~ra3d.errors.Interrupted` (then
    :class:`FinalCheckpoint` saves and the CLI exits 130/143). Needs :data:`ra3d.training.signals.STOP`
    installed (the CLI does); without it signals behave as Lightning's defaults."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.graceful = True

    def on_train_batch_end(self, *args: Any) -> None:
        STOP.raise_if_pending()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOP.graceful = False

    def on_exception(self, *args: Any) -> None:
        STOP.graceful = False
