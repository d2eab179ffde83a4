"""The geometry checks of :func:`~ra3d.representations.mesh.load_mesh` for a plain GLB, without a
mesh parser.

Why: a text-only ``ra3d retrieve`` over Objaverse validates each fetched GLB before returning it
(issue 17: a mesh that fails validation is skipped and the next candidate taken). Doing that with
``load_mesh`` imports trimesh and scipy (≈ 1 s on a 2-core machine), more than the whole caption
search over 800k assets. A GLB's geometry is a handful of typed arrays, so the checks that matter
after the file-level ones of :mod:`~ra3d.representations.components.mesh_files` — finite
coordinates, at least one triangle, every index in range, finite node transforms — are read here
straight from the BIN chunk with numpy (glTF 2.0 spec, "Accessors" and "Meshes").

The answer is three-valued: :func:`check_glb_geometry` returns True when it checked everything,
False when the file uses something it does not read (Draco or meshopt compression, sparse
accessors, external or ``data:`` buffers, non-float positions, triangle strips or fans) — the
caller then runs the full parser — and raises :class:`MeshLoadError` for a broken mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ra3d.representations.components.mesh_files import (
    MeshLimits,
    MeshLoadError,
    check_mesh_file,
    parse_glb,
)

#: glTF accessor component types → numpy dtypes (little-endian).
_COMPONENT = {5121: "<u1", 5123: "<u2", 5125: "<u4", 5126: "<f4"}
_TRIANGLES = 4
#: Extensions that change how geometry is stored; a file using one goes to the full parser.
_GEOMETRY_EXTENSIONS = ("KHR_draco_mesh_compression", "EXT_meshopt_compression")


class _Undecided(Exception):
    """The file uses a feature this reader does not decode."""


def _accessor(doc: dict[str, Any], bin_chunk: memoryview, index: Any, comps: int) -> np.ndarray:
    """The ``[count, comps]`` array of accessor ``index``, read from the BIN chunk."""
    accessors = doc.get("accessors") or []
    if not isinstance(index, int) or not 0 <= index < len(accessors):
        raise MeshLoadError(f"an accessor index {index!r} does not exist")
    acc = accessors[index]
    if not isinstance(acc, dict) or "sparse" in acc or "bufferView" not in acc:
        raise _Undecided
    dtype = _COMPONENT.get(acc.get("componentType"))
    if dtype is None:
        raise _Undecided
    count = int(acc.get("count", 0))
    views = doc.get("bufferViews") or []
    view_index = acc["bufferView"]
    if not isinstance(view_index, int) or not 0 <= view_index < len(views):
        raise MeshLoadError(f"accessors[{index}] names bufferView {view_index!r}, which is missing")
    view = views[view_index]
    buffer = (doc.get("buffers") or [{}])[int(view.get("buffer", 0))]
    if int(view.get("buffer", 0)) != 0 or buffer.get("uri") is not None:
        raise _Undecided  # an external or data: buffer
    item = np.dtype(dtype).itemsize * comps
    stride = int(view.get("byteStride") or item)
    start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
    end = start + (stride * (count - 1) + item if count else 0)
    view_end = int(view.get("byteOffset", 0)) + int(view.get("byteLength", 0))
    if count < 0 or stride < item or end > view_end or view_end > len(bin_chunk):
        raise MeshLoadError(
            f"accessors[{index}] reads bytes {start}..{end}, outside its bufferView or the BIN chunk"
        )
    if count == 0:
        return np.zeros((0, comps), dtype)
    size = np.dtype(dtype).itemsize
    return np.ndarray(
        (count, comps), dtype=dtype, buffer=bin_chunk, offset=start, strides=(stride, size)
    )


def _check_nodes(doc: dict[str, Any], path: Path) -> None:
    for i, node in enumerate(doc.get("nodes") or []):
        if not isinstance(node, dict):
            continue
        for key in ("matrix", "translation", "rotation", "scale"):
            values = node.get(key)
            if values is None:
                continue
            try:
                arr = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                raise MeshLoadError(f"{path}: nodes[{i}].{key} is not a list of numbers") from None
            if not np.isfinite(arr).all():
                raise MeshLoadError(f"{path}: nodes[{i}].{key} has non-finite values")


def check_glb_geometry(path: str | Path, limits: MeshLimits | None = None) -> bool:
    """True when ``path`` (a ``.glb``) passed the file-level checks and has finite triangle
    geometry with indices in range, checked without a mesh parser; False when it needs the full
    parser (see the module docstring). Raises :class:`MeshLoadError` for a broken mesh."""
    path = Path(path)
    if path.suffix.lower() != ".glb":
        return False
    limits = limits or MeshLimits.from_env()
    checked = check_mesh_file(path, limits)  # sizes, GLB structure, references, declared counts
    doc, bin_chunk = parse_glb(checked.data, path, limits)
    used = set(doc.get("extensionsUsed") or []) | set(doc.get("extensionsRequired") or [])
    if used.intersection(_GEOMETRY_EXTENSIONS):
        return False
    _check_nodes(doc, path)
    triangles = 0
    try:
        for m, mesh in enumerate(doc.get("meshes") or []):
            for p, prim in enumerate((mesh or {}).get("primitives") or []):
                where = f"{path}: meshes[{m}].primitives[{p}]"
                mode = prim.get("mode", _TRIANGLES)
                if mode in (5, 6):  # strips and fans: the parser decides
                    raise _Undecided
                if mode != _TRIANGLES or "POSITION" not in (prim.get("attributes") or {}):
                    continue  # points and lines add no faces
                acc = (doc.get("accessors") or [])[prim["attributes"]["POSITION"]]
                if acc.get("componentType") != 5126 or acc.get("type") != "VEC3":
                    raise _Undecided  # quantised positions (KHR_mesh_quantization)
                positions = _accessor(doc, bin_chunk, prim["attributes"]["POSITION"], 3)
                if not np.isfinite(positions).all():
                    raise MeshLoadError(f"{where} has non-finite vertex coordinates (NaN or inf)")
                n = len(positions)
                if prim.get("indices") is not None:
                    indices = _accessor(doc, bin_chunk, prim["indices"], 1)
                    if indices.dtype.kind == "f":
                        raise MeshLoadError(f"{where}: its indices are not integers")
                    if len(indices) and int(indices.max()) >= n:
                        raise MeshLoadError(
                            f"{where}: face index {int(indices.max())} is out of range for "
                            f"{n} vertices"
                        )
                    triangles += len(indices) // 3
                else:
                    triangles += n // 3
    except _Undecided:
        return False
    except (KeyError, IndexError, TypeError, ValueError) as err:
        if isinstance(err, MeshLoadError):
            raise
        raise MeshLoadError(f"{path}: its glTF mesh description is malformed ({err!r})") from None
    if triangles == 0:
        raise MeshLoadError(f"{path} has no triangles (a mesh needs at least one face)")
    return True
