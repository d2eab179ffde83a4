"""The asset velocity (paper Eq. 10–11) as a render-space loss, and the assignment π.

Eq. 10 moves particle θ⁽ⁱ⁾ towards the retrieved asset its one-hot π⁽ⁱ⁾ selects,

    v_asset⁽ⁱ⁾ = (1/σ²) Σ_n π_n⁽ⁱ⁾ (θ⁽ⁱ⁾ − θ_ret⁽ⁿ⁾),

and Eq. 11 replaces the parameter-space difference (a NeRF and a mesh share no parameters) by the
gradient of a render-space distance, ``∇_θ E_ψ ‖g(θ⁽ⁱ⁾, ψ) − g(θ_ret⁽ⁿ⁾, ψ)‖²``. ra3d minimises

    L_asset = (λ/σ²) · Σ_k w_k · mean_{b, pixels} ‖g_k(θ⁽ⁱ⁾, ψ_b) − g_k(θ_ret⁽π(i)⁾, ψ_b)‖²

per particle, summed over particles; ``k`` runs over the compared quantities and the squared norm
sums a pixel's channels. Its gradient on a render ``x`` is ``(2λ/σ²) w_k (x − x_ret) / (B·H·W)``.
Averaging over pixels (not summing) makes the force independent of the render resolution, like the
distillation term, which always works on the prior's fixed-size latents.

Like with like. A particle's render is composited over its own (random or neural) background
while an asset's is composited over white, so colours are compared *premultiplied*
(:func:`ra3d.representations.metrics.foreground_rgb`: colour × opacity, background removed): the background is
never pulled towards the asset's. The quantities (``terms``) are

* ``rgb``: premultiplied foreground colour ``[B, H, W, 3]``;
* ``opacity``: the silhouette ``[B, H, W, 1]``;
* ``depth``: expected ray distance (already 0 where nothing is hit) ``[B, H, W, 1]``;
* ``normal``: world normals × opacity ``[B, H, W, 3]`` (needs a representation that renders
  normals, e.g. a NeRF with ``normal_type`` set, or DMTet).

σ and λ. The paper leaves σ open; only λ/σ² matters in the surrogate, so ra3d keeps σ = 1 by
default and puts the strength (and any schedule) in ``loss_weights.asset`` = λ; ``sigma`` may be
scheduled too for users who think in kernel widths. Both use threestudio's
``[start_step, start, end, end_step]`` schedules.

The assignment π (Eq. 10, App. E, App. B.3) is fixed when the particles are created:
``"closest"`` gives each particle the asset with the smallest render distance at step 0 (the
same distance as the loss, over fixed orbit cameras); ``"one_per_particle"`` gives every particle a
different asset (App. B.3's three particles, each with one retrieved asset), choosing the
distinct assignment with the smallest total distance.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ra3d.cameras import Cameras, orbit_cameras
from ra3d.errors import ConfigError
from ra3d.representations.base import RenderOutput, Representation
from ra3d.representations.metrics import foreground_rgb
from ra3d.schedule import Scheduled, check_scheduled, scheduled_value

logger = logging.getLogger(__name__)

ASSET_TERMS: tuple[str, ...] = ("rgb", "opacity", "depth", "normal")
ASSIGNMENTS: tuple[str, ...] = ("one_per_particle", "closest")
DEFAULT_TERM_WEIGHTS: dict[str, float] = {"rgb": 1.0, "opacity": 1.0}
#: Beyond this many particles the distinct assignment is found greedily, not by enumeration.
_MAX_ENUMERATED_PARTICLES = 7


def render_quantity(output: RenderOutput, name: str) -> Tensor:
    """The compared quantity ``name`` of a render (see the module docstring)."""
    if name == "rgb":
        return foreground_rgb(output)
    if name == "opacity":
        return output.opacity
    if name == "depth":
        return output.depth
    if name == "normal":
        if output.normal is None:
            raise ConfigError(
                "the asset term compares normals but the representation renders none; set its "
                "normal_type (e.g. 'analytic') or drop 'normal' from model.asset_terms"
            )
        return output.normal * output.opacity
    raise ConfigError(f"unknown asset term {name!r}; choose from {ASSET_TERMS}")


def render_distance(
    output: RenderOutput, reference: RenderOutput, weights: Mapping[str, float]
) -> Tensor:
    """``Σ_k w_k mean_{b,pixels} ‖g_k(output) − g_k(reference)‖²`` (scalar, differentiable in
    ``output``; ``reference`` is treated as a constant)."""
    total = output.rgb.new_zeros(())
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        a = render_quantity(output, name)
        b = render_quantity(reference, name).detach().to(a.device, a.dtype)
        if a.shape != b.shape:
            raise ValueError(
                f"asset term {name!r}: particle render {tuple(a.shape)} and asset render "
                f"{tuple(b.shape)} differ; render both at the same cameras"
            )
        total = total + weight * (a - b).square().sum(-1).mean()
    return total


def check_term_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validated copy of the per-quantity weights ``w_k``."""
    out = {}
    for name, value in dict(weights).items():
        if name not in ASSET_TERMS:
            raise ConfigError(
                f"unknown asset term {name!r} in asset_terms; choose from {ASSET_TERMS}"
            )
        value = float(value)
        if not value >= 0.0 or value == float("inf"):
            raise ConfigError(f"asset_terms.{name} must be a finite number >= 0, got {value}")
        out[name] = value
    if not any(v > 0 for v in out.values()):
        raise ConfigError(
            f"asset_terms must give at least one quantity a positive weight, got {out}"
        )
    return out


