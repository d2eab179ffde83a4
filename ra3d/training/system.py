"""The Lightning system: particles θ⁽ⁱ⁾ moved by v_prior + v_asset (paper Eq. 2, 9–13).

One training step renders every particle at the step's cameras ψ and scores all renders in one
batched guidance call (particles share the prior and, for VSD, the LoRA score model): that is
v_prior (Eq. 2), or v̂_prior of Eq. 13 when the assigned assets' renders at the same cameras are
passed as the delta-distillation reference. With retrieved assets, the render-space asset loss of
Eq. 11 adds v_asset (Eq. 10) per particle, routed by π. Representation regularizers are added,
and one optimizer step updates the particles and the guidance's trainable parts (ζ) together.

Loss weights: ``loss_weights`` has one entry per guidance term (VSD: ``vsd``, ``lora``; SDS:
``sds``), ``asset`` (λ of Eq. 10–11), each regularizer of the representation (``sparsity``, …),
and ``guidance`` (a factor on all guidance terms). Guidance terms default to 1, the others to 0;
values may be threestudio schedules ``[start_step, v0, v1, end_step]``. An unknown key is an error
listing the known ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from ra3d.augmentation.adaptation import AdaptationConfig
from ra3d.augmentation.asset_term import ASSIGNMENTS, AssetTerm
from ra3d.augmentation.assets import RetrievalConfig
from ra3d.augmentation.retrieval_augmentation import RetrievalAugmentation
from ra3d.cameras import Cameras
from ra3d.errors import CheckpointError, ConfigError
from ra3d.export.options import ExportOptions
from ra3d.export.pipeline import describe_written, export_particles
from ra3d.guidance.base import Guidance, GuidanceOutput
from ra3d.io import write_gif_atomic, write_image_atomic
from ra3d.representations.base import RenderOutput, Representation
from ra3d.representations.convert import ConversionOptions
from ra3d.representations.metrics import foreground_psnr, silhouette_iou
from ra3d.schedule import Scheduled, check_scheduled, scheduled_value
from ra3d.training.checkpoint import RECORD_KEY, RunRecord, describe_factory
from ra3d.training.checks import (
    check_n_particles,
    check_prompt,
    check_same_particles,
    check_same_prompt,
)
from ra3d.training.stages import GUIDE_ON, guidance_image, inherit, load_matching
from ra3d.training.visuals import side_by_side, tile_grid, to_uint8

logger = logging.getLogger(__name__)

DEFAULT_LOSS_WEIGHTS: dict[str, Scheduled] = {"guidance": 1.0}
DEFAULT_LEARNING_RATES: dict[str, float] = {"encoding": 0.01, "default": 0.001}
#: Keys of ``loss_weights`` that always exist besides the guidance terms and regularizers.
SYSTEM_LOSS_KEYS: tuple[str, ...] = ("guidance", "asset")


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    return value


class Ra3dSystem(pl.LightningModule):
    """Score-distillation training of ``n_particles`` representations for one prompt, guided by
    retrieved 3D assets when ``retrieval`` is set.

    Args:
        prompt: the text c. Must be non-empty.
        representation: a factory for one particle (YAML: ``class_path``/``init_args`` of any
            :class:`~ra3d.representations.base.Representation`); it is called ``n_particles``
            times, so each particle gets its own random initialisation (ParVI, App. B.3).
        guidance: the 2D prior's guidance (SDS or VSD).
        n_particles: number of particles θ⁽ⁱ⁾.
        loss_weights: weight per loss term (see the module docstring).
        learning_rates: learning rate by parameter-name substring (first match wins in the
            order given; ``default`` for the rest). Guidance parameters (e.g. the VSD LoRA) use the
            groups the guidance itself declares.
        betas, eps, weight_decay: AdamW settings. threestudio's ProlificDreamer uses betas
            (0.9, 0.99), eps 1e-15 and does not set a weight decay, so torch's AdamW default 0.01
            applies — kept here.
        seed: base seed; each step reseeds the global RNG from (seed, step) so resumed runs
            reproduce uninterrupted ones exactly.
        turntable_fps: frame rate of the GIFs written at validation and test time.
        retrieval: the retrieved-asset section (:class:`~ra3d.augmentation.assets.RetrievalConfig`);
            None or ``enabled: false`` runs without assets.
        adaptation: Eq. 12's view adapter ω (:class:`~ra3d.augmentation.adaptation.AdaptationConfig`);
            needs ``retrieval``.
        asset_terms: weights of the compared quantities of Eq. 11 (``rgb``, ``opacity``,
            ``depth``, ``normal``); default colour and silhouette.
        asset_sigma: σ of Eq. 10 (constant or schedule); the asset loss scales with λ/σ².
        delta_distillation: pass the assigned assets' renders to the guidance as the Eq. 13
            reference (applied on the guidance's ``delta_every`` steps).
        init_from: checkpoint (or run folder) of an earlier stage to start from: the fine DMTet
            stage from the coarse NeRF, the texture phase from the geometry phase. The prompt,
            retrieved assets, π, ω and (VSD to VSD) ζ are inherited; see :mod:`ra3d.training.stages`.
        init_options: how the earlier stage's particles are converted (NeRF → DMTet:
            :class:`~ra3d.representations.convert.ConversionOptions`, e.g. ``threshold`` 25,
            threestudio's, ``"auto"`` or ``"silhouette"``); None = its defaults.
        guide_on: what the guidance scores: ``rgb`` or ``normal`` maps (geometry refinement).
        freeze_geometry: keep the particles' geometry fixed (the DMTet texture phase).
        stage: a name recorded in checkpoints (``coarse``, ``geometry``, ``texture``).
        export_at_end: export the particles as textured meshes into ``<run>/export`` when
            training ends, with these :class:`~ra3d.export.options.ExportOptions` (the
            ``ra3d export`` options: ``formats``, ``texture_size``, ``max_faces``, ...). None:
            no export.
    """

    def __init__(
        self,
        prompt: str | None,
        representation: Callable[[], Representation],
        guidance: Guidance,
        n_particles: int = 1,
        loss_weights: dict[str, Scheduled] | None = None,
        learning_rates: dict[str, float] | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-15,
        weight_decay: float = 0.01,
        seed: int = 0,
        turntable_fps: int = 10,
        retrieval: RetrievalConfig | None = None,
        adaptation: AdaptationConfig | None = None,
        asset_terms: dict[str, float] | None = None,
        asset_sigma: Scheduled = 1.0,
        delta_distillation: bool = True,
        init_from: str | None = None,
        init_options: ConversionOptions | None = None,
        guide_on: str = "rgb",
        freeze_geometry: bool = False,
        stage: str = "coarse",
        export_at_end: ExportOptions | None = None,
    ) -> None:
        super().__init__()
        self.prompt = check_prompt(prompt, inherited=init_from is not None)
        check_n_particles(n_particles)
        if guide_on not in GUIDE_ON:
            raise ConfigError(f"guide_on must be one of {GUIDE_ON}, got {guide_on!r}")
        self.guide_on = guide_on
        self.stage = str(stage)
        if export_at_end is not None:
            export_at_end.validate()
        self.export_at_end = export_at_end
        self.loss_weights = dict(DEFAULT_LOSS_WEIGHTS if loss_weights is None else loss_weights)
        for name, value in self.loss_weights.items():
            check_scheduled(value, f"loss_weights.{name}")
            for v in [value] if isinstance(value, int | float) else value:
                _finite(v, f"loss_weights.{name}")
        self.learning_rates = dict(learning_rates or DEFAULT_LEARNING_RATES)
        if "default" not in self.learning_rates:
            raise ConfigError("learning_rates needs a 'default' entry, e.g. {default: 0.001}")
        for name, value in self.learning_rates.items():
            if not _finite(value, f"learning_rates.{name}") > 0:
                raise ConfigError(f"learning_rates.{name} must be > 0, got {value}")
        self.betas = tuple(_finite(b, "betas") for b in betas)
        self.eps = _finite(eps, "eps")
        self.weight_decay = _finite(weight_decay, "weight_decay")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
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
        self._inherited_record: RunRecord | None = None
        if init_from is not None:
            self._inherit(init_from, prompt, init_options)
        if freeze_geometry:
            for particle in self.particles:
                particle.freeze_geometry(True)
        self._check_loss_weight_keys()
        rule = retrieval.assignment if retrieval is not None else ASSIGNMENTS[0]
        self.asset_term = AssetTerm(asset_terms, asset_sigma, assignment=rule)
        self.delta_distillation = bool(delta_distillation)
        if (
            adaptation is not None
            and adaptation.enabled
            and (retrieval is None or not retrieval.enabled)
        ):
            raise ConfigError(
                "model.adaptation needs retrieved assets: enable model.retrieval or disable adaptation"
            )
        self.augmentation: RetrievalAugmentation | None = None
        if retrieval is not None and retrieval.enabled:
            self.augmentation = RetrievalAugmentation(retrieval, adaptation)
        self._val_rows: list[list[np.ndarray]] = []
        self._restored_record: RunRecord | None = None  # set by on_load_checkpoint
        self.strict_loading = False  # frozen prior weights are not stored; see on_load_checkpoint

    def _inherit(self, init_from: str, prompt: str | None, options: dict[str, Any] | None) -> None:
        """Take over the earlier stage of ``init_from`` (see :mod:`ra3d.training.stages`)."""
        spec = self.representation_spec
        if spec is None:
            raise ConfigError(
                "init_from needs model.representation given as class_path/init_args in the config"
            )
        cls = type(self.particles[0])
        inherited = inherit(
            init_from, self.n_particles, prompt, cls, spec.get("init_args", {}), options
        )
        self.particles = nn.ModuleList(inherited.particles)
        self.prompt = inherited.record.prompt
        self._inherited_record = inherited.record
        n_zeta = load_matching(self.guidance, inherited.guidance_state)
        logger.info(
            "initialised from %s (prompt %r); %d guidance tensor(s) taken over (ζ when both "
            "stages use VSD)", inherited.path, self.prompt, n_zeta,
        )  # fmt: skip

    def _check_loss_weight_keys(self) -> None:
        known = set(SYSTEM_LOSS_KEYS) | set(self.guidance.loss_term_names)
        for particle in self.particles:
            known |= set(particle.regularizer_names)
        unknown = sorted(set(self.loss_weights) - known)
        if unknown:
            raise ConfigError(
                f"unknown loss_weights key(s) {unknown}; the known ones for this representation "
                f"and guidance are {sorted(known)}"
            )

    # ------------------------------------------------------------------ set-up
    @property
    def run_dir(self) -> Path:
        trainer = self.trainer
        log_dir = trainer.log_dir if trainer.logger is not None else None
        return Path(log_dir or trainer.default_root_dir)

    def on_fit_start(self) -> None:
        self._prepare_assets(fitting=True)

    def on_validation_start(self) -> None:
        self._prepare_assets(fitting=False)

    def on_test_start(self) -> None:
        self._prepare_assets(fitting=False)

    def _prepare_assets(self, fitting: bool) -> None:
        """Retrieve (or reload from the restored checkpoint) the assets, fix π and adapt the prior
        before the first step. Runs after Lightning restored a checkpoint (``--ckpt_path``), whose
        record then supplies the assets, π and ω: nothing is retrieved again."""
        if self.augmentation is None or self.augmentation.prepared:
            return
        recorded = adapter = None
        if self._restored_record is not None:
            recorded, adapter = self._restored_record.retrieval, self._restored_record.adapter
            if recorded is None:
                raise CheckpointError(
                    "the checkpoint was trained without retrieved assets but this config "
                    "retrieves; resume with the run's own config.yaml"
                )
        elif self._inherited_record is not None and self._inherited_record.retrieval:
            recorded = self._inherited_record.retrieval
            adapter = self._inherited_record.adapter
        self.augmentation.prepare(
            self.prompt, list(self.particles), self.asset_term, self.guidance,
            self.run_dir if fitting else None, recorded, adapter,
        )  # fmt: skip

    def _check_record(self, record: RunRecord, path: str | Path) -> None:
        check_same_prompt(path, record.prompt, self.prompt, later_stage=False)
        check_same_particles(path, record.n_particles, self.n_particles)

    # ------------------------------------------------------------------ training
    def _weight(self, name: str, default: float = 0.0) -> float:
        return scheduled_value(self.loss_weights.get(name, default), self.global_step)

    def training_step(self, cameras: Cameras, batch_idx: int) -> Tensor:
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else 10_000
        for particle in self.particles:
            particle.update_step(self.current_epoch, self.global_step)
        self.guidance.update_step(self.current_epoch, self.global_step, max_steps)

        outputs = [particle.render(cameras) for particle in self.particles]
        rgb = torch.cat([guidance_image(out, self.guide_on) for out in outputs])  # [P*B, H, W, 3]
        all_cameras = Cameras.cat([cameras] * self.n_particles)
        logs: dict[str, float] = {}

        # Only particles whose asset passed the relevance floor (ra3d.augmentation.relevance)
        # get the asset term and the delta-distillation reference; none: plain distillation.
        aug = (
            self.augmentation
            if self.augmentation is not None and self.augmentation.active
            else None
        )
        asset_weight = self._weight("asset") if aug is not None else 0.0
        use_delta = aug is not None and self.delta_distillation
        asset_outs = aug.render_used(cameras) if (asset_weight != 0.0 or use_delta) else []
        reference = None
        if use_delta:
            references = [
                None
                if a is None
                else aug.reference_rgb(a, o)
                if self.guide_on == "rgb"
                else guidance_image(a, self.guide_on).detach()
                for a, o in zip(asset_outs, outputs, strict=True)
            ]  # the assigned asset of each particle at the same cameras
            if all(r is not None for r in references):
                reference = torch.cat(references)  # [P*B, H, W, 3]
                guidance_out = self.guidance(rgb, all_cameras, self.prompt, reference_rgb=reference)
            else:
                guidance_out = self._guidance_by_group(outputs, cameras, references)
        else:
            guidance_out = self.guidance(rgb, all_cameras, self.prompt)

        loss = self.weighted_guidance_loss(guidance_out)
        for name, value in guidance_out.terms.items():
            logs[f"train/{name}"] = float(value.detach())
        for name, value in guidance_out.diagnostics.items():
            logs[f"train/{name}"] = float(value)

        if asset_outs and asset_weight != 0.0 and any(a is not None for a in asset_outs):
            asset_loss = self.asset_loss(outputs, asset_outs)
            loss = loss + asset_weight * asset_loss
            logs["train/loss_asset"] = float(asset_loss.detach())
        for particle, out in zip(self.particles, outputs, strict=True):
            for name, value in particle.regularizers(out).items():
                weight = self._weight(name)
                logs[f"train/{name}"] = logs.get(f"train/{name}", 0.0) + float(
                    value.detach()
                ) / len(outputs)
                if weight != 0.0:
                    loss = loss + weight * value / self.n_particles
        self.log("train/loss", loss, prog_bar=True, batch_size=len(cameras))
        self.log_dict(logs, batch_size=len(cameras))
        return loss

    def weighted_guidance_loss(self, guidance_out: GuidanceOutput) -> Tensor:
        """``guidance · Σ_k w_k term_k`` over the guidance's terms (VSD: ``vsd`` and ``lora``,
        threestudio's lambda_vsd and lambda_lora; default 1 each)."""
        factor = self._weight("guidance", 1.0)
        if not guidance_out.terms:
            return factor * guidance_out.loss
        return sum(
            factor * self._weight(name.removeprefix("loss_"), 1.0) * value
            for name, value in guidance_out.terms.items()
        )

    def asset_loss(
        self, outputs: list[RenderOutput], asset_outs: list[RenderOutput | None]
    ) -> Tensor:
        """Eq. 10–11 for all particles: particle i against its assigned asset's render (π
        routing is in ``asset_outs``, one per particle), averaged over particles like the
        distillation term averages over the particle batch; λ is applied by the caller. So
        ``∂/∂x_i = (2/σ²) w_k (x_i − x_ret^π(i)) / (P·B·H·W)`` for a render quantity x_i.
        A particle without an asset (None: the relevance floor skipped it) has no term; the
        others keep their 1/P, so their force is what it would be if every particle had one."""
        losses = [
            self.asset_term.loss(out, ref, self.global_step)
            for out, ref in zip(outputs, asset_outs, strict=True)
            if ref is not None
        ]
        if len(losses) == len(outputs):
            return torch.stack(losses).mean()
        return torch.stack(losses).sum() / len(outputs)

    def _guidance_by_group(
        self, outputs: list[RenderOutput], cameras: Cameras, references: list[Tensor | None]
    ) -> GuidanceOutput:
        """The guidance for particles of which only some have an asset: one batched call for
        those with a delta-distillation reference (Eq. 13), one without for the rest (plain
        v_prior, Eq. 2). Each call's loss is a mean over its batch, so the parts are weighted
        by their particle counts: every render gets the gradient it would get in one call of
        all particles. Diagnostics are the same weighted means."""
        with_ref = [i for i, r in enumerate(references) if r is not None]
        without = [i for i, r in enumerate(references) if r is None]
        parts: list[tuple[int, GuidanceOutput]] = []
        for group, delta in ((with_ref, True), (without, False)):
            rgb = torch.cat([guidance_image(outputs[i], self.guide_on) for i in group])
            ref = torch.cat([references[i] for i in group]) if delta else None  # type: ignore[misc]
            group_cameras = Cameras.cat([cameras] * len(group))
            parts.append(
                (len(group), self.guidance(rgb, group_cameras, self.prompt, reference_rgb=ref))
            )
        total = float(self.n_particles)
        loss = sum(n * out.loss for n, out in parts) / total
        names = {k for _, out in parts for k in out.terms}
        terms = {k: sum(n * out.terms[k] for n, out in parts if k in out.terms) / total
                 for k in sorted(names)}  # fmt: skip
        keys = {k for _, out in parts for k in out.diagnostics}
        diagnostics = {
            k: sum(n * out.diagnostics.get(k, 0.0) for n, out in parts) / total
            for k in sorted(keys)
        }
        return GuidanceOutput(loss=loss, terms=terms, diagnostics=diagnostics)

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
        param_groups.extend(g for g in self.guidance.trainable_parameter_groups() if g["params"])
        return torch.optim.AdamW(
            param_groups, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
        )

    def on_train_end(self) -> None:
        if self.export_at_end is None or self.trainer.global_step == 0:
            return
        was_training = self.training
        self.eval()
        aug = (
            self.augmentation
            if self.augmentation is not None and self.augmentation.active
            else None
        )
        with torch.no_grad():
            written = export_particles(
                list(self.particles),
                self.run_dir / "export",
                prompt=self.prompt,
                assets=aug.assets if aug is not None else (),
                assignment=aug.assignment if aug is not None else (),
                used_assets=[aug.asset_used(k) for k in range(len(aug.assets))]
                if aug is not None
                else None,
                stage=self.stage,
                checkpoint=str(self.run_dir / "checkpoints" / "last.ckpt"),
                options=self.export_at_end,
            )
        self.train(was_training)
        logger.info("exported: %s", describe_written(written))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _render_rows(self, camera: Cameras, with_assets: bool) -> list[np.ndarray]:
        """Tiles of one camera: each particle, followed by its assigned asset when there is one."""
        aug = self.augmentation if with_assets else None
        outs = [p.render(camera) for p in self.particles]
        assets = aug.render_used(camera) if aug is not None and aug.active else []
        tiles = []
        for i, out in enumerate(outs):
            tiles.append(to_uint8(out.rgb[0]))
            if assets:  # a blank tile beside a particle whose asset the relevance floor skipped
                asset = assets[i]
                tiles.append(
                    to_uint8(asset.rgb[0] if asset is not None else torch.ones_like(out.rgb[0]))
                )
        pairs = [
            (o, a) for o, a in zip(outs, assets or [None] * len(outs), strict=True) if a is not None
        ]
        if pairs and self.trainer is not None and not self.trainer.sanity_checking:
            iou = torch.cat([silhouette_iou(o.opacity, a.opacity) for o, a in pairs])
            psnr = torch.cat([foreground_psnr(o, a) for o, a in pairs])
            self.log("val/asset_iou", float(iou.mean()), batch_size=1, on_epoch=True)
            self.log("val/asset_psnr", float(psnr.mean()), batch_size=1, on_epoch=True)
        return tiles

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def validation_step(self, cameras: Cameras, batch_idx: int) -> None:
        for i in range(len(cameras)):
            self._val_rows.append(self._render_rows(cameras[i], with_assets=True))

    def on_validation_epoch_end(self) -> None:
        if not self._val_rows or self.trainer.sanity_checking:
            return
        out_dir = self.run_dir / "val"
        # Rows: particle 0, its asset, particle 1, its asset, ...; columns: orbit views.
        write_image_atomic(tile_grid(self._val_rows), out_dir / f"step{self.global_step:06d}.png")
        frames = [side_by_side(tiles) for tiles in self._val_rows]
        write_gif_atomic(frames, out_dir / f"step{self.global_step:06d}.gif", self.turntable_fps)
        logger.info("wrote validation orbit to %s", out_dir)

    def on_test_epoch_start(self) -> None:
        self._val_rows = []

    def test_step(self, cameras: Cameras, batch_idx: int) -> None:
        for i in range(len(cameras)):
            self._val_rows.append(self._render_rows(cameras[i], with_assets=False))

    def on_test_epoch_end(self) -> None:
        frames = [side_by_side(tiles) for tiles in self._val_rows]
        out_dir = self.run_dir / "test"
        for i, frame in enumerate(frames):
            write_image_atomic(frame, out_dir / f"view{i:03d}.png")
        write_gif_atomic(frames, out_dir / "turntable.gif", self.turntable_fps)
        logger.info("wrote %d test views and turntable.gif to %s", len(frames), out_dir)

    # ------------------------------------------------------------------ checkpoints
    def _frozen_keys(self) -> set[str]:
        """State-dict keys of the frozen guidance (the pretrained prior and ω): never
        checkpointed, since they are reloaded from ``from_pretrained`` / the adapter file and
        would add gigabytes per file."""
        trainable = {
            f"guidance.{n}" for n, p in self.guidance.named_parameters() if p.requires_grad
        }
        return {k for k in self.state_dict() if k.startswith("guidance.") and k not in trainable}

    def run_record(self) -> RunRecord:
        """What checkpoints record about this run (see :mod:`ra3d.training.checkpoint`)."""
        aug = self.augmentation
        return RunRecord(
            prompt=self.prompt,
            n_particles=self.n_particles,
            representation=self.representation_spec,
            stage=self.stage,
            retrieval=aug.record() if aug is not None else None,
            adapter=aug.adapter if aug is not None else None,
            global_step=int(self.global_step),
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        frozen = self._frozen_keys()
        state = checkpoint["state_dict"]
        for key in list(state):
            if key in frozen:
                del state[key]
        checkpoint[RECORD_KEY] = self.run_record().to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is None:
            raise CheckpointError("the checkpoint has no state_dict; is it a ra3d checkpoint?")
        if RECORD_KEY in checkpoint:
            self._restored_record = RunRecord.from_dict(checkpoint[RECORD_KEY])
            self._check_record(self._restored_record, "the checkpoint")
        own = self.state_dict()
        expected = set(own) - self._frozen_keys()
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                "the checkpoint does not match this configuration "
                f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected, "
                f"e.g. {unexpected[:3]}). Resume with the config the run was started with "
                "(its config.yaml is saved in the run folder)."
            )
        wrong = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise CheckpointError(
                f"the checkpoint's tensors have other shapes than this configuration's "
                f"({len(wrong)} keys, e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}); "
                "resume with the config the run was started with (its config.yaml)"
            )
