"""Is this mesh file safe to parse? The file-level checks :func:`~ra3d.representations.mesh.load_mesh`
runs before any parser sees the file.

Every mesh is untrusted — an Objaverse upload, a file fetched from a mirror, a folder being imported,
a path the user typed — so before trimesh reads a byte of it:

* the file and every file it references are ``stat``-ed and their sizes bounded *together*
  (:attr:`MeshLimits.max_file_bytes`, 512 MiB by default), so a parser never gets a file whose size
  could exhaust memory;
* a GLB's binary structure is checked (magic ``glTF``, version 2, the declared length equal to the
  file's size, every chunk inside the file, the JSON chunk first), so a header claiming 4 GB or a
  truncated file is refused by name instead of failing somewhere inside the parser;
* the element counts a file declares (glTF accessors, PLY/OFF headers, binary STL) are bounded by
  :attr:`MeshLimits.max_vertices` / :attr:`MeshLimits.max_faces`, and the pixel count of every
  texture (read from the image header, not decoded) by :attr:`MeshLimits.max_texture_pixels`;
* every reference the file makes — OBJ ``mtllib``, MTL texture maps (``map_Kd`` and the others),
  glTF ``buffers[].uri`` and ``images[].uri`` — must be a relative path that stays inside the
  mesh's own folder (``root``): never an absolute path (``/x``, ``C:\\x``), a path climbing out
  with ``..``, ``file://`` or any other URL. The one exception is a glTF ``data:`` URI (base64),
  which is part of the file itself and therefore already bounded by the file's size limit.

The references are read from the file's own text (glTF JSON, OBJ and MTL lines) here, and the
parser then gets a :class:`ConfinedResolver` that can open nothing outside ``root`` either, so a
reference this module missed still cannot leave the folder.

The limits can be changed per call (``load_mesh(limits=MeshLimits(...))``) or for a whole process
through the environment variables named in :data:`LIMIT_ENV` (for ``ra3d fit`` / ``ra3d adapt`` /
``ra3d db import``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import posixpath
import re
import struct
import urllib.parse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ra3d.errors import ConfigError, Ra3dError
from ra3d.io import format_bytes

MIB = 2**20

#: The environment variable that overrides each :class:`MeshLimits` field.
LIMIT_ENV: dict[str, str] = {
    "max_file_bytes": "RA3D_MESH_MAX_BYTES",
    "max_vertices": "RA3D_MESH_MAX_VERTICES",
    "max_faces": "RA3D_MESH_MAX_FACES",
    "max_texture_pixels": "RA3D_MESH_MAX_TEXTURE_PIXELS",
}

GLB_MAGIC = b"glTF"
GLB_CHUNK_JSON = 0x4E4F534A
GLB_CHUNK_BIN = 0x004E4942
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_DRIVE = re.compile(r"^[A-Za-z]:([\\/]|$)")
#: MTL statements that name a file (texture maps, bump/displacement/decal/reflection maps).
_MTL_MAP_KEYS = ("map_", "bump", "disp", "decal", "refl", "norm")


class MeshLoadError(Ra3dError, ValueError):
    """A mesh file that cannot be used: unreadable, unsafe, over a limit, empty or degenerate.

    A :class:`~ra3d.errors.Ra3dError` (the CLI prints one ``ra3d: error:`` line) and a
    ``ValueError`` (what callers caught before meshes were validated)."""


class MeshNotFoundError(MeshLoadError, FileNotFoundError):
    """The mesh file does not exist (also a ``FileNotFoundError``)."""


@dataclass(frozen=True)
class MeshLimits:
    """The bounds a mesh must respect before and after parsing (see the module docstring).

    Args:
        max_file_bytes: the mesh file plus every file it references, in bytes (512 MiB: larger
            than any Objaverse 1.0 GLB we know of, small enough to parse on a laptop).
        max_vertices: vertices over all parts (10 M).
        max_faces: triangles over all parts (10 M; the rasteriser holds ``[F, 3]`` int64 faces
            and per-corner normals and UVs, ≈ 0.5 GB at this size).
        max_texture_pixels: pixels of each texture image, read from its header (8192²).
    """

    max_file_bytes: int = 512 * MIB
    max_vertices: int = 10_000_000
    max_faces: int = 10_000_000
    max_texture_pixels: int = 8192 * 8192

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"mesh limit {f.name} must be a positive integer, got {value!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> MeshLimits:
        """The defaults, overridden by the variables of :data:`LIMIT_ENV` that are set."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for name, var in LIMIT_ENV.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            try:
                values[name] = int(text)
            except ValueError:
                raise ConfigError(
                    f"{var}={text!r} is not an integer; unset it or give a number"
                ) from None
            if values[name] < 1:
                raise ConfigError(f"{var} must be >= 1, got {values[name]}")
        return cls(**values)


