"""Triangle rasterisation for fixed meshes: a pure-PyTorch z-buffer and an optional nvdiffrast one.

A retrieved asset θ_ret is compared with the generated 3D representation in image space
(paper Eq. 10–11) and rendered for the LoRA adaptation of the prior (Eq. 12), so its renders must
line up pixel for pixel with the NeRF's. Both backends therefore follow :mod:`ra3d.cameras`
exactly: vertices arrive in OpenGL clip space (``Cameras.mvp()``, clip-space y up), pixel
``(row v, column u)`` is sampled at its centre ``(u + 0.5, v + 0.5)`` and row 0 is the top of the
image. A pixel is covered by a triangle when its centre lies inside the triangle (edges included)
and the interpolated NDC depth ``z / w`` lies in ``[-1, 1]``; the nearest covering triangle wins.

Backends:

* ``"torch"`` (always available, any device): every triangle is expanded into the pixel centres of
  its screen-space bounding box, edge functions decide coverage and a ``scatter_reduce(amin)`` on
  a packed ``(quantised depth, triangle id)`` int64 key resolves visibility in one pass. Work is
  chunked so peak memory stays bounded however large the triangles are. Edge functions are
  evaluated in float64 from per-triangle coefficients such that two triangles sharing an edge get
  exactly negated values, so closed meshes rasterise without cracks. Triangles with a vertex at or
  behind the camera plane (``w <= 0``) are dropped rather than clipped; assets live inside the unit
  sphere and cameras stay outside it, so this never triggers in ra3d's camera ranges.
* ``"nvdiffrast"`` (CUDA only, optional): ``nvdiffrast.torch.rasterize`` with a
  ``RasterizeCudaContext``. Its image has row 0 at clip-space ``y = -1`` (the bottom), so it is
  flipped to ra3d's top-row-first convention.
* ``"auto"``: nvdiffrast when it imports and the tensors are on a CUDA device, else torch.

Both return the same :class:`Fragments`; attribute interpolation is shared (plain gathers), so the
two backends differ only in which triangle wins a pixel, and they agree except for ties.
Perspective-correct barycentrics are differentiable with respect to the clip-space vertices inside
triangles (no silhouette gradients): fixed assets need none, but calling with autograd enabled
works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", "torch", "nvdiffrast")
NVDIFFRAST_INSTALL_HINT = (
    "nvdiffrast is not on PyPI; install it with "
    "`pip install git+https://github.com/NVlabs/nvdiffrast` (needs a CUDA toolkit), "
    "or use backend='torch'"
)

# Depth is quantised to 31 bits and packed above a 32-bit triangle id into one int64 key, so a
# single scatter_reduce(amin) finds the nearest triangle (ties go to the lower triangle id).
_DEPTH_BITS = 31
_DEPTH_LEVELS = float(2**_DEPTH_BITS - 1)
_ID_BITS = 32
_EMPTY_KEY = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """What a rasteriser reports for ``B`` images of ``H x W`` pixels.

    Attributes:
        triangle_id: ``[B, H, W]`` int64 index of the visible triangle, ``-1`` where empty.
        bary: ``[B, H, W, 3]`` perspective-correct barycentric weights of the pixel centre with
            respect to the triangle's three corners (zero where empty). Interpolating any
            attribute that is affine on the 3D triangle with them is exact.
        depth: ``[B, H, W]`` clip-space ``w`` of the surface point, i.e. its depth along the
            camera's optical axis (``-z`` in camera coordinates), zero where empty.
    """

    triangle_id: Tensor
    bary: Tensor
    depth: Tensor

    @property
    def mask(self) -> Tensor:
        """``[B, H, W]`` bool: pixels covered by some triangle."""
        return self.triangle_id >= 0


def import_nvdiffrast() -> Any:
    """``nvdiffrast.torch``, or an ImportError that says how to install it."""
    try:
        import nvdiffrast.torch as dr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"backend='nvdiffrast' needs nvdiffrast: {NVDIFFRAST_INSTALL_HINT}"
        ) from exc
    return dr


def nvdiffrast_available() -> bool:
    """True when ``nvdiffrast.torch`` imports (it still needs CUDA tensors to run)."""
    try:
        import_nvdiffrast()
    except ImportError:
        return False
    return True


class Rasterizer:
    """Rasterises clip-space triangles and interpolates attributes at pixel centres.

    Args:
        backend: ``"auto"`` (nvdiffrast on CUDA when it imports, else torch), ``"torch"`` or
            ``"nvdiffrast"``.
        max_fragments: torch backend only: the most (triangle, pixel) candidate pairs processed
            at once; bounds peak memory (roughly 200 bytes per pair).
    """

    def __init__(self, backend: str = "auto", max_fragments: int = 2**19) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown rasterizer backend {backend!r}; expected one of {BACKENDS}")
        if max_fragments < 1:
            raise ValueError(f"max_fragments must be >= 1, got {max_fragments}")
        if backend == "nvdiffrast":
            import_nvdiffrast()
        self.backend = backend
        self.max_fragments = int(max_fragments)
        self._contexts: dict[str, Any] = {}
        self._logged: set[tuple[str, str]] = set()

    def backend_for(self, device: torch.device) -> str:
        """The backend that will rasterise tensors on ``device`` ("torch" or "nvdiffrast")."""
        device = torch.device(device)
        if self.backend == "torch":
            chosen = "torch"
        elif self.backend == "nvdiffrast":
            if device.type != "cuda":
                raise ValueError(
                    f"backend='nvdiffrast' needs CUDA tensors but got device {device}; move the "
                    "asset and cameras to a GPU or use backend='torch'"
                )
            chosen = "nvdiffrast"
        else:
            chosen = "nvdiffrast" if device.type == "cuda" and nvdiffrast_available() else "torch"
        key = (chosen, str(device))
        if key not in self._logged:
            self._logged.add(key)
            logger.info("rasterizer backend=%r picked %s on %s", self.backend, chosen, device)
        return chosen

    # ------------------------------------------------------------------ rasterisation
    def rasterize(self, clip: Tensor, faces: Tensor, height: int, width: int) -> Fragments:
        """Rasterise ``faces [F, 3]`` (int) over clip-space vertices ``clip [B, V, 4]``."""
        if clip.ndim != 3 or clip.shape[-1] != 4:
            raise ValueError(f"clip vertices must be [B, V, 4], got {tuple(clip.shape)}")
        if faces.ndim != 2 or faces.shape[-1] != 3:
            raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
        if faces.dtype.is_floating_point:
            raise ValueError(f"faces must be an integer tensor, got {faces.dtype}")
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        faces = faces.to(device=clip.device, dtype=torch.int64)
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= clip.shape[1]):
            raise ValueError(
                f"faces index vertices outside [0, {clip.shape[1]}); check the mesh's face array"
            )
        if self.backend_for(clip.device) == "nvdiffrast":
            return self._rasterize_nvdiffrast(clip, faces, height, width)
        return rasterize_torch(clip, faces, height, width, self.max_fragments)

    def _rasterize_nvdiffrast(
        self, clip: Tensor, faces: Tensor, height: int, width: int
    ) -> Fragments:
        dr = import_nvdiffrast()
        key = str(clip.device)
        if key not in self._contexts:
            self._contexts[key] = dr.RasterizeCudaContext(device=clip.device)
        rast, _ = dr.rasterize(
            self._contexts[key],
            clip.float().contiguous(),
            faces.to(torch.int32).contiguous(),
            resolution=(height, width),
        )
        rast = rast.flip(1)  # nvdiffrast's row 0 is clip y = -1 (bottom); ra3d's is the top.
        triangle_id = rast[..., 3].round().long() - 1  # [B, H, W]
        mask = triangle_id >= 0
        u, v = rast[..., 0], rast[..., 1]
        bary = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask[..., None]
        frags = Fragments(triangle_id=triangle_id, bary=bary, depth=torch.zeros_like(u))
        w = clip[..., 3:4]  # [B, V, 1]
        frags.depth = self.interpolate(w, frags, faces)[..., 0]
        return frags

    # ------------------------------------------------------------------ interpolation
    @staticmethod
    def interpolate(attr: Tensor, fragments: Fragments, faces: Tensor) -> Tensor:
        """Per-vertex ``attr [V, C]`` or ``[B, V, C]`` → ``[B, H, W, C]`` (zero where empty)."""
        tri = fragments.triangle_id
        b, h, w = tri.shape
        if attr.ndim == 2:
            attr = attr.unsqueeze(0).expand(b, -1, -1)
        if attr.ndim != 3 or attr.shape[0] != b:
            raise ValueError(f"attr must be [V, C] or [{b}, V, C], got {tuple(attr.shape)}")
        c = attr.shape[-1]
        out = attr.new_zeros(b, h, w, c)
        bi, yi, xi = torch.nonzero(tri >= 0, as_tuple=True)
        if bi.numel() == 0:
            return out
        corners = faces.to(attr.device, torch.int64)[tri[bi, yi, xi]]  # [N, 3]
        values = attr[bi[:, None], corners]  # [N, 3, C]
        weights = fragments.bary[bi, yi, xi].to(attr.dtype)  # [N, 3]
        out[bi, yi, xi] = (weights[..., None] * values).sum(dim=1)
        return out

    @staticmethod
    def interpolate_corners(corner_attr: Tensor, fragments: Fragments) -> Tensor:
        """Per-face-corner ``corner_attr [F, 3, C]`` (e.g. UVs, split normals) → ``[B, H, W, C]``."""
        if corner_attr.ndim != 3 or corner_attr.shape[1] != 3:
            raise ValueError(f"corner_attr must be [F, 3, C], got {tuple(corner_attr.shape)}")
        tri = fragments.triangle_id
        b, h, w = tri.shape
        out = corner_attr.new_zeros(b, h, w, corner_attr.shape[-1])
        bi, yi, xi = torch.nonzero(tri >= 0, as_tuple=True)
        if bi.numel() == 0:
            return out
        values = corner_attr[tri[bi, yi, xi]]  # [N, 3, C]
        weights = fragments.bary[bi, yi, xi].to(corner_attr.dtype)  # [N, 3]
        out[bi, yi, xi] = (weights[..., None] * values).sum(dim=1)
        return out


# ---------------------------------------------------------------------- torch backend
def _screen_coordinates(clip: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel-space ``x`` (columns), ``y`` (rows, downwards) and NDC ``z`` of clip vertices.

    A pixel centre ``(u + 0.5, v + 0.5)`` maps to NDC ``(2 (u + 0.5) / W - 1, 1 - 2 (v + 0.5) / H)``,
    the inverse of :meth:`ra3d.cameras.Cameras.projection`.
    """
    w = clip[..., 3]
    safe_w = torch.where(w > 0, w, torch.ones_like(w))
    x = (clip[..., 0] / safe_w + 1.0) * (0.5 * width)
    y = (1.0 - clip[..., 1] / safe_w) * (0.5 * height)
    z = clip[..., 2] / safe_w
    return x, y, z


