"""Pure-PyTorch volume rendering pieces: ray/sphere bounds, stratified samples, alpha compositing
and an Instant-NGP style occupancy grid.

The NeRF of the coarse stage (:mod:`ra3d.representations.nerf`) renders a pixel as the quadrature
of the volume rendering integral over ``S`` bins ``[t_i, t_i + δ_i]`` of the ray inside the
object's bounding sphere:

    α_i = 1 - exp(-σ_i δ_i),   T_i = exp(-Σ_{j<i} σ_j δ_j),   w_i = T_i α_i,
    opacity = Σ_i w_i = 1 - exp(-Σ_i σ_i δ_i),   depth = Σ_i w_i t_i,   rgb = Σ_i w_i c_i.

The occupancy grid keeps, per cell of the bounding cube, a running maximum of the density (an
exponential moving average of maxima as in Instant-NGP). Samples whose cell is "empty" get
α = 0 *without* evaluating the field, which is where the time goes. No CUDA extension is needed:
the field is evaluated only at the gathered occupied samples and compositing over the dense
``[R, S]`` layout is a cumulative sum, cheap next to the MLP on any device (so nerfacc brings
nothing essential here and is not used).

:func:`surface_nets` turns a sampled density into a triangle mesh (NeRF → DMTet hand-over, export).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def ray_sphere_bounds(
    origins: Tensor, dirs: Tensor, radius: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Where rays enter and leave the sphere of ``radius`` centred at the origin.

    Args:
        origins: ``[R, 3]`` ray origins.
        dirs: ``[R, 3]`` unit ray directions.
        radius: sphere radius.

    Returns:
        ``near [R]``, ``far [R]`` (``near`` clamped at 0 for cameras inside the sphere) and
        ``hit [R]`` (bool: the ray crosses the sphere in front of the camera with positive length).
    """
    # |o + t d|^2 = r^2  ->  t^2 + 2 (o.d) t + |o|^2 - r^2 = 0 for unit d.
    b = (origins * dirs).sum(-1)  # [R]
    c = (origins * origins).sum(-1) - radius * radius  # [R]
    disc = b * b - c
    sqrt_disc = disc.clamp_min(0.0).sqrt()
    near = (-b - sqrt_disc).clamp_min(0.0)
    far = -b + sqrt_disc
    hit = (disc > 0) & (far > near)
    return near, far, hit


