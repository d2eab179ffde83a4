"""Differentiable marching tetrahedra (DMTet, Shen et al. 2021) in pure PyTorch.

Given a signed value per grid vertex (negative inside, ``>= 0`` outside) and the vertex positions
(possibly deformed), every tetrahedron whose corners change sign contributes one triangle (one or
three corners inside) or two (two inside). Surface vertices sit on the tetrahedron edges that
change sign, at the zero of the linear interpolation of the SDF:

    p = p_a + s_a / (s_a - s_b) · (p_b - p_a),

which is differentiable with respect to both SDF values and both positions: this is how render
losses reach the SDF and the deformation in the fine stage.

* **Shared vertices.** An edge is shared by several tetrahedra; each crossing edge yields exactly
  one vertex (edges are deduplicated by their sorted global endpoint pair), so the surface is a
  connected mesh, not a triangle soup.
* **Orientation.** The triangle table is derived once, on the reference tetrahedron
  ``(0, e_x, e_y, e_z)``, by orienting every triangle so its normal points from the inside corners
  to the outside ones. The rule is invariant under orientation-preserving affine maps, so it holds
  for every positively oriented tetrahedron (see :mod:`ra3d.representations.components.tetgrid`): the surface
  is consistently oriented with outward normals.
* **Closed and manifold.** On a conforming tetrahedralisation every crossed interior triangle is
  shared by two tetrahedra that put the same surface edge on it, so every surface edge has exactly
  two faces — provided no inside vertex lies on the grid's boundary (the caller keeps boundary
  vertices outside).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

#: The 6 edges of a tetrahedron as pairs of its corners.
TET_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=np.int64)


def _triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """``[16, 6]`` local edge ids (two triangles, ``-1`` padded) and ``[16]`` triangle counts for
    every inside-corner code ``Σ inside_i 2^i``, oriented outward on a positive tetrahedron."""
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    table = -np.ones((16, 6), dtype=np.int64)
    counts = np.zeros(16, dtype=np.int64)
    for code in range(16):
        inside = [(code >> i) & 1 == 1 for i in range(4)]
        n_in = sum(inside)
        if n_in in (0, 4):
            continue
        crossing = [e for e, (a, b) in enumerate(TET_EDGES) if inside[a] != inside[b]]
        if n_in == 2:
            a, b = (i for i in range(4) if inside[i])
            c, d = (i for i in range(4) if not inside[i])
            cycle = [_edge_id(a, c), _edge_id(a, d), _edge_id(b, d), _edge_id(b, c)]
            tris = [[cycle[0], cycle[1], cycle[2]], [cycle[0], cycle[2], cycle[3]]]
        else:
            tris = [crossing]
        outward = ref[[not x for x in inside]].mean(0) - ref[inside].mean(0)
        for t, tri in enumerate(tris):
            mid = ref[TET_EDGES[tri]].mean(axis=1)  # [3, 3] edge midpoints
            normal = np.cross(mid[1] - mid[0], mid[2] - mid[0])
            if normal @ outward < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, 3 * t : 3 * t + 3] = tri
        counts[code] = len(tris)
    return table, counts


def _edge_id(a: int, b: int) -> int:
    lo, hi = min(a, b), max(a, b)
    return int(np.flatnonzero((TET_EDGES[:, 0] == lo) & (TET_EDGES[:, 1] == hi))[0])


TRIANGLE_TABLE, TRIANGLE_COUNTS = _triangle_table()


def marching_tets(vertices: Tensor, tets: Tensor, sdf: Tensor) -> tuple[Tensor, Tensor]:
    """The zero level set of ``sdf`` over a tetrahedral mesh, as a triangle mesh.

    Args:
        vertices: ``[V, 3]`` grid vertex positions (deformed or not); gradients flow to them.
        tets: ``[T, 4]`` int vertex indices of positively oriented tetrahedra (any subset of the
            grid's, e.g. only those of crossed cubes).
        sdf: ``[V]`` signed values, negative inside; gradients flow to them.

    Returns:
        ``vertices [M, 3]`` (one per crossed edge, same dtype as the inputs) and
        ``faces [F, 3]`` int64, counter-clockwise seen from outside. Empty when nothing crosses.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got {tuple(vertices.shape)}")
    if tets.ndim != 2 or tets.shape[1] != 4:
        raise ValueError(f"tets must be [T, 4], got {tuple(tets.shape)}")
    if sdf.shape != vertices.shape[:1]:
        raise ValueError(f"sdf must be [{vertices.shape[0]}], got {tuple(sdf.shape)}")
    device = vertices.device
    tets = tets.to(device=device, dtype=torch.int64)
    inside = sdf.detach() < 0  # [V]
    occ = inside[tets]  # [T, 4]
    n_in = occ.sum(dim=1)
    crossed = (n_in > 0) & (n_in < 4)
    tets, occ = tets[crossed], occ[crossed]  # [Tc, 4]
    if tets.shape[0] == 0:
        return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64, device=device)

    edge_corners = torch.as_tensor(TET_EDGES, device=device)  # [6, 2]
    first_end, second_end = tets[:, edge_corners[:, 0]], tets[:, edge_corners[:, 1]]  # [Tc, 6]
    changes = occ[:, edge_corners[:, 0]] != occ[:, edge_corners[:, 1]]  # [Tc, 6]
    n_vertices = vertices.shape[0]
    # Undirected edge key (smaller id first), so the tets sharing an edge agree on it.
    keys = torch.minimum(first_end, second_end) * n_vertices + torch.maximum(first_end, second_end)
    unique_keys, inverse = torch.unique(keys[changes], return_inverse=True)
    edge_vertex = torch.full_like(keys, -1)
    edge_vertex[changes] = inverse  # [Tc, 6] surface vertex of each crossing edge

    a = torch.div(unique_keys, n_vertices, rounding_mode="floor")
    b = unique_keys % n_vertices
    s_a, s_b = sdf[a], sdf[b]  # opposite signs, so s_a - s_b != 0
    t = (s_a / (s_a - s_b)).unsqueeze(-1)  # [M, 1] in (0, 1]
    surface_vertices = vertices[a] + t * (vertices[b] - vertices[a])  # [M, 3]

    powers = torch.tensor([1, 2, 4, 8], device=device)
    code = (occ.long() * powers).sum(dim=1)  # [Tc]
    table = torch.as_tensor(TRIANGLE_TABLE, device=device)[code]  # [Tc, 6] local edge ids
    counts = torch.as_tensor(TRIANGLE_COUNTS, device=device)[code]  # [Tc]
    first = torch.gather(edge_vertex, 1, table[:, :3])  # [Tc, 3]
    second = torch.gather(edge_vertex, 1, table[:, 3:].clamp(min=0))[counts == 2]
    faces = torch.cat([first, second], dim=0)
    return surface_vertices, faces
