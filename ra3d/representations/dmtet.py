"""DMTet: the fine-stage representation — an SDF on a deformable tetrahedral grid, rasterised.

ProlificDreamer (and Magic3D) refine the coarse NeRF into a mesh (threestudio's
``tetrahedra-sdf-grid`` geometry with the ``nvdiff-rasterizer``): a signed value ``s_v`` and an
offset ``Δ_v`` per grid vertex, marching tetrahedra to a triangle mesh every step, rasterisation
for rgb / opacity / depth / normals. The paper's losses then apply unchanged: score distillation on
normal maps (geometry phase) or RGB (texture phase, geometry fixed) and the asset term of Eq. 11 on
silhouettes, normals and colours.

* **Grid.** :func:`ra3d.representations.components.tetgrid.tet_grid` with ``grid_resolution`` cubes per side,
  mapped into ``bbox`` (``[2, 3]``, a checkpointed buffer; :meth:`from_nerf` tightens it around the
  coarse object). Vertices on the grid's faces are kept outside so the surface is closed.
* **Deformation.** ``p_v = x_v + tanh(Δ_v) · deformation_scale · cell`` with ``cell`` the grid's
  cube size per axis (threestudio: ``tanh · range / resolution``, about half its vertex spacing,
  hence the default 0.5). No tetrahedron can invert below 0.25 (a Kuhn tetrahedron's smallest
  altitude is ``cell / √2``); above it folds are possible but the extracted mesh stays closed and
  manifold combinatorially (the triangle table does not depend on the geometry).
* **Surface.** :func:`ra3d.representations.components.marching_tets.marching_tets` on the tetrahedra of the
  cubes the surface crosses; vertices are differentiable in ``s`` and ``Δ``.
* **Colour.** The shared :class:`~ra3d.representations.components.material.TextureField` evaluated at the
  interpolated surface point of every pixel (albedo, no lighting), composited over the shared
  background (random solid colours in training, like the NeRF).

What gets gradients (w.r.t. ``s`` and ``Δ`` through the surface vertices): ``depth`` (distance from
the camera along the unit ray to the interpolated point), ``normal`` (interpolated area-weighted
vertex normals, world space), the colour (texture field at the interpolated point, and the field's
own weights) and, through :func:`ra3d.representations.components.antialias.silhouette_antialias` (on by
default, same code for the torch and nvdiffrast backends), ``opacity`` and ``rgb_foreground`` at
silhouette pixels. Without antialiasing, coverage is a hard 0/1 with no positional gradient.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.representations.base import RenderOutput, Representation, TriangleMesh
from ra3d.representations.components.antialias import silhouette_antialias
from ra3d.representations.components.background import (
    BACKGROUNDS,
    augment_background,
    make_background,
    validate_color,
)
from ra3d.representations.components.marching_tets import marching_tets
from ra3d.representations.components.material import TextureField
from ra3d.representations.components.mesh_ops import (
    keep_large_components,
    laplacian_smoothness,
    mesh_stats,
    normal_consistency,
    vertex_normals,
)
from ra3d.representations.components.rasterize import Rasterizer
from ra3d.representations.components.tetgrid import tet_grid
from ra3d.representations.convert import ConversionOptions, dmtet_from_nerf

logger = logging.getLogger(__name__)

#: Value given to vertices that must stay outside (grid boundary, removed floaters).
OUTSIDE = 1.0


class DMTet(Representation):
    """Deformable marching-tetrahedra mesh with a texture field (see the module docstring).

    Args:
        grid_resolution: cubes per side of the tetrahedral grid (2..256; threestudio: 128).
        radius: the texture field covers ``[-radius, radius]^3``; also the default ``bbox``.
        bbox: ``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` of the grid (default the radius cube).
        isosurface_deformable: learn the per-vertex offsets ``Δ`` (threestudio: true).
        deformation_scale: bound of an offset, in grid cells per axis.
        encoding, hidden_dim, n_hidden_layers, encoding_backend: the texture field
            (:class:`TextureField`); use the coarse NeRF's values to copy its field.
        background, background_color, random_background_prob: as the NeRF's.
        backend: rasteriser backend (``"auto"``: nvdiffrast on CUDA when installed, else torch).
        antialias: differentiable silhouette coverage (see the module docstring).
        min_component_fraction: :meth:`extract_mesh` drops connected components with fewer faces
            than this share (threestudio's outlier threshold 0.01).
        near, far: clip planes of the projection.
    """

    def __init__(
        self,
        grid_resolution: int = 128,
        radius: float = 1.0,
        bbox: Sequence[Sequence[float]] | Tensor | None = None,
        isosurface_deformable: bool = True,
        deformation_scale: float = 0.5,
        encoding: Mapping[str, Any] | nn.Module | None = None,
        hidden_dim: int = 64,
        n_hidden_layers: int = 1,
        encoding_backend: str = "auto",
        background: str = "neural_env",
        background_color: Sequence[float] = (1.0, 1.0, 1.0),
        random_background_prob: float = 0.5,
        backend: str = "auto",
        antialias: bool = True,
        min_component_fraction: float = 0.01,
        near: float = 0.01,
        far: float = 100.0,
    ) -> None:
        super().__init__()
        if not radius > 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if not 0.0 < deformation_scale <= 1.0:
            raise ValueError(
                f"deformation_scale must lie in (0, 1] grid cells, got {deformation_scale}; "
                "threestudio's bound corresponds to about 0.5"
            )
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")
        if not 0.0 <= random_background_prob <= 1.0:
            raise ValueError(
                f"random_background_prob must lie in [0, 1], got {random_background_prob}"
            )
        if not 0.0 <= min_component_fraction < 1.0:
            raise ValueError(
                f"min_component_fraction must lie in [0, 1), got {min_component_fraction}"
            )
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        self.grid = tet_grid(grid_resolution)
        self.grid_resolution = int(grid_resolution)
        self.radius = float(radius)
        self.isosurface_deformable = bool(isosurface_deformable)
        self.deformation_scale = float(deformation_scale)
        self.random_background_prob = float(random_background_prob)
        self.antialias = bool(antialias)
        self.min_component_fraction = float(min_component_fraction)
        self.near, self.far = float(near), float(far)
        self.geometry_frozen = False
        self._frozen_surface: tuple[Tensor, Tensor] | None = None

        box = torch.tensor([[-radius] * 3, [radius] * 3]) if bbox is None else bbox
        box = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
        if box.shape != (6,) or not bool((box[3:] > box[:3]).all()):
            raise ValueError(
                f"bbox must be [[min x, y, z], [max x, y, z]] with max > min, got {bbox}"
            )
        self.register_buffer("bbox", box.reshape(2, 3).clone())
        n_v = self.grid.n_vertices
        self.sdf = nn.Parameter(torch.full((n_v,), OUTSIDE))
        self.deformation = nn.Parameter(torch.zeros(n_v, 3)) if self.isosurface_deformable else None
        self.register_buffer("boundary", self.grid.boundary_mask(), persistent=False)
        self.register_buffer("unit_vertices", self.grid.vertices, persistent=False)  # [V, 3]
        self.texture = TextureField(self.radius, encoding, hidden_dim, n_hidden_layers,
                                    encoding_backend)  # fmt: skip
        self.background = make_background(background, background_color)
        self.background_color = validate_color(background_color, "background_color").tolist()
        self.rasterizer = Rasterizer(backend)

    # ------------------------------------------------------------------ geometry
    @property
    def regularizer_names(self) -> tuple[str, ...]:
        """Names :meth:`regularizers` returns (threestudio's ``lambda_normal_consistency`` and
        ``lambda_laplacian_smoothness``, both 10000 in ``prolificdreamer-geometry.yaml``)."""
        return ("normal_consistency", "laplacian_smoothness")

    def cell_size(self) -> Tensor:
        """``[3]`` size of one grid cube per axis (world units)."""
        return (self.bbox[1] - self.bbox[0]) / self.grid_resolution

    def grid_vertices(self, index: Tensor | None = None) -> Tensor:
        """``[V, 3]`` deformed grid vertex positions (world units), or ``[N, 3]`` of the vertices
        ``index [N]``."""
        lo, hi = self.bbox[0].to(self.sdf.dtype), self.bbox[1].to(self.sdf.dtype)
        unit = self.unit_vertices if index is None else self.unit_vertices[index]
        base = lo + (unit.to(lo.dtype) + 1.0) * (0.5 * (hi - lo))
        if self.deformation is None:
            return base
        offset = self.deformation if index is None else self.deformation[index]
        return base + torch.tanh(offset) * (self.deformation_scale * self.cell_size())

    def grid_sdf(self) -> Tensor:
        """``[V]`` the signed values used for marching: the parameter, with vertices on the
        grid's faces held outside so every extracted surface is closed."""
        return torch.where(self.boundary & (self.sdf < 0), OUTSIDE, self.sdf)

    def surface(self) -> tuple[Tensor, Tensor]:
        """The current mesh ``vertices [M, 3]`` (differentiable in ``sdf`` and ``deformation``)
        and ``faces [F, 3]``; the cached, detached one when the geometry is frozen."""
        if self.geometry_frozen and self._frozen_surface is not None:
            return self._frozen_surface
        sdf = self.grid_sdf()
        tets = self.grid.cube_tets(self.grid.crossing_cubes((sdf < 0).detach()))
        # Only the corners of crossed cubes matter: deform and march those (a mask and a running
        # count re-index them without sorting), so the cost follows the surface, not the grid.
        mask = torch.zeros(sdf.shape[0], dtype=torch.bool, device=sdf.device)
        mask[tets.reshape(-1)] = True
        used = mask.nonzero().squeeze(1)  # [U]
        local_tets = (torch.cumsum(mask, 0) - 1)[tets]
        positions = self.grid_vertices(used)
        vertices, faces = marching_tets(positions, local_tets, sdf[used])
        if self.geometry_frozen:
            self._frozen_surface = (vertices.detach(), faces)
        return vertices, faces

    def freeze_geometry(self, frozen: bool = True) -> None:
        """Fix (or release) the SDF and deformation: the texture phase of ProlificDreamer
        (threestudio's ``fix_geometry``). The surface is then extracted once and reused."""
        self.geometry_frozen = bool(frozen)
        self._frozen_surface = None
        self.sdf.requires_grad_(not frozen)
        if self.deformation is not None:
            self.deformation.requires_grad_(not frozen)

    def geometry_parameters(self) -> list[nn.Parameter]:
        """The SDF and deformation (for the geometry phase's optimiser group)."""
        return [p for p in (self.sdf, self.deformation) if p is not None]

    def texture_parameters(self) -> list[nn.Parameter]:
        """The texture field's and the background's parameters (texture phase)."""
        return [*self.texture.parameters(), *self.background.parameters()]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._frozen_surface = None  # new SDF / deformation: extract again
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> DMTet:
        self._frozen_surface = None  # device/dtype moves invalidate the cached surface
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------------ rendering
    def render(self, cameras: Cameras) -> RenderOutput:
        """Render ``len(cameras)`` views (see the module docstring for every output)."""
        dtype, device = self.sdf.dtype, self.sdf.device
        cams = cameras.to(device)
        b, h, w = len(cams), cams.height, cams.width
        vertices, faces = self.surface()
        _, dirs = cams.rays()
        bg = self.background(dirs.to(dtype)).to(dtype)  # [B, H, W, 3]
        if self.training and self.random_background_prob > 0:
            bg = augment_background(bg, self.random_background_prob)
        extras: dict[str, Tensor] = {"background": bg, "mesh_vertices": vertices,
                                     "mesh_faces": faces}  # fmt: skip
        if faces.shape[0] == 0:
            zeros = bg.new_zeros(b, h, w, 1)
            extras["rgb_foreground"] = bg.new_zeros(b, h, w, 3)
            extras["triangle_id"] = torch.full((b, h, w), -1, dtype=torch.int64, device=device)
            return RenderOutput(rgb=bg, opacity=zeros, depth=zeros.clone(),
                                normal=bg.new_zeros(b, h, w, 3), extras=extras)  # fmt: skip
        mvp = cams.mvp(self.near, self.far).to(dtype)  # [B, 4, 4]
        homogeneous = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
        clip = torch.einsum("bij,vj->bvi", mvp, homogeneous)  # [B, V, 4]
        frags = self.rasterizer.rasterize(clip, faces, h, w)
        mask = frags.mask  # [B, H, W]
        hit = mask[..., None].to(dtype)

        points = self.rasterizer.interpolate(vertices, frags, faces)  # [B, H, W, 3]
        eye = cams.positions.to(dtype)[:, None, None, :]
        depth = (points - eye).norm(dim=-1, keepdim=True) * hit
        normal = self.rasterizer.interpolate(vertex_normals(vertices, faces), frags, faces)
        normal = F.normalize(normal, dim=-1, eps=1e-12) * hit
        colour = points.new_zeros(b, h, w, 3)
        if bool(mask.any()):
            colour = colour.index_put((*mask.nonzero(as_tuple=True),), self.query_albedo(
                points[mask]).to(dtype))  # fmt: skip
        opacity, rgb_fg = hit, colour * hit
        if self.antialias:
            opacity, rgb_fg = silhouette_antialias([hit, rgb_fg], clip, faces, frags.triangle_id)
            opacity = opacity.clamp(0.0, 1.0)
        rgb = rgb_fg + (1.0 - opacity) * bg
        extras.update(rgb_foreground=rgb_fg, triangle_id=frags.triangle_id)
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, normal=normal, extras=extras)

    def query_albedo(self, points: Tensor) -> Tensor:
        """Albedo ``[N, 3]`` in (0, 1) at world ``points [N, 3]`` (chunks of 2^18 points)."""
        step = 2**18
        parts = [self.texture(points[i : i + step]) for i in range(0, points.shape[0], step)]
        return torch.cat(parts) if parts else points.new_zeros(0, 3)

    # ------------------------------------------------------------------ training hooks
    def regularizers(self, output: RenderOutput) -> dict[str, Tensor]:
        """threestudio's mesh regularizers on the surface of this render (unweighted; see
        :mod:`ra3d.representations.components.mesh_ops` for the formulas)."""
        if "mesh_vertices" in output.extras:
            vertices, faces = output.extras["mesh_vertices"], output.extras["mesh_faces"]
        else:
            vertices, faces = self.surface()
        return {
            "normal_consistency": normal_consistency(vertices, faces),
            "laplacian_smoothness": laplacian_smoothness(vertices, faces),
        }

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def extract_mesh(self, resolution: int = 128, threshold: float | None = None) -> TriangleMesh:
        """The current surface with vertex colours from the texture field: closed and
        outward-oriented by construction, components smaller than ``min_component_fraction`` of
        the faces removed; faces and components are logged. ``resolution``/``threshold`` are
        fixed by the grid and ignored."""
        del resolution, threshold
        vertices, faces = self.surface()
        if faces.shape[0] == 0:
            raise ValueError(
                "the DMTet surface is empty (no grid vertex has a negative SDF); initialise it "
                "with DMTet.from_nerf or check the training losses"
            )
        vertices, faces = keep_large_components(vertices, faces, self.min_component_fraction)
        stats = mesh_stats(vertices, faces)
        logger.info(
            "DMTet mesh: %d vertices, %d faces, %d component(s), %s, %s",
            stats.n_vertices,
            stats.n_faces,
            stats.n_components,
            "watertight" if stats.watertight else f"{stats.n_boundary_edges} boundary edges",
            "outward" if stats.signed_volume > 0 else "INWARD (negative volume)",
        )
        return TriangleMesh(
            vertices=vertices.float(),
            faces=faces,
            vertex_colors=self.query_albedo(vertices).float(),
        )

    @classmethod
    def from_nerf(cls, nerf: Representation, **kwargs: Any) -> DMTet:
        """The fine-stage DMTet initialised from a coarse NeRF; see
        :func:`ra3d.representations.convert.dmtet_from_nerf` for the arguments."""
        return dmtet_from_nerf(cls, nerf, **kwargs)

    @classmethod
    def create_from(
        cls, source: Representation, init_args: dict[str, Any], options: Any = None
    ) -> Representation:
        """A DMTet from an earlier DMTet (its state) or from a NeRF's density (the coarse → fine
        hand-over, with the conversion ``options``, a
        :class:`~ra3d.representations.convert.ConversionOptions`)."""
        if isinstance(source, DMTet) or not source.has_density:
            return super().create_from(source, init_args, options)
        # The conversion places the grid itself (the NeRF's radius, a box tightened around it).
        kwargs = {k: v for k, v in init_args.items() if k not in ("radius", "bbox")}
        opts = options if options is not None else ConversionOptions()
        return cls.from_nerf(source, **kwargs, **opts.as_kwargs())
