"""The parser-free GLB geometry check of text-only retrieval agrees with ``load_mesh``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh

from ra3d.representations.components.gltf_geometry import check_glb_geometry
from ra3d.representations.mesh import MeshLoadError, load_mesh


def write_glb(
    path: Path,
    positions: np.ndarray,
    indices: np.ndarray | None,
    *,
    mode: int = 4,
    extra: dict | None = None,
    stride: int | None = None,
) -> Path:
    """A one-primitive GLB written by hand (glTF 2.0 "Binary glTF Layout"): float32 VEC3
    positions, optional uint32 indices, all in the BIN chunk."""
    pos = np.asarray(positions, "<f4")
    pos_bytes = pos.tobytes()
    if stride is not None:  # interleave 4 padding bytes after each vertex
        pos_bytes = b"".join(row.tobytes() + b"\0" * (stride - 12) for row in pos)
    blob = pos_bytes
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes)}]
    if stride is not None:
        views[0]["byteStride"] = stride
    accessors = [{"bufferView": 0, "componentType": 5126, "count": len(pos), "type": "VEC3"}]
    prim: dict = {"attributes": {"POSITION": 0}, "mode": mode}
    if indices is not None:
        idx = np.asarray(indices, "<u4").tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(idx)})
        blob += idx
        accessors.append({"bufferView": 1, "componentType": 5125, "count": len(indices),
                          "type": "SCALAR"})  # fmt: skip
        prim["indices"] = 1
    blob += b"\0" * (-len(blob) % 4)
    doc = {"asset": {"version": "2.0"}, "buffers": [{"byteLength": len(blob)}],
           "bufferViews": views, "accessors": accessors, "meshes": [{"primitives": [prim]}],
           "nodes": [{"mesh": 0}], "scenes": [{"nodes": [0]}], "scene": 0, **(extra or {})}  # fmt: skip
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text
    body += struct.pack("<II", len(blob), 0x004E4942) + blob
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
    return path


TRI = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
FACES = np.array([0, 1, 2, 0, 2, 3])


def test_a_valid_glb_is_checked_without_the_parser_and_loads(tmp_path: Path) -> None:
    for name, kwargs in (("plain", {}), ("strided", {"stride": 16})):
        path = write_glb(tmp_path / f"{name}.glb", TRI, FACES, **kwargs)
        assert check_glb_geometry(path) is True
        mesh = load_mesh(path, quiet=True)  # the full parser agrees
        assert mesh.num_faces == 2
    # Without indices every 3 vertices are a triangle.
    assert check_glb_geometry(write_glb(tmp_path / "soup.glb", TRI[:3], None)) is True
    # A GLB written by trimesh (another writer) passes too.
    box = trimesh.creation.box()
    box.export(tmp_path / "box.glb")
    assert check_glb_geometry(tmp_path / "box.glb") is True


@pytest.mark.parametrize(
    ("name", "positions", "indices", "mode", "message"),
    [
        ("nan", np.where(np.eye(4, 3) == 1, np.nan, TRI), FACES, 4, "non-finite"),
        ("range", TRI, np.array([0, 1, 9]), 4, "out of range"),
        ("points", TRI, None, 0, "no triangles"),
    ],
)
def test_broken_geometry_is_refused_like_load_mesh(
    tmp_path: Path, name: str, positions: np.ndarray, indices: np.ndarray | None, mode: int,
    message: str,
) -> None:  # fmt: skip
    path = write_glb(tmp_path / f"{name}.glb", positions, indices, mode=mode)
    with pytest.raises(MeshLoadError, match=message):
        check_glb_geometry(path)
    with pytest.raises(MeshLoadError):  # the full validator refuses it as well
        load_mesh(path, quiet=True)


def test_what_it_does_not_decode_goes_to_the_parser(tmp_path: Path) -> None:
    draco = write_glb(tmp_path / "draco.glb", TRI, FACES,
                      extra={"extensionsUsed": ["KHR_draco_mesh_compression"]})  # fmt: skip
    strip = write_glb(tmp_path / "strip.glb", TRI, FACES, mode=5)
    assert check_glb_geometry(draco) is False and check_glb_geometry(strip) is False
    obj = tmp_path / "m.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    assert check_glb_geometry(obj) is False


def test_file_level_checks_still_apply(tmp_path: Path) -> None:
    path = write_glb(tmp_path / "t.glb", TRI, FACES)
    data = path.read_bytes()
    path.write_bytes(data[:-8])  # truncated
    with pytest.raises(MeshLoadError, match="truncated"):
        check_glb_geometry(path)
    nan_node = write_glb(tmp_path / "n.glb", TRI, FACES,
                         extra={"nodes": [{"mesh": 0, "scale": [1, float("nan"), 1]}]})  # fmt: skip
    with pytest.raises(MeshLoadError, match="non-finite"):
        check_glb_geometry(nan_node)