class AssetTerm:
    """The render-space asset loss of Eq. 10–11 with its σ schedule and the assignment π.

    Args:
        terms: weight ``w_k`` of each compared quantity (``rgb``, ``opacity``, ``depth``,
            ``normal``); default ``{rgb: 1, opacity: 1}``: colour and silhouette.
        sigma: kernel width σ of p_ξ (Eq. 10), constant or scheduled; the loss scales by 1/σ².
        assignment: ``"one_per_particle"`` or ``"closest"`` (see the module docstring).
        assignment_views, assignment_size: the fixed orbit (views × size² px) on which the
            step-0 render distances for π are measured.
    """

    def __init__(
        self,
        terms: Mapping[str, float] | None = None,
        sigma: Scheduled = 1.0,
        assignment: str = "one_per_particle",
        assignment_views: int = 8,
        assignment_size: int = 32,
    ) -> None:
        self.terms = check_term_weights(DEFAULT_TERM_WEIGHTS if terms is None else terms)
        check_scheduled(sigma, "asset_sigma")
        for value in [sigma] if isinstance(sigma, int | float) else [sigma[1], sigma[2]]:
            if not float(value) > 0.0 or float(value) == float("inf"):
                raise ConfigError(f"asset_sigma must be finite and > 0, got {sigma!r}")
        if assignment not in ASSIGNMENTS:
            raise ConfigError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
        if assignment_views < 1 or assignment_size < 4:
            raise ConfigError("assignment_views must be >= 1 and assignment_size >= 4")
        self.sigma = sigma
        self.assignment = assignment
        self.assignment_views = int(assignment_views)
        self.assignment_size = int(assignment_size)

    def scale(self, global_step: int) -> float:
        """1/σ² at ``global_step``."""
        return 1.0 / scheduled_value(self.sigma, global_step) ** 2

    def loss(self, output: RenderOutput, reference: RenderOutput, global_step: int) -> Tensor:
        """``(1/σ²) Σ_k w_k mean ‖g_k(θ) − g_k(θ_ret)‖²`` for one particle (λ is applied by the
        system through ``loss_weights.asset``)."""
        return self.scale(global_step) * render_distance(output, reference, self.terms)

    # ---------------------------------------------------------------------- π
    @torch.no_grad()
    def distances(
        self,
        particles: Sequence[Representation],
        assets: Sequence[Representation],
        cameras: Cameras | None = None,
    ) -> Tensor:
        """``D [P, N]``: render distance of every particle to every asset on fixed cameras."""
        if cameras is None:
            cameras = orbit_cameras(self.assignment_views, self.assignment_size, self.assignment_size,
                                    elevation_deg=15.0, distance=1.5, fovy_deg=50.0)  # fmt: skip
        asset_renders = [a.render(cameras) for a in assets]
        rows = []
        for particle in particles:
            out = particle.render(cameras)
            rows.append(
                torch.stack(
                    [render_distance(out, ref, self.terms).float().cpu() for ref in asset_renders]
                )
            )
        return torch.stack(rows)

    def assign(
        self,
        particles: Sequence[Representation],
        assets: Sequence[Representation],
        cameras: Cameras | None = None,
    ) -> list[int]:
        """π as the asset index of each particle (see the module docstring)."""
        if not assets:
            raise ConfigError("no retrieved assets to assign particles to")
        n_p, n_a = len(particles), len(assets)
        if self.assignment == "one_per_particle" and n_a == 1:
            return [0] * n_p
        dist = self.distances(particles, assets, cameras)  # [P, N]
        if self.assignment == "closest":
            return [int(i) for i in dist.argmin(dim=1)]
        if n_a < n_p:
            raise ConfigError(
                f"assignment 'one_per_particle' needs at least as many assets as particles "
                f"({n_a} assets for {n_p} particles); retrieve more (model.retrieval.n_assets) or "
                "use assignment 'closest'"
            )
        return distinct_assignment(dist)


def distinct_assignment(dist: Tensor) -> list[int]:
    """Distinct asset indices per particle minimising ``Σ_i D[i, π(i)]`` (``D [P, N]``, P ≤ N):
    exhaustive for small P, else the Hungarian method (scipy)."""
    n_p, n_a = dist.shape
    if n_p <= _MAX_ENUMERATED_PARTICLES and n_a <= 10:
        best = min(
            itertools.permutations(range(n_a), n_p),
            key=lambda perm: (float(sum(dist[i, j] for i, j in enumerate(perm))), perm),
        )
        return list(best)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(dist.numpy())
    out = [0] * n_p
    for r, c in zip(rows, cols, strict=True):
        out[int(r)] = int(c)
    return out


__all__ = [
    "ASSET_TERMS",
    "ASSIGNMENTS",
    "AssetTerm",
    "distinct_assignment",
    "render_distance",
    "render_quantity",
]
