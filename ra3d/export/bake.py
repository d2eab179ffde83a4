"""UV unwrapping and albedo baking for textured mesh export (issue 9).

A particle's surface comes out of :meth:`Representation.extract_mesh` as a dense triangle mesh
(marching/surface nets at ``resolution^3``) whose colour lives in the representation's texture
field, not in the mesh. Export therefore

1. decimates the mesh when it has more than ``max_faces`` faces (xatlas' chart growth is
   super-linear; threestudio users report hour-long unwraps of dense meshes), with quadric error
   decimation (``fast-simplification``, through trimesh) or, when that is not installed, vertex
   clustering on a regular grid;
2. unwraps it with xatlas into one atlas of ``texture_size^2`` texels with ``padding`` texels
   between charts;
3. bakes the albedo: the atlas is rasterised in UV space (pure torch, on the representation's
   device; texel centres tested against edge functions like
   :mod:`ra3d.representations.components.rasterize`, without its depth test since charts do not overlap),
   the 3D position of every texel centre is interpolated with its barycentrics and the texture
   field is queried there (``Representation.query_albedo``);
4. pads the seams so no background bleeds in when the texture is bilinearly filtered or
   mip-mapped: texels within ``margin`` of a chart take the colour of the nearest surface point
   of a neighbouring triangle of that chart (barycentrics clamped to the triangle), and every
   remaining empty texel is filled by push-pull (a pyramid of coverage-weighted means, filled in
   from coarse to fine), so the whole image holds surface colours.

UV convention everywhere in export: OBJ's (origin at the image's bottom-left, ``v`` up, ``v = 1``
is the top row of the image), the convention of :func:`ra3d.representations.mesh.sample_texture`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.errors import Ra3dError

logger = logging.getLogger(__name__)

#: Chart size cap for xatlas, in faces (see :func:`unwrap`).
FACES_PER_CHART = 256


@dataclass
class UVMesh:
    """A mesh with one UV per vertex (vertices are split along UV seams, as glTF needs).

    Attributes:
        vertices: ``[V, 3]`` float32 positions (ra3d world frame until written).
        faces: ``[F, 3]`` int64.
        uvs: ``[V, 2]`` float32 in [0, 1], OBJ convention (``v = 1`` is the image's top row).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray


# ---------------------------------------------------------------------- decimation
def fast_simplification_available() -> bool:
    """True when trimesh's quadric decimation backend (``fast-simplification``) imports."""
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        return False
    return True


def decimate(
    vertices: np.ndarray, faces: np.ndarray, max_faces: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices [V', 3], faces [F', 3])`` with at most ``max_faces`` faces (unchanged if fewer).

    Quadric error decimation keeps the shape with the fewest faces; it needs
    ``fast-simplification``. Without it the mesh is simplified by vertex clustering: vertices are
    snapped to a grid whose cell grows until the face budget holds, each cell's vertices merge
    into their mean, and faces that collapse are dropped.
    """
    if max_faces < 4:
        raise ValueError(f"max_faces must be >= 4, got {max_faces}")
    if len(faces) <= max_faces:
        return vertices, faces
    if fast_simplification_available():
        import trimesh

        mesh = trimesh.Trimesh(vertices, faces, process=False)
        # fast-simplification aims at the target but may land a little above it; retry tighter.
        target = max_faces
        for _ in range(4):
            out = mesh.simplify_quadric_decimation(face_count=target)
            if len(out.faces) <= max_faces:
                break
            target = int(target * 0.95)
        if len(out.faces) <= max_faces and len(out.faces) > 0:
            return (
                np.asarray(out.vertices, dtype=np.float32),
                np.asarray(out.faces, dtype=np.int64),
            )
        logger.warning("quadric decimation missed the face budget; using vertex clustering")
    return cluster_vertices(vertices, faces, max_faces)


def cluster_vertices(
    vertices: np.ndarray, faces: np.ndarray, max_faces: int
) -> tuple[np.ndarray, np.ndarray]:
    """Vertex-clustering decimation (Rossignac & Borrel) to at most ``max_faces`` faces."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()
    # A closed surface of area A on a grid of cell h has about 2 A / h^2 faces.
    cell = max(float(np.sqrt(2.0 * area / max_faces)), 1e-9)
    lo = v.min(axis=0)
    while True:
        keys = np.floor((v - lo) / cell).astype(np.int64)
        _, cluster = np.unique(keys, axis=0, return_inverse=True)
        cluster = cluster.reshape(-1)
        new_faces = cluster[f]
        keep = (
            (new_faces[:, 0] != new_faces[:, 1])
            & (new_faces[:, 1] != new_faces[:, 2])
            & (new_faces[:, 0] != new_faces[:, 2])
        )
        new_faces = new_faces[keep]
        # Two faces that collapsed onto the same three clusters are one face.
        _, first = np.unique(np.sort(new_faces, axis=1), axis=0, return_index=True)
        new_faces = new_faces[np.sort(first)]
        if len(new_faces) <= max_faces:
            break
        cell *= 1.2
    counts = np.bincount(cluster).astype(np.float64)
    means = np.stack([np.bincount(cluster, weights=v[:, k]) for k in range(3)], axis=1)
    new_vertices = means / counts[:, None]
    used, remap = np.unique(new_faces, return_inverse=True)
    return new_vertices[used].astype(np.float32), remap.reshape(-1, 3).astype(np.int64)


# ---------------------------------------------------------------------- unwrapping
def unwrap(
    vertices: np.ndarray,
    faces: np.ndarray,
    texture_size: int,
    padding: int,
    faces_per_chart: int = FACES_PER_CHART,
) -> UVMesh:
    """xatlas charts packed into one atlas for a ``texture_size^2`` texture with at least about
    ``padding`` texels between charts; vertices are split where a vertex gets several UVs.

    Charts are capped at the area of about ``faces_per_chart`` faces: xatlas' parameterisation
    of one large chart is super-linear in its size (a 50k-face surface-nets mesh unwraps in ~40 s
    as 9 charts and ~2.5 s as ~350), at the price of more seams, which the baking pads.
    xatlas sizes the atlas only approximately to ``resolution`` (up to ~1.6x larger on dense
    meshes) and the UVs are normalised to [0, 1] afterwards, which shrinks the gaps by the same
    factor; the requested gap is therefore doubled.
    """
    import xatlas

    v = np.ascontiguousarray(vertices, np.float32)
    f = np.ascontiguousarray(faces, np.uint32)
    a, b, c = (v[f[:, k]].astype(np.float64) for k in range(3))
    area = 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
    atlas = xatlas.Atlas()
    atlas.add_mesh(v, f)
    chart_options = xatlas.ChartOptions()
    if area > 0:
        chart_options.max_chart_area = area * faces_per_chart / len(f)
    pack_options = xatlas.PackOptions()
    pack_options.resolution = int(texture_size)
    pack_options.padding = int(2 * padding)
    pack_options.bilinear = True
    pack_options.blockAlign = True  # much faster packing for a few % of atlas space
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:  # UVs of several atlases would overlap in one texture
        raise Ra3dError(
            f"xatlas packed the charts into {atlas.atlas_count} atlases instead of one; export "
            "with a larger --texture-size or a smaller --max-faces"
        )
    vmapping, indices, uvs = atlas[0]
    logger.info(
        "xatlas: %d charts, atlas %dx%d texels normalised to %d^2 (chart gaps >= %.1f texels)",
        atlas.chart_count, atlas.width, atlas.height, texture_size,
        2 * padding * texture_size / max(atlas.width, atlas.height, 1),
    )  # fmt: skip
    return UVMesh(
        vertices=v[vmapping],
        faces=np.asarray(indices, np.int64),
        uvs=np.asarray(uvs, np.float32),
    )


# ---------------------------------------------------------------------- UV-space rasterisation
@dataclass
class TexelSurface:
    """Which surface point every texel shows: ``triangle [H, W]`` int64 (-1 = none) and
    ``bary [H, W, 3]`` float32 barycentrics inside that triangle."""

    triangle: Tensor
    bary: Tensor


def texel_centres(size: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """UV coordinates ``(u [H, W], v [H, W])`` of the texel centres of a ``size^2`` image."""
    t = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / size
    v, u = torch.meshgrid(1.0 - t, t, indexing="ij")
    return u, v


def rasterize_uv(
    mesh: UVMesh, size: int, margin: int, device: torch.device | str = "cpu"
) -> TexelSurface:
    """Assign a triangle and barycentrics to every texel covered by the atlas, and to texels up
    to ``margin`` texels outside a chart (a nearby point of a neighbouring triangle)."""
    uv = torch.from_numpy(mesh.uvs).to(device=device, dtype=torch.float64)  # [V, 2]
    faces = torch.from_numpy(mesh.faces).to(device)
    triangle, bary = rasterize_uv_triangles(uv, faces, size)

    # Triangles too thin to cover a texel centre still own the texel under their UV centroid.
    centroid = uv[faces].mean(dim=1)  # [F, 2]
    col = (centroid[:, 0] * size).floor().long().clamp(0, size - 1)
    row = ((1.0 - centroid[:, 1]) * size).floor().long().clamp(0, size - 1)
    empty = triangle[row, col] < 0
    triangle[row[empty], col[empty]] = torch.nonzero(empty)[:, 0]

    # Grow every chart by `margin` texels: an empty texel takes a covered neighbour's triangle
    # (ids + 1 are exact in float32 up to 2^24 faces).
    covered = bary.sum(-1) > 0
    for _ in range(margin):
        free = triangle < 0
        if not free.any():
            break
        grown = F.max_pool2d((triangle + 1).float()[None, None], 3, stride=1, padding=1)
        triangle = torch.where(free, grown[0, 0].long() - 1, triangle)

    # Texels outside every triangle (margins, centroid texels): clamped barycentrics.
    fix = (triangle >= 0) & ~covered
    u, v = texel_centres(size, device)
    corners = uv[faces[triangle[fix]]]  # [N, 3, 2]
    bary[fix] = clamped_barycentrics(corners, torch.stack([u[fix], v[fix]], dim=-1)).float()
    return TexelSurface(triangle=triangle, bary=bary)


def rasterize_uv_triangles(
    uv: Tensor, faces: Tensor, size: int, max_candidates: int = 2**21
) -> tuple[Tensor, Tensor]:
    """Texels whose centre lies inside a UV triangle → ``(triangle [H, W] int64 (-1 = none),
    bary [H, W, 3] float32)``; row 0 is ``v = 1``.

    A lean special case of :mod:`ra3d.representations.components.rasterize` for the atlas, where charts do
    not overlap: no depth test and no perspective, and edge functions are evaluated relative to
    each triangle's first corner (small numbers, so float32 suffices). Every triangle's
    bounding-box texels are tested in chunks of ``max_candidates``. A texel on an edge shared by
    two triangles goes to either; one missed by both (rounding) is filled by the margin step.
    """
    device = uv.device
    x = (uv[:, 0] * size)[faces]  # [F, 3] pixel columns (texel centres at +0.5)
    y = ((1.0 - uv[:, 1]) * size)[faces]  # [F, 3] pixel rows, downwards
    x0, y0 = x[:, 0:1], y[:, 0:1]
    lx, ly = (x - x0).float(), (y - y0).float()  # corners relative to corner 0
    x1, y1 = lx.roll(-1, dims=1), ly.roll(-1, dims=1)  # corner i+1
    x2, y2 = lx.roll(-2, dims=1), ly.roll(-2, dims=1)  # corner i+2
    a, b, c = y1 - y2, x2 - x1, x1 * y2 - x2 * y1  # edge i opposite corner i: a px + b py + c
    area = c.sum(dim=1)  # twice the signed area
    col_lo = torch.ceil(x.amin(1) - 0.5).clamp(min=0).long()
    col_hi = torch.floor(x.amax(1) - 0.5).clamp(max=size - 1).long()
    row_lo = torch.ceil(y.amin(1) - 0.5).clamp(min=0).long()
    row_hi = torch.floor(y.amax(1) - 0.5).clamp(max=size - 1).long()
    n_cols = (col_hi - col_lo + 1).clamp(min=0)
    counts = n_cols * (row_hi - row_lo + 1).clamp(min=0) * (area.abs() > 1e-12)
    keep = torch.nonzero(counts > 0)[:, 0]
    inv_area = 1.0 / area[keep]
    coeffs = torch.cat([a[keep], b[keep], c[keep]], dim=1) * inv_area[:, None]  # [T, 9]
    origin = torch.stack([x0[keep, 0], y0[keep, 0]], dim=1)  # [T, 2] float64
    counts, n_cols, col_lo, row_lo = counts[keep], n_cols[keep], col_lo[keep], row_lo[keep]

    triangle = torch.full((size * size,), -1, dtype=torch.int64, device=device)
    bary = torch.zeros(size * size, 3, dtype=torch.float32, device=device)
    ends = torch.cumsum(counts, dim=0)
    start = 0
    while start < len(keep):
        done = int(ends[start - 1]) if start > 0 else 0
        stop = max(int(torch.searchsorted(ends, done + max_candidates, right=True)), start + 1)
        local = torch.repeat_interleave(
            torch.arange(start, stop, device=device), counts[start:stop]
        )  # [P] triangle of each candidate texel
        first = ends[local] - counts[local]
        index = torch.arange(done, done + local.shape[0], device=device) - first
        cols = col_lo[local] + index % n_cols[local]
        rows = row_lo[local] + torch.div(index, n_cols[local], rounding_mode="floor")
        px = (cols.double() + 0.5 - origin[local, 0]).float()
        py = (rows.double() + 0.5 - origin[local, 1]).float()
        k = coeffs[local]  # [P, 9]
        weights = k[:, 0:3] * px[:, None] + k[:, 3:6] * py[:, None] + k[:, 6:9]  # [P, 3]
        inside = (weights >= 0).all(dim=1)
        texel = rows[inside] * size + cols[inside]
        triangle[texel] = keep[local[inside]]
        bary[texel] = weights[inside]
        start = stop
    return triangle.view(size, size), bary.view(size, size, 3)


def clamped_barycentrics(corners: Tensor, points: Tensor) -> Tensor:
    """Barycentrics ``[N, 3]`` of 2D ``points [N, 2]`` in triangles ``corners [N, 3, 2]``, with
    negative weights clamped to zero and renormalised (a point of the triangle near ``points``;
    exact for points inside). Degenerate triangles get their centroid."""
    a, b, c = corners.unbind(dim=1)
    v0, v1, v2 = b - a, c - a, points - a
    d00 = (v0 * v0).sum(-1)
    d01 = (v0 * v1).sum(-1)
    d11 = (v1 * v1).sum(-1)
    d20 = (v2 * v0).sum(-1)
    d21 = (v2 * v1).sum(-1)
    denom = d00 * d11 - d01 * d01
    ok = denom.abs() > 1e-30
    safe = torch.where(ok, denom, torch.ones_like(denom))
    w1 = (d11 * d20 - d01 * d21) / safe
    w2 = (d00 * d21 - d01 * d20) / safe
    bary = torch.stack([1.0 - w1 - w2, w1, w2], dim=-1).clamp(min=0.0)
    total = bary.sum(-1, keepdim=True)
    bary = bary / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(ok[:, None], bary, torch.full_like(bary, 1.0 / 3.0))


# ---------------------------------------------------------------------- baking
def push_pull(image: Tensor, weight: Tensor) -> Tensor:
    """Fill texels of ``image [H, W, C]`` where ``weight [H, W]`` is 0 from coarser levels of a
    coverage-weighted pyramid; texels with weight 1 are kept exactly."""
    levels: list[tuple[Tensor, Tensor]] = []
    colour = (image * weight[..., None]).permute(2, 0, 1)[None]  # [1, C, H, W]
    w = weight[None, None].to(image.dtype)
    levels.append((colour, w))
    while min(colour.shape[-2:]) > 1:
        colour = F.avg_pool2d(colour, 2, ceil_mode=True)
        w = F.avg_pool2d(w, 2, ceil_mode=True)
        levels.append((colour, w))
    filled = levels[-1][0] / levels[-1][1].clamp(min=1e-12)
    for colour, w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=colour.shape[-2:], mode="nearest")
        mean = colour / w.clamp(min=1e-12)
        filled = torch.where(w > 0, mean, up)
    out = filled[0].permute(1, 2, 0)
    return torch.where(weight[..., None] > 0, image, out)


def bake_albedo(
    query: Callable[[Tensor], Tensor],
    mesh: UVMesh,
    size: int,
    margin: int,
    device: torch.device | str = "cpu",
    chunk: int = 2**18,
) -> np.ndarray:
    """The albedo texture ``[size, size, 3]`` float32 in [0, 1] of ``mesh``'s atlas.

    ``query(points [N, 3]) -> [N, 3]`` is the texture field (``Representation.query_albedo``);
    it is evaluated at the 3D point of every texel of a chart or its margin, in chunks.
    """
    surface = rasterize_uv(mesh, size, margin, device)
    hit = surface.triangle >= 0
    vertices = torch.from_numpy(mesh.vertices).to(device)
    faces = torch.from_numpy(mesh.faces).to(device)
    corners = vertices[faces[surface.triangle[hit]]]  # [N, 3, 3]
    points = (surface.bary[hit][..., None] * corners).sum(dim=1)  # [N, 3] float32
    colours = []
    with torch.no_grad():
        for start in range(0, points.shape[0], chunk):
            part = points[start : start + chunk].to(device=device, dtype=torch.float32)
            colours.append(query(part).detach().float().cpu())
    image = torch.zeros(size, size, 3, dtype=torch.float32)
    hit = hit.cpu()
    if colours:
        image[hit] = torch.cat(colours).clamp(0.0, 1.0)
    texture = push_pull(image, hit.float())
    logger.info(
        "baked %dx%d albedo: %d texels on the surface (%.0f%%), the rest filled by push-pull",
        size, size, int(hit.sum()), 100.0 * float(hit.float().mean()),
    )  # fmt: skip
    return texture.clamp(0.0, 1.0).numpy()


def seam_padding(texture_size: int) -> int:
    """Texels between charts: enough for bilinear filtering and a few mip levels."""
    return max(2, texture_size // 256)
