"""Coarse → fine hand-over: a DMTet initialised from a trained NeRF (threestudio's
``TetrahedraSDFGrid.create_from(ImplicitVolume)`` as used by ProlificDreamer's geometry stage).

1. **Level.** The NeRF's density ``σ`` is sampled at the vertices of a probe grid over its
   bounding cube (zero outside the bounding sphere, where the renderer never looks). The surface is
   the level set ``σ = threshold`` — threestudio's 25, or ``"auto"``: 25 when it occupies between
   :data:`AUTO_MIN_FRACTION` and :data:`AUTO_MAX_FRACTION` of the bounding sphere, else the density
   quantile that puts the occupied fraction on the nearer of those bounds (a faint coarse NeRF
   still gives a solid, a foggy one does not fill the sphere).
2. **Floaters.** Inside vertices are grouped into connected components along the tetrahedra's
   edges (the Kuhn grid links a vertex to its 6 axis neighbours and the 8 neighbours along
   ``±(1,1,0), ±(1,0,1), ±(0,1,1), ±(1,1,1)``); the largest component and those with at least
   ``min_floater_fraction`` of its size are kept.
3. **Box.** The grid's bounding box is the kept region's box plus ``margin`` (world units, at least
   two probe cells) on every side, clipped to the NeRF's cube: the fine grid spends its resolution
   on the object.
4. **SDF.** At the fine grid's vertices, with ``d = threshold - σ`` (negative inside):
   ``sdf_init="clamp"`` (default, threestudio's ``create_from(ImplicitVolume)``) sets
   ``s = clamp(d, -1, 1)``; ``sdf_init="normalize"`` sets ``s = clamp(d / c, -1, 1)`` with ``c``
   the largest ``|d|`` over the vertices of the cubes the surface crosses. Dividing by ``c``
   leaves every edge crossing — hence the initial mesh — exactly where linear interpolation of
   the density puts it, but a coarse NeRF's ``c`` is tens to hundreds, so near-surface values
   come out ≈ 0.01–0.1 and Adam (whose step is about ``lr`` whatever the gradient's size) flips
   their sign in a few steps; clamping keeps them at about ±1, ≈ 1 / lr = 200 steps at
   threestudio's lr 0.005 (``bench/sdf_init.py`` measures both). Clamping moves crossings whose
   edge has an end with ``|d| > 1`` (by up to half an edge). Removed floaters are set outside.
5. **Texture.** With ``copy_texture`` the NeRF's texture field (hash grid + feature MLP) is copied
   into the DMTet's (threestudio's ``copy_net``), and the background when both are of one kind.
   Deviation from ProlificDreamer: threestudio's geometry stage is ``geometry_only`` (no texture
   field at all) and its texture stage starts a fresh one, so there ``copy_net`` copies nothing;
   ra3d copies by default so the geometry phase's validation renders and the texture phase start
   from the coarse NeRF's colours. ``copy_texture: false`` gives threestudio's fresh field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ra3d.cameras import orbit_cameras
from ra3d.errors import ConfigError
from ra3d.representations.base import Representation
from ra3d.representations.components.tetgrid import CORNER_OFFSETS, tet_grid
from ra3d.representations.metrics import silhouette_iou

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 25.0
AUTO_MIN_FRACTION = 0.01
AUTO_MAX_FRACTION = 0.4
#: How the SDF is initialised from the density (step 4 of the module docstring).
SDF_INITS: tuple[str, ...] = ("clamp", "normalize")


@dataclass(frozen=True)
class ConversionOptions:
    """How a NeRF becomes a DMTet: the ``model.init_options`` section of a fine-stage fit.

    Args:
        threshold: the density level of the surface: a number (threestudio's 25), ``"auto"``
            (step 1 of the module docstring) or ``"silhouette"`` (the level whose DMTet
            silhouettes match the NeRF's renders best).
        margin: world units added around the kept region (at least two probe cells).
        remove_floaters: drop small disconnected components (step 2).
        min_floater_fraction: components at least this share of the largest one are kept.
        copy_texture: copy the NeRF's texture field (and background when of one kind) into the
            DMTet (threestudio's ``copy_net``). A deviation kept on purpose: threestudio's
            geometry stage has no texture field (``geometry_only``) and its texture stage starts a
            fresh one, so ProlificDreamer's texture never comes from the NeRF; ``false`` does that.
        sdf_init: ``"clamp"`` (threestudio: ``clamp(threshold - σ, -1, 1)``) or ``"normalize"``
            (``threshold - σ`` divided by its largest magnitude over the surface's cubes, then
            clamped: the mesh exactly at the interpolated level set, but near-surface values of
            ≈ 0.01–0.1 that Adam flips in a few steps; step 4 of the module docstring).
    """

    threshold: float | str = DEFAULT_THRESHOLD
    margin: float = 0.1
    remove_floaters: bool = True
    min_floater_fraction: float = 0.05
    copy_texture: bool = True
    sdf_init: str = "clamp"

    def __post_init__(self) -> None:
        if self.sdf_init not in SDF_INITS:
            raise ConfigError(
                f"init_options.sdf_init must be one of {SDF_INITS}, got {self.sdf_init!r}"
            )
        if isinstance(self.threshold, str):
            if self.threshold not in ("auto", "silhouette"):
                raise ConfigError(
                    f"init_options.threshold must be a positive density, 'auto' or "
                    f"'silhouette', got {self.threshold!r}"
                )
        elif not float(self.threshold) > 0:
            raise ConfigError(f"init_options.threshold must be > 0, got {self.threshold}")
        if not self.margin >= 0:
            raise ConfigError(f"init_options.margin must be >= 0 (world units), got {self.margin}")
        if not 0 <= self.min_floater_fraction <= 1:
            raise ConfigError(
                f"init_options.min_floater_fraction must lie in [0, 1], got "
                f"{self.min_floater_fraction}"
            )

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`dmtet_from_nerf`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def kuhn_structure() -> np.ndarray:
    """``[3, 3, 3]`` connectivity of the Kuhn grid's edges for ``scipy.ndimage.label``."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    for offset in CORNER_OFFSETS:
        structure[tuple(1 + offset)] = True
        structure[tuple(1 - offset)] = True
    return structure


def keep_main_components(inside: np.ndarray, min_fraction: float) -> tuple[np.ndarray, int, int]:
    """``inside [n, n, n]`` bool -> (kept mask, number of components, number removed): keeps the
    largest component and every one with at least ``min_fraction`` of its vertex count."""
    labels, n_comp = ndimage.label(inside, structure=kuhn_structure())
    if n_comp <= 1:
        return inside, n_comp, 0
    sizes = np.bincount(labels.reshape(-1))[1:]  # [n_comp]
    keep = sizes >= max(min_fraction * sizes.max(), 1)
    keep[np.argmax(sizes)] = True
    return keep[labels - 1] & inside, n_comp, int((~keep).sum())


@torch.no_grad()
def _density(nerf: Representation, points: Tensor, radius: float) -> Tensor:
    """``[N]`` NeRF density at ``points [N, 3]``, zero outside the bounding sphere."""
    step = 2**16
    sigma = torch.cat([nerf.density(points[i : i + step]) for i in range(0, len(points), step)])
    return torch.where(points.norm(dim=-1) <= radius, sigma, torch.zeros_like(sigma))


#: Candidate density levels of ``threshold="silhouette"`` (a geometric-ish ladder around 25).
SILHOUETTE_LEVELS: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 25.0, 40.0)


def silhouette_matched_level(
    nerf: Representation,
    build: Any,
    levels: tuple[float, ...] = SILHOUETTE_LEVELS,
    n_views: int = 4,
    size: int = 48,
) -> float:
    """The level whose DMTet silhouettes best match the NeRF's own renders (``opacity > 0.5``).

    The coarse stage was trained through its renders, so the surface that keeps what it learnt is
    the one that looks the same from the cameras; a fixed density level (threestudio's 25) is only
    right for a NeRF trained as long as threestudio's. ``build(level)`` returns the DMTet of a
    level; each candidate is rendered at ``n_views`` orbit views and scored by silhouette IoU.
    """
    radius = float(nerf.radius)
    cams = orbit_cameras(n_views, size, size, elevation_deg=20.0, distance=2.0 * radius,
                         fovy_deg=50.0)  # fmt: skip
    was_training = nerf.training
    nerf.eval()
    with torch.no_grad():
        reference = nerf.render(cams).opacity
        scores: dict[float, float] = {}
        for level in levels:
            try:
                candidate = build(level).eval()
            except ConfigError:  # empty level set
                continue
            scores[level] = float(silhouette_iou(candidate.render(cams).opacity, reference).mean())
    nerf.train(was_training)
    if not scores:
        raise ConfigError(
            f"the NeRF has no surface at any density level in {levels}; train the coarse stage "
            "longer or give a numeric threshold"
        )
    best = max(scores, key=lambda k: scores[k])
    logger.info(
        "threshold 'silhouette': level %.4g (IoU %.3f against the NeRF's renders; tried %s)",
        best, scores[best], ", ".join(f"{k:g}: {v:.3f}" for k, v in scores.items()),
    )  # fmt: skip
    return best


def pick_threshold(density: Tensor, in_sphere: Tensor, threshold: float | str) -> float:
    """The density level of step 1 (see the module docstring)."""
    if threshold != "auto":
        if isinstance(threshold, str) or not float(threshold) > 0:
            raise ConfigError(
                f"threshold must be a positive density, 'auto' or 'silhouette', got {threshold!r}"
            )
        return float(threshold)
    values = density[in_sphere].double()
    fraction = float((values > DEFAULT_THRESHOLD).double().mean())
    if AUTO_MIN_FRACTION <= fraction <= AUTO_MAX_FRACTION:
        return DEFAULT_THRESHOLD
    target = AUTO_MIN_FRACTION if fraction < AUTO_MIN_FRACTION else AUTO_MAX_FRACTION
    ordered = values.sort().values  # (torch.quantile refuses more than 2^24 values)
    level = float(ordered[round((1.0 - target) * (ordered.numel() - 1))])
    logger.info(
        "threshold 'auto': %.4g of the sphere is above 25; using level %.4g", fraction, level
    )
    return level


def dmtet_from_nerf(
    dmtet_cls: type[Representation],
    nerf: Representation,
    threshold: float | str = DEFAULT_THRESHOLD,
    grid_resolution: int = 128,
    margin: float = 0.1,
    remove_floaters: bool = True,
    min_floater_fraction: float = 0.05,
    copy_texture: bool = True,
    sdf_init: str = "clamp",
    **dmtet_kwargs: Any,
) -> Representation:
    """A ``dmtet_cls`` (:class:`~ra3d.representations.dmtet.DMTet` or a subclass) whose initial
    surface is the NeRF's ``σ = threshold`` level set.

    Args:
        dmtet_cls: the class to build (passed in, so this module does not import it).
        nerf: an ``InstantNGPNeRF`` (needs ``radius``, ``density(points)``, ``texture``,
            ``background``).
        threshold: density level (threestudio: 25), ``"auto"`` (module docstring, step 1) or
            ``"silhouette"`` (the level whose silhouettes match the NeRF's renders best,
            :func:`silhouette_matched_level`).
        grid_resolution: cubes per side of the DMTet grid (and of the probe grid).
        margin: world units added around the kept region (at least two probe cells).
        remove_floaters, min_floater_fraction: step 2.
        copy_texture: copy the NeRF's texture field (and background when of one kind).
        sdf_init: ``"clamp"`` (threestudio) or ``"normalize"`` (module docstring, step 4).
        dmtet_kwargs: other :class:`DMTet` arguments (texture-field shapes must match the NeRF's
            to copy it; ``radius`` is the NeRF's).
    """
    if threshold == "silhouette":
        threshold = silhouette_matched_level(
            nerf,
            lambda level: dmtet_from_nerf(
                dmtet_cls, nerf, level, grid_resolution, margin, remove_floaters, min_floater_fraction,
                copy_texture=False, sdf_init=sdf_init, **dmtet_kwargs,
            ),
        )  # fmt: skip
    for name in ("radius", "bbox"):
        if name in dmtet_kwargs:
            raise ConfigError(
                f"dmtet_from_nerf sets {name} itself (the NeRF's radius, the tightened box); "
                f"remove {name} from the DMTet arguments"
            )
    if margin < 0:
        raise ConfigError(f"margin must be >= 0 (world units), got {margin}")
    if sdf_init not in SDF_INITS:
        raise ConfigError(f"sdf_init must be one of {SDF_INITS}, got {sdf_init!r}")
    radius = float(nerf.radius)
    device = next(nerf.parameters()).device
    dtype = torch.float32
    probe = tet_grid(grid_resolution)
    n = grid_resolution + 1
    cube = torch.tensor([[-radius] * 3, [radius] * 3], dtype=dtype, device=device)
    points = probe.vertices_in(cube)  # [V, 3]
    in_sphere = points.norm(dim=-1) <= radius
    sigma = _density(nerf, points, radius).to(dtype)
    level = pick_threshold(sigma, in_sphere, threshold)
    inside = (sigma > level).cpu().numpy().reshape(n, n, n)
    if not inside.any():
        raise ConfigError(
            f"the NeRF has no density above threshold={level:.4g} (max {float(sigma.max()):.4g}); "
            "use threshold='auto' or a lower value, or train the coarse stage longer"
        )
    if remove_floaters:
        inside, n_comp, n_removed = keep_main_components(inside, min_floater_fraction)
        logger.info("NeRF→DMTet probe: %d component(s), %d floater(s) removed", n_comp, n_removed)
    kept_points = points[torch.from_numpy(inside.reshape(-1)).to(device)]
    pad = max(float(margin), 2.0 * 2.0 * radius / grid_resolution)
    lo = (kept_points.min(dim=0).values - pad).clamp(min=-radius)
    hi = (kept_points.max(dim=0).values + pad).clamp(max=radius)

    dmtet = dmtet_cls(grid_resolution=grid_resolution, radius=radius,
                  bbox=torch.stack([lo, hi]).cpu(), **dmtet_kwargs).to(device)  # fmt: skip
    with torch.no_grad():
        vertices = dmtet.grid_vertices().to(dtype)
        sigma = _density(nerf, vertices, radius).to(dtype)
        diff = level - sigma  # [V], negative inside
        inside_fine = (diff < 0).cpu().numpy().reshape(n, n, n)
        if remove_floaters:
            kept, _, n_removed = keep_main_components(inside_fine, min_floater_fraction)
            floater = torch.from_numpy((inside_fine & ~kept).reshape(-1)).to(device)
            diff = torch.where(floater, diff.abs(), diff)
        crossing = dmtet.grid.cube_tets(dmtet.grid.crossing_cubes((diff < 0).cpu()))
        scale = diff.abs()[crossing.reshape(-1).to(device)].max() if crossing.numel() else None
        if scale is None or not float(scale) > 0:
            raise ConfigError(
                f"the NeRF's level set at threshold={level:.4g} has no surface inside the "
                "tightened grid; use threshold='auto' or a lower value"
            )
        scaled = diff / scale if sdf_init == "normalize" else diff
        dmtet.sdf.copy_(scaled.clamp(-1.0, 1.0).to(dmtet.sdf.dtype))
    if copy_texture:
        dmtet.texture.copy_from(nerf.texture)
        if type(dmtet.background) is type(nerf.background):
            dmtet.background.load_state_dict(nerf.background.state_dict())
    logger.info(
        "DMTet from NeRF: level %.4g, grid %d^3, bbox min %s max %s, SDF %s, texture %s",
        level,
        grid_resolution,
        [round(float(x), 3) for x in lo],
        [round(float(x), 3) for x in hi],
        sdf_init if sdf_init == "clamp" else f"normalize (/{float(scale):.4g})",
        "copied" if copy_texture else "fresh",
    )
    return dmtet