def _edge_coefficients(xs: Tensor, ys: Tensor) -> Tensor:
    """``[T, 3, 3]`` coefficients ``(a, b, c)`` of the three edge functions of each triangle.

    Edge function ``i`` is opposite corner ``i``: ``E_i(p) = a p_x + b p_y + c`` is twice the signed
    area of the triangle (p, corner i+1, corner i+2). Swapping an edge's endpoints negates
    ``a``, ``b`` and ``c`` exactly in floating point, so a pixel centre on an edge shared by two
    triangles is inside at least one of them.
    """
    x1, x2 = xs.roll(-1, dims=1), xs.roll(-2, dims=1)  # corners i+1 and i+2
    y1, y2 = ys.roll(-1, dims=1), ys.roll(-2, dims=1)
    a = y1 - y2
    b = x2 - x1
    c = x1 * y2 - x2 * y1
    return torch.stack([a, b, c], dim=-1)


@torch.no_grad()
def _nearest_triangles(
    clip: Tensor, faces: Tensor, height: int, width: int, max_fragments: int
) -> Tensor:
    """``[B, H, W]`` index of the nearest triangle covering each pixel centre (-1 if none)."""
    b_count = clip.shape[0]
    device = clip.device
    hw = height * width
    x, y, z = _screen_coordinates(clip.detach().double(), height, width)  # [B, V] each
    w = clip.detach()[..., 3]
    keys = torch.full((b_count * hw,), _EMPTY_KEY, dtype=torch.int64, device=device)
    face_ids = torch.arange(faces.shape[0], device=device)
    for b in range(b_count):
        xs, ys, zs = x[b][faces], y[b][faces], z[b][faces]  # [F, 3]
        edges = _edge_coefficients(xs, ys)  # [F, 3, 3]
        area = edges[..., 2].sum(dim=1)  # twice the signed area = sum of E_i at the origin
        valid = (w[b][faces] > 0).all(dim=1) & (area.abs() > 1e-12)
        valid &= ~((zs < -1).all(dim=1) | (zs > 1).all(dim=1))
        # Pixel centres inside the bounding box: u + 0.5 in [xmin, xmax].
        col_lo = torch.ceil(xs.amin(dim=1) - 0.5).clamp(min=0)
        col_hi = torch.floor(xs.amax(dim=1) - 0.5).clamp(max=width - 1)
        row_lo = torch.ceil(ys.amin(dim=1) - 0.5).clamp(min=0)
        row_hi = torch.floor(ys.amax(dim=1) - 0.5).clamp(max=height - 1)
        n_cols = (col_hi - col_lo + 1).clamp(min=0)
        n_rows = (row_hi - row_lo + 1).clamp(min=0)
        counts = (n_cols * n_rows * valid).long()
        keep = counts > 0
        if not keep.any():
            continue
        sign = torch.sign(area[keep])
        # Orient every triangle so "inside" means all three edge functions are >= 0, and fold the
        # depth plane z(p) = sum_i E_i(p) z_i / area into coefficients as well.
        edges = edges[keep] * sign[:, None, None]  # [T, 3, 3]
        depth_plane = (edges * zs[keep][..., None]).sum(dim=1) / area[keep, None].abs()  # [T, 3]
        coeffs = torch.cat([edges.reshape(-1, 9), depth_plane], dim=1)  # [T, 12]
        ids = face_ids[keep]
        counts = counts[keep]
        n_cols, col_lo, row_lo = n_cols[keep].long(), col_lo[keep].long(), row_lo[keep].long()
        ends = torch.cumsum(counts, dim=0)
        start = 0
        while start < len(ids):
            done = int(ends[start - 1]) if start > 0 else 0
            stop = int(torch.searchsorted(ends, done + max_fragments, right=True))
            stop = max(stop, start + 1)
            _splat_chunk(
                keys, b * hw, width, coeffs[start:stop], ids[start:stop], counts[start:stop],
                n_cols[start:stop], col_lo[start:stop], row_lo[start:stop],
            )  # fmt: skip
            start = stop
    triangle_id = torch.where(keys == _EMPTY_KEY, -1, keys & ((1 << _ID_BITS) - 1))
    return triangle_id.view(b_count, height, width)


