"""A tetrahedral grid generated in code: the domain of DMTet's SDF (Shen et al. 2021).

threestudio downloads Quartet tetrahedralisations at 32/64/128 only; here the grid is built in a few
lines so any resolution from 32 to 256 is available offline. The cube ``[-1, 1]^3`` is divided into
``R^3`` cubes; each cube is split into the 6 *Kuhn* (Freudenthal) tetrahedra that share its main
diagonal ``(0,0,0) → (1,1,1)``: for every permutation ``(a, b, c)`` of the axes, the tetrahedron
``0, e_a, e_a + e_b, 1``. Because every cube uses the same split, the two triangles a cube puts on
a face are exactly the two its neighbour puts there, so the tetrahedra form a conforming mesh
(every interior triangle is shared by exactly two tetrahedra). Each tetrahedron is listed with
positive orientation (``det[v1 - v0, v2 - v0, v3 - v0] > 0``), which marching tetrahedra relies on
to orient the surface outward.

Indexing. Grid vertex ``(i, j, k)`` (along x, y, z; ``0..R``) has index ``(i (R+1) + j) (R+1) + k``;
cube ``(i, j, k)`` (``0..R-1``) has index ``(i R + j) R + k`` and owns tetrahedra ``6 c .. 6 c + 5``.
Marching tetrahedra uses :meth:`TetGrid.cube_tets` to build tetrahedra only for the cubes that the
surface crosses: at ``R = 256`` the full list has 100 M tetrahedra (1.6 GB as int32).

Vertices are stored in the unit cube ``[-1, 1]^3``; :meth:`TetGrid.vertices_in` maps them into a
bounding box. Grids are cached in memory and on disk (``$RA3D_CACHE_DIR/tets`` or
``~/.cache/ra3d/tets``, one npz per resolution, written atomically).
"""

from __future__ import annotations

import itertools
import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ra3d.io import atomic_write

logger = logging.getLogger(__name__)

