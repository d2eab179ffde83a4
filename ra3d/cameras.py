"""Cameras ψ: poses, intrinsics, sampling, orbits, rays and view-dependent prompts e(c, ψ).

Conventions (shared by every renderer in ra3d, so a NeRF render and a mesh render at the same
camera line up pixel for pixel):

* World frame is **Z-up**. A camera at azimuth ``a`` and elevation ``e`` (degrees) and distance
  ``d`` sits at ``d * (cos e cos a, cos e sin a, sin e)`` and looks at the origin. Azimuth 0 looks
  at the object's front (the +X side), azimuth ±180 at its back.
* Camera frame is OpenGL's: the camera looks down its local ``-Z`` axis, ``+Y`` is up and ``+X``
  right. ``c2w`` maps camera coordinates to world coordinates.
* Pixel ``(row v, column u)`` has its centre at ``(u + 0.5, v + 0.5)``; row 0 is the top of the
  image. The focal length in pixels is ``0.5 * H / tan(fovy / 2)`` and square pixels are assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

VIEW_DIRECTIONS: tuple[str, ...] = ("front", "side", "back", "overhead")
#: Training elevation rules of :class:`CameraSampler`.
ELEVATION_SAMPLINGS: tuple[str, ...] = ("mixed", "degrees", "sphere")


@dataclass
class Cameras:
    """A batch of ``B`` pinhole cameras that share one image size.

    Attributes:
        c2w: ``[B, 4, 4]`` camera-to-world matrices (OpenGL camera frame, Z-up world).
        fovy: ``[B]`` vertical field of view in radians.
        height, width: image size in pixels.
        elevation, azimuth: ``[B]`` spherical angles in degrees (used for view prompts and
            camera conditioning; they agree with ``c2w`` when built by the helpers below).
        distance: ``[B]`` camera distance to the origin.
    """

    c2w: Tensor
    fovy: Tensor
    height: int
    width: int
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    light_positions: Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or self.c2w.shape[-2:] != (4, 4):
            raise ValueError(f"Cameras.c2w must have shape [B, 4, 4], got {tuple(self.c2w.shape)}")
        b = self.c2w.shape[0]
        for name in ("fovy", "elevation", "azimuth", "distance"):
            value = getattr(self, name)
            if value.shape != (b,):
                raise ValueError(f"Cameras.{name} must have shape [{b}], got {tuple(value.shape)}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")

    # ------------------------------------------------------------------ basic container API
    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            c2w=self.c2w.to(device),
            fovy=self.fovy.to(device),
            height=self.height,
            width=self.width,
            elevation=self.elevation.to(device),
            azimuth=self.azimuth.to(device),
            distance=self.distance.to(device),
            light_positions=None
            if self.light_positions is None
            else self.light_positions.to(device),
        )

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(
            c2w=self.c2w[index],
            fovy=self.fovy[index],
            height=self.height,
            width=self.width,
            elevation=self.elevation[index],
            azimuth=self.azimuth[index],
            distance=self.distance[index],
            light_positions=None if self.light_positions is None else self.light_positions[index],
        )

    def with_size(self, height: int, width: int) -> Cameras:
        """The same poses and field of view at another resolution (coarse-to-fine schedules)."""
        return Cameras(
            self.c2w, self.fovy, height, width, self.elevation, self.azimuth, self.distance,
            self.light_positions,
        )  # fmt: skip

    @staticmethod
    def cat(cameras: list[Cameras]) -> Cameras:
        first = cameras[0]
        if any((c.height, c.width) != (first.height, first.width) for c in cameras):
            raise ValueError("Cameras.cat needs cameras of one image size")
        lights = [c.light_positions for c in cameras]
        return Cameras(
            c2w=torch.cat([c.c2w for c in cameras]),
            fovy=torch.cat([c.fovy for c in cameras]),
            height=first.height,
            width=first.width,
            elevation=torch.cat([c.elevation for c in cameras]),
            azimuth=torch.cat([c.azimuth for c in cameras]),
            distance=torch.cat([c.distance for c in cameras]),
            light_positions=None if any(x is None for x in lights) else torch.cat(lights),
        )

    # ------------------------------------------------------------------ geometry
    @property
    def focal(self) -> Tensor:
        """``[B]`` focal length in pixels."""
        return 0.5 * self.height / torch.tan(0.5 * self.fovy)

    @property
    def positions(self) -> Tensor:
        """``[B, 3]`` camera centres in world space."""
        return self.c2w[:, :3, 3]

    def ray_directions_camera(self) -> Tensor:
        """``[B, H, W, 3]`` unnormalised ray directions in each camera's frame (z = -1)."""
        device, dtype = self.c2w.device, self.c2w.dtype
        v, u = torch.meshgrid(
            torch.arange(self.height, device=device, dtype=dtype) + 0.5,
            torch.arange(self.width, device=device, dtype=dtype) + 0.5,
            indexing="ij",
        )
        f = self.focal.to(dtype)[:, None, None]  # [B, 1, 1]
        x = (u[None] - 0.5 * self.width) / f
        y = -(v[None] - 0.5 * self.height) / f
        z = -torch.ones_like(x)
        return torch.stack([x, y, z], dim=-1)

    def rays(self) -> tuple[Tensor, Tensor]:
        """World-space rays: origins ``[B, H, W, 3]`` and unit directions ``[B, H, W, 3]``."""
        dirs_cam = self.ray_directions_camera()
        rot = self.c2w[:, :3, :3]  # [B, 3, 3]
        dirs = torch.einsum("bij,bhwj->bhwi", rot, dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.positions[:, None, None, :].expand_as(dirs)
        return origins, dirs

    def projection(self, near: float = 0.01, far: float = 100.0) -> Tensor:
        """``[B, 4, 4]`` OpenGL projection matrices matching :meth:`rays` (clip-space y up)."""
        b = len(self)
        f = self.focal
        proj = torch.zeros(b, 4, 4, device=self.device, dtype=self.c2w.dtype)
        proj[:, 0, 0] = 2.0 * f / self.width
        proj[:, 1, 1] = 2.0 * f / self.height
        proj[:, 2, 2] = -(far + near) / (far - near)
        proj[:, 2, 3] = -2.0 * far * near / (far - near)
        proj[:, 3, 2] = -1.0
        return proj

    def mvp(self, near: float = 0.01, far: float = 100.0) -> Tensor:
        """``[B, 4, 4]`` world-to-clip matrices ``P @ inverse(c2w)``."""
        return self.projection(near, far) @ torch.linalg.inv(self.c2w)

    # ------------------------------------------------------------------ prompts
    def view_directions(
        self,
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
    ) -> list[str]:
        """The view word of e(c, ψ) for each camera: front, side, back or overhead."""
        return [
            view_direction(float(a), float(e), front_threshold, back_threshold, overhead_threshold)
            for a, e in zip(self.azimuth.tolist(), self.elevation.tolist(), strict=True)
        ]


def view_direction(
    azimuth_deg: float,
    elevation_deg: float,
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> str:
    """Classify one viewpoint the way DreamFusion's view-dependent prompting does."""
    if elevation_deg > overhead_threshold:
        return "overhead"
    a = (azimuth_deg + 180.0) % 360.0 - 180.0  # wrap to [-180, 180)
    if abs(a) <= front_threshold:
        return "front"
    if abs(a) >= 180.0 - back_threshold:
        return "back"
    return "side"


def view_prompt(prompt: str, direction: str) -> str:
    """e(c, ψ): append the view word to a caption (paper Sec. 4.2, after Poole et al.)."""
    if direction not in VIEW_DIRECTIONS:
        raise ValueError(f"unknown view direction {direction!r}; expected one of {VIEW_DIRECTIONS}")
    return f"{prompt}, {direction} view"


def look_at_c2w(
    positions: Tensor, target: Tensor | None = None, up: Tensor | None = None
) -> Tensor:
    """``[B, 4, 4]`` camera-to-world matrices for cameras at ``positions [B, 3]`` looking at target."""
    b = positions.shape[0]
    if target is None:
        target = torch.zeros_like(positions)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype, device=positions.device)
    up = up.expand(b, 3)
    forward = target - positions
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, up, dim=-1)
    # Straight-down or straight-up cameras: pick any right vector.
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 1.0, 0.0], dtype=positions.dtype, device=positions.device)
        right[degenerate] = torch.cross(
            forward[degenerate], alt.expand_as(forward[degenerate]), dim=-1
        )
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(b, 4, 4, dtype=positions.dtype, device=positions.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = positions
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_to_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """``[B, 3]`` Z-up positions for spherical coordinates in degrees."""
    el = torch.deg2rad(elevation_deg)
    az = torch.deg2rad(azimuth_deg)
    return torch.stack(
        [
            distance * torch.cos(el) * torch.cos(az),
            distance * torch.cos(el) * torch.sin(az),
            distance * torch.sin(el),
        ],
        dim=-1,
    )


def make_cameras(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    distance: Tensor,
    fovy_deg: Tensor,
    height: int,
    width: int,
) -> Cameras:
    """Cameras on a sphere around the origin, all looking at it."""
    positions = spherical_to_position(elevation_deg, azimuth_deg, distance)
    return Cameras(
        c2w=look_at_c2w(positions),
        fovy=torch.deg2rad(fovy_deg),
        height=height,
        width=width,
        elevation=elevation_deg,
        azimuth=azimuth_deg,
        distance=distance,
    )


@dataclass
class CameraSampler:
    """Random training cameras with ProlificDreamer's (threestudio) defaults.

    Elevation (``elevation_sampling="mixed"``, threestudio's behaviour): each batch flips a coin;
    with probability ``1 - sphere_probability`` elevations are uniform in degrees over
    ``elevation_range`` (which over-samples the poles relative to area), otherwise uniform on the
    sphere's band, i.e. ``sin(elevation)`` uniform on ``[sin lo, sin hi]``. ``"degrees"`` and
    ``"sphere"`` force one rule. Both branches keep the configured range, as threestudio's
    ``RandomCameraIterableDataset`` does since its "fix elevation bug" commit (477345b, Nov 2023:
    the sphere branch converts the range to radians and draws ``asin`` of a uniform value between
    their sines). Before that fix it mapped the degree range linearly onto ``sin``
    (``asin(lo / 90) .. asin(hi / 90)``), which shrank [-10°, 45°] to [-6.4°, 30°]; checkouts
    of threestudio older than that commit still do.

    Distance and fovy are uniform, and azimuth is *stratified* across the batch: the circle is cut
    into ``B`` equal slices and each camera takes a uniform sample from its own slice, so every
    batch sees the object from all around.
    """

    elevation_range: tuple[float, float] = (-10.0, 45.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (1.0, 1.5)
    fovy_range: tuple[float, float] = (40.0, 70.0)
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    elevation_sampling: str = "mixed"
    sphere_probability: float = 0.5

    def __post_init__(self) -> None:
        if self.elevation_sampling not in ELEVATION_SAMPLINGS:
            raise ValueError(
                f"elevation_sampling must be one of {ELEVATION_SAMPLINGS}, "
                f"got {self.elevation_sampling!r}"
            )
        if not 0.0 <= self.sphere_probability <= 1.0:
            raise ValueError(
                f"sphere_probability must lie in [0, 1], got {self.sphere_probability}"
            )
        for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.distance_range[0] <= 0:
            raise ValueError(f"distance_range must be positive, got {self.distance_range}")
        if not 0 < self.fovy_range[0] <= self.fovy_range[1] < 180:
            raise ValueError(f"fovy_range must lie in (0, 180) degrees, got {self.fovy_range}")
        if not -90.0 <= self.elevation_range[0] <= self.elevation_range[1] <= 90.0:
            raise ValueError(
                f"elevation_range must lie in [-90, 90] degrees, got {self.elevation_range}"
            )

    def sample(
        self, batch_size: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> Cameras:
        def uniform(lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * torch.rand(batch_size, generator=generator)

        elevation = self._sample_elevation(batch_size, generator)
        az_lo, az_hi = self.azimuth_range
        slice_width = (az_hi - az_lo) / batch_size
        azimuth = (
            az_lo
            + slice_width * torch.arange(batch_size, dtype=torch.float32)
            + slice_width * torch.rand(batch_size, generator=generator)
        )
        distance = uniform(*self.distance_range)
        fovy = uniform(*self.fovy_range)
        cams = make_cameras(elevation, azimuth, distance, fovy, height, width)
        # A point light near the camera, jittered, for shaded (normal-based) renders.
        light_dist = uniform(*self.light_distance_range)
        jitter = 0.2 * torch.randn(batch_size, 3, generator=generator)
        light_dir = cams.positions / cams.positions.norm(dim=-1, keepdim=True) + jitter
        cams.light_positions = (
            light_dir / light_dir.norm(dim=-1, keepdim=True) * light_dist[:, None]
        )
        return cams

    def _sample_elevation(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        """``[B]`` elevations in degrees (see the class docstring); one coin per batch."""
        lo, hi = self.elevation_range
        mode = self.elevation_sampling
        if mode == "mixed":
            coin = float(torch.rand(1, generator=generator))
            mode = "sphere" if coin < self.sphere_probability else "degrees"
        u = torch.rand(batch_size, generator=generator)
        if mode == "degrees":
            return lo + (hi - lo) * u
        s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        return torch.rad2deg(torch.asin((s_lo + (s_hi - s_lo) * u).clamp(-1.0, 1.0)))


def orbit_cameras(
    n_views: int,
    height: int,
    width: int,
    elevation_deg: float = 15.0,
    distance: float = 1.5,
    fovy_deg: float = 45.0,
    azimuth_start_deg: float = 0.0,
) -> Cameras:
    """``n_views`` cameras evenly spaced around the object at fixed elevation (validation/test)."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    azimuth = azimuth_start_deg + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    full = torch.full((n_views,), 1.0)
    return make_cameras(
        full * elevation_deg, azimuth, full * distance, full * fovy_deg, height, width
    )


def uniform_sphere_cameras(
    n_views: int,
    height: int,
    width: int,
    distance: float = 1.5,
    fovy_deg: float = 45.0,
    min_elevation_deg: float = -30.0,
    max_elevation_deg: float = 80.0,
) -> Cameras:
    """Near-uniform viewpoints on a spherical band (Fibonacci lattice), e.g. the ~100 adaptation
    renders of Eq. 12."""
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    i = torch.arange(n_views, dtype=torch.float64) + 0.5
    z_lo = math.sin(math.radians(min_elevation_deg))
    z_hi = math.sin(math.radians(max_elevation_deg))
    z = z_lo + (z_hi - z_lo) * i / n_views
    elevation = torch.rad2deg(torch.asin(z)).float()
    golden = math.pi * (3.0 - math.sqrt(5.0))
    azimuth = torch.rad2deg(torch.remainder(i * golden, 2 * math.pi)).float() - 180.0
    full = torch.ones(n_views)
    return make_cameras(elevation, azimuth, full * distance, full * fovy_deg, height, width)
