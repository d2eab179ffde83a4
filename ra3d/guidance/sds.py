"""Score Distillation Sampling (Poole et al. 2022) and the pieces every score distillation shares.

For a render x = g(θ, ψ) with latent z, SDS moves θ along

    v = E_{t, ε}[ w(t) (ε̂_φ(z_t; y, t) − ε) ∂z/∂θ ],   z_t = α_t z + σ_t ε,

the special case of Eq. 2 where the particle's own score is replaced by the injected noise ε. The
noise prediction uses classifier-free guidance, ``ε̂ = ε̂_uncond + s (ε̂_cond − ε̂_uncond)``.

There is no loss whose gradient is v through the UNet, so the UNet runs without gradient and the
velocity is injected through a *detached target* (see :func:`distillation_loss`):

    loss = 0.5 · Σ (z − sg(z − grad))² / B   ⇒   ∂loss/∂z = grad / B.

Convention: ``∂loss/∂latents = grad / B`` — each element of the batch contributes its velocity
``grad = w(t)(ε̂ − ε)`` and the batch *averages* them (a Monte-Carlo estimate of E_ψ), so the step
size does not change with the batch size.

The module-level helpers (timestep range with annealing, w(t), classifier-free guidance, the
shared delta-distillation residual of Eq. 13, the loss) are used by VSD as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ra3d.cameras import Cameras
from ra3d.errors import ConfigError
from ra3d.guidance.base import Guidance, GuidanceOutput
from ra3d.guidance.prior import DiffusionPrior
from ra3d.guidance.prompts import PromptEmbeddings
from ra3d.schedule import Scheduled, check_scheduled, scheduled_value

logger = logging.getLogger(__name__)

#: w(t) choices. "sds": 1 − ᾱ_t = σ_t² (DreamFusion); "uniform": 1; "fantasia3d": √ᾱ_t (1 − ᾱ_t).
WEIGHTINGS: tuple[str, ...] = ("sds", "uniform", "fantasia3d")
_WEIGHTING_ALIASES = {"fantasia": "fantasia3d", "dreamfusion": "sds"}

#: residual_fn(latents_noisy [N, C, h, w], t [N], noise [N, C, h, w]) -> residual [N, C, h, w]
ResidualFn = Callable[[Tensor, Tensor, Tensor], Tensor]


#: Adapter name of the view-adaptation LoRA ω (Eq. 12) on the prior's shared UNet.
VIEW_ADAPTER = "view"


def check_finite(name: str, value: object) -> float:
    """``float(value)``, or a :class:`ConfigError` naming the setting if it is not a finite
    number (NaN/inf would silently poison every later step)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return number


def check_finite_scheduled(name: str, value: Scheduled) -> None:
    """A schedule (see :mod:`ra3d.schedule`) whose every number is finite."""
    check_scheduled(value, name)
    for v in [value] if isinstance(value, int | float) else list(value):
        check_finite(name, v)


# ---------------------------------------------------------------------------------- time steps
def _schedule_endpoints(value: Scheduled) -> list[float]:
    if isinstance(value, int | float):
        return [float(value)]
    return [float(value[1]), float(value[2])]


