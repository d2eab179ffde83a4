"""Cameras: conventions checked against independent geometry."""

from __future__ import annotations

import math

import pytest
import torch

from ra3d.cameras import (
    CameraSampler,
    look_at_c2w,
    make_cameras,
    orbit_cameras,
    uniform_sphere_cameras,
    view_direction,
    view_prompt,
)


def test_position_matches_spherical_formula_and_looks_at_origin() -> None:
    cams = make_cameras(
        torch.tensor([30.0]), torch.tensor([60.0]), torch.tensor([2.0]), torch.tensor([50.0]), 8, 8
    )
    el, az = math.radians(30), math.radians(60)
    expected = torch.tensor([2 * math.cos(el) * math.cos(az), 2 * math.cos(el) * math.sin(az),
                             2 * math.sin(el)])  # fmt: skip
    torch.testing.assert_close(cams.positions[0], expected)
    forward = -cams.c2w[0, :3, 2]  # camera looks down -Z
    torch.testing.assert_close(forward, -expected / expected.norm())
    rot = cams.c2w[0, :3, :3]
    torch.testing.assert_close(rot.T @ rot, torch.eye(3), atol=1e-6, rtol=0)
    assert cams.c2w[0, 2, 1] > 0  # camera up has a positive world-Z component


def test_centre_ray_hits_origin_and_projection_inverts_rays() -> None:
    cams = orbit_cameras(3, 6, 10, elevation_deg=20, distance=1.7, fovy_deg=55)
    origins, dirs = cams.rays()
    assert dirs.shape == (3, 6, 10, 3)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(3, 6, 10))
    # A point at depth 1.3 along the ray of pixel (v, u) must project back to that pixel centre.
    points = origins + 1.3 * dirs
    homo = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    clip = torch.einsum("bij,bhwj->bhwi", cams.mvp(), homo)
    ndc = clip[..., :2] / clip[..., 3:]
    u = (ndc[..., 0] + 1) * 0.5 * cams.width
    v = (1 - ndc[..., 1]) * 0.5 * cams.height
    grid_v, grid_u = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(10) + 0.5, indexing="ij")
    torch.testing.assert_close(u, grid_u.expand_as(u).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(v, grid_v.expand_as(v).float(), atol=1e-4, rtol=0)


def test_fov_spans_image_height() -> None:
    fovy = 60.0
    cams = make_cameras(
        torch.zeros(1), torch.zeros(1), torch.ones(1), torch.tensor([fovy]), 100, 100
    )
    _, dirs = cams.rays()
    top, bottom = dirs[0, 0, 50], dirs[0, -1, 50]
    angle = math.degrees(math.acos(float((top * bottom).sum())))
    # Pixel centres sit half a pixel inside the image edge.
    expected = 2 * math.degrees(math.atan(math.tan(math.radians(fovy / 2)) * 99 / 100))
    assert angle == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("azimuth", "elevation", "expected"),
    [(0, 0, "front"), (44, 10, "front"), (-46, 0, "side"), (90, 0, "side"), (136, 0, "back"),
     (-180, 0, "back"), (200, 0, "back"), (10, 61, "overhead")],
)  # fmt: skip
def test_view_direction_thresholds(azimuth: float, elevation: float, expected: str) -> None:
    assert view_direction(azimuth, elevation) == expected


def test_view_prompt() -> None:
    assert view_prompt("a teddy bear", "back") == "a teddy bear, back view"
    with pytest.raises(ValueError, match="unknown view direction"):
        view_prompt("a teddy bear", "diagonal")


def test_sampler_ranges_and_stratified_azimuth() -> None:
    sampler = CameraSampler()
    g = torch.Generator().manual_seed(3)
    cams = sampler.sample(8, 16, 16, g)
    assert ((cams.elevation >= -10) & (cams.elevation <= 45)).all()
    assert ((cams.distance >= 1.0) & (cams.distance <= 1.5)).all()
    fov = torch.rad2deg(cams.fovy)
    assert ((fov >= 40) & (fov <= 70)).all()
    slices = torch.floor((cams.azimuth + 180.0) / 45.0)
    assert slices.tolist() == list(range(8))  # one camera per 45° slice
    torch.testing.assert_close(cams.positions.norm(dim=-1), cams.distance)


def test_sampler_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError, match="fovy_range"):
        CameraSampler(fovy_range=(10.0, 190.0))
    with pytest.raises(ValueError, match="low <= high"):
        CameraSampler(elevation_range=(45.0, -10.0))


def test_look_at_straight_down_is_finite() -> None:
    c2w = look_at_c2w(torch.tensor([[0.0, 0.0, 2.0]]))
    assert torch.isfinite(c2w).all()
    torch.testing.assert_close(c2w[0, :3, :3].T @ c2w[0, :3, :3], torch.eye(3), atol=1e-6, rtol=0)


def test_uniform_sphere_cameras_cover_azimuths() -> None:
    cams = uniform_sphere_cameras(100, 8, 8)
    hist = torch.histc(cams.azimuth, bins=4, min=-180, max=180)
    assert hist.min() >= 20  # roughly uniform in azimuth
    assert cams.elevation.min() >= -30 and cams.elevation.max() <= 80


def test_cat_and_index_round_trip() -> None:
    cams = orbit_cameras(4, 8, 8)
    again = type(cams).cat([cams[i] for i in range(4)])
    torch.testing.assert_close(again.c2w, cams.c2w)
    assert len(cams[1:3]) == 2


def _polar_fraction(sampler: CameraSampler, n_batches: int = 3000) -> float:
    gen = torch.Generator().manual_seed(0)
    el = torch.cat([sampler.sample(4, 2, 2, gen).elevation for _ in range(n_batches)])
    return float((el.abs() > 60.0).float().mean())


def test_elevation_sampling_mixes_degree_uniform_and_sphere_uniform_batches() -> None:
    # threestudio draws half the batches uniform in degrees and half uniform on the sphere. Over
    # [-80°, 80°] the share of |elevation| > 60° is 20/80 = 0.25 for degree-uniform draws and
    # (sin 80° - sin 60°) / sin 80° = 0.1206 for sphere-uniform ones, so the mixture gives their
    # mean 0.1853. 12000 draws (3000 coins): standard error < 0.004, tolerance 0.02.
    wide = dict(elevation_range=(-80.0, 80.0))
    deg_share = 20.0 / 80.0
    s80, s60 = math.sin(math.radians(80)), math.sin(math.radians(60))
    sphere_share = (s80 - s60) / s80
    assert _polar_fraction(CameraSampler(**wide, elevation_sampling="degrees")) == pytest.approx(
        deg_share, abs=0.02
    )
    assert _polar_fraction(CameraSampler(**wide, elevation_sampling="sphere")) == pytest.approx(
        sphere_share, abs=0.02
    )
    mixed = _polar_fraction(CameraSampler(**wide))
    assert mixed == pytest.approx(0.5 * (deg_share + sphere_share), abs=0.02)


def test_sphere_elevations_stay_in_the_configured_range() -> None:
    sampler = CameraSampler(elevation_range=(-10.0, 45.0), elevation_sampling="sphere")
    el = sampler.sample(4096, 2, 2, torch.Generator().manual_seed(1)).elevation
    assert float(el.min()) >= -10.0 - 1e-4 and float(el.max()) <= 45.0 + 1e-4
    assert float(el.max()) > 44.0  # not threestudio's shrunken asin(45/90) = 30° ceiling
    with pytest.raises(ValueError, match="elevation_sampling"):
        CameraSampler(elevation_sampling="poles")
