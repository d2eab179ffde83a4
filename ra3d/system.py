"""The Lightning system: particles θ⁽ⁱ⁾ optimised by score distillation (Eq. 2, 9).

One training step renders every particle at the step's cameras ψ, scores all renders in one
batched guidance call (particles share the prior and, for VSD, the LoRA score model), adds the
representations' regularizers, and takes one optimizer step for particles and guidance together.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.checkpoint import RECORD_KEY, RunRecord, describe_factory
from ra3d.errors import CheckpointError, ConfigError
from ra3d.guidance.base import Guidance
from ra3d.representations.base import Representation
from ra3d.schedule import Scheduled, check_scheduled, scheduled_value

log = logging.getLogger("ra3d.system")

DEFAULT_LOSS_WEIGHTS: dict[str, Scheduled] = {"guidance": 1.0}
DEFAULT_LEARNING_RATES: dict[str, float] = {"encoding": 0.01, "default": 0.001}


def _to_uint8(rgb: Tensor) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] → uint8 array."""
    return (rgb.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_image_atomic(image: np.ndarray, path: Path) -> None:
    """Write a PNG so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp.name, path)


def write_gif_atomic(frames: list[np.ndarray], path: Path, fps: int = 10) -> None:
    """Write an endlessly looping GIF turntable atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".gif", delete=False) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps),
            loop=0,
        )  # fmt: skip
    os.replace(tmp.name, path)