@dataclass
class CheckedMeshFile:
    """What :func:`check_mesh_file` read: the file's bytes, its format and what it references.

    ``data`` is handed to the parser (so the file is read once, after its size was checked);
    ``references`` are the referenced files inside ``root`` that exist, ``total_bytes`` the size of
    the mesh plus those.
    """

    path: Path
    root: Path
    suffix: str
    data: bytes
    references: list[Path] = field(default_factory=list)
    total_bytes: int = 0


# ------------------------------------------------------------------------------ helpers
def _fix() -> str:
    return f"raise the limit with {LIMIT_ENV['max_file_bytes']} if the file is genuine"


def _classify_unsafe(ref: str) -> str | None:
    """Why reference text ``ref`` may not be followed at all (before joining it to a folder)."""
    text = ref.strip()
    if _DRIVE.match(text) or text.startswith(("/", "\\")):
        return "is an absolute path"
    match = _SCHEME.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme == "file":
            return "is a file:// URL"
        return f"is a URL ({scheme}:)"
    return None


def confine(ref: str, base: Path, root: Path) -> Path:
    """The file reference ``ref`` (written in a file located in folder ``base``) means, checked to
    lie inside ``root``; raises :class:`MeshLoadError` naming the reference otherwise.

    ``ref`` is percent-decoded where it is a URI (glTF) by the caller. Backslashes count as
    separators (Windows exporters write them). Symbolic links are resolved, so a link inside the
    folder pointing outside it is refused too.
    """
    why = _classify_unsafe(ref)
    if why is None:
        rel = ref.strip().replace("\\", "/")
        joined = posixpath.normpath((base.as_posix() + "/" + rel) if rel else base.as_posix())
        candidate = Path(joined)
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            why = "cannot be resolved"
        else:
            if not (real == root or real.is_relative_to(root)):
                why = "leaves the mesh's folder"
            else:
                return real
    raise MeshLoadError(
        f"reference {ref.strip()!r} {why}; a mesh may only use files inside its own folder "
        "(relative paths without '..', no absolute paths, no URLs)"
    )


def _stat_size(path: Path, what: str) -> int:
    try:
        return path.stat().st_size
    except OSError as err:
        raise MeshLoadError(f"cannot read {what} {path}: {err.strerror or err}") from None


