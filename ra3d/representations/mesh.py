"""MeshAsset: a retrieved 3D asset θ_ret as a fixed, textured triangle mesh that renders like θ.

The paper compares renders of the generated representation g(θ, ψ) with renders of the retrieved
asset g(θ_ret, ψ) at the same camera (Eq. 10–11), distils the prior on asset renders (Eq. 13) and
adapts the prior on ~100 of them (Eq. 12). This module turns a mesh file into such a
:class:`~ra3d.representations.base.Representation`.

Frame and scale. Every asset is brought into ra3d's world frame (:mod:`ra3d.cameras`: +Z up, the
front faces +X, i.e. azimuth 0), its bounding box is centred at the origin and it is scaled so its
farthest vertex lies at ``radius`` (default 0.5: threestudio's scene scale, where cameras sit at
distance 1–1.5 with a 40–70° vertical field of view and the object fills a good part of the frame).

Up axis (``up_axis="auto"``): OBJ, GLB and GLTF files are read as Y-up with the front facing +Z
(the glTF convention, also used by Sweet Home 3D and most OBJ exporters) and are mapped to ra3d's
frame by the cyclic rotation ``(x, y, z) -> (z, x, y)``, which sends +Y to +Z (up) and +Z to +X
(front). Every other format (PLY, STL, OFF, ...) is taken as already Z-up and left alone.
``up_axis="y"`` / ``"z"`` force either rule.

Colour model. The albedo at a surface point is ``vertex_color × texture(uv)``; a missing factor
counts as 1 and a mesh with neither renders neutral grey. Materials are resolved at load time:

* a PBR (glTF) material contributes ``baseColorFactor × baseColorTexture`` (the factor is baked
  into the texture, or into the vertex colours when there is no texture);
* an OBJ/MTL material contributes its ``map_Kd`` texture when it has one, else its ``Kd`` colour
  (``Kd`` is not multiplied onto ``map_Kd``, matching what OBJ exporters and viewers do);
* per-vertex colours (PLY, OBJ ``v x y z r g b``, glTF ``COLOR_0``) and per-face colours (split
  into per-vertex ones) are kept; parts with no colour at all get neutral grey.

Colour values are used as stored (8-bit sRGB-like values, no linear→sRGB conversion).

Multi-part models are merged into one mesh. Several textures are packed into one atlas
(:attr:`MeshData.texture`); each face records which atlas tile it samples (:attr:`face_tiles`) and
UVs stay in each source texture's own [0, 1] range, so wrap-around (``REPEAT``) addressing is
reproduced exactly inside each tile. UVs are stored per face corner (``[F, 3, 2]``) because merged
parts and UV seams give one vertex several UVs.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.cameras import Cameras
from ra3d.representations.base import RenderOutput, Representation, TriangleMesh
from ra3d.representations.components.mesh_files import (
    LIMIT_ENV,
    ConfinedResolver,
    MeshLimits,
    MeshLoadError,
    MeshNotFoundError,  # noqa: F401 - re-exported: load_mesh raises it
    check_mesh_file,
    check_totals,
)
from ra3d.representations.components.rasterize import Fragments, Rasterizer

logger = logging.getLogger(__name__)

NEUTRAL_GREY = 0.7
UP_AXES: tuple[str, ...] = ("auto", "y", "z")
Y_UP_SUFFIXES: tuple[str, ...] = (".obj", ".glb", ".gltf")
SUPPORTED_SUFFIXES: tuple[str, ...] = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
SHADINGS: tuple[str, ...] = ("albedo", "lambertian")
# Rotation taking a Y-up, +Z-front file to ra3d's Z-up, +X-front world: (x, y, z) -> (z, x, y).
Y_UP_TO_Z_UP = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass
class MeshData:
    """A triangle mesh with its colours, in the asset's normalised world frame.

    After :func:`load_mesh` the frame is ra3d's (Z-up, front at +X), the bounding box is centred
    at the origin and every vertex lies within ``radius`` of it.

    Attributes:
        vertices: ``[V, 3]`` float32 positions.
        faces: ``[F, 3]`` int64 vertex indices.
        vertex_colors: ``[V, 3]`` float32 in [0, 1], or ``None`` (counts as white when a texture
            is present, as neutral grey when not).
        uvs: ``[F, 3, 2]`` float32 per-face-corner texture coordinates (OBJ convention: origin at
            the image's bottom-left, v up; values outside [0, 1] wrap), or ``None``.
        texture: ``[Ht, Wt, 3]`` float32 in [0, 1]: one texture or an atlas of several.
        face_tiles: ``[F]`` int64 index into ``texture_tiles`` for every face (all zeros for a
            single texture; filled in automatically when ``texture`` is given without it).
        texture_tiles: ``[T, 4]`` int64 ``(row, column, height, width)`` of each source texture
            inside ``texture``.
        center: ``[3]`` bounding-box centre that was subtracted (in the up-converted file frame).
        scale: factor applied after centring: ``vertices = (file_vertices_up - center) * scale``.
        source: where the mesh came from (file path), for messages.
    """

    vertices: Tensor
    faces: Tensor
    vertex_colors: Tensor | None = None
    uvs: Tensor | None = None
    texture: Tensor | None = None
    face_tiles: Tensor | None = None
    texture_tiles: Tensor | None = None
    center: Tensor = field(default_factory=lambda: torch.zeros(3))
    scale: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        where = f" ({self.source})" if self.source else ""
        v, f = self.vertices, self.faces
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] == 0:
            raise ValueError(
                f"MeshData.vertices must be a non-empty [V, 3] tensor{where}, got {tuple(v.shape)}"
            )
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
            raise ValueError(
                f"MeshData.faces must be a non-empty [F, 3] tensor{where}, got {tuple(f.shape)}"
            )
        if f.dtype.is_floating_point:
            raise ValueError(f"MeshData.faces must hold integer indices{where}, got {f.dtype}")
        self.vertices = v.float()
        self.faces = f.long()
        if not torch.isfinite(self.vertices).all():
            raise ValueError(f"MeshData.vertices contain NaN or inf{where}")
        if int(self.faces.min()) < 0 or int(self.faces.max()) >= v.shape[0]:
            raise ValueError(f"MeshData.faces index vertices outside [0, {v.shape[0]}){where}")
        n_v, n_f = v.shape[0], f.shape[0]
        if self.vertex_colors is not None:
            if tuple(self.vertex_colors.shape) != (n_v, 3):
                raise ValueError(
                    f"MeshData.vertex_colors must be [{n_v}, 3]{where}, got {tuple(self.vertex_colors.shape)}"
                )
            self.vertex_colors = self.vertex_colors.float()
        if (self.texture is None) != (self.uvs is None):
            raise ValueError(f"MeshData needs both uvs and texture or neither{where}")
        if self.texture is not None and self.uvs is not None:
            if tuple(self.uvs.shape) != (n_f, 3, 2):
                raise ValueError(
                    f"MeshData.uvs must be per face corner [{n_f}, 3, 2]{where}, got {tuple(self.uvs.shape)}"
                )
            if self.texture.ndim != 3 or self.texture.shape[-1] != 3:
                raise ValueError(
                    f"MeshData.texture must be [Ht, Wt, 3]{where}, got {tuple(self.texture.shape)}"
                )
            self.uvs = self.uvs.float()
            self.texture = self.texture.float()
            if self.texture_tiles is None:
                h, w = self.texture.shape[:2]
                self.texture_tiles = torch.tensor([[0, 0, h, w]], dtype=torch.int64)
            if self.face_tiles is None:
                self.face_tiles = torch.zeros(n_f, dtype=torch.int64)
            self.texture_tiles = self.texture_tiles.long()
            self.face_tiles = self.face_tiles.long()
            if tuple(self.face_tiles.shape) != (n_f,):
                raise ValueError(
                    f"MeshData.face_tiles must be [{n_f}]{where}, got {tuple(self.face_tiles.shape)}"
                )
            if self.texture_tiles.ndim != 2 or self.texture_tiles.shape[1] != 4:
                raise ValueError(f"MeshData.texture_tiles must be [T, 4]{where}")
            if (
                int(self.face_tiles.min()) < 0
                or int(self.face_tiles.max()) >= self.texture_tiles.shape[0]
            ):
                raise ValueError(f"MeshData.face_tiles index tiles outside texture_tiles{where}")

    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]


# ---------------------------------------------------------------------- texture sampling
def sample_texture(texture: Tensor, tiles: Tensor, tile_index: Tensor, uv: Tensor) -> Tensor:
    """Bilinear, wrap-around lookup of ``uv [N, 2]`` in atlas tiles → colours ``[N, 3]``.

    ``tile_index [N]`` picks the tile (``tiles [T, 4]`` = row, column, height, width) and the four
    texels of the bilinear footprint are wrapped modulo that tile's size, which is exactly what
    sampling the tile as a standalone texture with REPEAT addressing gives. Texel centres sit at
    half-integer coordinates and ``v = 1`` is the top row (OBJ/trimesh UV convention).
    """
    row0, col0, th, tw = tiles[tile_index].unbind(dim=-1)  # [N] each
    u = uv[:, 0] - torch.floor(uv[:, 0])
    v = uv[:, 1] - torch.floor(uv[:, 1])
    x = u * tw.to(uv.dtype) - 0.5
    y = (1.0 - v) * th.to(uv.dtype) - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0f)[:, None], (y - y0f)[:, None]
    x0 = torch.remainder(x0f.long(), tw)
    y0 = torch.remainder(y0f.long(), th)
    x1 = torch.remainder(x0 + 1, tw)
    y1 = torch.remainder(y0 + 1, th)
    flat = texture.reshape(-1, texture.shape[-1])
    width = texture.shape[1]

    def texel(yy: Tensor, xx: Tensor) -> Tensor:
        return flat[(row0 + yy) * width + (col0 + xx)]

    top = texel(y0, x0) * (1 - fx) + texel(y0, x1) * fx
    bottom = texel(y1, x0) * (1 - fx) + texel(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------- loading
@dataclass
class _Part:
    """One geometry of a file, in float64 numpy, before merging."""

    vertices: np.ndarray  # [v, 3]
    faces: np.ndarray  # [f, 3]
    colors: np.ndarray | None  # [v, 3] per-vertex albedo factor
    uvs: np.ndarray | None  # [f, 3, 2] per-corner uv (only with an image)
    image: np.ndarray | None  # [h, w, 3] float32 texture (factor baked in)
    image_key: tuple[Any, ...] | None  # deduplicates textures shared between parts


def _as_rgb01(colors: np.ndarray) -> np.ndarray:
    """8/16-bit integer or float colours ``[N, >=3]`` → float64 RGB in [0, 1]."""
    colors = np.asarray(colors)
    if np.issubdtype(colors.dtype, np.integer):
        colors = colors.astype(np.float64) / float(np.iinfo(colors.dtype).max)
    return np.clip(colors[:, :3].astype(np.float64), 0.0, 1.0)


def _image_to_array(image: Any, max_size: int, max_pixels: int | None = None) -> np.ndarray:
    """A PIL image → ``[h, w, 3]`` float32 in [0, 1], downscaled so its longest side <= max_size.

    ``max_pixels``: refuse (before decoding) an image with more pixels than this — the file
    checks bound textures they can see; this bounds any the parser found another way."""
    from PIL import Image

    if max_pixels is not None and image.size[0] * image.size[1] > max_pixels:
        w, h = image.size
        raise MeshLoadError(
            f"a texture is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}; downscale "
            f"it or raise {LIMIT_ENV['max_texture_pixels']}"
        )
    image = image.convert("RGB")
    longest = max(image.size)
    if longest > max_size:
        scale = max_size / longest
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _material_colour(material: Any) -> tuple[Any, np.ndarray | None]:
    """(texture image or None, RGB factor in [0, 1] or None) of a trimesh material."""
    from trimesh.visual.material import PBRMaterial, SimpleMaterial

    if isinstance(material, PBRMaterial):
        factor = material.baseColorFactor
        rgb = None if factor is None else _as_rgb01(np.asarray(factor)[None])[0]
        return material.baseColorTexture, rgb
    if isinstance(material, SimpleMaterial):
        image = material.image
        if image is not None:
            return image, None
        diffuse = material.diffuse
        return None, None if diffuse is None else _as_rgb01(np.asarray(diffuse)[None])[0]
    image = getattr(material, "image", None)
    main = getattr(material, "main_color", None)
    return image, None if main is None else _as_rgb01(np.asarray(main)[None])[0]


def _extract_part(geometry: Any, max_texture_size: int, max_pixels: int | None = None) -> _Part:
    """Colours and UVs of one ``trimesh.Trimesh`` resolved into the colour model."""
    from trimesh.visual.color import ColorVisuals
    from trimesh.visual.texture import TextureVisuals

    vertices = np.asarray(geometry.vertices, dtype=np.float64)
    faces = np.asarray(geometry.faces, dtype=np.int64)
    visual = geometry.visual
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    image: np.ndarray | None = None
    image_key: tuple[Any, ...] | None = None
    if isinstance(visual, TextureVisuals):
        source_image, factor = _material_colour(visual.material)
        uv = visual.uv
        if source_image is not None and uv is not None and len(uv) == len(vertices):
            image = _image_to_array(source_image, max_texture_size, max_pixels)
            if factor is not None:
                image = image * factor.astype(np.float32)
            image_key = (id(source_image), None if factor is None else tuple(factor.tolist()))
            uvs = np.asarray(uv, dtype=np.float64)[faces]
        elif factor is not None:
            colors = np.tile(factor, (len(vertices), 1))
        attributes = getattr(visual, "vertex_attributes", {}) or {}
        extra = attributes.get("color")
        if extra is not None and len(extra) == len(vertices):
            extra_rgb = _as_rgb01(np.asarray(extra))
            colors = extra_rgb if colors is None else colors * extra_rgb
    elif isinstance(visual, ColorVisuals):
        if visual.kind == "vertex":
            colors = _as_rgb01(np.asarray(visual.vertex_colors))
        elif visual.kind == "face":
            # Per-face colours: give every face its own three vertices so they become per-vertex.
            face_rgb = _as_rgb01(np.asarray(visual.face_colors))
            vertices = vertices[faces].reshape(-1, 3)
            faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
            colors = np.repeat(face_rgb, 3, axis=0)
    if colors is None and image is None:
        colors = np.full((len(vertices), 3), NEUTRAL_GREY)
    return _Part(vertices, faces, colors, uvs, image, image_key)


def _pack_atlas(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Shelf-pack textures into one atlas → (atlas ``[H, W, 3]``, tiles ``[T, 4]``).

    Tiles never need padding: :func:`sample_texture` wraps inside each tile, so no texel of a
    neighbour is ever read.
    """
    area = sum(im.shape[0] * im.shape[1] for im in images)
    width = max(max(im.shape[1] for im in images), math.ceil(math.sqrt(area)))
    order = sorted(range(len(images)), key=lambda i: -images[i].shape[0])
    tiles = np.zeros((len(images), 4), dtype=np.int64)
    x = y = shelf = 0
    for i in order:
        h, w = images[i].shape[:2]
        if x + w > width:
            y, x, shelf = y + shelf, 0, 0
        tiles[i] = (y, x, h, w)
        x += w
        shelf = max(shelf, h)
    atlas = np.zeros((y + shelf, width, 3), dtype=np.float32)
    for i, (r, c, h, w) in enumerate(tiles):
        atlas[r : r + h, c : c + w] = images[i]
    return atlas, tiles


def _merge_parts(parts: list[_Part]) -> dict[str, np.ndarray | None]:
    """Concatenate parts into one mesh: vertex colours, per-corner UVs and an atlas as needed."""
    textured = any(p.image is not None for p in parts)
    coloured = any(p.colors is not None for p in parts)
    vertices, faces, colors, uvs, face_tiles = [], [], [], [], []
    images: list[np.ndarray] = []
    tile_of: dict[tuple[Any, ...], int] = {}
    white_tile = -1
    offset = 0
    for part in parts:
        vertices.append(part.vertices)
        faces.append(part.faces + offset)
        offset += len(part.vertices)
        if coloured:
            colors.append(part.colors if part.colors is not None else np.ones_like(part.vertices))
        if not textured:
            continue
        if part.image is not None and part.uvs is not None and part.image_key is not None:
            if part.image_key not in tile_of:
                tile_of[part.image_key] = len(images)
                images.append(part.image)
            tile = tile_of[part.image_key]
            uvs.append(part.uvs)
        else:
            if white_tile < 0:
                white_tile = len(images)
                images.append(np.ones((1, 1, 3), dtype=np.float32))
            tile = white_tile
            uvs.append(np.full((len(part.faces), 3, 2), 0.5))
        face_tiles.append(np.full(len(part.faces), tile, dtype=np.int64))
    merged: dict[str, np.ndarray | None] = {
        "vertices": np.concatenate(vertices),
        "faces": np.concatenate(faces),
        "vertex_colors": np.concatenate(colors) if coloured else None,
        "uvs": None,
        "texture": None,
        "face_tiles": None,
        "texture_tiles": None,
    }
    if textured:
        atlas, tiles = _pack_atlas(images)
        merged.update(
            uvs=np.concatenate(uvs),
            texture=atlas,
            face_tiles=np.concatenate(face_tiles),
            texture_tiles=tiles,
        )
    return merged


def resolve_up_axis(path: str | Path, up_axis: str = "auto") -> str:
    """``"y"`` or ``"z"``: the up axis of a file under the rule in the module docstring."""
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
    if up_axis != "auto":
        return up_axis
    return "y" if Path(path).suffix.lower() in Y_UP_SUFFIXES else "z"


def load_mesh(
    path: str | Path,
    up_axis: str = "auto",
    normalize: bool = True,
    radius: float = 0.5,
    max_texture_size: int = 1024,
    *,
    quiet: bool = False,
    limits: MeshLimits | None = None,
    root: str | Path | None = None,
) -> MeshData:
    """Read a mesh file (OBJ/MTL/PNG, GLB/GLTF, PLY, STL, OFF) into ra3d's frame.

    The file is untrusted (:mod:`ra3d.representations.components.mesh_files`). Before parsing:

    * the file plus every file it references is at most ``limits.max_file_bytes`` (512 MiB),
      checked with ``stat`` before anything is read;
    * a GLB has magic ``glTF``, version 2, a declared length equal to the file's size and every
      chunk inside the file; a glTF's buffer views lie inside their buffers;
    * declared counts (glTF accessors, PLY/OFF headers, binary STL, OBJ ``v``/``f`` lines) are at
      most ``limits.max_vertices`` / ``limits.max_faces`` (10 M each), and each texture's header
      declares at most ``limits.max_texture_pixels`` pixels (8192²);
    * OBJ ``mtllib``, MTL texture maps and glTF ``buffers[].uri`` / ``images[].uri`` are relative
      paths inside ``root`` (the mesh's own folder): no absolute path, no ``..`` out of it, no
      ``file://`` or other URL. glTF ``data:`` URIs (base64) are accepted: they are part of the
      file, so its size limit bounds them. The parser reads referenced files only through a
      :class:`~ra3d.representations.components.mesh_files.ConfinedResolver` on ``root``.

    After parsing: at least one triangle, finite coordinates, face indices in range and the
    vertex/face limits on the parsed mesh. The limits default to
    :meth:`MeshLimits.from_env` (``RA3D_MESH_MAX_BYTES``, ``RA3D_MESH_MAX_VERTICES``,
    ``RA3D_MESH_MAX_FACES``, ``RA3D_MESH_MAX_TEXTURE_PIXELS``).

    Args:
        path: the mesh file. OBJ files find their MTL and textures relative to themselves.
        up_axis: ``"auto"`` (OBJ/GLB/GLTF are Y-up, everything else Z-up), ``"y"`` or ``"z"``;
            see the module docstring for the exact rotation.
        normalize: centre the bounding box at the origin and scale the farthest vertex to
            ``radius``. With ``False`` only the up-axis rotation is applied.
        radius: radius of the sphere the asset is fitted into. The default 0.5 matches
            threestudio's scene scale (cameras at distance 1–1.5, fovy 40–70°).
        max_texture_size: textures are downscaled (bilinear) so their longest side is at most
            this; renders are 64–512 px, so larger textures only cost memory.
        quiet: skip the INFO line about the loaded mesh (importers validate thousands).
        limits: the bounds above; default from the environment.
        root: the folder references must stay in; default the mesh's own folder (an asset
            database may pass the asset's folder, which must contain the mesh).

    Raises:
        MeshNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        MeshLoadError: the file is unsafe, over a limit, cannot be parsed, holds no triangles or
            is degenerate; the message names the problem. A :class:`~ra3d.errors.Ra3dError`, so
            the CLI prints it as one ``ra3d: error:`` line.
    """
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES and path.is_file():
        raise MeshLoadError(
            f"{path}: unsupported mesh format {path.suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    axis = resolve_up_axis(path, up_axis)
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if max_texture_size < 1:
        raise ValueError(f"max_texture_size must be >= 1, got {max_texture_size}")
    limits = limits or MeshLimits.from_env()
    checked = check_mesh_file(path, limits, root)
    resolver = ConfinedResolver(
        checked.root, path.parent, path.name, limits.max_file_bytes - len(checked.data)
    )
    try:
        # From bytes with our resolver: trimesh never opens a path itself. process=False keeps
        # NaN vertices and out-of-range faces for the checks below (processing drops them
        # silently, which would turn a corrupt mesh into a quietly different one).
        scene = trimesh.load(
            io.BytesIO(checked.data), file_type=checked.suffix[1:], resolver=resolver,
            force="scene", process=False,
        )  # fmt: skip
        geometries = scene.dump(concatenate=False)
    except MeshLoadError:
        raise
    except IndexError as exc:  # trimesh indexes vertices with the file's face indices
        raise MeshLoadError(
            f"{path} has face indices out of range ({str(exc).splitlines()[0][:200]})"
        ) from exc
    except Exception as exc:  # trimesh raises many exception types for broken files
        first = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        raise MeshLoadError(f"could not read mesh file {path}: {first}") from exc
    meshes = [g for g in geometries if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not meshes:
        raise MeshLoadError(
            f"{path} contains no triangles (empty, points or lines only); a mesh needs at least "
            "one face"
        )
    n_vertices = n_faces = 0
    for g in meshes:
        v, f = np.asarray(g.vertices), np.asarray(g.faces)
        if not np.isfinite(v).all():
            raise MeshLoadError(f"{path} has NaN or infinite vertex coordinates")
        if f.size and (int(f.min()) < 0 or int(f.max()) >= len(v)):
            raise MeshLoadError(
                f"{path} has face indices out of range: they must lie in [0, {len(v)}), got "
                f"[{int(f.min())}, {int(f.max())}]"
            )
        n_vertices += len(v)
        n_faces += len(f)
    check_totals(path, n_vertices, n_faces, limits)
    try:
        parts = [_extract_part(g, max_texture_size, limits.max_texture_pixels) for g in meshes]
    except MeshLoadError:
        raise
    except Exception as exc:
        raise MeshLoadError(
            f"could not read the materials of {path}: {type(exc).__name__}: {exc}"
        ) from exc
    merged = _merge_parts(parts)
    vertices = merged["vertices"]
    assert vertices is not None
    if not np.isfinite(vertices).all():
        raise MeshLoadError(f"{path} has NaN or infinite vertex coordinates")
    if axis == "y":
        vertices = vertices @ Y_UP_TO_Z_UP.T
    center = np.zeros(3)
    scale = 1.0
    if normalize:
        center = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
        extent = float(np.linalg.norm(vertices - center, axis=1).max())
        if extent <= 1e-12:
            raise MeshLoadError(f"{path} is degenerate: all vertices coincide")
        scale = radius / extent
        vertices = (vertices - center) * scale

    def tensor(name: str, dtype: torch.dtype) -> Tensor | None:
        value = merged[name]
        return None if value is None else torch.as_tensor(np.ascontiguousarray(value), dtype=dtype)

    data = MeshData(
        vertices=torch.as_tensor(vertices, dtype=torch.float32),
        faces=torch.as_tensor(merged["faces"], dtype=torch.int64),
        vertex_colors=tensor("vertex_colors", torch.float32),
        uvs=tensor("uvs", torch.float32),
        texture=tensor("texture", torch.float32),
        face_tiles=tensor("face_tiles", torch.int64),
        texture_tiles=tensor("texture_tiles", torch.int64),
        center=torch.as_tensor(center, dtype=torch.float32),
        scale=float(scale),
        source=str(path),
    )
    if not quiet:
        logger.info(
            "loaded %s: %d vertices, %d faces, %d part(s), up=%s, textures=%d",
            path, data.num_vertices, data.num_faces, len(parts), axis,
            0 if data.texture_tiles is None else data.texture_tiles.shape[0],
        )  # fmt: skip
    return data


# ---------------------------------------------------------------------- geometry helpers
def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """``[F, 3]`` unnormalised face normals (length = twice the area), right-hand winding."""
    a, b, c = vertices[faces].unbind(dim=1)
    return torch.cross(b - a, c - a, dim=-1)


def corner_normals(vertices: Tensor, faces: Tensor, crease_angle_deg: float = 45.0) -> Tensor:
    """``[F, 3, 3]`` unit shading normals per face corner with hard creases.

    Vertices are welded by position first (so UV seams do not break smoothness), area-weighted
    smooth normals are computed on the welded mesh, and a corner whose smooth normal deviates from
    its face normal by more than ``crease_angle_deg`` uses the face normal instead (a cube stays
    flat-shaded, a sphere is smooth). Degenerate faces get a zero normal.
    """
    fn = face_normals(vertices, faces)  # [F, 3]
    unit_fn = F.normalize(fn, dim=-1, eps=1e-20)
    _, welded = torch.unique(vertices, dim=0, return_inverse=True)  # [V]
    welded_faces = welded[faces]  # [F, 3]
    smooth = torch.zeros(int(welded.max()) + 1, 3, dtype=vertices.dtype, device=vertices.device)
    smooth.index_add_(0, welded_faces.reshape(-1), fn.repeat_interleave(3, dim=0))
    smooth = F.normalize(smooth, dim=-1, eps=1e-20)[welded_faces]  # [F, 3, 3]
    keep = (smooth * unit_fn[:, None, :]).sum(-1, keepdim=True) >= math.cos(
        math.radians(crease_angle_deg)
    )
    return torch.where(keep, smooth, unit_fn[:, None, :].expand_as(smooth))


def rotation_z(angle_deg: float, dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
    """``[3, 3]`` rotation by ``angle_deg`` about +Z (counter-clockwise seen from above)."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


# ---------------------------------------------------------------------- the representation
class MeshAsset(Representation):
    """A fixed textured mesh θ_ret rendered through ra3d's cameras (paper Sec. 4.3–4.4).

    ``render`` returns the same :class:`RenderOutput` as the NeRF at the same cameras: ``rgb`` is
    the albedo (or Lambertian-shaded albedo) composited on ``background_color``, ``opacity`` is
    coverage, ``depth`` is the distance from the camera centre along the pixel's unit ray (the
    NeRF's expected ``t``), ``normal`` is the world-space shading normal turned towards the camera
    (meshes are rendered two-sided since retrieved assets are rarely watertight). With
    ``supersample == 1`` ``extras["triangle_id"]`` (``[B, H, W]``, -1 = background) is included;
    ``extras["rgb_foreground"]`` is the premultiplied colour (colour × coverage) and
    ``extras["background"]`` the background, as the NeRF reports them.

    Args:
        mesh: a :class:`MeshData` (used as given) or a path passed to :func:`load_mesh` with
            ``up_axis`` and ``radius``.
        front_azimuth_deg: azimuth (degrees) the asset's front faces in the loaded frame; the asset
            is rotated by ``-front_azimuth_deg`` about +Z so its front faces azimuth 0 (+X).
        background_color: RGB in [0, 1] behind the asset.
        backend: rasterizer backend, ``"auto"``, ``"torch"`` or ``"nvdiffrast"``.
        up_axis, radius: forwarded to :func:`load_mesh` when ``mesh`` is a path.
        shading: ``"albedo"`` (unlit colour, like the NeRF's albedo renders) or ``"lambertian"``
            (``albedo * (ambient + (1 - ambient) * max(n·l, 0))`` with a point light at
            ``cameras.light_positions``, or at the camera when there are none), which gives
            untextured assets visible shape for the prior.
        ambient: ambient share of the Lambertian shading.
        supersample: render at ``supersample``× the resolution and average-pool (antialiasing);
            edge pixels then get fractional opacity and expected depth like a NeRF.
        near, far: clip planes handed to :meth:`Cameras.mvp`.
        crease_angle_deg: see :func:`corner_normals`.
    """

    def __init__(
        self,
        mesh: MeshData | str | Path,
        front_azimuth_deg: float = 0.0,
        background_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
        backend: str = "auto",
        up_axis: str = "auto",
        radius: float = 0.5,
        shading: str = "albedo",
        ambient: float = 0.3,
        supersample: int = 1,
        near: float = 0.01,
        far: float = 100.0,
        crease_angle_deg: float = 45.0,
    ) -> None:
        super().__init__()
        if shading not in SHADINGS:
            raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
        if not 0.0 <= ambient <= 1.0:
            raise ValueError(f"ambient must lie in [0, 1], got {ambient}")
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        if not 0 < near < far:
            raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
        background = torch.as_tensor(background_color, dtype=torch.float32).flatten()
        if background.shape != (3,) or bool(((background < 0) | (background > 1)).any()):
            raise ValueError(f"background_color must be 3 values in [0, 1], got {background_color}")
        data = (
            mesh if isinstance(mesh, MeshData) else load_mesh(mesh, up_axis=up_axis, radius=radius)
        )
        self.source = data.source
        self.center = data.center
        self.scale = data.scale
        self.shading = shading
        self.ambient = float(ambient)
        self.supersample = int(supersample)
        self.near, self.far = float(near), float(far)
        self.rasterizer = Rasterizer(backend)
        self.front_azimuth_deg = 0.0
        # Geometry and colours are buffers (they follow .to(device)) but not checkpointed:
        # the asset is fixed and is rebuilt from its file.
        self.register_buffer("vertices", data.vertices, persistent=False)  # [V, 3]
        self.register_buffer("faces", data.faces, persistent=False)  # [F, 3]
        self.register_buffer(
            "normals", corner_normals(data.vertices, data.faces, crease_angle_deg), persistent=False
        )
        self.register_buffer(
            "geometric_normals", face_normals(data.vertices, data.faces), persistent=False
        )
        self.register_buffer("vertex_colors", data.vertex_colors, persistent=False)
        self.register_buffer("uvs", data.uvs, persistent=False)
        self.register_buffer("texture", data.texture, persistent=False)
        self.register_buffer("face_tiles", data.face_tiles, persistent=False)
        self.register_buffer("texture_tiles", data.texture_tiles, persistent=False)
        self.register_buffer("background", background, persistent=False)
        self.set_front_azimuth(front_azimuth_deg)

    @classmethod
    def from_retrieved(cls, asset: Any, **kwargs: Any) -> MeshAsset:
        """A MeshAsset for a :class:`~ra3d.retrieval.base.RetrievedAsset` (path + front azimuth)."""
        kwargs.setdefault("front_azimuth_deg", asset.front_azimuth_deg)
        return cls(asset.mesh_path, **kwargs)

    # ------------------------------------------------------------------ pose
    def set_front_azimuth(self, deg: float) -> None:
        """Declare that the loaded asset's front faces azimuth ``deg``; it is then rotated by
        ``-deg`` about +Z so the front faces azimuth 0 (+X), as frontal alignment requires.

        Absolute, not cumulative: ``set_front_azimuth(0)`` restores the loaded orientation.
        """
        if not math.isfinite(float(deg)):
            raise ValueError(f"front azimuth must be finite, got {deg}")
        self.front_azimuth_deg = float(deg)

    def rotation(self) -> Tensor:
        """``[3, 3]`` the rotation applied to the loaded asset (about +Z by -front azimuth)."""
        return rotation_z(-self.front_azimuth_deg, self.vertices.dtype, self.vertices.device)

    def world_vertices(self) -> Tensor:
        """``[V, 3]`` vertices after the front-azimuth rotation."""
        return self.vertices @ self.rotation().T

    # ------------------------------------------------------------------ rendering
    def albedo(self, fragments: Fragments) -> Tensor:
        """``[B, H, W, 3]`` surface colour at every covered pixel (zero elsewhere)."""
        tri = fragments.triangle_id
        colour = self.vertices.new_ones(*tri.shape, 3)
        if self.vertex_colors is not None:
            colour = self.rasterizer.interpolate(self.vertex_colors, fragments, self.faces)
        elif self.texture is None:
            colour = colour * NEUTRAL_GREY
        if self.texture is not None:
            uv = self.rasterizer.interpolate_corners(self.uvs, fragments)  # [B, H, W, 2]
            bi, yi, xi = torch.nonzero(tri >= 0, as_tuple=True)
            tiles = self.face_tiles[tri[bi, yi, xi]]
            texel = sample_texture(self.texture, self.texture_tiles, tiles, uv[bi, yi, xi])
            colour = colour.clone()
            colour[bi, yi, xi] = colour[bi, yi, xi] * texel
        return colour * fragments.mask[..., None]

    def render(self, cameras: Cameras) -> RenderOutput:
        """Render ``len(cameras)`` views; see the class docstring for what each output means."""
        device = self.vertices.device
        if cameras.device != device:
            cameras = cameras.to(device)
        h, w, s = cameras.height, cameras.width, self.supersample
        cams = cameras.with_size(h * s, w * s)
        rot = self.rotation()
        vertices = self.world_vertices()  # [V, 3]
        mvp = cams.mvp(self.near, self.far).to(vertices.dtype)  # [B, 4, 4]
        homogeneous = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)  # [V, 4]
        clip = torch.einsum("bij,vj->bvi", mvp, homogeneous)  # [B, V, 4]
        frags = self.rasterizer.rasterize(clip, self.faces, h * s, w * s)
        mask = frags.mask[..., None]  # [B, Hs, Ws, 1]
        hit = mask.to(vertices.dtype)

        points = self.rasterizer.interpolate(vertices, frags, self.faces)  # [B, Hs, Ws, 3]
        eye = cams.positions.to(vertices.dtype)[:, None, None, :]  # [B, 1, 1, 3]
        to_point = points - eye
        depth = to_point.norm(dim=-1, keepdim=True) * hit  # distance along the unit ray

        normal = self.rasterizer.interpolate_corners(self.normals @ rot.T, frags)
        normal = F.normalize(normal, dim=-1, eps=1e-12)
        # Two-sided: turn normals of faces seen from behind towards the camera.
        geometric = (self.geometric_normals @ rot.T)[
            frags.triangle_id.clamp(min=0)
        ]  # [B, Hs, Ws, 3]
        facing_away = (geometric * to_point).sum(-1, keepdim=True) > 0
        normal = torch.where(facing_away, -normal, normal) * hit

        colour = self.albedo(frags)
        if self.shading == "lambertian":
            if cameras.light_positions is not None:
                light = cameras.light_positions.to(device, vertices.dtype)[:, None, None, :]
            else:
                light = eye
            to_light = F.normalize(light - points, dim=-1)
            lambert = (normal * to_light).sum(-1, keepdim=True).clamp(min=0.0)
            colour = colour * (self.ambient + (1.0 - self.ambient) * lambert)
        foreground = (colour * hit).clamp(0.0, 1.0)  # premultiplied: colour × coverage
        if s > 1:
            foreground, hit, depth, normal = (
                _average_pool(x, s) for x in (foreground, hit, depth, normal)
            )
            normal = F.normalize(normal, dim=-1, eps=1e-12) * (hit > 0)
        background = self.background.to(vertices.dtype).expand_as(foreground)
        rgb = foreground + background * (1.0 - hit)
        extras = {"rgb_foreground": foreground, "background": background}
        if s == 1:
            extras["triangle_id"] = frags.triangle_id
        return RenderOutput(
            rgb=rgb.clamp(0.0, 1.0), opacity=hit, depth=depth, normal=normal, extras=extras
        )

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def extract_mesh(self, resolution: int = 128, threshold: float | None = None) -> TriangleMesh:
        """The asset's own triangles (front-azimuth rotation applied) with per-vertex colours.

        ``resolution`` and ``threshold`` exist for the Representation interface and are ignored:
        the surface is exact. Texture colours are averaged over each vertex's face corners, so a
        coarsely tessellated textured asset loses texture detail here (render it instead).
        """
        del resolution, threshold
        vertices = self.world_vertices()
        n_v = vertices.shape[0]
        colours = self.vertex_colors.clone() if self.vertex_colors is not None else None
        if self.texture is not None:
            corner_uv = self.uvs.reshape(-1, 2)
            corner_tile = self.face_tiles.repeat_interleave(3)
            texel = sample_texture(
                self.texture, self.texture_tiles, corner_tile, corner_uv
            )  # [3F, 3]
            index = self.faces.reshape(-1)
            total = torch.zeros(n_v, 3, dtype=texel.dtype, device=texel.device).index_add_(
                0, index, texel
            )
            count = torch.zeros(n_v, dtype=texel.dtype, device=texel.device).index_add_(
                0, index, torch.ones_like(index, dtype=texel.dtype)
            )
            mean = total / count.clamp(min=1.0)[:, None]
            colours = mean if colours is None else colours * mean
        if colours is None:
            colours = torch.full_like(vertices, NEUTRAL_GREY)
        return TriangleMesh(
            vertices=vertices.clone(), faces=self.faces.clone(), vertex_colors=colours
        )


def _average_pool(image: Tensor, factor: int) -> Tensor:
    """``[B, H*f, W*f, C]`` → ``[B, H, W, C]`` mean over ``f x f`` blocks."""
    pooled = F.avg_pool2d(image.permute(0, 3, 1, 2), kernel_size=factor, stride=factor)
    return pooled.permute(0, 2, 3, 1).contiguous()
