"""Variational Score Distillation (ProlificDreamer; paper Sec. 3, Eq. 1–2) with a LoRA score model.

VSD moves each particle θ⁽ⁱ⁾ along (Eq. 2)

    v_prior = −E_{t,ε,ψ}[ w(t) (ε_φ(x_t, t, e(c, ψ)) − ε_(φ,ζ)(x_t, t, c, ψ)) ∂g(θ, ψ)/∂θ ],

where ``ε_φ`` is the pretrained prior (classifier-free guided, view-dependent prompt e(c, ψ)) and
``ε_(φ,ζ)`` is the score of the *rendered-image* distribution q_t^γ(x_t | ψ, c): the same UNet
with a LoRA adapter ζ and a camera condition ψ, trained online with the ordinary diffusion loss on
the (detached) renders. SDS is the special case that replaces ε_(φ,ζ) by the injected noise ε.

Text conditions. The prior term sees the view-dependent prompt e(c, ψ); the score model — both its
prediction in the VSD term and its training loss — sees the *plain* prompt c, as Eq. 2 writes
ε_(φ,ζ)(x_t, t, c, ψ) and as threestudio's ProlificDreamer guidance does (the camera ψ reaches the
score model through its camera embedding, not through view words).

Which UNet each term runs (decided here). With the view adapter ω of Eq. 12 loaded, the prior term
is the adapted prior ``base + ω`` and the score model is ``base + ω + ζ``. ζ and the camera
embedding start at zero (:class:`~ra3d.guidance.lora.CameraEmbedding`), so at step 0 the score
model *equals* the conditional prior, for every camera: ``ε_(φ,ζ)(x_t, t, c, ψ) = ε_φ(x_t, t, c)``
(plain prompt, no guidance), and ζ only has to learn how the particles' renders differ from the
adapted prior, not also undo ω. This is a deviation from threestudio's ProlificDreamer, whose
camera embedding (a diffusers ``TimestepEmbedding(16, 1280)``) keeps PyTorch's default
initialisation — there the score model starts as its LoRA UNet (SD 2.1, not 2.1-base) plus a
random camera-dependent offset of the time embedding; only its LoRA layers start at zero.
Effect: ra3d's first VSD steps move the particles along ``w(t)(ε_φ^CFG(e(c, ψ)) − ε_φ(c))``, the
prior's classifier-free direction, with no camera-dependent term from an untrained embedding.
ω is frozen throughout (``requires_grad=False``, in no optimizer group); only ζ and the camera
embedding train. Without ω both reduce to ``base`` and ``base + ζ``.

Memory: there is one UNet. Each term selects its adapters on it (see :mod:`ra3d.guidance.lora`)
and the camera embedding is added to the time embedding only inside the score model's calls. Peak
memory is therefore one set of base weights plus the adapters, instead of two UNet copies.

One scalar loss carries both updates, and its gradients split cleanly:

* ``loss_vsd = 0.5 Σ (z − sg(z − grad))² / B`` with ``grad = w(t)(ε_φ − ε_(φ,ζ))`` computed
  without gradient: it reaches the render latents z (and θ) only, with ``∂/∂z = grad / B``
  (convention of :mod:`ra3d.guidance.sds`).
* ``loss_lora = ‖ε_(φ,ζ)(α_t sg(z) + σ_t ε', t', c, ψ̃) − target‖²`` (mean) with its own
  ``t' ~ U[0, T)``, noise ε' and camera dropout ψ̃: it reaches ζ and the camera embedding only.
* The base UNet is frozen (``requires_grad=False``) and ω is frozen.

``GuidanceOutput.terms`` holds the two unweighted parts (``loss = loss_vsd + loss_lora``); a
system weighting them separately uses :attr:`VSDGuidance.loss_term_names` = ``("vsd", "lora")``.

Particles (ParVI, App. B.3): the system concatenates the renders of all particles along the batch,
each with its own cameras; every sample gets its own t and ε, and the score model is trained on
all of them, so it models the particles' joint render distribution.

Delta distillation (Eq. 13): with ``reference_rgb`` (the retrieved asset rendered at the same
cameras) the velocity becomes ``v̂ = v(θ) − v(θ_ret)`` evaluated with the *same* t and ε, applied
every ``delta_every`` steps; the shared helper is
:func:`ra3d.guidance.sds.distillation_residual`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.errors import ConfigError
from ra3d.guidance.base import GuidanceOutput
from ra3d.guidance.lora import (
    CAMERA_CONDITION_TYPES,
    LORA_TARGET_MODULES,
    AdapterManager,
    CameraConditioner,
    CameraEmbedding,
    camera_condition,
    drop_camera_condition,
    lora_config,
    time_embedding_dim,
)
from ra3d.guidance.prior import DiffusionPrior
from ra3d.guidance.sds import (
    VIEW_ADAPTER,
    SDSGuidance,
    check_finite,
    classifier_free_guidance,
    clean_grad,
    distillation_loss,
    distillation_residual,
    sample_noise,
    timestep_weight,
)
from ra3d.schedule import Scheduled, scheduled_value

logger = logging.getLogger(__name__)

#: Adapter names on the shared UNet: ζ (the VSD score model) and ω (view adaptation, Eq. 12).
VSD_ADAPTER = "vsd"
__all__ = ["VSD_ADAPTER", "VIEW_ADAPTER", "VSDGuidance"]


class VSDGuidance(SDSGuidance):
    """VSD guidance: prior ``ε_φ`` (or ``ε_(φ,ω)``) against a LoRA + camera score model ``ε_(φ,ζ)``.

    Args:
        prior: a :class:`DiffusionPrior`, or a hub id / local folder to load one from.
        guidance_scale: classifier-free guidance scale of the prior term (7.5, ProlificDreamer).
        guidance_scale_lora: classifier-free guidance scale of the score model over the camera
            (1.0: the camera-conditioned prediction alone, no unconditional pass; otherwise
            against the plain prompt with a zero camera, threestudio's rule).
        min_step_percent, max_step_percent: range of t for the distillation term as fractions of
            T, each constant or ``[start_step, start, end, end_step]``; ProlificDreamer uses 0.02
            and ``[5000, 0.98, 0.5, 5001]``.
        lora_rank: rank r of ζ. 4 is what ProlificDreamer uses (the default rank of the diffusers
            LoRA attention processors it attaches to every attention layer).
        lora_alpha: LoRA α; None means α = r (scaling 1, as those processors).
        camera_condition_type: ``"extrinsics"`` (flattened camera-to-world, ProlificDreamer) or
            ``"mvp"`` (flattened world-to-clip).
        camera_dropout: probability that the score-model *training* sees a zero camera (so an
            unconditional score model is learnt for ``guidance_scale_lora != 1``); 0.1.
        lora_n_timestamp_samples: how many (t', ε') draws per render train the score model.
        weighting: w(t): ``"sds"`` (1 − ᾱ_t), ``"uniform"`` or ``"fantasia3d"``.
        view_adapter_path: safetensors file of the view-adaptation adapter ω (Eq. 12), loaded
            frozen; the prior term then uses ``base + ω`` and the score model ``base + ω + ζ``
            (see the module docstring and :meth:`set_view_adapter`).
        delta_every: apply delta distillation (when a reference is given) on steps where
            ``global_step % delta_every == 0``.
        lora_lr: learning rate of ζ and the camera embedding (1e-4, ProlificDreamer).
        grad_clip, half_precision_weights, negative_prompt, use_view_dependent_prompt,
        front_threshold, back_threshold, overhead_threshold: as in :class:`SDSGuidance`.
        seed: seeds a private CPU generator for t, ε, t', ε' and camera dropout.
    """

    def __init__(
        self,
        prior: DiffusionPrior | str,
        guidance_scale: float = 7.5,
        guidance_scale_lora: float = 1.0,
        min_step_percent: Scheduled = 0.02,
        max_step_percent: Scheduled = 0.98,
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        camera_condition_type: str = "extrinsics",
        camera_dropout: float = 0.1,
        lora_n_timestamp_samples: int = 1,
        weighting: str = "sds",
        view_adapter_path: str | Path | None = None,
        delta_every: int = 1,
        lora_lr: float = 1e-4,
        grad_clip: Scheduled | None = None,
        half_precision_weights: bool = True,
        negative_prompt: str = "",
        use_view_dependent_prompt: bool = True,
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
        seed: int | None = None,
    ) -> None:
        if camera_condition_type not in CAMERA_CONDITION_TYPES:
            raise ConfigError(
                f"camera_condition_type must be one of {CAMERA_CONDITION_TYPES}, "
                f"got {camera_condition_type!r}"
            )
        if not 0.0 <= camera_dropout <= 1.0:
            raise ConfigError(f"camera_dropout must lie in [0, 1], got {camera_dropout}")
        if lora_n_timestamp_samples < 1:
            raise ConfigError(
                f"lora_n_timestamp_samples must be >= 1, got {lora_n_timestamp_samples}"
            )
        if delta_every < 1:
            raise ConfigError(f"delta_every must be >= 1 (1 = every step), got {delta_every}")
        if lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {lora_rank}")
        if check_finite("lora_lr", lora_lr) <= 0:
            raise ConfigError(f"lora_lr must be positive, got {lora_lr}")
        check_finite("guidance_scale_lora", guidance_scale_lora)
        if lora_alpha is not None and check_finite("lora_alpha", lora_alpha) <= 0:
            raise ConfigError(
                f"lora_alpha must be positive (or None for alpha = rank), got {lora_alpha}"
            )
        super().__init__(
            prior,
            guidance_scale=guidance_scale,
            min_step_percent=min_step_percent,
            max_step_percent=max_step_percent,
            weighting=weighting,
            grad_clip=grad_clip,
            half_precision_weights=half_precision_weights,
            negative_prompt=negative_prompt,
            use_view_dependent_prompt=use_view_dependent_prompt,
            front_threshold=front_threshold,
            back_threshold=back_threshold,
            overhead_threshold=overhead_threshold,
            view_adapter_path=view_adapter_path,
            seed=seed,
        )
        self.guidance_scale_lora = float(guidance_scale_lora)
        self.camera_condition_type = camera_condition_type
        self.camera_dropout = float(camera_dropout)
        self.lora_n_timestamp_samples = int(lora_n_timestamp_samples)
        self.delta_every = int(delta_every)
        self.lora_lr = float(lora_lr)

        unet = self.prior.unet
        self.adapters.add(
            VSD_ADAPTER, lora_config(lora_rank, lora_alpha, LORA_TARGET_MODULES), trainable=True
        )
        # Float32 whatever the UNet precision: it is trained with Adam, like the LoRA weights
        # (peft keeps adapter weights in float32 on half-precision layers).
        self.camera_embedding = CameraEmbedding(16, time_embedding_dim(unet)).to(self.prior.device)
        self.camera_conditioner = CameraConditioner(unet, self.camera_embedding)
        logger.info(
            "VSD: one shared UNet; prior term uses %s, score model uses %s (rank %d)",
            "+".join(["base", *self.prior_adapters]),
            "+".join(["base", *self.score_adapters]),
            lora_rank,
        )

    # ------------------------------------------------------------------ parameters / adapters
    @property
    def adapters(self) -> AdapterManager:
        """The prior's adapter manager (one per UNet, owned by the :class:`DiffusionPrior`)."""
        return self.prior.adapters

    @property
    def score_adapters(self) -> list[str]:
        """Adapters of the score model ε_(φ,ζ): the prior term's (ω, if loaded) plus ζ."""
        return [*self.prior_adapters, VSD_ADAPTER]

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("vsd", "lora")

    def lora_parameters(self) -> list[nn.Parameter]:
        """ζ and the camera embedding: everything the score-model loss trains."""
        return self.adapters.parameters(VSD_ADAPTER) + list(self.camera_embedding.parameters())

    def trainable_parameter_groups(self) -> list[dict]:
        """Optimizer groups for the system: ζ + camera embedding at ``lora_lr``."""
        params = [p for p in self.lora_parameters() if p.requires_grad]
        return [{"params": params, "lr": self.lora_lr, "name": "vsd_lora"}]

    def save_adapter(self, path: str | Path, name: str = VSD_ADAPTER) -> Path:
        """Save adapter ``name`` as safetensors; the VSD adapter carries its camera embedding."""
        extra = None
        if name == VSD_ADAPTER:
            extra = {k: v for k, v in self.camera_embedding.state_dict().items()}
        return self.adapters.save(path, name, extra=extra)

    def load_adapter(self, path: str | Path, name: str, trainable: bool) -> None:
        """Load a safetensors adapter as ``name`` (created if absent). A file with a camera
        embedding restores it too when loaded as the VSD adapter."""
        _, extra = self.adapters.load(path, name, trainable=trainable)
        if extra and name == VSD_ADAPTER:
            missing, unexpected = self.camera_embedding.load_state_dict(extra, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{path}: camera embedding does not fit (missing {missing}, unexpected "
                    f"{unexpected}); was it saved with another UNet?"
                )
            self.camera_embedding.requires_grad_(trainable)

    # ------------------------------------------------------------------ the two noise models
    def camera_condition(self, cameras: Cameras) -> Tensor:
        """ψ as the score model sees it: ``[B, 16]`` on the prior's device."""
        return camera_condition(cameras, self.camera_condition_type).to(self.prior.device)

    def score_model_noise(
        self, latents_noisy: Tensor, t: Tensor, cond: Tensor, camera: Tensor
    ) -> Tensor:
        """ε_(φ,ζ)(x_t, t, c, ψ): base (+ ω) + ζ with the camera embedding, ``cond`` the *plain*
        prompt's embedding ``[B, L, D]``, ``camera [B, 16]``.

        With ``guidance_scale_lora`` ≠ 1, classifier-free guidance over the *camera*:
        ``ε(c, 0) + s (ε(c, ψ) − ε(c, 0))``. The unconditional branch keeps the plain prompt and
        zeroes the camera, as threestudio's ProlificDreamer does — it is what camera dropout
        trains (:meth:`lora_loss` always sees the plain prompt), whereas the negative prompt is a
        text the score model never sees in training.
        """
        with self.adapters.use(self.score_adapters):
            if self.guidance_scale_lora == 1.0:
                with self.camera_conditioner.condition(camera):
                    return self.prior.predict_noise(latents_noisy, t, cond)
            both_cam = torch.cat([torch.zeros_like(camera), camera])
            with self.camera_conditioner.condition(both_cam):
                eps = self.prior.predict_noise(
                    torch.cat([latents_noisy, latents_noisy]),
                    torch.cat([t, t]),
                    torch.cat([cond, cond]),
                )
        eps_uncond, eps_cond = eps.chunk(2)
        return classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale_lora)

    def lora_loss(
        self,
        latents: Tensor,
        cond: Tensor,
        camera: Tensor,
        generator: torch.Generator | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Diffusion loss of the score model on detached render latents ``[B, C, h, w]``.

        ``cond [B, L, D]`` is the *plain* prompt's embedding (the score model never sees view
        words). ``t' ~ U{0, …, T−1}``, fresh ε' (or the given ``t [nB]``, ``noise [nB, C, h, w]``,
        with n = ``lora_n_timestamp_samples``), camera dropout; the target follows the prior's
        parameterisation (ε, v = α ε − σ z, or z) since ζ is a residual on the same UNet.
        """
        n = self.lora_n_timestamp_samples
        z = latents.detach().float().repeat(n, 1, 1, 1)  # [nB, C, h, w]
        bn = z.shape[0]
        if t is None:
            gen_device = generator.device if generator is not None else z.device
            t = torch.randint(
                0, self.prior.num_train_timesteps, (bn,), generator=generator, device=gen_device
            )
        if noise is None:
            noise = sample_noise(z, generator)
        if t.shape != (bn,) or noise.shape != z.shape:
            raise ValueError(
                f"lora_loss needs t [{bn}] and noise {tuple(z.shape)}; got {tuple(t.shape)}, "
                f"{tuple(noise.shape)}"
            )
        t = t.to(z.device).long()
        noise = noise.to(z.device).float()
        noisy = self.prior.add_noise(z, noise, t)
        cam = drop_camera_condition(camera.repeat(n, 1), self.camera_dropout, generator)
        text = cond.repeat(n, 1, 1)
        target = self.prior.training_target(z, noise, t)
        dtype = self.prior.dtype
        with self.adapters.use(self.score_adapters), self.camera_conditioner.condition(cam):
            out = self.prior.unet(noisy.to(dtype), t, encoder_hidden_states=text.to(dtype)).sample
        return F.mse_loss(out.float(), target, reduction="mean")

    # ------------------------------------------------------------------ Guidance API
    def forward_latents(
        self,
        latents: Tensor,
        cameras: Cameras,
        prompt: str,
        reference_latents: Tensor | None = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """VSD on latents ``[B, C, h, w]``: ``∂loss_vsd/∂latents = w(t)(ε_φ − ε_(φ,ζ)) / B``
        (minus the same at ``reference_latents`` on delta steps) and the score-model loss.
        ``t [B]`` and ``noise`` of the distillation term may be given explicitly."""
        b = latents.shape[0]
        if latents.ndim != 4:
            raise ValueError(f"latents must be [B, C, h, w], got {tuple(latents.shape)}")
        t, noise = self._draw_t_and_noise(latents, cameras, t, noise, generator)
        embeddings = self.prompt_embeddings(prompt)
        cond, uncond = embeddings.get(cameras)  # e(c, ψ) per camera, for the prior term
        plain = embeddings.cond_embedding.to(cond.device).expand(b, -1, -1)  # c, for ε_(φ,ζ)
        camera = self.camera_condition(cameras)  # [B, 16]

        def residual_fn(latents_noisy: Tensor, tt: Tensor, eps: Tensor) -> Tensor:
            k = latents_noisy.shape[0] // b  # 2 when the reference rides in the same batch
            c, u, cam = cond.repeat(k, 1, 1), uncond.repeat(k, 1, 1), camera.repeat(k, 1)
            eps_prior = self.prior_noise(latents_noisy, tt, c, u)
            eps_score = self.score_model_noise(latents_noisy, tt, plain.repeat(k, 1, 1), cam)
            return eps_prior - eps_score

        apply_delta = reference_latents is not None and self.global_step % self.delta_every == 0
        residual = distillation_residual(
            residual_fn, self.prior, latents, noise, t, reference_latents if apply_delta else None
        )
        w = timestep_weight(self.weighting, self.prior.alphas_cumprod, t).view(-1, 1, 1, 1)
        clip = None if self.grad_clip is None else scheduled_value(self.grad_clip, self.global_step)
        grad = clean_grad(w * residual, clip)
        loss_vsd = distillation_loss(latents, grad)
        loss_lora = self.lora_loss(
            latents, plain, camera, generator=generator if generator is not None else self.generator
        )
        return GuidanceOutput(
            loss=loss_vsd + loss_lora,
            terms={"loss_vsd": loss_vsd, "loss_lora": loss_lora},
            diagnostics={
                "t": float(t.float().mean()),
                "grad_norm": float(grad.norm()),
                "delta_applied": float(apply_delta),
                "min_step": float(self.min_step),
                "max_step": float(self.max_step),
            },
        )