def stratified_bins(
    near: Tensor,
    far: Tensor,
    n_samples: int,
    jitter: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``S`` equal bins between ``near`` and ``far`` and one sample position per bin.

    Args:
        near, far: ``[R]`` ray segment bounds.
        n_samples: ``S``, bins per ray.
        jitter: uniform random position inside each bin (training, Mildenhall et al.'s stratified
            sampling) instead of the bin midpoint (evaluation, deterministic images).

    Returns:
        ``t [R, S]`` sample distances and ``delta [R, S]`` bin lengths (the quadrature weights).
    """
    steps = torch.arange(n_samples, device=near.device, dtype=near.dtype)  # [S]
    width = (far - near) / n_samples  # [R]
    if jitter:
        u = torch.rand(
            (near.shape[0], n_samples), device=near.device, dtype=near.dtype, generator=generator
        )
    else:
        u = torch.full((near.shape[0], n_samples), 0.5, device=near.device, dtype=near.dtype)
    t = near[:, None] + (steps[None, :] + u) * width[:, None]  # [R, S]
    delta = width[:, None].expand(-1, n_samples)
    return t, delta


def compositing_weights(sigma: Tensor, delta: Tensor) -> Tensor:
    """Volume rendering weights ``w_i = T_i (1 - exp(-σ_i δ_i))`` for ``sigma, delta [R, S]``.

    The transmittance uses the exclusive cumulative optical depth, so ``Σ_i w_i`` telescopes to
    exactly ``1 - exp(-Σ_i σ_i δ_i)`` (the closed-form opacity the tests check).
    """
    tau = sigma * delta  # [R, S] optical thickness of each bin
    tau_before = torch.cumsum(tau, dim=-1) - tau  # exclusive prefix sum
    return torch.exp(-tau_before) * (1.0 - torch.exp(-tau))


class OccupancyGrid(nn.Module):
    """A ``res^3`` grid over the cube ``[-radius, radius]^3`` marking where density lives.

    Each cell stores a density estimate; a cell is *occupied* when ``value * step_size`` (the optical
    thickness of one ray bin of nominal length ``step_size``) exceeds
    ``min(threshold, mean over cells)`` — the mean guard (as in nerfacc) keeps a faint scene from
    being skipped entirely. Skipped samples of a cell whose stored value is its true maximum have
    ``α <= 1 - exp(-threshold) <= threshold``, which bounds the image change per skipped sample.

    Until the first :meth:`update` every cell is occupied, so nothing is skipped before the grid
    has seen the field.
    """

    values: Tensor
    initialised: Tensor

    def __init__(self, radius: float, resolution: int, threshold: float, step_size: float) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"occupancy_resolution must be >= 1, got {resolution}")
        if threshold < 0:
            raise ValueError(f"occupancy_threshold must be >= 0, got {threshold}")
        if step_size <= 0:
            raise ValueError(f"occupancy step_size must be > 0, got {step_size}")
        self.radius = float(radius)
        self.resolution = int(resolution)
        self.threshold = float(threshold)
        self.step_size = float(step_size)
        self.register_buffer("values", torch.zeros(resolution, resolution, resolution))
        # The boolean grid is cached (recomputed at each update) so rendering never re-derives it.
        self.register_buffer(
            "mask", torch.ones(resolution, resolution, resolution, dtype=torch.bool)
        )
        self.register_buffer("initialised", torch.tensor(False))

    def cell_index(self, points: Tensor) -> Tensor:
        """``[N, 3]`` long cell indices of world ``points [N, 3]`` (clamped into the grid)."""
        x01 = (points + self.radius) / (2.0 * self.radius)
        idx = torch.floor(x01 * self.resolution).long()
        return idx.clamp_(0, self.resolution - 1)

    def binary(self) -> Tensor:
        """``[res, res, res]`` bool occupancy (all True before the first update)."""
        return self.mask

    def occupied(self, points: Tensor) -> Tensor:
        """``[...]`` bool: is the cell of each point ``[..., 3]`` occupied?"""
        idx = self.cell_index(points.reshape(-1, 3))
        return self.mask[idx[:, 0], idx[:, 1], idx[:, 2]].reshape(points.shape[:-1])

    def occupied_fraction(self) -> float:
        return float(self.binary().float().mean())

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[Tensor], Tensor],
        decay: float = 0.95,
        n_samples_per_cell: int = 1,
        chunk_size: int = 65536,
        generator: torch.Generator | None = None,
    ) -> None:
        """Refresh the grid from ``density_fn`` (Instant-NGP's update rule).

        Every cell's density is measured at ``n_samples_per_cell`` uniformly jittered points; the
        stored value becomes ``max(decay * old, new)`` so occupancy follows the field as it
        trains, while a briefly missed cell decays away slowly rather than vanishing at once. The
        first update stores ``new`` directly.
        """
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"occupancy decay must lie in [0, 1], got {decay}")
        if n_samples_per_cell < 1:
            raise ValueError(f"n_samples_per_cell must be >= 1, got {n_samples_per_cell}")
        res, device = self.resolution, self.values.device
        cells = torch.stack(
            torch.meshgrid(*[torch.arange(res, device=device)] * 3, indexing="ij"), dim=-1
        ).reshape(-1, 3)  # [res^3, 3]
        cell_size = 2.0 * self.radius / res
        new = torch.zeros(cells.shape[0], device=device, dtype=self.values.dtype)
        for _ in range(n_samples_per_cell):
            jitter = torch.rand(cells.shape, device=device, generator=generator)
            points = (cells + jitter) * cell_size - self.radius  # [res^3, 3] world
            for start in range(0, points.shape[0], chunk_size):
                chunk = points[start : start + chunk_size]
                sigma = density_fn(chunk).detach().to(new.dtype).reshape(-1)
                new[start : start + chunk_size] = torch.maximum(
                    new[start : start + chunk_size], sigma
                )
        new = new.reshape(res, res, res)
        if bool(self.initialised):
            self.values.copy_(torch.maximum(self.values * decay, new))
        else:
            self.values.copy_(new)
            self.initialised.fill_(True)
        thickness = self.values * self.step_size
        self.mask.copy_(thickness > min(self.threshold, float(thickness.mean())))
        logger.debug("occupancy grid updated: %.3f of cells occupied", self.occupied_fraction())


def surface_nets(values: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangulated iso-surface ``{values = threshold}`` of a scalar grid by naive surface nets.

    Why surface nets rather than marching cubes: no table of 256 cases to carry (and neither
    scikit-image nor PyMCubes is a dependency), one vertex per cell crossed by the surface, and the
    mesh is closed because the grid is padded by one layer below ``threshold``. Each vertex sits at
    the mean of the linearly interpolated threshold crossings on its cell's edges; each grid edge
    crossed by the surface becomes a quad joining the 4 cells around it, split into 2 triangles.

    Args:
        values: ``[X, Y, Z]`` scalar field sampled on grid points (index coordinates).
        threshold: iso-value; ``values > threshold`` is *inside*.

    Returns:
        ``vertices [V, 3]`` in index coordinates of ``values`` (float64) and ``faces [F, 3]``
        (int64), wound counter-clockwise seen from outside (normals point towards lower values).
    """
    if values.ndim != 3:
        raise ValueError(f"surface_nets needs a 3D grid, got shape {values.shape}")
    values = np.asarray(values, dtype=np.float64)
    pad_value = min(float(np.nanmin(values)), threshold) - 1.0
    v = np.pad(np.nan_to_num(values, nan=pad_value), 1, constant_values=pad_value)
    inside = v > threshold
    cell_shape = tuple(n - 1 for n in v.shape)
    sums = np.zeros((*cell_shape, 3))
    counts = np.zeros(cell_shape)
    edges: list[tuple[int, np.ndarray, np.ndarray]] = []  # (axis, lower grid point [E,3], inside0)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        v0, v1 = v[tuple(lo)], v[tuple(hi)]
        in0, in1 = inside[tuple(lo)], inside[tuple(hi)]
        cross = in0 != in1
        p = np.argwhere(cross)  # [E, 3] lower endpoint of each crossed edge
        t = (threshold - v0[cross]) / (v1[cross] - v0[cross])
        point = p.astype(np.float64)
        point[:, axis] += t
        b, c = (axis + 1) % 3, (axis + 2) % 3
        for db in (-1, 0):
            for dc in (-1, 0):
                cell = p.copy()
                cell[:, b] += db
                cell[:, c] += dc
                np.add.at(sums, tuple(cell.T), point)
                np.add.at(counts, tuple(cell.T), 1.0)
        edges.append((axis, p, in0[cross]))
    has_vertex = counts > 0
    vertex_id = np.full(cell_shape, -1, dtype=np.int64)
    vertex_id[has_vertex] = np.arange(int(has_vertex.sum()))
    vertices = sums[has_vertex] / counts[has_vertex][:, None] - 1.0  # undo the padding
    faces: list[np.ndarray] = []
    for axis, p, inside_low in edges:
        b, c = (axis + 1) % 3, (axis + 2) % 3

        def cell_id(db: int, dc: int, p: np.ndarray = p, b: int = b, c: int = c) -> np.ndarray:
            cell = p.copy()
            cell[:, b] += db
            cell[:, c] += dc
            return vertex_id[tuple(cell.T)]

        q00, q10, q11, q01 = cell_id(-1, -1), cell_id(0, -1), cell_id(0, 0), cell_id(-1, 0)
        # (q00, q10, q11, q01) runs counter-clockwise around +axis (e_b x e_c = e_axis); flip it
        # where the inside is on the upper end so normals always point outwards.
        tri_a = np.where(
            inside_low[:, None], np.stack([q00, q10, q11], 1), np.stack([q00, q11, q10], 1)
        )
        tri_b = np.where(
            inside_low[:, None], np.stack([q00, q11, q01], 1), np.stack([q00, q01, q11], 1)
        )
        faces += [tri_a, tri_b]
    faces_arr = np.concatenate(faces, 0) if faces else np.zeros((0, 3), dtype=np.int64)
    return vertices, faces_arr.astype(np.int64)
