"""Tests of the fine stage's geometry: tetrahedral grid, marching tetrahedra, mesh regularizers,
silhouette antialiasing, the DMTet renderer and the NeRF → DMTet conversion.

Every check compares with an independent computation: closed-form areas, volumes and radii,
hand-computed regularizer values, finite differences, ray–sphere intersection, exact box-filter
coverage, or a second rasteriser.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from torch import Tensor

from ra3d.cameras import make_cameras
from ra3d.errors import ConfigError
from ra3d.representations.components.antialias import silhouette_antialias
from ra3d.representations.components.marching_tets import marching_tets
from ra3d.representations.components.mesh_ops import (
    face_normals,
    keep_large_components,
    laplacian_smoothness,
    mesh_stats,
    normal_consistency,
)
from ra3d.representations.components.rasterize import nvdiffrast_available, rasterize_torch
from ra3d.representations.components.tetgrid import tet_grid, tets_cache_dir
from ra3d.representations.convert import ConversionOptions
from ra3d.representations.dmtet import DMTet
from ra3d.representations.metrics import silhouette_iou
from ra3d.representations.nerf import InstantNGPNeRF
from tests.toys import FourierEncoding


def tiny_dmtet(resolution: int, **kwargs) -> DMTet:
    kwargs.setdefault("background", "solid")
    kwargs.setdefault("random_background_prob", 0.0)
    kwargs.setdefault("backend", "torch")
    return DMTet(grid_resolution=resolution, encoding=FourierEncoding(), hidden_dim=8, **kwargs)


def cameras(elevations, azimuths, distance=2.0, fovy=45.0, size=24, dtype=torch.float32):
    e = torch.tensor(elevations, dtype=dtype)
    a = torch.tensor(azimuths, dtype=dtype)
    one = torch.ones_like(e)
    return make_cameras(e, a, distance * one, fovy * one, size, size)


def analytic_ball_mask(cams, radius: float) -> Tensor:
    """``[B, H, W, 1]`` 1 where the pixel's ray meets the ball of ``radius`` at the origin."""
    origins, dirs = cams.rays()
    o, d = origins.double(), dirs.double()
    t = -(o * d).sum(-1, keepdim=True)  # closest approach along the unit ray
    dist = (o + t * d).norm(dim=-1, keepdim=True)
    return (dist < radius).double()


# ---------------------------------------------------------------------- tetrahedral grid
@pytest.mark.parametrize("resolution", [3, 4])
def test_tet_grid_is_a_positive_conforming_tiling_of_the_cube(resolution: int) -> None:
    grid = tet_grid(resolution)
    v, t = grid.vertices.double(), grid.tets
    assert t.shape == (6 * resolution**3, 4) and v.shape == ((resolution + 1) ** 3, 3)
    p = v[t]
    volumes = torch.linalg.det(p[:, 1:] - p[:, :1]) / 6.0
    cell = (2.0 / resolution) ** 3
    assert bool((volumes > 0).all())
    torch.testing.assert_close(volumes, torch.full_like(volumes, cell / 6.0))  # Kuhn: equal parts
    assert abs(float(volumes.sum()) - 8.0) < 1e-9  # the cube [-1, 1]^3
    faces = torch.cat([t[:, list(c)] for c in combinations(range(4), 3)])
    _, counts = torch.unique(torch.sort(faces, dim=1).values, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    # Faces used once are exactly the boundary: 6 sides x R^2 squares x 2 triangles.
    assert int((counts == 1).sum()) == 6 * resolution**2 * 2
    torch.testing.assert_close(grid.cube_tets(torch.arange(resolution**3)), t)


def test_tet_grid_disk_cache_round_trip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path))
    tet_grid.cache_clear()
    try:
        first = tet_grid(5)
        path = tets_cache_dir() / "kuhn_5.npz"
        assert path.is_file() and not list(path.parent.glob("*.tmp"))
        with np.load(path) as data:
            np.testing.assert_array_equal(data["vertices"], first.vertices.numpy())
        tet_grid.cache_clear()
        torch.testing.assert_close(tet_grid(5).vertices, first.vertices)
    finally:
        tet_grid.cache_clear()
    with pytest.raises(ValueError, match="resolution"):
        tet_grid(1000)


