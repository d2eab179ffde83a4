"""ω for a run: the view adapter of the lightweight adaptation (paper Sec. 4.2, Eq. 12),

    min_ω Σ_i E_{t,ε,ψ} ‖ε_(φ,ω)(α_t g(θ_ret⁽ⁱ⁾, ψ) + σ_t ε, t, e(c_ret⁽ⁱ⁾, ψ)) − ε‖²,

trained on — or taken from the cache for — the assets θ_ret of a run, then loaded frozen into
the guidance's prior term. The training itself is :mod:`ra3d.guidance.adaptation`; this module
decides *what* it is trained on, once for both commands that train ω:

* ``ra3d fit`` (:class:`~ra3d.augmentation.retrieval_augmentation.RetrievalAugmentation`, step 4
  of its docstring) calls :func:`view_adapter_for_run`;
* ``ra3d adapt`` calls :func:`train_or_reuse` with the same RetrievedAssets (retrieved, or the
  user's meshes through :func:`ra3d.augmentation.assets.user_assets`).

Both therefore render the same meshes (:func:`~ra3d.augmentation.assets.mesh_for`: radius, up
axis, front azimuth), caption them alike (:func:`caption_of`), fingerprint them alike
(:func:`fingerprint_of`) and use the same :class:`AdaptationConfig` → ``AdaptationSettings``
(:meth:`AdaptationConfig.settings`) — so ``ra3d adapt`` followed by a fit with the same meshes,
prompt, prior and settings finds the cached ω instead of training a second one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import ra3d.guidance.adaptation as trainer
from ra3d.augmentation.assets import up_axis_of
from ra3d.errors import ConfigError
from ra3d.guidance.adaptation import AdaptationResult, AdaptationSettings
from ra3d.guidance.adapter_cache import adaptation_cache_key, asset_fingerprint, sidecar_path
from ra3d.guidance.base import Guidance
from ra3d.guidance.prior import DiffusionPrior
from ra3d.representations.mesh import SHADINGS, MeshAsset
from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)

#: Where a run folder keeps its copy of ω (a later stage or a resume reads it from there).
ADAPTER_FILE = "adapter/view_adapter.safetensors"

#: AdaptationSettings' defaults: the one place they are defined.
_DEFAULT: dict[str, Any] = {f.name: f.default for f in fields(AdaptationSettings)}


@dataclass
class AdaptationConfig:
    """The ``model.adaptation`` section of a fit and the flags of ``ra3d adapt`` (Eq. 12).

    The user-facing part of :class:`~ra3d.guidance.adaptation.AdaptationSettings`, whose
    defaults these fields read; :meth:`settings` gives the full set (cameras, optimiser, view
    words).

    Args:
        enabled: train ω on the retrieved assets' renders before the fit (cached).
        n_views: renders per asset, spread uniformly over the training cameras' elevation band
            (the paper: 100).
        steps: optimisation steps of ω (null, as configs saved by older versions write it, means
            the default).
        lr: learning rate of ω (AdamW).
        rank: LoRA rank of ω.
        batch_size: renders per optimisation step.
        seed: seeds the held-out split of the views, t and ε of the adaptation.
        render_size: render resolution in pixels; none = the prior's native resolution.
        shading: how the assets are rendered: ``albedo``, or ``lambertian``, which gives
            untextured assets a visible shape.
    """

    enabled: bool = True
    n_views: int = field(default=_DEFAULT["n_views"], metadata={"flag": "--views"})
    steps: int | None = _DEFAULT["steps"]
    lr: float = _DEFAULT["lr"]
    rank: int = _DEFAULT["rank"]
    batch_size: int = _DEFAULT["batch_size"]
    seed: int = _DEFAULT["seed"]
    render_size: int | None = _DEFAULT["render_size"]
    shading: str = field(default=_DEFAULT["shading"], metadata={"choices": SHADINGS})

    def overrides(self) -> dict[str, Any]:
        """The settings this section sets; a None (e.g. an old config's ``steps: null``) leaves
        the AdaptationSettings default."""
        out = {}
        for name in USER_SETTINGS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def settings(self, guidance: Guidance | None = None) -> AdaptationSettings:
        """The full AdaptationSettings: these values, and the view words of ``guidance`` (the
        fit's) or, without one (``ra3d adapt``), the guidance classes' defaults — so that both
        commands caption the renders, hence key the cache, alike."""
        return AdaptationSettings.for_guidance(guidance, **self.overrides())


#: The AdaptationSettings fields a user sets (everything of AdaptationConfig but ``enabled``).
USER_SETTINGS: tuple[str, ...] = tuple(
    f.name for f in fields(AdaptationConfig) if f.name != "enabled"
)
if not set(USER_SETTINGS) <= set(_DEFAULT):  # a definition error, caught at import
    raise TypeError(f"AdaptationConfig fields {set(USER_SETTINGS) - set(_DEFAULT)} are no settings")


def caption_of(asset: RetrievedAsset, query: str | None) -> str:
    """c_ret of Eq. 12: the asset's caption (a user mesh's follows
    :func:`~ra3d.augmentation.assets.user_assets`), else the query it was retrieved for."""
    caption = asset.caption or query
    if not caption or not caption.strip():
        raise ConfigError(
            f"asset {asset.uid} has no caption and there is no prompt to caption it with"
        )
    return caption


def fingerprint_of(asset: RetrievedAsset, radius: float) -> str:
    """What the asset's renders depend on — file bytes, front azimuth, up axis, scale — as the
    cache key of ω reads it."""
    return asset_fingerprint(
        asset.mesh_path, asset.front_azimuth_deg, radius, up_axis=up_axis_of(asset)
    )


def adapter_key(
    prior: DiffusionPrior,
    assets: Sequence[RetrievedAsset],
    radius: float,
    settings: AdaptationSettings,
    query: str | None,
) -> str:
    """The cache key of the ω these assets train (the file stem in ``<cache>/adapters``)."""
    return adaptation_cache_key(
        prior.cache_id,
        [fingerprint_of(a, radius) for a in assets],
        settings,
        [caption_of(a, query) for a in assets],
    )


def train_or_reuse(
    prior: DiffusionPrior,
    assets: Sequence[RetrievedAsset],
    meshes: Sequence[MeshAsset],
    radius: float,
    settings: AdaptationSettings,
    query: str | None,
    *,
    progress: bool = False,
    use_cache: bool = True,
    out: str | Path | None = None,
) -> AdaptationResult:
    """ω trained on ``meshes`` (one per asset, as :func:`~ra3d.augmentation.assets.mesh_for`
    builds them) with the captions and fingerprints of :func:`caption_of`/:func:`fingerprint_of`.

    ``use_cache`` (the default): reuse or fill ``<cache>/adapters/<key>.safetensors``; else train
    into ``out`` (default ``adapter.safetensors``) whatever the cache holds."""
    if len(meshes) != len(assets):
        raise ConfigError(f"{len(meshes)} mesh(es) for {len(assets)} asset(s)")
    pairs = [(mesh, caption_of(a, query)) for mesh, a in zip(meshes, assets, strict=True)]
    prints = [fingerprint_of(a, radius) for a in assets]
    if not use_cache:
        target = Path(out) if out is not None else Path("adapter.safetensors")
        return trainer.adapt_prior(prior, pairs, settings, target, progress, prints)
    return trainer.cached_adapt(prior, pairs, prints, settings, progress=progress)


def copy_adapter(source: str | Path, target: str | Path) -> Path:
    """Copy ω and its JSON sidecar (settings, captions, losses) to ``target``."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    if sidecar_path(source).is_file():
        shutil.copyfile(sidecar_path(source), sidecar_path(target))
    return target


def view_adapter_for_run(
    guidance: Guidance,
    config: AdaptationConfig,
    assets: Sequence[RetrievedAsset],
    meshes: Sequence[MeshAsset],
    radius: float,
    query: str,
    run_dir: Path | None,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Eq. 12 for a fit: ω from the run's record (a resume or a later stage), else from the cache
    (trained now if absent); copied into ``run_dir/adapter/`` and loaded frozen into
    ``guidance``'s prior term. Returns the run's adapter record (``path``, ``key``)."""
    prior = guidance.view_adapter_prior()
    if prior is None:
        raise ConfigError(
            f"adaptation needs a diffusion guidance with a view adapter (SDS or VSD), got "
            f"{type(guidance).__name__}; set model.adaptation.enabled false"
        )
    if recorded and recorded.get("path") and Path(recorded["path"]).is_file():
        path = Path(recorded["path"])
        logger.info("reusing the run's view adapter ω %s", path)
        record = dict(recorded)
    else:
        # The view words of e(c_ret, ψ) follow the guidance's own rule (Eq. 12 vs Eq. 2).
        result = train_or_reuse(prior, assets, meshes, radius, config.settings(guidance), query)
        path = Path(result.path)
        record = {"path": str(path), "key": path.stem}
    if run_dir is not None:
        copy = run_dir / ADAPTER_FILE
        if copy.resolve() != path.resolve():
            copy_adapter(path, copy)
        record = {**record, "path": str(copy.resolve())}
        path = copy
    guidance.set_view_adapter(path)
    logger.info("prior term uses base + ω (%s)", path)
    return record


__all__ = [
    "ADAPTER_FILE",
    "USER_SETTINGS",
    "AdaptationConfig",
    "adapter_key",
    "caption_of",
    "copy_adapter",
    "fingerprint_of",
    "train_or_reuse",
    "view_adapter_for_run",
]