class TimestepRange:
    """The range ``[min_step, max_step]`` that t is drawn from, with threestudio-style annealing.

    Each percentage is a constant or ``[start_step, start_value, end_value, end_step]`` (linear in
    the global step, see :mod:`ra3d.schedule`); ProlificDreamer anneals the max step with
    ``[5000, 0.98, 0.5, 5001]``. Steps are ``round(T · percent)``, clamped to ``[0, T − 1]``.
    """

    def __init__(
        self,
        num_train_timesteps: int,
        min_step_percent: Scheduled = 0.02,
        max_step_percent: Scheduled = 0.98,
    ) -> None:
        check_finite_scheduled("min_step_percent", min_step_percent)
        check_finite_scheduled("max_step_percent", max_step_percent)
        for name, value in (
            ("min_step_percent", min_step_percent),
            ("max_step_percent", max_step_percent),
        ):
            for p in _schedule_endpoints(value):
                if not 0.0 <= p <= 1.0:
                    raise ConfigError(f"{name} values must lie in [0, 1], got {value!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.min_step_percent = min_step_percent
        self.max_step_percent = max_step_percent
        self.min_step = 0
        self.max_step = 0
        self.update(0)

    def step_of(self, percent: float) -> int:
        """Integer time step for a fraction of T."""
        return min(
            max(int(round(self.num_train_timesteps * percent)), 0), self.num_train_timesteps - 1
        )

    def update(self, global_step: int) -> None:
        """Set ``min_step``/``max_step`` for ``global_step``."""
        lo = self.step_of(scheduled_value(self.min_step_percent, global_step))
        hi = self.step_of(scheduled_value(self.max_step_percent, global_step))
        if lo > hi:
            raise ConfigError(
                f"at step {global_step} min_step ({lo}) exceeds max_step ({hi}); lower "
                "min_step_percent or raise max_step_percent"
            )
        self.min_step, self.max_step = lo, hi

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``t [B]`` (int64), uniform over the integers in ``[min_step, max_step]``."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(
            self.min_step, self.max_step + 1, (batch_size,), generator=generator, device=gen_device
        )
        return t.to(device) if device is not None else t


def sample_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """ε ~ N(0, I) shaped like ``like`` (float32, on its device). With a generator, ε is drawn on
    the generator's device and moved, so a CPU generator gives the same ε on CPU and GPU."""
    if generator is None:
        return torch.randn(like.shape, device=like.device, dtype=torch.float32)
    eps = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return eps.to(like.device)