# ---------------------------------------------------------------------- marching tetrahedra
def march(resolution: int, sdf_fn, bbox: float = 1.0):
    grid = tet_grid(resolution)
    v = grid.vertices.double() * bbox
    sdf = sdf_fn(v)
    tets = grid.cube_tets(grid.crossing_cubes(sdf < 0))
    return marching_tets(v, tets, sdf)


def area_of(vertices: Tensor, faces: Tensor) -> float:
    return float(0.5 * face_normals(vertices, faces, normalize=False).norm(dim=-1).sum())


def assert_closed_outward(vertices: Tensor, faces: Tensor) -> None:
    stats = mesh_stats(vertices, faces)
    assert stats.n_boundary_edges == 0 and stats.n_nonmanifold_edges == 0  # each edge: 2 faces
    assert stats.consistently_oriented and stats.signed_volume > 0
    assert stats.n_components == 1


def test_marching_tets_sphere_area_volume_and_orientation() -> None:
    r = 0.7
    vertices, faces = march(32, lambda p: p.norm(dim=-1) - r)
    assert_closed_outward(vertices, faces)
    assert abs(area_of(vertices, faces) / (4 * math.pi * r**2) - 1) < 0.02
    volume = mesh_stats(vertices, faces).signed_volume
    assert abs(volume / (4 / 3 * math.pi * r**3) - 1) < 0.02
    centroids = vertices[faces].mean(dim=1)
    assert bool(((face_normals(vertices, faces) * centroids).sum(-1) > 0).all())
    # Surface vertices lie on the sphere up to linear interpolation of |x| along an edge of
    # length <= sqrt(3) h: |x| is convex, so the error is in [-(sqrt(3) h)^2 / (8 r), 0].
    h = 2.0 / 32
    radial = vertices.norm(dim=-1) - r
    assert float(radial.max()) < 1e-12 and float(radial.min()) > -3 * h**2 / (8 * r)


def test_marching_tets_torus_area_volume_and_genus() -> None:
    """A smooth second shape (a box is not used: marching tetrahedra chamfer sharp edges, a
    first-order area error, by design of the method)."""
    big, small = 0.55, 0.25

    def torus(p: Tensor) -> Tensor:
        ring = torch.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) - big
        return torch.sqrt(ring**2 + p[:, 2] ** 2) - small

    vertices, faces = march(40, torus)
    assert_closed_outward(vertices, faces)
    stats = mesh_stats(vertices, faces)
    assert stats.n_vertices - (stats.n_faces * 3 // 2) + stats.n_faces == 0  # genus 1
    assert abs(area_of(vertices, faces) / (4 * math.pi**2 * big * small) - 1) < 0.02
    assert abs(stats.signed_volume / (2 * math.pi**2 * big * small**2) - 1) < 0.02


def test_marching_tets_shares_vertices_and_is_differentiable() -> None:
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    v.requires_grad_(True)
    sdf = torch.tensor([-1.0, 1.0, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    verts, faces = marching_tets(v, torch.tensor([[0, 1, 2, 3]]), sdf)
    # One inside corner: crossings at t = 1/2, 1/4, 1/2 on edges 01, 02, 03.
    expected = torch.tensor([[0.5, 0, 0], [0, 0.25, 0], [0, 0, 0.5]], dtype=torch.float64)
    key = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    got = verts[torch.argsort(verts.detach() @ key)]
    torch.testing.assert_close(got, expected[torch.argsort(expected @ key)])
    n = face_normals(verts, faces)[0]
    assert (
        float(n.detach() @ torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)) > 0
    )  # away from corner 0
    # d(crossing on edge 0-2)/d s_0 for p = s_0 / (s_0 - s_2) * e_y: -s_2 / (s_0 - s_2)^2 = -3/16.
    y = verts[:, 1].sum()
    (g,) = torch.autograd.grad(y, sdf)
    assert abs(float(g[0]) + 3 / 16) < 1e-12


# ---------------------------------------------------------------------- regularizers
def two_faces_at_right_angle() -> tuple[Tensor, Tensor]:
    """Faces (v0 v1 v2) in z = 0 with normal +z and (v1 v0 v3) in y = 0 with normal +y, both of
    area 1/2, sharing edge v0-v1: a 90° dihedral."""
    v = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.5, 0.0, 1.0]], dtype=torch.float64
    )
    return v, torch.tensor([[0, 1, 2], [1, 0, 3]])


