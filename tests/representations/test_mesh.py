"""MeshAsset and the rasterizer, checked against closed forms and independent ray casting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from ra3d.cameras import Cameras, make_cameras
from ra3d.representations.components.rasterize import (
    Rasterizer,
    nvdiffrast_available,
    rasterize_torch,
)
from ra3d.representations.mesh import (
    NEUTRAL_GREY,
    Y_UP_TO_Z_UP,
    MeshAsset,
    MeshData,
    MeshLoadError,
    load_mesh,
    resolve_up_axis,
    sample_texture,
)

RED, GREEN, BLUE, YELLOW = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)


# ---------------------------------------------------------------------- helpers
def cameras(
    elevation: list[float],
    azimuth: list[float],
    distance: float,
    fovy: float,
    height: int,
    width: int,
) -> Cameras:
    n = len(elevation)
    return make_cameras(
        torch.tensor(elevation), torch.tensor(azimuth), torch.full((n,), distance),
        torch.full((n,), fovy), height, width,
    )  # fmt: skip


def sphere(
    radius: float, center: tuple[float, float, float] = (0.0, 0.0, 0.0), subdivisions: int = 4
) -> MeshData:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    vertices = torch.tensor(mesh.vertices, dtype=torch.float32) + torch.tensor(center)
    return MeshData(vertices=vertices, faces=torch.tensor(mesh.faces))


def ray_sphere(cams: Cameras, center: torch.Tensor, radius: float) -> tuple[torch.Tensor, ...]:
    """Analytic hit mask, ray distance t, closest-approach distance, unit normal (float64)."""
    origins, dirs = cams.rays()
    origins, dirs = origins.double(), dirs.double()
    oc = origins - center.double()
    b = (dirs * oc).sum(-1)
    closest = (oc.square().sum(-1) - b.square()).clamp(min=0).sqrt()
    disc = b.square() - (oc.square().sum(-1) - radius**2)
    t = -b - disc.clamp(min=0).sqrt()
    hit = (disc > 0) & (t > 0)
    normal = (origins + t[..., None] * dirs - center.double()) / radius
    return hit, t, closest, normal


def pixel_of(cams: Cameras, point: tuple[float, float, float], index: int = 0) -> tuple[int, int]:
    """(row, column) of the pixel containing a world point, by the pinhole formula."""
    c2w = cams.c2w[index].double()
    rel = torch.tensor(point, dtype=torch.float64) - c2w[:3, 3]
    x, y, z = (c2w[:3, :3].T @ rel).tolist()  # camera frame: looks down -z
    f = float(cams.focal[index])
    col = cams.width / 2 + f * x / -z
    row = cams.height / 2 - f * y / -z
    return int(math.floor(row)), int(math.floor(col))


def write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(path)


def quadrant_texture(size: int = 8) -> np.ndarray:
    """Top-left red, top-right green, bottom-left blue, bottom-right yellow (image rows top-down)."""
    half = size // 2
    image = np.zeros((size, size, 3))
    image[:half, :half], image[:half, half:] = RED, GREEN
    image[half:, :half], image[half:, half:] = BLUE, YELLOW
    return image


def colour_at(out_rgb: torch.Tensor, pixel: tuple[int, int]) -> torch.Tensor:
    return out_rgb[0, pixel[0], pixel[1]]


# ---------------------------------------------------------------------- analytic sphere
def test_sphere_silhouette_depth_normal_match_closed_form() -> None:
    r, d, size = 0.4, 1.5, 65  # odd size: the centre pixel's centre lies on the optical axis
    cams = cameras([0.0], [0.0], d, 40.0, size, size)
    out = MeshAsset(sphere(r), backend="torch").render(cams)
    # Pinhole image of a sphere seen head-on: a disc of radius f * tan(asin(r / d)).
    f = float(cams.focal[0])
    rho = f * r / math.sqrt(d * d - r * r)
    area = float(out.opacity.sum())
    assert abs(area - math.pi * rho**2) / (math.pi * rho**2) < 0.015
    c = size // 2
    assert float(out.depth[0, c, c, 0]) == pytest.approx(d - r, abs=1e-3)
    _, dirs = cams.rays()
    assert float((out.normal[0, c, c] * -dirs[0, c, c]).sum()) > 0.999
    rows, cols = torch.nonzero(out.opacity[0, ..., 0] > 0, as_tuple=True)
    assert float((cols.double() + 0.5).mean()) == pytest.approx(size / 2, abs=0.05)
    assert float((rows.double() + 0.5).mean()) == pytest.approx(size / 2, abs=0.05)
    assert torch.all(out.rgb[0, 0, 0] == 1.0)  # white background
    torch.testing.assert_close(out.rgb[0, c, c], torch.full((3,), NEUTRAL_GREY))


def test_render_lines_up_with_nerf_rays_pixel_for_pixel() -> None:
    """Off-centre sphere, non-square image, two oblique cameras: the rasterized mask and depth
    agree with ray casting through ``cameras.rays()`` (what the NeRF renders) except on a thin
    band around the silhouette where the inscribed icosphere and the sphere differ."""
    r, center = 0.3, torch.tensor([0.12, -0.07, 0.10])
    cams = cameras([25.0, -10.0], [35.0, -120.0], 1.3, 50.0, 40, 56)
    out = MeshAsset(sphere(r, tuple(center.tolist())), backend="torch").render(cams)
    hit, t, closest, normal = ray_sphere(cams, center, r)
    mask = out.opacity[..., 0] > 0.5
    band = (closest - r).abs() < 0.01 * r
    assert int(hit.sum()) > 400 and float(band.double().mean()) < 0.05
    assert torch.equal(mask[~band], hit[~band])
    interior = hit & mask & (closest < 0.9 * r)
    depth_error = (out.depth[..., 0].double() - t)[interior].abs()
    assert float(depth_error.max()) < 2e-3
    cosine = (out.normal.double() * normal).sum(-1)[interior]
    assert float(cosine.min()) > 0.99


def test_lambertian_shading_matches_closed_form() -> None:
    r, cams = 0.4, cameras([10.0], [30.0], 1.5, 40.0, 33, 33)
    asset = MeshAsset(sphere(r), shading="lambertian", ambient=0.3, backend="torch")
    out = asset.render(cams)
    hit, t, closest, normal = ray_sphere(cams, torch.zeros(3), r)
    origins, dirs = cams.rays()
    points = origins.double() + t[..., None] * dirs.double()
    to_light = torch.nn.functional.normalize(origins.double() - points, dim=-1)  # light at camera
    expected = NEUTRAL_GREY * (0.3 + 0.7 * (normal * to_light).sum(-1).clamp(min=0))
    inside = hit & (out.opacity[..., 0] > 0) & (closest < 0.9 * r)
    error = (out.rgb[..., 0].double() - expected)[inside].abs()
    assert float(error.max()) < 0.01


def test_supersampling_equals_pooled_high_resolution_render() -> None:
    cams = cameras([20.0], [10.0], 1.4, 45.0, 16, 20)
    data = sphere(0.35, (0.05, 0.0, 0.02))
    fine = MeshAsset(data, backend="torch").render(cams.with_size(32, 40))
    coarse = MeshAsset(data, supersample=2, backend="torch").render(cams)

    def pool(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    torch.testing.assert_close(coarse.rgb, pool(fine.rgb))
    torch.testing.assert_close(coarse.opacity, pool(fine.opacity))
    torch.testing.assert_close(coarse.depth, pool(fine.depth))
    edge = (coarse.opacity > 0) & (coarse.opacity < 1)
    assert int(edge.sum()) > 10  # antialiased silhouette


# ---------------------------------------------------------------------- rasterizer vs references
def test_torch_rasterizer_matches_brute_force_ray_casting() -> None:
    """Random intersecting triangles: the visible triangle, its perspective-correct barycentrics
    and the axis depth equal a per-pixel Möller–Trumbore ray cast (chunking forced on)."""
    gen = torch.Generator().manual_seed(0)
    n_tri = 40
    centers = (torch.rand(n_tri, 1, 3, generator=gen) - 0.5) * 0.7
    vertices = (centers + 0.6 * (torch.rand(n_tri, 3, 3, generator=gen) - 0.5)).reshape(-1, 3)
    faces = torch.arange(3 * n_tri).reshape(-1, 3)
    cams = cameras([15.0], [40.0], 1.5, 45.0, 24, 28)
    clip = torch.cat([vertices, torch.ones(len(vertices), 1)], 1) @ cams.mvp()[0].T
    frags = rasterize_torch(clip[None].double(), faces, 24, 28, max_fragments=97)

    origins, dirs = (x[0].reshape(-1, 3).double().numpy() for x in cams.rays())
    tris = vertices.double().numpy()[faces.numpy()]  # [T, 3, 3]
    forward = -cams.c2w[0, :3, 2].double().numpy()
    checked = 0
    for p in range(origins.shape[0]):
        e1, e2 = tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
        h = np.cross(dirs[p], e2)
        det = (e1 * h).sum(-1)
        s = origins[p] - tris[:, 0]
        u = (s * h).sum(-1) / det
        q = np.cross(s, e1)
        v = (q * dirs[p]).sum(-1) / det
        t = (e2 * q).sum(-1) / det
        hits = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        row, col = divmod(p, 28)
        got = int(frags.triangle_id[0, row, col])
        if not hits.any():
            assert got == -1
            continue
        order = np.argsort(np.where(hits, t, np.inf))
        best = order[0]
        ambiguous = min(u[best], v[best], 1 - u[best] - v[best]) < 1e-6
        if hits.sum() > 1:
            ambiguous |= t[order[1]] - t[best] < 1e-6
        # Pixels whose centre lies (numerically) on an edge may go either way.
        near_edge = np.abs(np.stack([u, v, 1 - u - v], -1)).min(-1) < 1e-6
        if ambiguous or (got == -1 and near_edge.any()):
            continue
        assert got == best
        expected = np.array([1 - u[best] - v[best], u[best], v[best]])
        np.testing.assert_allclose(frags.bary[0, row, col].numpy(), expected, atol=1e-5)
        assert float(frags.depth[0, row, col]) == pytest.approx(
            t[best] * (dirs[p] @ forward), abs=1e-5
        )
        checked += 1
    covered = int(frags.triangle_id.ge(0).sum())
    assert covered > 250 and checked > 0.9 * covered


def test_tessellated_plane_has_no_cracks_and_exact_depth() -> None:
    """A jittered grid over a tilted plane covering the view: every pixel is covered (shared
    edges never leak) and the interpolated depth equals the ray–plane distance."""
    n = 14
    gen = torch.Generator().manual_seed(1)
    s, tt = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    jitter = 0.03 * (torch.rand(n, n, 2, generator=gen) - 0.5)
    jitter[[0, -1], :] = 0
    jitter[:, [0, -1]] = 0
    s, tt = s + jitter[..., 0], tt + jitter[..., 1]
    normal = torch.nn.functional.normalize(torch.tensor([1.0, 0.3, 0.2]), dim=0)
    a = torch.nn.functional.normalize(
        torch.cross(normal, torch.tensor([0.0, 0.0, 1.0]), dim=0), dim=0
    )
    b = torch.cross(normal, a, dim=0)
    offset = 0.1 * normal
    vertices = (offset + s.reshape(-1, 1) * a + tt.reshape(-1, 1) * b).float()
    idx = torch.arange(n * n).reshape(n, n)
    quads = torch.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    faces = torch.cat([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    cams = cameras([12.0], [16.0], 1.2, 40.0, 30, 34)
    out = MeshAsset(MeshData(vertices, faces), backend="torch").render(cams)
    assert bool((out.opacity == 1).all())
    origins, dirs = cams.rays()
    t = ((offset - origins) * normal).sum(-1) / (dirs * normal).sum(-1)
    torch.testing.assert_close(out.depth[..., 0], t, atol=2e-5, rtol=1e-5)


def test_barycentric_gradients_match_finite_differences() -> None:
    cams = cameras([0.0], [0.0], 1.5, 40.0, 12, 12)
    vertices = torch.tensor(
        [[0.1, -0.4, -0.3], [-0.2, 0.45, -0.2], [0.0, 0.0, 0.5]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 1, 2]])
    clip = (
        torch.cat([vertices, torch.ones(3, 1, dtype=torch.float64)], 1) @ cams.mvp()[0].double().T
    )
    attr = torch.tensor([[1.0], [2.0], [5.0]], dtype=torch.float64)
    rast = Rasterizer("torch")

    def loss(c: torch.Tensor) -> torch.Tensor:
        frags = rast.rasterize(c[None], faces, 12, 12)
        return (rast.interpolate(attr, frags, faces)[..., 0] * (frags.triangle_id >= 0)).sum()

    clip = clip.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(clip), clip)
    eps = 1e-6
    for i, j in [(0, 0), (1, 1), (2, 3), (2, 0)]:
        bump = torch.zeros_like(clip)
        bump[i, j] = eps
        fd = (loss(clip.detach() + bump) - loss(clip.detach() - bump)) / (2 * eps)
        assert float(grad[i, j]) == pytest.approx(float(fd), rel=1e-4, abs=1e-6)


def test_backend_selection_and_errors() -> None:
    with pytest.raises(ValueError, match="unknown rasterizer backend"):
        Rasterizer("opengl")
    assert Rasterizer("auto").backend_for(torch.device("cpu")) == "torch"
    if not nvdiffrast_available():
        with pytest.raises(
            ImportError, match="pip install git\\+https://github.com/NVlabs/nvdiffrast"
        ):
            MeshAsset(sphere(0.3), backend="nvdiffrast")
    with pytest.raises(ValueError, match="shading"):
        MeshAsset(sphere(0.3), shading="phong")


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and nvdiffrast_available()), reason="needs CUDA and nvdiffrast"
)
def test_nvdiffrast_agrees_with_torch_backend() -> None:
    cams = cameras([20.0, -5.0], [30.0, 200.0], 1.4, 50.0, 64, 80).to("cuda")
    # Triangles several pixels wide: with sub-pixel triangles, nvdiffrast's fixed-point vertex
    # snapping and our float edge functions legitimately pick different triangles near edges.
    data = sphere(0.35, (0.05, -0.1, 0.08), subdivisions=2)
    colours = (data.vertices - data.vertices.min(0).values) / (
        data.vertices.max(0).values - data.vertices.min(0).values
    )
    data = MeshData(data.vertices, data.faces, vertex_colors=colours)
    ref = MeshAsset(data, backend="torch").to("cuda")
    fast = MeshAsset(data, backend="nvdiffrast").to("cuda")
    assert fast.rasterizer.backend_for(torch.device("cuda")) == "nvdiffrast"
    a, b = ref.render(cams), fast.render(cams)
    same = a.extras["triangle_id"] == b.extras["triangle_id"]
    assert float(same.double().mean()) > 0.995
    mask_a, mask_b = a.opacity[..., 0] > 0, b.opacity[..., 0] > 0
    assert float((mask_a == mask_b).double().mean()) > 0.995
    both = (a.opacity[..., 0] > 0) & (b.opacity[..., 0] > 0) & same
    torch.testing.assert_close(a.rgb[both], b.rgb[both], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.depth[both], b.depth[both], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------- loading
def write_textured_obj(folder: Path) -> Path:
    """A textured quad (front +Z, Y-up) plus a Kd-coloured quad to its right (two materials)."""
    write_png(folder / "quad.png", quadrant_texture())
    (folder / "quad.mtl").write_text(
        "newmtl tex\nKd 0.5 0.5 0.5\nmap_Kd quad.png\n\nnewmtl paint\nKd 0.2 0.6 0.9\n"
    )
    (folder / "quad.obj").write_text(
        "mtllib quad.mtl\n"
        "v -1 -1 0\nv 1 -1 0\nv 1 1 0\nv -1 1 0\n"
        "v 1.5 -0.5 0\nv 2.5 -0.5 0\nv 2.5 0.5 0\nv 1.5 0.5 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
        "usemtl tex\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n"
        "usemtl paint\nf 5 6 7\nf 5 7 8\n"
    )
    return folder / "quad.obj"


def to_world(
    data: MeshData, point: tuple[float, float, float], y_up: bool = True
) -> tuple[float, ...]:
    p = np.asarray(point, dtype=np.float64)
    if y_up:
        p = Y_UP_TO_Z_UP @ p
    return tuple(((p - data.center.double().numpy()) * data.scale).tolist())


def test_obj_mtl_png_multi_material_renders_known_colours(tmp_path: Path) -> None:
    path = write_textured_obj(tmp_path)
    data = load_mesh(path)
    assert data.texture_tiles is not None and data.texture_tiles.shape[0] == 2  # texture + white
    cams = cameras([0.0], [0.0], 1.5, 40.0, 64, 64)
    out = MeshAsset(data, backend="torch").render(cams)
    expected = {(-0.5, 0.5): RED, (0.5, 0.5): GREEN, (-0.5, -0.5): BLUE, (0.5, -0.5): YELLOW}
    for (x, y), colour in expected.items():
        pixel = pixel_of(cams, to_world(data, (x, y, 0.0)))
        torch.testing.assert_close(
            colour_at(out.rgb, pixel), torch.tensor(colour), atol=1e-4, rtol=0
        )
    pixel = pixel_of(cams, to_world(data, (2.0, 0.0, 0.0)))
    # Kd passes through trimesh's 8-bit colours: 1/255 tolerance.
    torch.testing.assert_close(
        colour_at(out.rgb, pixel), torch.tensor([0.2, 0.6, 0.9]), atol=3e-3, rtol=0
    )


def test_glb_with_two_textures_packs_an_atlas_and_applies_base_colour_factor(
    tmp_path: Path,
) -> None:
    from trimesh.visual.material import PBRMaterial
    from trimesh.visual.texture import TextureVisuals

    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    quad_faces = np.array([[0, 1, 2], [0, 2, 3]])
    left_right = np.zeros((4, 4, 3))
    left_right[:, :2], left_right[:, 2:] = (0.9, 0.1, 0.1), (0.1, 0.8, 0.2)
    top_bottom = np.zeros((4, 4, 3))
    top_bottom[:2], top_bottom[2:] = (0.2, 0.4, 1.0), (1.0, 0.6, 0.0)

    def quad(x0: float, x1: float, image: np.ndarray, factor: list[int]) -> trimesh.Trimesh:
        vertices = np.array([[x0, -1, 0], [x1, -1, 0], [x1, 1, 0], [x0, 1, 0]], dtype=np.float64)
        material = PBRMaterial(
            baseColorTexture=Image.fromarray((image * 255).round().astype(np.uint8)),
            baseColorFactor=factor,
        )
        return trimesh.Trimesh(
            vertices, quad_faces, visual=TextureVisuals(uv=uv, material=material), process=False
        )

    scene = trimesh.Scene()
    scene.add_geometry(quad(-1.0, 1.0, left_right, [255, 255, 255, 255]), geom_name="a")
    scene.add_geometry(quad(1.5, 3.5, top_bottom, [255, 128, 255, 255]), geom_name="b")
    path = tmp_path / "two.glb"
    scene.export(path)
    data = load_mesh(path)
    assert data.texture_tiles is not None and data.texture_tiles.shape[0] == 2
    cams = cameras([0.0], [0.0], 1.5, 40.0, 96, 96)
    out = MeshAsset(data, backend="torch").render(cams)
    half = torch.tensor([1.0, 128 / 255, 1.0])
    checks = {
        (-0.5, 0.0): torch.tensor([0.9, 0.1, 0.1]),
        (0.5, 0.0): torch.tensor([0.1, 0.8, 0.2]),
        (2.5, 0.5): torch.tensor([0.2, 0.4, 1.0]) * half,
        (2.5, -0.5): torch.tensor([1.0, 0.6, 0.0]) * half,
    }
    for (x, y), colour in checks.items():
        pixel = pixel_of(cams, to_world(data, (x, y, 0.0)))
        torch.testing.assert_close(colour_at(out.rgb, pixel), colour, atol=3e-3, rtol=0)


def write_coloured_ply(path: Path) -> np.ndarray:
    """A quad in the plane x = 0.2 facing +X (Z-up): red on the -Y side, blue on the +Y side."""
    vertices = np.array([[0.2, -1, -1], [0.2, 1, -1], [0.2, 1, 1], [0.2, -1, 1]], dtype=np.float64)
    colours = np.array(
        [[255, 0, 0, 255], [0, 0, 255, 255], [0, 0, 255, 255], [255, 0, 0, 255]], np.uint8
    )
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2], [0, 2, 3]], vertex_colors=colours, process=False)
    mesh.export(path)
    return vertices


def test_ply_vertex_colours_interpolate_and_stay_z_up(tmp_path: Path) -> None:
    path = tmp_path / "quad.ply"
    vertices = write_coloured_ply(path)
    data = load_mesh(path)
    assert resolve_up_axis(path) == "z"
    expected_vertices = (vertices - np.array([0.2, 0.0, 0.0])) * (0.5 / math.sqrt(2))
    np.testing.assert_allclose(data.vertices.numpy(), expected_vertices, atol=1e-6)
    cams = cameras([0.0], [0.0], 1.5, 40.0, 33, 33)
    asset = MeshAsset(data, backend="torch")
    out = asset.render(cams)
    torch.testing.assert_close(out.rgb[0, 16, 16], torch.tensor([0.5, 0.0, 0.5]), atol=2e-3, rtol=0)
    left = pixel_of(cams, (0.0, -0.33, 0.0))
    right = pixel_of(cams, (0.0, 0.33, 0.0))
    assert (
        float(out.rgb[0, left[0], left[1], 0]) > 0.8
        and float(out.rgb[0, right[0], right[1], 2]) > 0.8
    )
    mesh = asset.extract_mesh()
    torch.testing.assert_close(mesh.vertex_colors, torch.tensor([RED, BLUE, BLUE, RED]))
    torch.testing.assert_close(mesh.vertices, data.vertices)


def test_up_axis_rule_and_normalisation(tmp_path: Path) -> None:
    path = write_textured_obj(tmp_path)
    raw = np.array(
        [
            [-1, -1, 0],
            [1, -1, 0],
            [1, 1, 0],
            [-1, 1, 0],
            [1.5, -0.5, 0],
            [2.5, -0.5, 0],
            [2.5, 0.5, 0],
            [1.5, 0.5, 0],
        ]
    )
    y_up = load_mesh(path, normalize=False)
    z_up = load_mesh(path, up_axis="z", normalize=False)
    assert resolve_up_axis(path) == "y" and resolve_up_axis(tmp_path / "x.GLB") == "y"

    # (x, y, z) -> (z, x, y): file up (+Y) becomes +Z, file front (+Z) becomes +X.
    def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
        return {tuple(v) for v in x.tolist()}

    assert rows(y_up.vertices) == rows(torch.tensor(raw[:, [2, 0, 1]]))
    assert rows(z_up.vertices) == rows(torch.tensor(raw))
    assert Y_UP_TO_Z_UP @ np.array([0, 1, 0]) == pytest.approx([0, 0, 1])
    assert Y_UP_TO_Z_UP @ np.array([0, 0, 1]) == pytest.approx([1, 0, 0])
    assert np.linalg.det(Y_UP_TO_Z_UP) == pytest.approx(1.0)
    small = load_mesh(path, radius=0.3)
    norms = small.vertices.norm(dim=-1)
    assert float(norms.max()) == pytest.approx(0.3, abs=1e-6)
    bbox_center = 0.5 * (small.vertices.min(0).values + small.vertices.max(0).values)
    torch.testing.assert_close(bbox_center, torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close((y_up.vertices - small.center) * small.scale, small.vertices)
    with pytest.raises(ValueError, match="up_axis"):
        load_mesh(path, up_axis="x")


def test_broken_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_mesh(tmp_path / "missing.obj")
    garbage = tmp_path / "broken.glb"
    garbage.write_bytes(b"this is not a glb file at all")
    with pytest.raises(MeshLoadError, match="broken.glb"):
        load_mesh(garbage)
    empty = tmp_path / "nothing.obj"
    empty.write_text("# no geometry\nfoo bar\n")
    with pytest.raises(MeshLoadError, match="nothing.obj.*no triangles"):
        load_mesh(empty)
    points = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((10, 3))).export(points)
    with pytest.raises(MeshLoadError, match="points.ply.*no triangles"):
        MeshAsset(points)
    odd = tmp_path / "model.xyz123"
    odd.write_text("1 2 3\n")
    with pytest.raises(MeshLoadError, match="unsupported mesh format"):
        load_mesh(odd)
    with pytest.raises(ValueError, match="faces index vertices outside"):
        MeshData(torch.zeros(3, 3), torch.tensor([[0, 1, 3]]))


def test_set_front_azimuth_rotates_about_up_axis(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=(0.6, 0.3, 0.4))
    box.apply_translation((0.1, 0.05, 0.0))
    box.visual.face_colors = np.concatenate(
        [
            ((box.face_normals + 1) * 127.5).round().astype(np.uint8),
            np.full((len(box.faces), 1), 255, np.uint8),
        ],
        axis=1,
    )
    path = tmp_path / "box.ply"
    box.export(path)
    asset = MeshAsset(path, backend="torch")
    side = cameras([20.0], [90.0], 1.5, 40.0, 32, 32)
    front = cameras([20.0], [0.0], 1.5, 40.0, 32, 32)
    seen_from_side = asset.render(side).rgb
    unrotated_front = asset.render(front).rgb
    asset.set_front_azimuth(90.0)
    rotated_front = asset.render(front).rgb
    assert float((rotated_front - seen_from_side).abs().gt(1e-3).any(-1).double().mean()) < 0.01
    assert float((rotated_front - seen_from_side).abs().mean()) < 2e-3
    assert float((unrotated_front - seen_from_side).abs().mean()) > 0.05
    mesh = asset.extract_mesh()
    torch.testing.assert_close(
        mesh.vertices[:, :2], torch.stack([asset.vertices[:, 1], -asset.vertices[:, 0]], -1)
    )


def test_texture_sampling_is_bilinear_with_wrap() -> None:
    texture = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # rows top-down
    padded = torch.zeros(3, 9, 3)
    padded[1:3, 5:9] = texture  # the same texture as a tile inside a larger atlas
    tiles = torch.tensor([[0, 0, 2, 4], [1, 5, 2, 4]])
    uv = torch.tensor([[0.125, 0.75], [0.25, 0.75], [1.125, -0.25], [0.0, 0.75]])
    for tile in (0, 1):
        atlas = texture if tile == 0 else padded
        got = sample_texture(atlas, tiles, torch.full((4,), tile), uv)
        torch.testing.assert_close(got[0], texture[0, 0])  # a texel centre, top row
        torch.testing.assert_close(got[1], 0.5 * (texture[0, 0] + texture[0, 1]))  # midway
        torch.testing.assert_close(got[2], texture[0, 0])  # wraps in u and v
        torch.testing.assert_close(
            got[3], 0.5 * (texture[0, 0] + texture[0, 3])
        )  # wraps across u=0