class RA3DSystem(pl.LightningModule):
    """Score-distillation training of ``n_particles`` representations for one prompt.

    Args:
        prompt: the text c. Must be non-empty.
        representation: a factory for one particle (YAML: ``class_path``/``init_args`` of any
            :class:`~ra3d.representations.base.Representation`); it is called ``n_particles``
            times, so each particle gets its own random initialisation (ParVI, App. B.3).
        guidance: the 2D prior's guidance (SDS or VSD).
        n_particles: number of particles θ⁽ⁱ⁾.
        loss_weights: weight per loss term; ``guidance`` weighs the distillation loss, any other
            key weighs the representation regularizer of that name (``sparsity``, ``opacity``,
            ``orient``). Values may be threestudio schedules ``[start, v0, v1, end]``.
        learning_rates: learning rate by parameter-name substring (first match wins in the
            order given; ``default`` for the rest). Guidance parameters (e.g. the VSD LoRA) use the
            groups the guidance itself declares.
        betas, eps, weight_decay: AdamW settings (threestudio: betas (0.9, 0.99), eps 1e-15).
        seed: base seed; each step reseeds the global RNG from (seed, step) so resumed runs
            reproduce uninterrupted ones exactly.
        turntable_fps: frame rate of the GIFs written at validation and test time.
    """

    def __init__(
        self,
        prompt: str,
        representation: Callable[[], Representation],
        guidance: Guidance,
        n_particles: int = 1,
        loss_weights: dict[str, Scheduled] | None = None,
        learning_rates: dict[str, float] | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-15,
        weight_decay: float = 0.0,
        seed: int = 0,
        turntable_fps: int = 10,
    ) -> None:
        super().__init__()
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(
                'the prompt is empty: pass one with --prompt "a teddy bear" '
                "(or set model.prompt in the config)"
            )
        if n_particles < 1:
            raise ConfigError(f"n_particles must be >= 1, got {n_particles}")
        self.prompt = prompt.strip()
        self.loss_weights = dict(DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        for name, value in self.loss_weights.items():
            check_scheduled(value, f"loss_weights.{name}")
        self.learning_rates = dict(learning_rates or DEFAULT_LEARNING_RATES)
        if "default" not in self.learning_rates:
            raise ConfigError("learning_rates needs a 'default' entry, e.g. {default: 0.001}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.seed = seed
        self.turntable_fps = turntable_fps
        self.n_particles = n_particles
        # Particle initialisation depends on the seed alone, not on whatever consumed the global
        # RNG before (e.g. building the tiny prior), so runs and their resumes start identically.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.particles = nn.ModuleList([representation() for _ in range(n_particles)])
        self.representation_spec = describe_factory(representation)
        for i, particle in enumerate(self.particles):
            if not isinstance(particle, Representation):
                raise ConfigError(
                    f"particle {i} is a {type(particle).__name__}, not a ra3d Representation; "
                    "model.representation must name a subclass of "
                    "ra3d.representations.base.Representation"
                )
        self.guidance = guidance
        self._val_frames: list[list[np.ndarray]] = []
        self.strict_loading = False  # frozen prior weights are not stored; see on_load_checkpoint

    # ------------------------------------------------------------------ training
    def _weight(self, name: str) -> float:
        return scheduled_value(self.loss_weights.get(name, 0.0), self.global_step)

    def training_step(self, cameras: Cameras, batch_idx: int) -> Tensor:
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 10_000
        for particle in self.particles:
            particle.update_step(self.current_epoch, self.global_step)
        self.guidance.update_step(self.current_epoch, self.global_step, max_steps)

        outputs = [particle.render(cameras) for particle in self.particles]
        rgb = torch.cat([out.rgb for out in outputs])  # [P*B, H, W, 3]
        all_cameras = Cameras.cat([cameras] * self.n_particles)
        guidance_out = self.guidance(rgb, all_cameras, self.prompt)

        loss = self._weight("guidance") * guidance_out.loss
        logs: dict[str, float] = {}
        for particle, out in zip(self.particles, outputs, strict=True):
            for name, value in particle.regularizers(out).items():
                weight = self._weight(name)
                logs[f"train/{name}"] = logs.get(f"train/{name}", 0.0) + float(
                    value.detach()
                ) / len(outputs)
                if weight != 0.0:
                    loss = loss + weight * value / self.n_particles
        for name, value in guidance_out.terms.items():
            logs[f"train/{name}"] = float(value.detach())
        for name, value in guidance_out.diagnostics.items():
            logs[f"train/{name}"] = float(value)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(cameras))
        self.log_dict(logs, batch_size=len(cameras))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.particles.named_parameters():
            if not param.requires_grad:
                continue
            key = next((k for k in self.learning_rates if k != "default" and k in name), "default")
            groups.setdefault(key, []).append(param)
        param_groups: list[dict[str, Any]] = [
            {"params": params, "lr": self.learning_rates[key], "name": f"particles/{key}"}
            for key, params in groups.items()
        ]
        trainable_groups = getattr(self.guidance, "trainable_parameter_groups", None)
        if callable(trainable_groups):
            param_groups.extend(g for g in trainable_groups() if g["params"])
        return torch.optim.AdamW(
            param_groups, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )

    # ------------------------------------------------------------------ evaluation
    @property
    def run_dir(self) -> Path:
        trainer = self.trainer
        log_dir = trainer.log_dir if trainer.logger is not None else None
        return Path(log_dir or trainer.default_root_dir)

    @torch.no_grad()
    def _render_views(self, cameras: Cameras) -> list[np.ndarray]:
        """One ``[H, P*W, 3]`` strip per camera: the particles side by side."""
        frames = []
        for i in range(len(cameras)):
            cam = cameras[i]
            tiles = [_to_uint8(p.render(cam).rgb[0]) for p in self.particles]
            frames.append(np.concatenate(tiles, axis=1))
        return frames

    def on_validation_epoch_start(self) -> None:
        self._val_frames = []

    def validation_step(self, cameras: Cameras, batch_idx: int) -> None:
        self._val_frames.append(self._render_views(cameras))

    def _particle_grid(self, frames: list[np.ndarray]) -> np.ndarray:
        """``V`` strips ``[H, P*W, 3]`` → a grid ``[P*H, V*W, 3]``: one row per particle, one
        column per view."""
        h, pw, _ = frames[0].shape
        w = pw // self.n_particles
        views = np.stack(frames)  # [V, H, P*W, 3]
        tiles = views.reshape(len(frames), h, self.n_particles, w, 3)  # [V, H, P, W, 3]
        return tiles.transpose(2, 1, 0, 3, 4).reshape(self.n_particles * h, len(frames) * w, 3)

    def on_validation_epoch_end(self) -> None:
        frames = [f for batch in self._val_frames for f in batch]
        if not frames or self.trainer.sanity_checking:
            return
        out_dir = self.run_dir / "val"
        write_image_atomic(self._particle_grid(frames), out_dir / f"step{self.global_step:06d}.png")
        write_gif_atomic(frames, out_dir / f"step{self.global_step:06d}.gif", self.turntable_fps)
        log.info("wrote validation orbit to %s", out_dir)

    def on_test_epoch_start(self) -> None:
        self._val_frames = []

    def test_step(self, cameras: Cameras, batch_idx: int) -> None:
        self._val_frames.append(self._render_views(cameras))

    def on_test_epoch_end(self) -> None:
        frames = [f for batch in self._val_frames for f in batch]
        out_dir = self.run_dir / "test"
        for i, frame in enumerate(frames):
            write_image_atomic(frame, out_dir / f"view{i:03d}.png")
        write_gif_atomic(frames, out_dir / "turntable.gif", self.turntable_fps)
        log.info("wrote %d test views and turntable.gif to %s", len(frames), out_dir)

    # ------------------------------------------------------------------ checkpoints
    def _frozen_keys(self) -> set[str]:
        """State-dict keys of the frozen guidance (the pretrained prior): never checkpointed,
        since they are reloaded from ``from_pretrained`` and would add gigabytes per file."""
        trainable = {
            f"guidance.{n}" for n, p in self.guidance.named_parameters() if p.requires_grad
        }
        return {k for k in self.state_dict() if k.startswith("guidance.") and k not in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        frozen = self._frozen_keys()
        state = checkpoint["state_dict"]
        for key in list(state):
            if key in frozen:
                del state[key]
        checkpoint[RECORD_KEY] = self.run_record().to_dict()

    def run_record(self) -> RunRecord:
        """What checkpoints record about this run (see :mod:`ra3d.checkpoint`)."""
        return RunRecord(
            prompt=self.prompt,
            n_particles=self.n_particles,
            representation=self.representation_spec,
            global_step=int(self.global_step),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is None:
            raise CheckpointError("the checkpoint has no state_dict; is it a ra3d checkpoint?")
        expected = set(self.state_dict()) - self._frozen_keys()
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - set(self.state_dict()))
        if missing or unexpected:
            raise CheckpointError(
                "the checkpoint does not match this configuration "
                f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, "
                f"e.g. {unexpected[:3]}). Resume with the config the run was started with "
                "(its config.yaml is saved in the run folder)."
            )