def test_normal_consistency_and_laplacian_match_hand_computation() -> None:
    v, f = two_faces_at_right_angle()
    # Vertex normals: v0, v1 -> (0, 1, 1)/sqrt2 (equal areas); v2 -> +z; v3 -> +y. Of the five
    # edges, 0-1 has equal normals and the four others meet at 45°: mean (4 (1 - cos 45°)) / 5.
    expected_nc = 4 * (1 - math.cos(math.pi / 4)) / 5
    assert abs(float(normal_consistency(v, f)) - expected_nc) < 1e-12
    # Uniform Laplacian deg(i) v_i - sum of neighbours: v0 -> (-2, -1, -1), v1 -> (2, -1, -1),
    # v2 -> (0, 2, 0), v3 -> (0, 0, 2); mean norm (2 sqrt6 + 4) / 4.
    expected_lap = (2 * math.sqrt(6) + 4) / 4
    assert abs(float(laplacian_smoothness(v, f)) - expected_lap) < 1e-12
    # A flat pair of faces has no bend.
    flat = v.clone()
    flat[3] = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    assert float(normal_consistency(flat, f)) < 1e-15


def test_mesh_stats_and_component_filter() -> None:
    v, f = two_faces_at_right_angle()
    stats = mesh_stats(v, f)
    assert stats.n_boundary_edges == 4 and not stats.watertight and stats.consistently_oriented
    flipped = mesh_stats(v, torch.tensor([[0, 1, 2], [0, 1, 3]]))
    assert flipped.n_inconsistent_edges == 1
    # A big sphere and a tiny one: the filter keeps only the big one.
    big_v, big_f = march(16, lambda p: p.norm(dim=-1) - 0.6)
    small_v, small_f = march(16, lambda p: (p - 0.8).norm(dim=-1) - 0.12)
    verts = torch.cat([big_v, small_v])
    faces = torch.cat([big_f, small_f + big_v.shape[0]])
    assert mesh_stats(verts, faces).n_components == 2
    assert small_f.shape[0] < 0.1 * faces.shape[0]
    kept_v, kept_f = keep_large_components(verts, faces, min_fraction=0.1)
    assert kept_f.shape == big_f.shape and torch.equal(kept_v, big_v)


# ---------------------------------------------------------------------- antialiasing
def tessellated_rectangle(x_right: Tensor, columns: int, rows: int) -> tuple[Tensor, Tensor]:
    """Clip-space vertices ``[1, V, 4]`` and faces of the rectangle ``x in [-0.5, x_right]``,
    ``y in [-2, 2]`` (NDC; taller than the screen) split into ``columns x rows`` cells of two
    triangles each; every vertex's x moves with ``x_right``."""
    dtype = torch.float64
    s = torch.linspace(0.0, 1.0, columns + 1, dtype=dtype)
    t = torch.linspace(0.0, 1.0, rows + 1, dtype=dtype)
    x = -0.5 + (x_right + 0.5) * s  # [C + 1]
    y = -2.0 + 4.0 * t  # [R + 1]
    xx, yy = x[None, :].expand(rows + 1, -1), y[:, None].expand(-1, columns + 1)
    clip = torch.stack([xx, yy, torch.zeros_like(xx), torch.ones_like(xx)], dim=-1)
    idx = torch.arange((rows + 1) * (columns + 1)).reshape(rows + 1, columns + 1)
    a, b = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
    c, d = idx[1:, 1:].reshape(-1), idx[1:, :-1].reshape(-1)
    faces = torch.cat([torch.stack([a, b, c], -1), torch.stack([a, c, d], -1)])
    return clip.reshape(1, -1, 4), faces