def _splat_chunk(
    keys: Tensor,
    offset: int,
    width: int,
    coeffs: Tensor,
    ids: Tensor,
    counts: Tensor,
    n_cols: Tensor,
    col_lo: Tensor,
    row_lo: Tensor,
) -> None:
    """Test the bounding-box pixels of a chunk of triangles and min-reduce their depth keys."""
    device = coeffs.device
    local = torch.repeat_interleave(torch.arange(len(ids), device=device), counts)  # [P]
    first = torch.cumsum(counts, dim=0) - counts
    index = torch.arange(local.shape[0], device=device) - first[local]
    cols = col_lo[local] + index % n_cols[local]
    rows = row_lo[local] + torch.div(index, n_cols[local], rounding_mode="floor")
    px = cols.double() + 0.5
    py = rows.double() + 0.5
    c = coeffs[local]  # [P, 12]
    e0 = c[:, 0] * px + c[:, 1] * py + c[:, 2]
    e1 = c[:, 3] * px + c[:, 4] * py + c[:, 5]
    e2 = c[:, 6] * px + c[:, 7] * py + c[:, 8]
    z = c[:, 9] * px + c[:, 10] * py + c[:, 11]
    inside = (e0 >= 0) & (e1 >= 0) & (e2 >= 0) & (z >= -1) & (z <= 1)
    if not inside.any():
        return
    z_key = (
        torch.floor((z[inside] + 1.0) * (0.5 * _DEPTH_LEVELS)).long().clamp(0, 2**_DEPTH_BITS - 1)
    )
    packed = (z_key << _ID_BITS) | ids[local[inside]]
    pixel = offset + rows[inside] * width + cols[inside]
    keys.scatter_reduce_(0, pixel, packed, reduce="amin")