def _check_pixels(image_bytes: bytes | Path, what: str, limits: MeshLimits) -> None:
    """Refuse a texture whose header declares more than ``max_texture_pixels`` pixels; an image
    PIL cannot identify is left to the parser (which then ignores or rejects it)."""
    import warnings

    from PIL import Image

    source: Any = image_bytes if isinstance(image_bytes, Path) else io.BytesIO(image_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
    except Image.DecompressionBombError as err:
        raise MeshLoadError(f"texture {what} is too large to decode ({err})") from None
    except (OSError, ValueError, SyntaxError):  # not an image PIL knows
        return
    if width * height > limits.max_texture_pixels:
        raise MeshLoadError(
            f"texture {what} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_texture_pixels}; downscale it or raise {LIMIT_ENV['max_texture_pixels']}"
        )


class _Budget:
    """The bytes of the mesh and its referenced files, added up against ``max_file_bytes``."""

    def __init__(self, limits: MeshLimits, path: Path) -> None:
        self.limits, self.path, self.total = limits, path, 0

    def add(self, n: int, what: str) -> None:
        self.total += n
        if self.total > self.limits.max_file_bytes:
            raise MeshLoadError(
                f"{self.path}: {what} brings the mesh and its files to {format_bytes(self.total)}, "
                f"over the {format_bytes(self.limits.max_file_bytes)} limit; {_fix()}"
            )


# ------------------------------------------------------------------------------ GLB / glTF
def parse_glb(data: bytes, path: Path, limits: MeshLimits) -> tuple[dict[str, Any], memoryview]:
    """``(json, bin_chunk)`` of a GLB file after checking its container structure (glTF 2.0
    spec, "Binary glTF Layout"): 12-byte header, then chunks of ``(length, type, bytes)``."""
    size = len(data)
    if size == 0:
        raise MeshLoadError(f"{path} is empty (0 bytes); a GLB file starts with a 12-byte header")
    if size < 12:
        raise MeshLoadError(
            f"{path} is truncated: {size} bytes, shorter than the 12-byte GLB header"
        )
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != GLB_MAGIC:
        raise MeshLoadError(f"{path} is not a GLB file (it starts with {magic!r}, not b'glTF')")
    if version != 2:
        raise MeshLoadError(
            f"{path} is GLB version {version}; only glTF 2.0 GLB files are supported"
        )
    if length > limits.max_file_bytes:
        raise MeshLoadError(
            f"{path}: its GLB header claims {format_bytes(length)}, over the "
            f"{format_bytes(limits.max_file_bytes)} limit (the file has {format_bytes(size)}); "
            "the file is corrupt or not meant for ra3d"
        )
    if length != size:
        what = "truncated" if length > size else "padded with trailing bytes"
        raise MeshLoadError(
            f"{path} is {what}: its GLB header declares {length} bytes, the file has {size}"
        )
    offset, index = 12, 0
    doc: dict[str, Any] | None = None
    bin_chunk = memoryview(b"")
    view = memoryview(data)
    while offset < size:
        if size - offset < 8:
            raise MeshLoadError(
                f"{path} is truncated: {size - offset} stray bytes after chunk {index - 1}"
            )
        chunk_length, chunk_type = struct.unpack_from("<II", data, offset)
        start = offset + 8
        if chunk_length > size - start:
            raise MeshLoadError(
                f"{path} is truncated: GLB chunk {index} declares {chunk_length} bytes, only "
                f"{size - start} remain in the file"
            )
        body = view[start : start + chunk_length]
        if index == 0:
            if chunk_type != GLB_CHUNK_JSON:
                raise MeshLoadError(
                    f"{path}: the first GLB chunk is not JSON (type {chunk_type:#x})"
                )
            doc = _parse_json(bytes(body).rstrip(b" \x00"), path)
        elif chunk_type == GLB_CHUNK_BIN and index == 1:
            bin_chunk = body
        offset, index = start + chunk_length, index + 1
    if doc is None:
        raise MeshLoadError(f"{path} has a GLB header but no JSON chunk (truncated)")
    return doc, bin_chunk


def _parse_json(text: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MeshLoadError(f"{path}: its glTF JSON is not valid ({err})") from None
    if not isinstance(doc, dict):
        raise MeshLoadError(f"{path}: its glTF JSON is not an object")
    return doc


def _list(doc: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise MeshLoadError(f"{path}: glTF '{key}' must be a list of objects")
    return items


def _int(value: Any, what: str, path: Path, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MeshLoadError(f"{path}: glTF {what} must be a non-negative integer, got {value!r}")
    return value


def _data_uri(uri: str, what: str, path: Path) -> bytes:
    """The bytes of a base64 ``data:`` URI (bounded: it is part of the already-bounded file)."""
    head, sep, payload = uri.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise MeshLoadError(f"{path}: {what} is a data: URI without base64 payload")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as err:
        raise MeshLoadError(f"{path}: {what} is a data: URI with invalid base64 ({err})") from None


def check_gltf(
    doc: dict[str, Any],
    bin_chunk: memoryview | None,
    path: Path,
    root: Path,
    limits: MeshLimits,
    budget: _Budget,
) -> list[Path]:
    """Check a glTF document's references, buffer bounds, declared counts and texture sizes;
    returns the external files it references. ``bin_chunk`` is a GLB's BIN chunk (None: .gltf)."""
    asset = doc.get("asset")
    version = str(asset.get("version", "2.0")) if isinstance(asset, dict) else "2.0"
    if not version.startswith("2"):
        raise MeshLoadError(f"{path} is glTF version {version}; only glTF 2.0 is supported")
    base = path.parent
    refs: list[Path] = []
    buffers: list[bytes | memoryview | Path | None] = []
    lengths: list[int] = []
    for i, buf in enumerate(_list(doc, "buffers", path)):
        declared = _int(buf.get("byteLength"), f"buffers[{i}].byteLength", path)
        uri = buf.get("uri")
        content: bytes | memoryview | Path | None
        if uri is None:
            if bin_chunk is None or i != 0:
                raise MeshLoadError(f"{path}: buffers[{i}] has no uri and no GLB BIN chunk to use")
            content, actual = bin_chunk, len(bin_chunk)
        elif not isinstance(uri, str):
            raise MeshLoadError(f"{path}: buffers[{i}].uri must be a string")
        elif uri.lower().startswith("data:"):
            content = _data_uri(uri, f"buffers[{i}]", path)
            actual = len(content)
        else:
            target = confine(urllib.parse.unquote(uri), base, root)
            if not target.is_file():
                raise MeshLoadError(f"{path}: buffers[{i}] file {uri!r} is missing from {base}")
            actual = _stat_size(target, "buffer file")
            budget.add(actual, f"buffer {uri!r}")
            refs.append(target)
            content = target
        if actual < declared:
            raise MeshLoadError(
                f"{path}: buffers[{i}] declares {declared} bytes but holds {actual} (truncated)"
            )
        buffers.append(content)
        lengths.append(declared)
    views = _list(doc, "bufferViews", path)
    for i, bv in enumerate(views):
        b = _int(bv.get("buffer"), f"bufferViews[{i}].buffer", path)
        if b >= len(lengths):
            raise MeshLoadError(f"{path}: bufferViews[{i}] names buffer {b}, which does not exist")
        start = _int(bv.get("byteOffset"), f"bufferViews[{i}].byteOffset", path, default=0)
        n = _int(bv.get("byteLength"), f"bufferViews[{i}].byteLength", path)
        if start + n > lengths[b]:
            raise MeshLoadError(
                f"{path}: bufferViews[{i}] spans bytes {start}..{start + n} of buffer {b}, "
                f"which has {lengths[b]}"
            )
    _check_counts(doc, path, limits)
    for i, img in enumerate(_list(doc, "images", path)):
        what = f"images[{i}] of {path.name}"
        uri = img.get("uri")
        if isinstance(uri, str):
            if uri.lower().startswith("data:"):
                _check_pixels(_data_uri(uri, f"images[{i}]", path), what, limits)
                continue
            target = confine(urllib.parse.unquote(uri), base, root)
            if target.is_file():
                budget.add(_stat_size(target, "image"), f"image {uri!r}")
                refs.append(target)
                _check_pixels(target, what, limits)
        elif uri is not None:
            raise MeshLoadError(f"{path}: images[{i}].uri must be a string")
        elif img.get("bufferView") is not None:
            v = _int(img.get("bufferView"), f"images[{i}].bufferView", path)
            if v >= len(views):
                raise MeshLoadError(
                    f"{path}: images[{i}] names bufferView {v}, which does not exist"
                )
            bv = views[v]
            content = buffers[bv["buffer"]]
            start = int(bv.get("byteOffset", 0))
            stop = start + int(bv["byteLength"])
            if isinstance(content, Path):
                with content.open("rb") as fh:
                    fh.seek(start)
                    blob = fh.read(stop - start)
            else:
                blob = bytes(content[start:stop]) if content is not None else b""
            _check_pixels(blob, what, limits)
    return refs


def _check_counts(doc: dict[str, Any], path: Path, limits: MeshLimits) -> None:
    """The vertex and triangle counts the accessors of all mesh primitives declare."""
    accessors = _list(doc, "accessors", path)

    def count(index: Any, what: str) -> int:
        i = _int(index, what, path)
        if i >= len(accessors):
            raise MeshLoadError(f"{path}: {what} names accessor {i}, which does not exist")
        return _int(accessors[i].get("count"), f"accessors[{i}].count", path)

    vertices = faces = 0
    for m, mesh in enumerate(_list(doc, "meshes", path)):
        prims = mesh.get("primitives", [])
        if not isinstance(prims, list):
            raise MeshLoadError(f"{path}: meshes[{m}].primitives must be a list")
        for p, prim in enumerate(prims):
            if not isinstance(prim, dict):
                continue
            attrs = prim.get("attributes") or {}
            if isinstance(attrs, dict) and "POSITION" in attrs:
                n = count(attrs["POSITION"], f"meshes[{m}].primitives[{p}].POSITION")
                vertices += n
                if prim.get("indices") is not None:
                    faces += count(prim["indices"], f"meshes[{m}].primitives[{p}].indices") // 3
                else:
                    faces += n // 3
    _check_totals(path, vertices, faces, limits, declared=True)


def _check_totals(
    path: Path, vertices: int, faces: int, limits: MeshLimits, declared: bool = False
) -> None:
    how = "declares" if declared else "has"
    if vertices > limits.max_vertices:
        raise MeshLoadError(
            f"{path} {how} {vertices} vertices, over the limit of {limits.max_vertices}; "
            f"decimate it or raise {LIMIT_ENV['max_vertices']}"
        )
    if faces > limits.max_faces:
        raise MeshLoadError(
            f"{path} {how} {faces} triangles, over the limit of {limits.max_faces}; "
            f"decimate it or raise {LIMIT_ENV['max_faces']}"
        )


def check_totals(path: Path, vertices: int, faces: int, limits: MeshLimits) -> None:
    """Refuse a parsed mesh with more vertices or triangles than ``limits`` allow."""
    _check_totals(path, vertices, faces, limits)


# ------------------------------------------------------------------------------ OBJ / MTL
def _reference_candidates(rest: str) -> list[str]:
    """File names an MTL statement may mean: the whole rest, then without leading options
    (``map_Kd -s 1 1 1 wood grain.jpg``); every one of them must be safe."""
    tokens = rest.split()
    return [" ".join(tokens[i:]) for i in range(len(tokens))]


def _confine_all(rest: str, base: Path, root: Path) -> Path | None:
    """Check every reading of a statement's file name; the first existing file, if any."""
    found: Path | None = None
    for cand in _reference_candidates(rest.strip().strip('"')):
        target = confine(cand, base, root)
        if found is None and target.is_file():
            found = target
    return found


def check_obj(
    data: bytes, path: Path, root: Path, limits: MeshLimits, budget: _Budget
) -> list[Path]:
    """Check an OBJ's ``mtllib`` references and the texture maps of those MTL files; returns the
    referenced files that exist. Any ``mtllib`` text counts, even in a comment: trimesh takes the
    first occurrence wherever it is."""
    n_v = len(re.findall(rb"(?m)^[ \t]*v[ \t]", data))
    n_f = len(re.findall(rb"(?m)^[ \t]*f[ \t]", data))
    _check_totals(path, n_v, n_f, limits, declared=True)
    base = path.parent
    refs: list[Path] = []
    for match in re.finditer(rb"mtllib([^\r\n]*)", data):
        rest = match.group(1).decode("utf-8", errors="replace")
        if not rest.strip():
            continue
        mtl = _confine_all(rest, base, root)
        if mtl is None or mtl in refs:
            continue
        budget.add(_stat_size(mtl, "material file"), f"material file {mtl.name!r}")
        refs.append(mtl)
        refs.extend(_check_mtl(mtl, base, root, limits, budget, refs))
    return refs


def _check_mtl(
    mtl: Path, base: Path, root: Path, limits: MeshLimits, budget: _Budget, seen: list[Path]
) -> list[Path]:
    """The texture maps of one MTL file: names relative to the MTL's folder and to the OBJ's
    (trimesh's reading) must both stay inside ``root``."""
    refs: list[Path] = []
    text = mtl.read_bytes().decode("utf-8", errors="replace")
    for line in text.splitlines():
        key, _, rest = line.strip().partition(" ")
        if not key.lower().startswith(_MTL_MAP_KEYS) or not rest.strip():
            continue
        found = None
        for folder in dict.fromkeys((mtl.parent, base)):
            hit = _confine_all(rest, folder, root)
            found = found or hit
        if found is not None and found not in seen and found not in refs:
            budget.add(_stat_size(found, "texture"), f"texture {found.name!r}")
            refs.append(found)
            _check_pixels(found, f"{found.name} (of {mtl.name})", limits)
    return refs


# ------------------------------------------------------------------------------ PLY / OFF / STL
def _check_ply(data: bytes, path: Path, limits: MeshLimits) -> None:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise MeshLoadError(f"{path} is not a PLY file (no 'ply' ... 'end_header' header)")
    counts = dict(
        (m.group(1).decode(), int(m.group(2)))
        for m in re.finditer(rb"(?m)^element[ \t]+(\w+)[ \t]+(\d+)", data[:end])
    )
    _check_totals(path, counts.get("vertex", 0), counts.get("face", 0), limits, declared=True)


def _check_off(data: bytes, path: Path, limits: MeshLimits) -> None:
    lines = [ln.split(b"#")[0].strip() for ln in data[:4096].splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].upper().endswith(b"OFF"):
        raise MeshLoadError(f"{path} is not an OFF file (no 'OFF' header)")
    head = (
        lines[0][3:].split() if len(lines[0]) > 3 else (lines[1].split() if len(lines) > 1 else [])
    )
    try:
        n_v, n_f = int(head[0]), int(head[1])
    except (IndexError, ValueError):
        raise MeshLoadError(f"{path}: OFF header has no vertex and face counts") from None
    _check_totals(path, n_v, n_f, limits, declared=True)


def _check_stl(data: bytes, path: Path, limits: MeshLimits) -> None:
    if len(data) >= 84 and not data[:5].lower() == b"solid":
        (n,) = struct.unpack_from("<I", data, 80)
        _check_totals(path, 0, n, limits, declared=True)
        if 84 + 50 * n != len(data):
            raise MeshLoadError(
                f"{path}: binary STL declares {n} triangles ({84 + 50 * n} bytes), the file has "
                f"{len(data)} (truncated or corrupt)"
            )


# ------------------------------------------------------------------------------ entry point
def check_mesh_file(
    path: str | Path, limits: MeshLimits | None = None, root: str | Path | None = None
) -> CheckedMeshFile:
    """Check ``path`` before parsing it (see the module docstring) and return its bytes.

    Args:
        path: the mesh file.
        limits: the bounds; default :meth:`MeshLimits.from_env`.
        root: the folder its references must stay in; default the mesh's own folder. A caller
            that keeps an asset's files in one folder (an asset database) may pass that folder;
            it must contain the mesh.

    Raises:
        MeshNotFoundError: ``path`` does not exist.
        MeshLoadError: the file is not safe to parse (the message names why).
    """
    limits = limits or MeshLimits.from_env()
    path = Path(path)
    if not path.exists():
        raise MeshNotFoundError(
            f"mesh file {path} does not exist; check the path or the asset database"
        )
    if path.is_dir():
        raise MeshLoadError(f"{path} is a directory, not a mesh file")
    if not path.is_file():
        raise MeshLoadError(f"{path} is not a regular file")
    root_path = (Path(root) if root is not None else path.parent).resolve()
    if not path.parent.resolve().is_relative_to(root_path):
        raise MeshLoadError(f"{path} is not inside its asset folder {root_path}")
    size = _stat_size(path, "mesh file")
    if size > limits.max_file_bytes:
        raise MeshLoadError(
            f"{path} is {format_bytes(size)}, over the {format_bytes(limits.max_file_bytes)} mesh "
            f"size limit; {_fix()}"
        )
    suffix = path.suffix.lower()
    if size == 0:
        raise MeshLoadError(f"{path} is empty (0 bytes)")
    with path.open("rb") as fh:
        data = fh.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:  # grew between stat and read
        raise MeshLoadError(
            f"{path} is over the {format_bytes(limits.max_file_bytes)} limit; {_fix()}"
        )
    budget = _Budget(limits, path)
    budget.add(len(data), "the file itself")
    refs: list[Path] = []
    if suffix == ".glb":
        doc, bin_chunk = parse_glb(data, path, limits)
        refs = check_gltf(doc, bin_chunk, path, root_path, limits, budget)
    elif suffix == ".gltf":
        doc = _parse_json(data, path)
        refs = check_gltf(doc, None, path, root_path, limits, budget)
    elif suffix == ".obj":
        refs = check_obj(data, path, root_path, limits, budget)
    elif suffix == ".ply":
        _check_ply(data, path, limits)
    elif suffix == ".off":
        _check_off(data, path, limits)
    elif suffix == ".stl":
        _check_stl(data, path, limits)
    return CheckedMeshFile(path, root_path, suffix, data, refs, budget.total)


# ------------------------------------------------------------------------------ the resolver
class ConfinedResolver:
    """What trimesh gets to open a mesh's referenced files: only files inside ``root``.

    Unlike ``trimesh.resolvers.FilePathResolver`` (which joins any name to its folder, and before
    trimesh 5 happily followed ``..`` and absolute paths), every name goes through :func:`confine`
    — no absolute path, no ``..`` out of ``root``, no URL, no symlink out — and every file read
    counts against the mesh's byte budget. ``opened`` lists what was read (for tests and logs).
    Read-only: ``write`` refuses. It implements trimesh's resolver interface (``get``,
    ``__getitem__``, ``keys``, ``namespaced``, ``write``); trimesh duck-types resolvers.
    """

    def __init__(self, root: Path, base: Path, file_name: str, max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.parent = Path(base).resolve()
        if not self.parent.is_relative_to(self.root):
            raise MeshLoadError(f"folder {base} is outside the mesh's folder {root}")
        self.file_name = file_name
        self.max_bytes = int(max_bytes)
        self.opened: list[Path] = []

    def get(self, name: str) -> bytes:
        target = confine(str(name), self.parent, self.root)
        if not target.is_file():
            raise FileNotFoundError(f"{name} is not in {self.parent}")
        size = target.stat().st_size
        if size > self.max_bytes:
            raise MeshLoadError(
                f"referenced file {name} is {format_bytes(size)}, over the mesh's byte budget"
            )
        self.max_bytes -= size
        self.opened.append(target)
        with target.open("rb") as fh:
            return fh.read(size)

    def __getitem__(self, name: str) -> bytes:
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        try:
            return confine(str(name), self.parent, self.root).is_file()
        except MeshLoadError:
            return False

    def keys(self) -> list[str]:
        return sorted(
            p.relative_to(self.parent).as_posix() for p in self.parent.rglob("*") if p.is_file()
        )

    def namespaced(self, namespace: str) -> ConfinedResolver:
        sub = confine(namespace, self.parent, self.root)
        child = ConfinedResolver(self.root, sub, self.file_name, self.max_bytes)
        child.opened = self.opened
        return child

    def write(self, name: str, data: Any) -> None:
        raise MeshLoadError(f"the mesh resolver is read-only (tried to write {name})")


__all__ = [
    "LIMIT_ENV",
    "CheckedMeshFile",
    "ConfinedResolver",
    "MeshLimits",
    "MeshLoadError",
    "MeshNotFoundError",
    "check_mesh_file",
    "check_totals",
    "confine",
]