@pytest.mark.parametrize("columns, rows", [(1, 1), (23, 61)])
def test_antialiased_coverage_of_a_vertical_edge_is_the_exact_box_filter(columns, rows) -> None:
    """A rectangle spanning all rows, from x = -0.5 (NDC) to an edge at ``x_e``: every pixel's
    antialiased opacity equals the covered fraction of its square, and the derivative of the
    total opacity w.r.t. ``x_e`` is the number of rows times W / 2 (pixels per NDC unit).

    Once as two triangles, once as triangles far smaller than a pixel (0.17 x 0.66 px; a DMTet
    finer than the image): the silhouette must come from the outline's edges, not from the
    interior edges of the triangle seen at the covered pixel. The left edge passes exactly through
    the centres of column 2 (coverage ½)."""
    size = 10
    x_e = torch.tensor(0.337, dtype=torch.float64, requires_grad=True)
    clip, faces = tessellated_rectangle(x_e, columns, rows)
    frags = rasterize_torch(clip, faces, size, size)
    hit = frags.mask[..., None].double()
    (opacity,) = silhouette_antialias([hit], clip, faces, frags.triangle_id)
    left, right = (-0.5 + 1) * size / 2, (float(x_e.detach()) + 1) * size / 2  # pixel-space edges
    u = torch.arange(size, dtype=torch.float64)
    coverage = ((torch.minimum(u + 1, torch.tensor(right)) - torch.maximum(u, torch.tensor(left)))
                .clamp(0, 1))  # fmt: skip
    torch.testing.assert_close(opacity[0, :, :, 0], coverage.expand(size, size))
    (g,) = torch.autograd.grad(opacity.sum(), x_e)
    assert abs(float(g) - size * size / 2) < 1e-9


def test_antialiasing_ignores_edges_behind_the_camera() -> None:
    """Covered pixels whose triangle has every vertex behind the camera (``w < 0``) have no
    usable crossing: the image is returned unchanged instead of failing."""
    clip = torch.tensor([[[-1.0, -1, 0, -1], [1, -1, 0, -1], [0, 1, 0, -1]]])
    triangle_id = torch.full((1, 4, 4), -1)
    triangle_id[0, 1:3, 1:3] = 0
    hit = (triangle_id >= 0)[..., None].float()
    (opacity,) = silhouette_antialias([hit], clip, torch.tensor([[0, 1, 2]]), triangle_id)
    assert torch.equal(opacity, hit)


def test_antialiased_silhouette_of_a_fine_dmtet_sphere_matches_the_closed_form() -> None:
    """A DMTet sphere whose grid cells are smaller than a pixel (grid 64 seen at 32 px: a cell is
    about 0.7 px): the total antialiased opacity is the sphere's projected disc, ``π R²`` pixels,
    and its derivative w.r.t. the radius (every SDF value shifted) is ``2 π R dR/dr``, with
    ``R = f tan(asin(r / D))`` the disc's radius in pixels (focal ``f`` in pixels, distance ``D``).

    Tolerances: the marching-tets mesh is inscribed, at most ``3 h² / (8 r)`` inside the sphere
    (relative area deficit ``<= 3 h² / (4 r²) ≈ 0.3 %`` at ``h = 1/32``) and the box filter of a
    curved outline is exact up to the outline's curvature over one pixel, hence 1 % on the area. The
    derivative also counts each boundary pixel pair on one axis, decided by the local edge's
    direction, which the jagged fine outline gets wrong near 45°: 3 %. The interior edges of the
    triangles seen at the silhouette pixels (what a triangle-local antialiaser uses) lose 7 % of
    the area here."""
    r, distance, fovy, size = 0.5, 2.0, 45.0, 32
    model = sphere_dmtet(64, r)
    cams = cameras([0.0, 35.0], [0.0, 120.0], distance=distance, fovy=fovy, size=size,
                   dtype=torch.float64)  # fmt: skip
    total = model.render(cams).opacity.sum(dim=(1, 2, 3))  # [2]
    (grad_sdf,) = torch.autograd.grad(total.sum(), model.sdf)
    focal = (size / 2) / math.tan(math.radians(fovy) / 2)
    x = r / distance
    disc = focal * x / math.sqrt(1 - x * x)  # R, pixels
    d_disc = focal / distance / (1 - x * x) ** 1.5  # dR / dr
    torch.testing.assert_close(total.detach(), torch.full((2,), math.pi * disc**2,
                               dtype=torch.float64), rtol=0.01, atol=0)  # fmt: skip
    d_total = -float(grad_sdf.sum()) / 2  # sdf = |x| - r: d/dr = -sum d/dsdf; mean of 2 views
    assert abs(d_total / (2 * math.pi * disc * d_disc) - 1) < 0.03, d_total


