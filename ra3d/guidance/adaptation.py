"""Lightweight adaptation of the 2D prior on retrieved assets (paper Sec. 4.2, Eq. 12).

A text-to-image prior is biased towards a few viewpoints (mostly the front): asked for "a teddy
bear, back view" it still draws a face. The paper removes part of that bias before the fit by
rendering each retrieved asset θ_ret⁽ⁱ⁾ densely from uniformly spread cameras ψ, captioning each
render with the view-augmented caption e(c_ret⁽ⁱ⁾, ψ), and training a LoRA adapter ω on the
prior's UNet with the ordinary diffusion loss (Eq. 12):

    min_ω Σ_i E_{t,ε,ψ} ‖ε_(φ,ω)(α_t g(θ_ret⁽ⁱ⁾, ψ) + σ_t ε, t, e(c_ret⁽ⁱ⁾, ψ)) − ε‖².

In latent diffusion g(θ, ψ) is the VAE latent of the render; the target follows the UNet's
parameterisation (ε, v or x₀; :meth:`DiffusionPrior.training_target`). During the fit ω is frozen
and the prior term uses base + ω (:meth:`SDSGuidance.set_view_adapter`).

Choices made here (all in :class:`AdaptationSettings`):

* Cameras: ``n_views`` = 100 near-uniform viewpoints (Fibonacci lattice) on the elevation band
  of the training cameras (−10°…45°, threestudio's ProlificDreamer range), at distance 1.5 with a
  50° field of view — inside the training ranges (1.0–1.5, 40–70°), so the renders look like the
  views the fit will score. View words follow the *same* rule (and thresholds) as the fit's
  prompts: take them from the guidance with :meth:`AdaptationSettings.for_guidance`.
* Renders are composited on white (Eq. 12 has no background; a white backdrop is how asset
  renders and product photos usually look) and encoded to latents once, before training.
* Optimiser: AdamW at ``lr`` = 1e-4 with weight decay 1e-2 and gradient-norm clip 1.0, the
  defaults of diffusers' LoRA fine-tuning script; rank 4 as VSD's own LoRA.
* ``steps`` = 500 at batch 4 (2000 samples, ~20 passes over 100 views of one asset): the usual
  length of a LoRA fine-tune on a few hundred images at this learning rate, ~2 minutes for SD 2.1
  at 512 px on one recent GPU, and seconds for the tiny test prior on a CPU.
* A held-out 10 % of the views (the same for every asset) is never trained on; its diffusion
  loss with fixed (t, ε) draws is reported before and after, so a user can see ω learnt the
  assets rather than memorised the training views.

Adapters are cached by (prior, assets, captions, settings): :func:`cached_adapt` reuses
``<cache>/adapters/<key>.safetensors`` so a second fit, or a resume, does not train again.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.cameras import uniform_sphere_cameras, view_direction, view_prompt
from ra3d.errors import ConfigError
from ra3d.guidance.adapter_cache import (
    ADAPTATION_VERSION,
    adaptation_cache_key,
    asset_fingerprint,
    sidecar_path,
    write_json_atomic,
)
from ra3d.guidance.prior import DiffusionPrior, ra3d_cache_dir
from ra3d.guidance.sds import VIEW_ADAPTER, SDSGuidance, check_finite
from ra3d.representations.mesh import SHADINGS, MeshAsset

logger = logging.getLogger(__name__)

_RENDER_CHUNK = 8  # views rendered / encoded per batch (bounds memory at 512 px)

#: The guidance's own defaults (SDSGuidance's signature; VSD inherits the rule): the view words
#: of e(c_ret, ψ) when ω is trained without a guidance at hand (``ra3d adapt``) are then those a
#: fit with a default guidance uses, so both train — and cache — the same ω.
_GUIDANCE_DEFAULTS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(SDSGuidance.__init__).parameters.items()
}


@dataclass
class AdaptationSettings:
    """Everything that shapes ω (and therefore the cache key). See the module docstring for the
    reasons behind each default.

    The one definition of these defaults: the user-facing subset — the ``model.adaptation``
    section of a fit and the flags of ``ra3d adapt`` — is
    :class:`ra3d.augmentation.adaptation.AdaptationConfig`, whose defaults are read from these
    fields; the view-word thresholds are the guidance's own (:meth:`for_guidance`), and their
    defaults are the guidance classes' defaults.

    Args:
        n_views: renders per asset (near-uniform cameras on the elevation band).
        steps: optimisation steps of ω.
        lr: AdamW learning rate of ω.
        rank: LoRA rank of ω.
        alpha: LoRA alpha; None = the rank.
        batch_size: renders per step.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clip.
        render_size: render resolution in pixels; None = the prior's native resolution.
        camera_distance: distance of the adaptation cameras.
        fovy_deg: vertical field of view of the adaptation cameras.
        min_elevation_deg: lower end of the cameras' elevation band.
        max_elevation_deg: upper end of the cameras' elevation band.
        front_threshold: half-width in degrees of the azimuth sector captioned "front view" (a
            fit takes it from its guidance's ``front_threshold``).
        back_threshold: half-width in degrees of the sector captioned "back view" (a fit: its
            guidance's ``back_threshold``).
        overhead_threshold: elevations above this (degrees) are captioned "overhead view" (a
            fit: its guidance's ``overhead_threshold``).
        view_dependent: caption the renders with view words at all (the guidance's
            ``use_view_dependent_prompt``).
        shading: asset render shading (``albedo`` or ``lambertian``).
        seed: seeds the held-out split of the views, t and ε.
        heldout_fraction: share of the views never trained on (their loss is reported).
        heldout_draws: fixed (t, ε) draws per held-out view.
    """

    n_views: int = 100
    steps: int = 500
    lr: float = 1e-4
    rank: int = 4
    alpha: float | None = None
    batch_size: int = 4
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    render_size: int | None = None  # None: the prior's native resolution
    camera_distance: float = 1.5
    fovy_deg: float = 50.0
    min_elevation_deg: float = -10.0
    max_elevation_deg: float = 45.0
    front_threshold: float = _GUIDANCE_DEFAULTS["front_threshold"]
    back_threshold: float = _GUIDANCE_DEFAULTS["back_threshold"]
    overhead_threshold: float = _GUIDANCE_DEFAULTS["overhead_threshold"]
    view_dependent: bool = field(
        default=_GUIDANCE_DEFAULTS["use_view_dependent_prompt"],
        metadata={"help": "caption the renders without view words (a guidance with "
                  "use_view_dependent_prompt false)"},
    )  # fmt: skip
    shading: str = "albedo"
    seed: int = 0
    heldout_fraction: float = 0.1
    heldout_draws: int = 4  # fixed (t, ε) draws per held-out view

    def __post_init__(self) -> None:
        for name in ("n_views", "steps", "rank", "batch_size", "heldout_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"adaptation {name} must be an integer >= 1, got {value!r}")
        for name in (
            "lr", "weight_decay", "max_grad_norm", "camera_distance", "fovy_deg",
            "min_elevation_deg", "max_elevation_deg", "front_threshold", "back_threshold",
            "overhead_threshold", "heldout_fraction",
        ):  # fmt: skip
            check_finite(f"adaptation {name}", getattr(self, name))
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ConfigError(
                f"adaptation needs lr > 0, weight_decay >= 0 and max_grad_norm > 0; got "
                f"{self.lr}, {self.weight_decay}, {self.max_grad_norm}"
            )
        if self.alpha is not None and check_finite("adaptation alpha", self.alpha) <= 0:
            raise ConfigError(f"adaptation alpha must be > 0 (or None = rank), got {self.alpha}")
        if self.render_size is not None and (
            not isinstance(self.render_size, int) or self.render_size < 8
        ):
            raise ConfigError(
                f"adaptation render_size must be an integer >= 8 or None (the prior's native "
                f"resolution), got {self.render_size!r}"
            )
        if self.camera_distance <= 0 or not 0 < self.fovy_deg < 180:
            raise ConfigError(
                f"adaptation cameras need camera_distance > 0 and 0 < fovy_deg < 180, got "
                f"{self.camera_distance}, {self.fovy_deg}"
            )
        if not -90 <= self.min_elevation_deg <= self.max_elevation_deg <= 90:
            raise ConfigError(
                "adaptation elevation band must satisfy -90 <= min_elevation_deg <= "
                f"max_elevation_deg <= 90, got {self.min_elevation_deg}, {self.max_elevation_deg}"
            )
        if self.shading not in SHADINGS:
            raise ConfigError(f"adaptation shading must be one of {SHADINGS}, got {self.shading!r}")
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(
                f"adaptation heldout_fraction must lie in [0, 1), got {self.heldout_fraction}"
            )
        if self.n_views - self.n_heldout < 1:
            raise ConfigError(
                f"adaptation keeps no training view: n_views={self.n_views} with "
                f"heldout_fraction={self.heldout_fraction}; raise n_views"
            )

    @classmethod
    def for_guidance(cls, guidance: Any | None, **overrides: Any) -> AdaptationSettings:
        """Settings whose view words follow ``guidance``'s own rule (thresholds and whether view
        words are used at all), so e(c_ret, ψ) here means what e(c, ψ) means during the fit.

        ``guidance`` None (``ra3d adapt``, which has none): the defaults, which are the guidance
        classes' own, so the ω trained there is the one a default-guidance fit looks up."""
        if guidance is None:
            return cls(**overrides)
        front, back, overhead = guidance.view_thresholds
        base = dict(
            front_threshold=front,
            back_threshold=back,
            overhead_threshold=overhead,
            view_dependent=bool(guidance.use_view_dependent_prompt),
        )
        return cls(**{**base, **overrides})

    @property
    def n_heldout(self) -> int:
        """Held-out views: ``round(heldout_fraction · n_views)``, at least 1 when the fraction is
        positive."""
        if self.heldout_fraction == 0:
            return 0
        return max(1, round(self.heldout_fraction * self.n_views))

    def caption(self, caption: str, azimuth_deg: float, elevation_deg: float) -> str:
        """e(c_ret, ψ) for one camera (the plain caption if view words are off)."""
        if not self.view_dependent:
            return caption
        direction = view_direction(
            azimuth_deg,
            elevation_deg,
            self.front_threshold,
            self.back_threshold,
            self.overhead_threshold,
        )
        return view_prompt(caption, direction)


@dataclass
class AdaptationResult:
    """What :func:`adapt_prior` produced. Losses are mean-squared diffusion losses."""

    path: Path
    losses: list[float]
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    seconds: float
    captions: list[str] = field(default_factory=list)
    reused: bool = False
    render_seconds: float = 0.0  # of ``seconds``: rendering and VAE-encoding the views

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.path)


# ---------------------------------------------------------------------------------- data
@dataclass
class _ViewData:
    latents: Tensor  # [A, V, C, h, w] render latents, float32
    text_index: Tensor  # [A, V] index into text
    text: Tensor  # [U, L, D] embeddings of the unique captions
    captions: list[str]  # [A·V] e(c_ret, ψ), asset-major
    train: Tensor  # [V_train] view indices
    heldout: Tensor  # [V_held] view indices


def _white(rgb: Tensor, opacity: Tensor, mesh: MeshAsset) -> Tensor:
    """Re-composite ``rgb = colour·a + bg·(1 − a)`` on white: ``rgb + (1 − a)(1 − bg)``."""
    bg = mesh.background.to(rgb)
    return (rgb + (1.0 - opacity) * (1.0 - bg)).clamp(0.0, 1.0)


@torch.no_grad()
def _prepare(
    prior: DiffusionPrior, assets: list[tuple[MeshAsset, str]], settings: AdaptationSettings
) -> _ViewData:
    size = settings.render_size or prior.image_size
    cams = uniform_sphere_cameras(
        settings.n_views,
        size,
        size,
        distance=settings.camera_distance,
        fovy_deg=settings.fovy_deg,
        min_elevation_deg=settings.min_elevation_deg,
        max_elevation_deg=settings.max_elevation_deg,
    )
    order = torch.randperm(settings.n_views, generator=torch.Generator().manual_seed(settings.seed))
    heldout, train = order[: settings.n_heldout].sort().values, order[settings.n_heldout :]
    latents, captions = [], []
    for mesh, caption in assets:
        if not isinstance(caption, str) or not caption.strip():
            raise ConfigError(f"every asset needs a non-empty caption, got {caption!r}")
        view = mesh
        if mesh.shading != settings.shading:  # a shallow copy shares the geometry buffers
            view = copy.copy(mesh)
            view.shading = settings.shading
        per_asset = []
        for start in range(0, settings.n_views, _RENDER_CHUNK):
            chunk = cams[start : start + _RENDER_CHUNK].to(prior.device)
            out = view.render(chunk)
            rgb = _white(out.rgb, out.opacity, mesh)  # [b, S, S, 3]
            per_asset.append(prior.encode_images(prior.resize_to_native(rgb)))
        latents.append(torch.cat(per_asset))
        captions += [
            settings.caption(caption, float(a), float(e))
            for a, e in zip(cams.azimuth.tolist(), cams.elevation.tolist(), strict=True)
        ]
    unique = list(dict.fromkeys(captions))
    index = torch.tensor([unique.index(c) for c in captions]).view(len(assets), settings.n_views)
    return _ViewData(
        torch.stack(latents), index, prior.encode_text(unique), captions, train, heldout
    )


def _diffusion_loss(
    prior: DiffusionPrior, z: Tensor, text: Tensor, t: Tensor, noise: Tensor
) -> Tensor:
    """Eq. 12's ‖UNet(α_t z + σ_t ε, t, e) − target‖² (mean) for whatever adapters are active."""
    noisy = prior.add_noise(z, noise, t)
    out = prior.unet(
        noisy.to(prior.dtype), t, encoder_hidden_states=text.to(prior.device, prior.dtype)
    ).sample
    return F.mse_loss(out.float(), prior.training_target(z, noise, t))


@torch.no_grad()
def _heldout_loss(prior: DiffusionPrior, data: _ViewData, draws: tuple[Tensor, Tensor]) -> float:
    """Mean diffusion loss over every (asset, held-out view, draw) with the *fixed* draws."""
    t_all, noise_all = draws  # [A, V_held, K], [A, V_held, K, C, h, w]
    total, count = 0.0, 0
    for a in range(data.latents.shape[0]):
        z = data.latents[a, data.heldout]  # [V_held, C, h, w]
        text = data.text[data.text_index[a, data.heldout]]
        k = t_all.shape[-1]
        for j in range(k):
            t = t_all[a, :, j].to(prior.device)
            loss = _diffusion_loss(prior, z, text, t, noise_all[a, :, j].to(prior.device))
            total += float(loss) * z.shape[0]
            count += z.shape[0]
    return total / count


# ---------------------------------------------------------------------------------- training
def adapt_prior(
    prior: DiffusionPrior,
    assets: list[tuple[MeshAsset, str]],
    settings: AdaptationSettings | None = None,
    out_path: str | Path = "adapter.safetensors",
    progress: bool = True,
    fingerprints: list[str] | None = None,
) -> AdaptationResult:
    """Train ω of Eq. 12 on ``assets`` (``(mesh, caption c_ret)`` pairs) and save it.

    Writes ``out_path`` (safetensors, loadable by :meth:`SDSGuidance.set_view_adapter`) and a JSON
    sidecar (settings, captions, fingerprints, losses) atomically. The prior is left as it was:
    ω is removed from the UNet afterwards, and the global RNG is not touched.
    """
    from tqdm.auto import tqdm

    settings = settings or AdaptationSettings()
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise ConfigError(f"the adapter file must end in .safetensors, got {out_path}")
    if not assets:
        raise ConfigError("adaptation needs at least one asset (mesh, caption)")
    manager = prior.adapters
    if VIEW_ADAPTER in manager.names:
        raise ConfigError(
            "the prior already carries a view adapter; adapt a prior without one (call "
            "guidance.set_view_adapter(None) first)"
        )
    t0 = time.perf_counter()
    data = _prepare(prior, assets, settings)
    render_seconds = time.perf_counter() - t0
    n_assets, n_train = len(assets), len(data.train)
    logger.info(
        "adapting the prior (Eq. 12): %d asset(s) x %d views at %d px (%d held out), %d steps",
        n_assets, settings.n_views, settings.render_size or prior.image_size,
        len(data.heldout), settings.steps,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(settings.seed + 1)
    t_max = prior.num_train_timesteps
    shape = data.latents.shape[2:]
    draws = (
        torch.randint(
            0, t_max, (n_assets, len(data.heldout), settings.heldout_draws), generator=gen
        ),
        torch.randn(n_assets, len(data.heldout), settings.heldout_draws, *shape, generator=gen),
    )
    before = after = None
    with manager.use([]):
        if len(data.heldout):
            before = _heldout_loss(prior, data, draws)
    # peft draws LoRA's A from the global RNG: seed it from the settings (ω is then a function
    # of the settings alone) inside a fork, so the caller's RNG stream is left as it was.
    cuda = [prior.device.index or 0] if prior.device.type == "cuda" else []
    from ra3d.guidance.lora import lora_config  # peft: only when ω is trained (not for --help)

    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(settings.seed)
        params = manager.add(
            VIEW_ADAPTER, lora_config(settings.rank, settings.alpha), trainable=True
        )

    try:
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        losses: list[float] = []
        bar = tqdm(range(settings.steps), desc="adapting prior", disable=not progress)
        with manager.use([VIEW_ADAPTER]):
            for step in bar:
                a = torch.randint(0, n_assets, (settings.batch_size,), generator=gen)
                v = data.train[torch.randint(0, n_train, (settings.batch_size,), generator=gen)]
                t = torch.randint(0, t_max, (settings.batch_size,), generator=gen)
                noise = torch.randn(settings.batch_size, *shape, generator=gen)
                z = data.latents[a, v]
                text = data.text[data.text_index[a, v]]
                loss = _diffusion_loss(prior, z, text, t.to(prior.device), noise.to(prior.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if (step + 1) % max(1, settings.steps // 5) == 0:
                    window = losses[-max(1, settings.steps // 5) :]
                    logger.info(
                        "adaptation step %d/%d: loss %.4f",
                        step + 1, settings.steps, sum(window) / len(window),
                    )  # fmt: skip
            if len(data.heldout):
                after = _heldout_loss(prior, data, draws)
        manager.set_trainable(VIEW_ADAPTER, False)
        manager.save(out_path, VIEW_ADAPTER)
    finally:
        manager.remove(VIEW_ADAPTER)
    seconds = time.perf_counter() - t0
    result = AdaptationResult(
        out_path, losses, before, after, seconds, data.captions, render_seconds=render_seconds
    )
    write_json_atomic(
        sidecar_path(out_path),
        {
            "format": "ra3d-view-adapter-v1",
            "equation": "Eq. 12",
            "prior": getattr(prior, "pretrained_model_name_or_path", ""),
            "prior_id": prior.cache_id,
            "settings": asdict(settings),
            "assets": [
                {
                    "source": mesh.source,
                    "caption": caption,
                    "front_azimuth_deg": mesh.front_azimuth_deg,
                }
                for mesh, caption in assets
            ],
            "fingerprints": fingerprints,
            "captions": data.captions,
            "heldout_views": data.heldout.tolist(),
            "heldout_loss_before": before,
            "heldout_loss_after": after,
            "losses": losses,
            "seconds": seconds,
            "render_seconds": render_seconds,
        },
    )
    logger.info(
        "view adapter saved to %s in %.1f s; held-out diffusion loss %s -> %s",
        out_path, seconds, _fmt(before), _fmt(after),
    )  # fmt: skip
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def load_result(adapter_path: str | Path) -> AdaptationResult:
    """The :class:`AdaptationResult` recorded in an adapter's sidecar (``reused=True``)."""
    path = Path(adapter_path)
    meta = json.loads(sidecar_path(path).read_text())
    return AdaptationResult(
        path=path,
        losses=[float(x) for x in meta["losses"]],
        heldout_loss_before=meta["heldout_loss_before"],
        heldout_loss_after=meta["heldout_loss_after"],
        seconds=float(meta["seconds"]),
        captions=list(meta["captions"]),
        reused=True,
        render_seconds=float(meta.get("render_seconds", 0.0)),
    )


def cached_adapt(
    prior: DiffusionPrior,
    assets: list[tuple[MeshAsset, str]],
    fingerprints: list[str],
    settings: AdaptationSettings | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> AdaptationResult:
    """:func:`adapt_prior` into ``<cache>/adapters/<key>.safetensors``, or reuse that file.

    ``fingerprints`` (one per asset, :func:`asset_fingerprint`) identify the assets; with the
    prior's :attr:`~DiffusionPrior.cache_id`, the captions and ``settings`` they form the key.
    ``cache_dir`` defaults to ``$RA3D_CACHE_DIR`` or ``~/.cache/ra3d``.
    """
    settings = settings or AdaptationSettings()
    if len(fingerprints) != len(assets):
        raise ConfigError(
            f"cached_adapt needs one fingerprint per asset, got {len(fingerprints)} for "
            f"{len(assets)} assets"
        )
    captions = [caption for _, caption in assets]
    key = adaptation_cache_key(prior.cache_id, fingerprints, settings, captions)
    root = Path(cache_dir) if cache_dir is not None else ra3d_cache_dir()
    path = root / "adapters" / f"{key}.safetensors"
    if path.is_file() and sidecar_path(path).is_file():
        logger.info("reusing cached adapter %s", path)
        return load_result(path)
    return adapt_prior(prior, assets, settings, path, progress=progress, fingerprints=fingerprints)


__all__ = [
    "ADAPTATION_VERSION",
    "AdaptationResult",
    "AdaptationSettings",
    "adapt_prior",
    "adaptation_cache_key",
    "asset_fingerprint",
    "cached_adapt",
    "load_result",
    "sidecar_path",
]