def rasterize_torch(
    clip: Tensor, faces: Tensor, height: int, width: int, max_fragments: int = 2**19
) -> Fragments:
    """Pure-PyTorch rasterisation of ``faces [F, 3]`` over ``clip [B, V, 4]`` (see module doc)."""
    faces = faces.to(device=clip.device, dtype=torch.int64)
    triangle_id = _nearest_triangles(clip, faces, height, width, max_fragments)  # [B, H, W]
    b_count = clip.shape[0]
    bary = clip.new_zeros(b_count, height, width, 3)
    depth = clip.new_zeros(b_count, height, width)
    bi, yi, xi = torch.nonzero(triangle_id >= 0, as_tuple=True)
    if bi.numel() == 0:
        return Fragments(triangle_id=triangle_id, bary=bary, depth=depth)
    # Recompute barycentrics for the winners only, from the (possibly grad-carrying) clip input.
    corners = clip[bi[:, None], faces[triangle_id[bi, yi, xi]]].double()  # [N, 3, 4]
    x, y, _ = _screen_coordinates(corners, height, width)  # [N, 3] each
    edges = _edge_coefficients(x, y)  # [N, 3, 3]
    px = xi.double()[:, None] + 0.5
    py = yi.double()[:, None] + 0.5
    e = edges[..., 0] * px + edges[..., 1] * py + edges[..., 2]  # [N, 3]
    screen_bary = e / e.sum(dim=1, keepdim=True)
    # Perspective correction: weights proportional to screen barycentrics / w.
    inv_w = screen_bary / corners[..., 3]
    denom = inv_w.sum(dim=1, keepdim=True)
    bary[bi, yi, xi] = (inv_w / denom).to(clip.dtype)
    depth[bi, yi, xi] = (1.0 / denom[:, 0]).to(clip.dtype)
    return Fragments(triangle_id=triangle_id, bary=bary, depth=depth)