def timestep_weight(weighting: str, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """w(t) for time steps ``t [B]`` → ``[B]`` float32."""
    name = _WEIGHTING_ALIASES.get(weighting, weighting)
    abar = alphas_cumprod[t.to(alphas_cumprod.device).long()].float()
    if name == "sds":
        return 1.0 - abar
    if name == "uniform":
        return torch.ones_like(abar)
    if name == "fantasia3d":
        return abar.sqrt() * (1.0 - abar)
    raise ConfigError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")


# ---------------------------------------------------------------------------------- the score
def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """``ε̂ = ε_uncond + s (ε_cond − ε_uncond)`` (Ho & Salimans 2022)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def guided_noise_prediction(
    prior: DiffusionPrior,
    latents_noisy: Tensor,
    t: Tensor,
    cond: Tensor,
    uncond: Tensor,
    guidance_scale: float,
    **unet_kwargs: object,
) -> Tensor:
    """Classifier-free-guided ε̂ for ``latents_noisy [B, C, h, w]`` with one batched UNet call on
    ``[uncond; cond]`` (``cond``/``uncond`` are ``[B, L, D]``). Tensor-valued ``unet_kwargs``
    (e.g. ``class_labels [B, ...]``) are duplicated along the batch to match."""
    b = latents_noisy.shape[0]
    kwargs = {
        k: torch.cat([v, v]) if isinstance(v, Tensor) and v.shape[:1] == (b,) else v
        for k, v in unet_kwargs.items()
    }
    eps = prior.predict_noise(
        torch.cat([latents_noisy, latents_noisy]),
        torch.cat([t, t]),
        torch.cat([uncond, cond]),
        **kwargs,
    )
    eps_uncond, eps_cond = eps.chunk(2)
    return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)


def distillation_residual(
    residual_fn: ResidualFn,
    prior: DiffusionPrior,
    latents: Tensor,
    noise: Tensor,
    t: Tensor,
    reference_latents: Tensor | None = None,
) -> Tensor:
    """The score residual at ``latents``, optionally minus the same residual at a reference
    (delta distillation, Eq. 13: ``v̂ = v(θ) − v(θ_ret)``), without gradient.

    Both latents are noised with the *same* t and ε, so the difference keeps only what the prior
    says differently about the particle and the retrieved asset; the injected-noise and
    prior-bias parts cancel. With a reference the UNet sees one batch ``[latents; reference]``:
    ``residual_fn`` then receives ``N = 2B`` samples and must repeat per-sample conditioning
    (text, cameras) ``N // B`` times.

    Args:
        residual_fn: ``(z_t [N], t [N], ε [N]) → residual [N]``, e.g. ``ε̂ − ε`` for SDS or
            ``ε̂_φ − ε̂_lora`` for VSD.
        latents: ``[B, C, h, w]`` (detached here).
        noise, t: ``[B, C, h, w]`` and ``[B]``.
        reference_latents: ``[B, C, h, w]`` latents of the retrieved asset's render, or None.

    Returns:
        ``[B, C, h, w]`` float32 residual (unweighted).
    """
    z = latents.detach().float()
    with torch.no_grad():
        if reference_latents is None:
            return residual_fn(prior.add_noise(z, noise, t), t, noise).float()
        if reference_latents.shape != z.shape:
            raise ValueError(
                f"reference latents {tuple(reference_latents.shape)} must match the latents "
                f"{tuple(z.shape)}: render the reference at the same cameras and size"
            )
        both = torch.cat([z, reference_latents.detach().float()])
        noise2, t2 = torch.cat([noise, noise]), torch.cat([t, t])
        residual = residual_fn(prior.add_noise(both, noise2, t2), t2, noise2).float()
        own, ref = residual.chunk(2)
        return own - ref


def clean_grad(grad: Tensor, grad_clip: float | None = None) -> Tensor:
    """Replace NaN/inf by 0 (a fp16 UNet can overflow) and clip elementwise to ±grad_clip."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if grad_clip is not None:
        grad = grad.clamp(-grad_clip, grad_clip)
    return grad


def distillation_loss(latents: Tensor, grad: Tensor) -> Tensor:
    """``0.5 · Σ (z − sg(z − grad))² / B`` whose gradient on ``latents [B, ...]`` is ``grad / B``."""
    target = (latents - grad).detach()
    return 0.5 * (latents.float() - target.float()).square().sum() / latents.shape[0]


# ---------------------------------------------------------------------------------- SDS
class SDSGuidance(Guidance):
    """Score Distillation Sampling with classifier-free guidance and view-dependent prompts.

    Args:
        prior: a :class:`DiffusionPrior`, or a hub id / local folder to load one from.
        guidance_scale: s of classifier-free guidance (100 for SDS, as in DreamFusion).
        min_step_percent, max_step_percent: the t range as fractions of T; each may be
            ``[start_step, start_value, end_value, end_step]`` (linear annealing).
        weighting: w(t): ``"sds"`` (1 − ᾱ_t), ``"uniform"`` or ``"fantasia3d"``.
        grad_clip: elementwise clip of the velocity (may be scheduled), None for none.
        half_precision_weights: load the prior in float16 when it is built here on CUDA (float16
            convolutions on CPU are slow, so a CPU prior stays float32).
        negative_prompt: prompt of the unconditional branch.
        use_view_dependent_prompt: append front/side/back/overhead view words (DreamFusion).
        front_threshold, back_threshold, overhead_threshold: view-word sectors in degrees.
        view_adapter_path: safetensors file of the view-adaptation adapter ω (Eq. 12, written by
            ``ra3d adapt``), loaded frozen; the prior term then uses ``base + ω``. See
            :meth:`set_view_adapter`.
        seed: seeds a private CPU generator for t and ε, making steps reproducible.
    """

    def __init__(
        self,
        prior: DiffusionPrior | str,
        guidance_scale: float = 100.0,
        min_step_percent: Scheduled = 0.02,
        max_step_percent: Scheduled = 0.98,
        weighting: str = "sds",
        grad_clip: Scheduled | None = None,
        half_precision_weights: bool = True,
        negative_prompt: str = "",
        use_view_dependent_prompt: bool = True,
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
        view_adapter_path: str | Path | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if _WEIGHTING_ALIASES.get(weighting, weighting) not in WEIGHTINGS:
            raise ConfigError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        check_finite("guidance_scale", guidance_scale)
        for name, value in (
            ("front_threshold", front_threshold),
            ("back_threshold", back_threshold),
            ("overhead_threshold", overhead_threshold),
        ):
            check_finite(name, value)
        if grad_clip is not None:
            check_finite_scheduled("grad_clip", grad_clip)
        if isinstance(prior, str):
            use_half = half_precision_weights and torch.cuda.is_available()
            if half_precision_weights and not use_half:
                logger.info("no CUDA device: loading the prior in float32, not float16")
            prior = DiffusionPrior(prior, dtype="float16" if use_half else "float32")
        elif not isinstance(prior, DiffusionPrior):
            raise ConfigError(
                f"prior must be a DiffusionPrior or a model path/hub id, got {type(prior).__name__}"
            )
        self.prior = prior
        self.guidance_scale = float(guidance_scale)
        self.weighting = weighting
        self.grad_clip = grad_clip
        self.negative_prompt = negative_prompt
        self.use_view_dependent_prompt = use_view_dependent_prompt
        self.view_thresholds = (
            float(front_threshold),
            float(back_threshold),
            float(overhead_threshold),
        )
        self.timesteps = TimestepRange(
            prior.num_train_timesteps, min_step_percent, max_step_percent
        )
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.global_step = 0
        self._prompts: dict[str, PromptEmbeddings] = {}
        #: adapters active in the prior term: ``[]`` (base) or ``["view"]`` (base + ω).
        self.prior_adapters: list[str] = []
        self.view_adapter_path: str | None = None
        if view_adapter_path is not None:
            self.set_view_adapter(view_adapter_path)

    # ------------------------------------------------------------------ view adapter ω (Eq. 12)
    def set_view_adapter(self, path: str | Path | None) -> None:
        """Use the view-adapted prior ``ε_(φ,ω)`` of Eq. 12 in the prior term, or the base prior.

        ``path`` is a safetensors adapter written by ``ra3d adapt`` /
        :func:`ra3d.guidance.adaptation.adapt_prior`. ω is loaded as adapter ``"view"`` on the
        prior's shared UNet and is *frozen*: ``requires_grad=False`` and in no optimizer group,
        so the fit never changes it. ``None`` removes ω from the UNet (the prior term is the base
        model again). Loading another file replaces ω (whatever its rank).
        """
        manager = self.prior.adapters
        if path is not None and not Path(path).is_file():
            raise ConfigError(
                f"view adapter not found: {path}. Create one with `ra3d adapt --prompt ...` "
                "(or `--assets mesh.glb`), or leave view_adapter_path unset"
            )
        if VIEW_ADAPTER in manager.names:
            manager.remove(VIEW_ADAPTER)
        self.prior_adapters = []
        self.view_adapter_path = None
        if path is None:
            return
        path = Path(path)
        try:
            manager.load(path, VIEW_ADAPTER, trainable=False)
        except ValueError as err:
            if VIEW_ADAPTER in manager.names:  # created from the metadata, then did not fit
                manager.remove(VIEW_ADAPTER)
            raise ConfigError(
                f"cannot use {path} as the view adapter: {err}. Re-run `ra3d adapt` with this prior"
            ) from err
        self.prior_adapters = [VIEW_ADAPTER]
        self.view_adapter_path = str(path)
        logger.info("prior term uses base + view adapter ω from %s", path)

    def view_adapter_prior(self) -> DiffusionPrior:
        return self.prior

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("sds",)

    # ------------------------------------------------------------------ helpers
    @property
    def min_step(self) -> int:
        return self.timesteps.min_step

    @property
    def max_step(self) -> int:
        return self.timesteps.max_step

    def prompt_embeddings(self, prompt: str) -> PromptEmbeddings:
        """Cached :class:`PromptEmbeddings` for ``prompt``."""
        if prompt not in self._prompts:
            front, back, overhead = self.view_thresholds
            self._prompts[prompt] = PromptEmbeddings(
                self.prior,
                prompt,
                self.negative_prompt,
                front_threshold=front,
                back_threshold=back,
                overhead_threshold=overhead,
                use_view_dependent=self.use_view_dependent_prompt,
            )
        return self._prompts[prompt]

    def encode(self, rgb: Tensor) -> Tensor:
        """Renders ``[B, H, W, 3]`` → latents at the prior's native resolution (differentiable)."""
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"guidance expects rgb [B, H, W, 3] in [0, 1], got {tuple(rgb.shape)}")
        return self.prior.encode_images(self.prior.resize_to_native(rgb))

    def prior_noise(self, latents_noisy: Tensor, t: Tensor, cond: Tensor, uncond: Tensor) -> Tensor:
        """ε_φ (or ε_(φ,ω) with the view adapter) with classifier-free guidance at
        ``guidance_scale``; ``cond``/``uncond`` ``[B, L, D]``."""
        with self.prior.adapters.use(self.prior_adapters):
            return guided_noise_prediction(
                self.prior, latents_noisy, t, cond, uncond, self.guidance_scale
            )

    # ------------------------------------------------------------------ Guidance API
    def forward(
        self,
        rgb: Tensor,
        cameras: Cameras,
        prompt: str,
        reference_rgb: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """SDS loss for renders ``rgb [B, H, W, 3]``; with ``reference_rgb`` the delta-distilled
        velocity ``v(x) − v(x_ref)`` (Eq. 13) at the same t and ε."""
        latents = self.encode(rgb)
        reference_latents = None
        if reference_rgb is not None:
            if reference_rgb.shape != rgb.shape:
                raise ValueError(
                    f"reference_rgb {tuple(reference_rgb.shape)} must have the shape of rgb "
                    f"{tuple(rgb.shape)}"
                )
            with torch.no_grad():
                reference_latents = self.encode(reference_rgb.detach())
        return self.forward_latents(
            latents, cameras, prompt, reference_latents, generator=generator
        )

    def _draw_t_and_noise(
        self,
        latents: Tensor,
        cameras: Cameras,
        t: Tensor | None,
        noise: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """Check the batch and draw what was not given: t first, then ε, from ``generator``, else
        the guidance's seeded generator, else the global RNG (the same order in SDS and VSD)."""
        b = latents.shape[0]
        if len(cameras) != b:
            raise ValueError(f"got {len(cameras)} cameras for a batch of {b} images")
        gen = generator if generator is not None else self.generator
        if t is None:
            t = self.timesteps.sample(b, generator=gen, device=latents.device)
        if noise is None:
            noise = sample_noise(latents, gen)
        if t.shape != (b,) or noise.shape != latents.shape:
            raise ValueError(
                f"t must be [B]={b} and noise {tuple(latents.shape)}; got {tuple(t.shape)}, "
                f"{tuple(noise.shape)}"
            )
        return t.to(latents.device).long(), noise

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
        """SDS on latents ``[B, C, h, w]`` directly: ``∂loss/∂latents = w(t)(ε̂ − ε) / B``.

        ``t [B]`` and ``noise`` may be given explicitly; otherwise they are drawn — t first, then
        ε — from ``generator``, else the guidance's seeded generator, else the global RNG.
        """
        b = latents.shape[0]
        t, noise = self._draw_t_and_noise(latents, cameras, t, noise, generator)
        cond, uncond = self.prompt_embeddings(prompt).get(cameras)

        def residual_fn(latents_noisy: Tensor, tt: Tensor, eps: Tensor) -> Tensor:
            k = latents_noisy.shape[0] // b
            eps_hat = self.prior_noise(
                latents_noisy, tt, cond.repeat(k, 1, 1), uncond.repeat(k, 1, 1)
            )
            return eps_hat - eps

        residual = distillation_residual(
            residual_fn, self.prior, latents, noise, t, reference_latents
        )
        w = timestep_weight(self.weighting, self.prior.alphas_cumprod, t).view(-1, 1, 1, 1)
        clip = None if self.grad_clip is None else scheduled_value(self.grad_clip, self.global_step)
        grad = clean_grad(w * residual, clip)
        loss = distillation_loss(latents, grad)
        return GuidanceOutput(
            loss=loss,
            terms={"loss_sds": loss},
            diagnostics={
                "t": float(t.float().mean()),
                "grad_norm": float(grad.norm()),
                "min_step": float(self.min_step),
                "max_step": float(self.max_step),
            },
        )

    def update_step(self, epoch: int, global_step: int, max_steps: int) -> None:
        """Anneal the t range (and a scheduled grad clip) to ``global_step``, and reseed the private
        generator from ``(seed, global_step)``: a step's draws then do not depend on how many steps
        ran in this process, so a run resumed from a checkpoint reproduces the uninterrupted one."""
        self.global_step = global_step
        self.timesteps.update(global_step)
        if self.generator is not None and self.seed is not None:
            self.generator.manual_seed(self.seed * 1_000_003 + global_step)