# ---------------------------------------------------------------------- DMTet rendering
def sphere_dmtet(resolution: int, r: float = 0.5, dtype=torch.float64, **kwargs) -> DMTet:
    model = tiny_dmtet(resolution, **kwargs).to(dtype)
    with torch.no_grad():
        model.sdf.copy_(model.grid_vertices().norm(dim=-1) - r)
    return model.eval()


def test_dmtet_renders_a_sphere_like_the_closed_form() -> None:
    r, res, size = 0.5, 24, 25
    model = sphere_dmtet(res, r)
    cams = cameras([0.0, 30.0, -20.0], [0.0, 100.0, 250.0], size=size, dtype=torch.float64)
    out = model.render(cams)
    truth = analytic_ball_mask(cams, r)
    assert float(silhouette_iou(out.opacity, truth).min()) >= 0.95
    h = 2.0 / res
    centre = size // 2  # odd size: the centre pixel looks at the origin
    depth = out.depth[:, centre, centre, 0]
    # The mesh is inside the sphere by at most 3 h^2 / (8 r) (see the marching test).
    assert bool(((depth >= 2.0 - r - 1e-9) & (depth <= 2.0 - r + 3 * h**2 / (8 * r))).all())
    # Surface points from depth along the unit rays; normals vs the sphere's radial direction.
    # Interpolated vertex normals of a mesh with edges <= sqrt(3) h deviate by O(h / r).
    origins, dirs = cams.rays()
    solid = (out.opacity[..., 0] == 1) & (out.extras["triangle_id"] >= 0)
    points = (origins + out.depth * dirs)[solid]
    radial = points / points.norm(dim=-1, keepdim=True)
    cos = (out.normal[solid] * radial).sum(-1).detach()
    assert float(cos.min()) > math.cos(math.sqrt(3) * h / r) and float(cos.mean()) > 0.995
    # Colour: the texture field at the surface point, premultiplied by the opacity.
    fg = out.extras["rgb_foreground"]
    torch.testing.assert_close(fg[solid], model.query_albedo(points), atol=1e-9, rtol=0)
    torch.testing.assert_close(out.rgb, fg + (1 - out.opacity) * out.extras["background"])
    assert bool(((out.opacity > 0) & (out.opacity < 1)).any())  # antialiased silhouette
    assert model.regularizer_names == tuple(model.regularizers(out))