MIN_RESOLUTION = 2
MAX_RESOLUTION = 256
#: Cube corner ``c`` (bits x, y, z) -> offset ``(c & 1, c >> 1 & 1, c >> 2 & 1)``.
CORNER_OFFSETS = np.array([[c & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=np.int64)


def _kuhn_tets() -> np.ndarray:
    """``[6, 4]`` cube-corner indices of the 6 Kuhn tetrahedra, each positively oriented."""
    tets = []
    for perm in itertools.permutations(range(3)):
        corner, path = 0, [0]
        for axis in perm:
            corner |= 1 << axis
            path.append(corner)
        p = CORNER_OFFSETS[path].astype(np.float64)
        if np.linalg.det(p[1:] - p[0]) < 0:
            path[2], path[3] = path[3], path[2]
        tets.append(path)
    return np.array(tets, dtype=np.int64)


#: ``[6, 4]`` corner indices (0..7) of the tetrahedra of one cube.
KUHN_TETS = _kuhn_tets()


def tets_cache_dir() -> Path:
    """Where generated grids are kept on disk."""
    base = os.environ.get("RA3D_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "ra3d") / "tets"


class TetGrid:
    """The Kuhn tetrahedralisation of ``[-1, 1]^3`` with ``resolution`` cubes per side.

    Attributes:
        resolution: cubes per side ``R``; the vertex spacing is ``2 / R`` in unit coordinates.
        vertices: ``[(R+1)^3, 3]`` float32 unit-cube positions.
    """

    def __init__(self, resolution: int, vertices: Tensor) -> None:
        self.resolution = int(resolution)
        self.vertices = vertices
        self._tets: Tensor | None = None

    @property
    def n_vertices(self) -> int:
        return (self.resolution + 1) ** 3

    @property
    def n_tets(self) -> int:
        return 6 * self.resolution**3

    @property
    def spacing(self) -> float:
        """Vertex spacing along an axis, in unit coordinates."""
        return 2.0 / self.resolution

    def vertices_in(self, bbox: Tensor) -> Tensor:
        """``[V, 3]`` vertices mapped affinely from ``[-1, 1]^3`` into ``bbox [2, 3]`` (min, max)."""
        lo, hi = bbox[0], bbox[1]
        v = self.vertices.to(device=bbox.device, dtype=bbox.dtype)
        return lo + (v + 1.0) * (0.5 * (hi - lo))

    def vertex_index(self, ijk: Tensor) -> Tensor:
        """Linear vertex index of integer grid coordinates ``ijk [..., 3]``."""
        n = self.resolution + 1
        return (ijk[..., 0] * n + ijk[..., 1]) * n + ijk[..., 2]

    def boundary_mask(self, device: torch.device | str = "cpu") -> Tensor:
        """``[V]`` bool: vertices on the faces of the grid (a surface must not reach them to be
        closed)."""
        n = self.resolution + 1
        idx = torch.arange(n, device=device)
        edge = (idx == 0) | (idx == n - 1)
        return (edge[:, None, None] | edge[None, :, None] | edge[None, None, :]).reshape(-1)

    def cube_tets(self, cubes: Tensor) -> Tensor:
        """``[6 C, 4]`` int64 vertex indices of the tetrahedra of cubes ``cubes [C]`` (linear
        cube indices), in the global tetrahedron order ``6 c + t``."""
        r = self.resolution
        cubes = cubes.to(torch.int64)
        k = cubes % r
        j = torch.div(cubes, r, rounding_mode="floor") % r
        i = torch.div(cubes, r * r, rounding_mode="floor")
        base = torch.stack([i, j, k], dim=-1)  # [C, 3]
        offsets = torch.as_tensor(CORNER_OFFSETS[KUHN_TETS], device=cubes.device)  # [6, 4, 3]
        ijk = base[:, None, None, :] + offsets[None]  # [C, 6, 4, 3]
        return self.vertex_index(ijk).reshape(-1, 4)

    @property
    def tets(self) -> Tensor:
        """``[6 R^3, 4]`` int64 vertex indices of all tetrahedra (built on first use, then kept;
        prefer :meth:`cube_tets` at high resolution)."""
        if self._tets is None:
            self._tets = self.cube_tets(torch.arange(self.resolution**3))
        return self._tets

    def crossing_cubes(self, inside: Tensor) -> Tensor:
        """``[C]`` linear indices of cubes whose 8 corners are not all on one side, from the
        per-vertex ``inside [V]`` bool. Only their tetrahedra can hold surface triangles."""
        n, r = self.resolution + 1, self.resolution
        vol = inside.reshape(n, n, n)
        any_in = torch.zeros(r, r, r, dtype=torch.bool, device=inside.device)
        all_in = torch.ones(r, r, r, dtype=torch.bool, device=inside.device)
        for dx, dy, dz in CORNER_OFFSETS.tolist():
            corner = vol[dx : dx + r, dy : dy + r, dz : dz + r]
            any_in |= corner
            all_in &= corner
        return (any_in & ~all_in).reshape(-1).nonzero().squeeze(1)


def _generate_vertices(resolution: int) -> np.ndarray:
    axis = np.linspace(-1.0, 1.0, resolution + 1, dtype=np.float64)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3).astype(np.float32)


def _write_atomic(path: Path, **arrays: np.ndarray) -> None:
    """The grid cache ``.npz``, written by ra3d's one atomic-write rule (:mod:`ra3d.io`)."""
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


@lru_cache(maxsize=4)
def tet_grid(resolution: int) -> TetGrid:
    """The grid with ``resolution`` cubes per side (2..256), from memory, disk or generated.

    The disk copy holds the vertices and the resolution; a file that does not match what would be
    generated (wrong shape or resolution) is regenerated and overwritten.
    """
    if not isinstance(resolution, int) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"tetrahedral grid resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], "
            f"got {resolution!r}; threestudio's fine stage uses 128"
        )
    path = tets_cache_dir() / f"kuhn_{resolution}.npz"
    vertices: np.ndarray | None = None
    if path.is_file():
        try:
            with np.load(path) as data:
                ok = int(data["resolution"]) == resolution
                ok = ok and data["vertices"].shape == ((resolution + 1) ** 3, 3)
                vertices = data["vertices"] if ok else None
        except (OSError, ValueError, KeyError) as err:
            logger.warning("ignoring unreadable tet grid cache %s (%s)", path, err)
    if vertices is None:
        vertices = _generate_vertices(resolution)
        try:
            _write_atomic(path, vertices=vertices, resolution=np.array(resolution))
        except OSError as err:  # a read-only home still works, just without the disk cache
            logger.warning("could not cache the tet grid at %s (%s)", path, err)
    return TetGrid(resolution, torch.from_numpy(np.ascontiguousarray(vertices)))