def test_render_gradients_match_finite_differences() -> None:
    """d(loss)/d(sdf) and d(loss)/d(deformation) of a loss on depth, normals, antialiased
    opacity and colour, against central differences (float64, no pixel changes triangle)."""
    torch.manual_seed(0)
    model = sphere_dmtet(6, 0.55)
    with torch.no_grad():
        model.deformation.normal_(0.0, 0.3)
        model.sdf.add_(0.05 * torch.randn_like(model.sdf))
    cams = cameras([10.0, -25.0], [20.0, 200.0], size=20, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    w_depth, w_normal = torch.rand(2, 20, 20, 1, generator=g), torch.rand(2, 20, 20, 3, generator=g)
    w_opacity, w_rgb = torch.rand(2, 20, 20, 1, generator=g), torch.rand(2, 20, 20, 3, generator=g)

    def loss_fn() -> Tensor:
        out = model.render(cams)
        return ((out.depth * w_depth.double()).sum() + (out.normal * w_normal.double()).sum()
                + (out.opacity * w_opacity.double()).sum() + (out.rgb * w_rgb.double()).sum())  # fmt: skip

    reference_ids = model.render(cams).extras["triangle_id"]
    loss = loss_fn()
    loss.backward()
    for param in (model.sdf, model.deformation):
        grad = param.grad.reshape(-1)
        for flat_idx in torch.topk(grad.abs(), 4).indices.tolist():
            analytic = float(grad[flat_idx])
            step = 1e-6
            with torch.no_grad():
                param.view(-1)[flat_idx] += step
                plus = float(loss_fn())
                assert torch.equal(model.render(cams).extras["triangle_id"], reference_ids)
                param.view(-1)[flat_idx] -= 2 * step
                minus = float(loss_fn())
                param.view(-1)[flat_idx] += step
            numeric = (plus - minus) / (2 * step)
            assert analytic != 0.0
            assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (analytic, numeric)


# ---------------------------------------------------------------------- NeRF -> DMTet
#: Centre of a ball of radius 0.09 detached from the main ball but inside its tightened box.
FLOATER = (0.42, 0.42, 0.42)


class BallNeRF(InstantNGPNeRF):
    """A NeRF whose density is analytic: ``25 + slope (r - |x|)`` for a ball of radius ``r``
    (so the 25-level set is exactly that sphere), plus optionally a small floating ball."""

    def __init__(self, r: float, slope: float = 100.0, floater: bool = False, peak=None):
        super().__init__(encoding=FourierEncoding(), hidden_dim=8, background="solid",
                         normal_type="none", random_background_prob=0.0)  # fmt: skip
        self.r, self.slope, self.floater, self.peak = r, slope, floater, peak

    def density(self, points: Tensor) -> Tensor:
        level = self.r - points.norm(dim=-1)
        if self.floater:
            far = torch.tensor(FLOATER, dtype=points.dtype)
            level = torch.maximum(level, 0.09 - (points - far).norm(dim=-1))
        if self.peak is not None:  # a faint field: max density `peak` < 25 at the centre
            return (self.peak * (1.0 - points.norm(dim=-1))).clamp(min=0.0)
        return (25.0 + self.slope * level).clamp(min=0.0)


def test_nerf_to_dmtet_recovers_an_analytic_ball() -> None:
    r, res = 0.45, 24
    nerf = BallNeRF(r, floater=True)
    # sdf_init="normalize": every edge crossing exactly where linear interpolation puts it.
    dmtet = DMTet.from_nerf(nerf, grid_resolution=res, margin=0.1, encoding=FourierEncoding(),
                            hidden_dim=8, background="solid", random_background_prob=0.0,
                            backend="torch", sdf_init="normalize").eval()  # fmt: skip
    # Box: the ball plus the margin (the floater was removed before measuring).
    probe_cell = 2.0 / res
    pad = max(0.1, 2 * probe_cell)
    # The kept probe vertices reach within one probe cell of the sphere, never past it.
    assert bool(((dmtet.bbox[1] <= r + pad + 1e-6) & (dmtet.bbox[1] >= r + pad - probe_cell)).all())
    assert bool(
        ((dmtet.bbox[0] >= -r - pad - 1e-6) & (dmtet.bbox[0] <= -r - pad + probe_cell)).all()
    )
    assert mesh_stats(*dmtet.surface()).n_components == 1  # the floater is gone ...
    kept = DMTet.from_nerf(nerf, grid_resolution=res, remove_floaters=False,
                           encoding=FourierEncoding(), hidden_dim=8, backend="torch")  # fmt: skip
    assert mesh_stats(*kept.surface()).n_components == 2  # ... and was there to remove
    mesh = dmtet.extract_mesh()
    stats = mesh_stats(mesh.vertices, mesh.faces)
    assert stats.watertight and stats.consistently_oriented and stats.n_components == 1
    assert stats.signed_volume > 0
    # Radius: vertices on grid edges of length <= sqrt(3) h, |x| convex => error in
    # [-3 h^2 / (8 r), 0] with h the fine cell (largest axis).
    h = float(dmtet.cell_size().max())
    radial = mesh.vertices.double().norm(dim=-1) - r
    assert float(radial.max()) < 1e-5 and float(radial.min()) > -3 * h**2 / (8 * r) - 1e-5
    cams = cameras([15.0, -15.0] * 4, [45.0 * i for i in range(8)], size=32)
    out = dmtet.render(cams)
    assert float(silhouette_iou(out.opacity, analytic_ball_mask(cams, r).float()).min()) >= 0.95
    # The texture field was copied: same albedo as the NeRF everywhere.
    pts = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(dmtet.query_albedo(pts), nerf.query_albedo(pts))
    torch.testing.assert_close(mesh.vertex_colors, nerf.query_albedo(mesh.vertices))


def _lattice(dmtet: DMTet) -> Tensor:
    """``[V, 3]`` the undeformed grid vertices, from the vertex numbering ``(i n + j) n + k``
    (n = resolution + 1) and the box alone."""
    n = dmtet.grid_resolution + 1
    idx = torch.arange(n**3)
    ijk = torch.stack([idx // (n * n), (idx // n) % n, idx % n], dim=-1).double()
    lo, hi = dmtet.bbox.double()
    return lo + ijk * (hi - lo) / dmtet.grid_resolution


def _analytic_density(x: Tensor, r: float, slope: float) -> Tensor:
    return (25.0 + slope * (r - x.norm(dim=-1))).clamp(min=0.0)


def test_nerf_to_dmtet_sdf_is_threestudios_clamped_level() -> None:
    """Default ``sdf_init="clamp"``: s = clamp(25 − σ, −1, 1) at every grid vertex, σ evaluated
    here on the analytic ball at lattice points computed from the box; ``"normalize"`` divides
    25 − σ by one constant c, bounded by the ball's slope times the cube diagonal."""
    r, slope, res = 0.45, 100.0, 20
    nerf = BallNeRF(r, slope=slope)
    args = dict(grid_resolution=res, encoding=FourierEncoding(), hidden_dim=8, backend="torch",
                copy_texture=False)  # fmt: skip
    clamped = DMTet.from_nerf(nerf, **args)
    d = 25.0 - _analytic_density(_lattice(clamped), r, slope)  # [V], negative inside
    expected = d.clamp(-1.0, 1.0)
    # float32 positions and density: |Δd| <= slope |Δx| with |Δx| ~ 1e-7
    torch.testing.assert_close(clamped.sdf.detach().double(), expected, rtol=0, atol=1e-4)
    near = (d.abs() < 1.0) & (d.abs() > 1e-3)
    assert int(near.sum()) > 20  # vertices within 0.01 of the sphere keep their raw value
    assert float((expected.abs() == 1.0).double().mean()) > 0.9  # the rest sit at ±1

    normalized = DMTet.from_nerf(nerf, sdf_init="normalize", **args)
    torch.testing.assert_close(normalized.bbox, clamped.bbox)
    s_norm = normalized.sdf.detach().double()
    inner = (s_norm.abs() < 1.0) & (d.abs() > 1e-2)
    ratio = d[inner] / s_norm[inner]  # = c, one constant
    c = float(ratio.median())
    torch.testing.assert_close(ratio, torch.full_like(ratio, c), rtol=1e-4, atol=0)
    h = float(clamped.cell_size().max())
    # c is |25 − σ| at a vertex of a cube the surface crosses: within one cube diagonal of the
    # sphere, and at least the largest |d| at the ends of an edge across it (> half a cell away).
    assert 0.5 * slope * float(clamped.cell_size().min()) <= c <= slope * math.sqrt(3) * h
    # Clamping moves crossings, but never off their edge: vertices within one edge (≤ √3 h) of
    # the sphere, while normalize keeps the interpolated level set (test above).
    radial = clamped.extract_mesh().vertices.double().norm(dim=-1) - r
    assert float(radial.abs().max()) <= math.sqrt(3) * h
    with pytest.raises(ConfigError, match="sdf_init"):
        DMTet.from_nerf(nerf, sdf_init="scale", **args)
    with pytest.raises(ConfigError, match="sdf_init"):
        ConversionOptions(sdf_init="raw")
    assert ConversionOptions().sdf_init == "clamp"


def test_nerf_to_dmtet_auto_threshold_and_errors() -> None:
    # A faint field (max density 12 < 25): "auto" puts the level at the 1 % occupancy quantile
    # of the bounding sphere, i.e. a ball of radius 0.01^(1/3) for a radially decreasing density.
    faint = BallNeRF(0.5, peak=12.0)
    dmtet = DMTet.from_nerf(faint, threshold="auto", grid_resolution=24, encoding=FourierEncoding(),
                            hidden_dim=8, backend="torch")  # fmt: skip
    mesh = dmtet.extract_mesh()
    expected = 0.01 ** (1 / 3)
    probe_cell = 2.0 / 24  # the quantile is taken on the probe grid: about one cell of slack
    assert abs(float(mesh.vertices.norm(dim=-1).mean()) - expected) < probe_cell
    with pytest.raises(ConfigError, match="no density above threshold"):
        DMTet.from_nerf(faint, threshold=25.0, grid_resolution=8, encoding=FourierEncoding(),
                        hidden_dim=8)  # fmt: skip
    with pytest.raises(ConfigError, match="threshold must be"):
        DMTet.from_nerf(faint, threshold="high", grid_resolution=8)
    with pytest.raises(ConfigError, match="sets radius"):
        DMTet.from_nerf(faint, grid_resolution=8, radius=2.0)
    with pytest.raises(ValueError, match="texture fields differ"):
        DMTet.from_nerf(BallNeRF(0.4), grid_resolution=8, encoding=FourierEncoding(4),
                        hidden_dim=8)  # fmt: skip


def test_freeze_geometry_caches_the_surface_and_stops_geometry_gradients() -> None:
    model = sphere_dmtet(8, 0.5, dtype=torch.float32)
    cams = cameras([0.0], [0.0], size=16)
    model.freeze_geometry()
    out = model.render(cams)
    out.rgb.sum().backward()
    assert model.sdf.grad is None and model.deformation.grad is None
    assert any(p.grad is not None for p in model.texture.parameters())
    assert model.surface()[0] is model.surface()[0]  # extracted once
    model.freeze_geometry(False)
    model.render(cams).depth.sum().backward()
    assert model.sdf.grad is not None and float(model.sdf.grad.abs().sum()) > 0


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and nvdiffrast_available()), reason="needs CUDA and nvdiffrast"
)
def test_nvdiffrast_and_torch_render_the_same_dmtet() -> None:
    ref = sphere_dmtet(32, 0.5, dtype=torch.float32, backend="torch").cuda()
    fast = sphere_dmtet(32, 0.5, dtype=torch.float32, backend="nvdiffrast").cuda()
    fast.load_state_dict(ref.state_dict())
    cams = cameras([20.0, -5.0], [30.0, 200.0], size=64).to("cuda")
    a, b = ref.render(cams), fast.render(cams)
    same = a.extras["triangle_id"] == b.extras["triangle_id"]
    assert float(same.double().mean()) > 0.99
    both = same & (a.extras["triangle_id"] >= 0)
    torch.testing.assert_close(a.depth[both], b.depth[both], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.normal[both], b.normal[both], atol=1e-3, rtol=0)
    iou = silhouette_iou(a.opacity, b.opacity)
    assert float(iou.min()) > 0.99


def test_state_dict_round_trip_and_empty_surface() -> None:
    """A converted DMTet's checkpoint (SDF, deformation, tightened box, texture, background)
    rebuilds an identical DMTet from plain constructor arguments; an all-outside SDF renders the
    background only and refuses to export."""
    source = DMTet.from_nerf(BallNeRF(0.4), grid_resolution=10, encoding=FourierEncoding(),
                             hidden_dim=8, backend="torch").eval()  # fmt: skip
    with torch.no_grad():
        source.deformation.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    target = DMTet(grid_resolution=10, encoding=FourierEncoding(seed=1), hidden_dim=8,
                   backend="torch").eval()  # fmt: skip
    assert not torch.equal(target.bbox, source.bbox)
    target.load_state_dict(source.state_dict())
    cams = cameras([10.0], [30.0], size=16)
    a, b = source.render(cams), target.render(cams)
    for name in ("rgb", "opacity", "depth", "normal"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    empty = tiny_dmtet(6).eval()
    out = empty.render(cams)
    assert float(out.opacity.abs().sum()) == 0.0
    torch.testing.assert_close(out.rgb, out.extras["background"])
    with pytest.raises(ValueError, match="surface is empty"):
        empty.extract_mesh()
