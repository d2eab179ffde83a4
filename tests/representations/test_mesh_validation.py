"""Every mesh is untrusted (issue 17, item 6): one test per malformed or unsafe kind at the
load_mesh level (the error names the problem), the confined resolver, the limits.

The writers of the kinds (``KINDS``) are also used by ``tests/cli/test_mesh_errors.py``.
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ra3d.errors import ConfigError, Ra3dError
from ra3d.representations.components.mesh_files import LIMIT_ENV, ConfinedResolver, MeshLimits
from ra3d.representations.mesh import MeshLoadError, MeshNotFoundError, load_mesh

TRIANGLE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.5]], dtype=np.float32)


def triangle_obj(mtllib: str | None = None, extra: str = "", face: str = "f 1 2 3") -> str:
    head = f"mtllib {mtllib}\nusemtl m\n" if mtllib else ""
    verts = "".join(f"v {x} {y} {z}\n" for x, y, z in TRIANGLE)
    return head + verts + extra + face + "\n"


def triangle_bin(indices: tuple[int, int, int] = (0, 1, 2)) -> bytes:
    """36 bytes of float32 positions, then 3 uint16 indices padded to 8 bytes."""
    return TRIANGLE.tobytes() + struct.pack("<3H", *indices) + b"\x00\x00"


def gltf_doc(uri: str | None, byte_length: int = 44, count: int = 3) -> dict:
    buffer: dict = {"byteLength": byte_length}
    if uri is not None:
        buffer["uri"] = uri
    return {
        "asset": {"version": "2.0"},
        "buffers": [buffer],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 36},
            {"buffer": 0, "byteOffset": 36, "byteLength": 6},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": count, "type": "VEC3",
             "min": TRIANGLE.min(0).tolist(), "max": TRIANGLE.max(0).tolist()},
            {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"},
        ],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0,
    }  # fmt: skip


def glb_bytes(doc: dict | None = None, binary: bytes | None = None) -> bytes:
    """A GLB container (glTF 2.0 "Binary glTF Layout") of ``doc`` and ``binary``."""
    binary = triangle_bin() if binary is None else binary
    doc = gltf_doc(None, len(binary)) if doc is None else doc
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text
    body += struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def _gltf_with_uri(folder: Path, uri: str) -> Path:
    (folder / "mesh.bin").write_bytes(triangle_bin())
    path = folder / "mesh.gltf"
    path.write_text(json.dumps(gltf_doc(uri)))
    return path


def _write(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def nan_vertices(folder: Path) -> Path:
    return _write(folder, "nan.obj", "v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")


def obj_without_faces(folder: Path) -> Path:
    return _write(folder, "nofaces.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n")


def face_out_of_range(folder: Path) -> Path:
    return _write(folder, "oor.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n")


def glb_face_out_of_range(folder: Path) -> Path:
    return _write(folder, "oor.glb", glb_bytes(binary=triangle_bin((0, 1, 5))))


def empty_glb(folder: Path) -> Path:
    return _write(folder, "empty.glb", b"")


def glb_claiming_4gb(folder: Path) -> Path:
    return _write(folder, "huge.glb", struct.pack("<4sII", b"glTF", 2, 2**32 - 1) + b"\x00" * 20)


def truncated_glb(folder: Path) -> Path:
    return _write(folder, "cut.glb", glb_bytes()[:-10])


def truncated_glb_chunk(folder: Path) -> Path:
    """Header length consistent with the file, but the BIN chunk claims more than is left."""
    data = bytearray(glb_bytes())
    json_len = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, 20 + json_len, 10_000)
    return _write(folder, "chunk.glb", bytes(data))


def buffer_file_url(folder: Path) -> Path:
    return _gltf_with_uri(folder, "file:///etc/passwd")


def buffer_http_url(folder: Path) -> Path:
    return _gltf_with_uri(folder, "http://127.0.0.1:9/mesh.bin")


def buffer_absolute_path(folder: Path) -> Path:
    return _gltf_with_uri(folder, str((folder / "mesh.bin").resolve()))


def buffer_parent_path(folder: Path) -> Path:
    (folder.parent / "outside.bin").write_bytes(triangle_bin())
    return _gltf_with_uri(folder, "../outside.bin")


def obj_mtllib_parent(folder: Path) -> Path:
    (folder.parent / "x.mtl").write_text("newmtl m\nKd 1 0 0\n")
    return _write(folder, "up.obj", triangle_obj("../x.mtl"))


def mtl_map_outside(folder: Path) -> Path:
    (folder / "m.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd /etc/passwd\n")
    return _write(folder, "tex.obj", triangle_obj("m.mtl", "vt 0 0\nvt 1 0\nvt 0 1\n"))


def over_size_limit(folder: Path) -> Path:
    """A valid OBJ padded with comments past a 4 KiB limit (tests set the limit low)."""
    return _write(folder, "big.obj", triangle_obj() + "#" * 5000 + "\n")


KINDS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nan_vertices": (nan_vertices, "NaN or infinite vertex coordinates"),
    "obj_without_faces": (obj_without_faces, "at least one face"),
    "face_out_of_range": (face_out_of_range, "face indices out of range"),
    "glb_face_out_of_range": (glb_face_out_of_range, "face indices out of range"),
    "empty_glb": (empty_glb, "empty (0 bytes)"),
    "glb_claiming_4gb": (glb_claiming_4gb, "GLB header claims 4.0 GiB"),
    "truncated_glb": (truncated_glb, "truncated"),
    "truncated_glb_chunk": (truncated_glb_chunk, "truncated: GLB chunk 1 declares 10000 bytes"),
    "buffer_file_url": (buffer_file_url, "'file:///etc/passwd' is a file:// URL"),
    "buffer_http_url": (buffer_http_url, "is a URL (http:)"),
    "buffer_absolute_path": (buffer_absolute_path, "is an absolute path"),
    "buffer_parent_path": (buffer_parent_path, "'../outside.bin' leaves the mesh's folder"),
    "obj_mtllib_parent": (obj_mtllib_parent, "'../x.mtl' leaves the mesh's folder"),
    "mtl_map_outside": (mtl_map_outside, "'/etc/passwd' is an absolute path"),
    "over_size_limit": (over_size_limit, "over the 4.0 KiB mesh size limit"),
}

#: The size limit (bytes) under which ``over_size_limit`` fails and every other case is unaffected.
SMALL_LIMIT = 4096


def data_uri_gltf(folder: Path) -> Path:
    """A valid glTF whose buffer is embedded as a base64 data: URI (accepted)."""
    uri = "data:application/octet-stream;base64," + base64.b64encode(triangle_bin()).decode()
    path = folder / "embedded.gltf"
    path.write_text(json.dumps(gltf_doc(uri)))
    return path


# ---------------------------------------------------------------------- the tests
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_is_refused_with_a_message_naming_the_problem(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "assets"
    folder.mkdir()
    write, expected = KINDS[kind]
    path = write(folder)
    with pytest.raises(MeshLoadError) as caught:
        load_mesh(path, limits=MeshLimits(max_file_bytes=SMALL_LIMIT), quiet=True)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert isinstance(caught.value, Ra3dError) and isinstance(caught.value, ValueError)


def test_the_valid_files_of_the_same_writers_load_exactly(tmp_path: Path) -> None:
    """Controls: the GLB, the glTF with an inside buffer, the data: URI and the OBJ load the
    triangle that was written (so the refusals above are about the defect, not the writer)."""
    (tmp_path / "ok.glb").write_bytes(glb_bytes())
    (tmp_path / "mesh.bin").write_bytes(triangle_bin())
    (tmp_path / "ok.gltf").write_text(json.dumps(gltf_doc("mesh.bin")))
    (tmp_path / "ok.obj").write_text(triangle_obj())
    paths = [tmp_path / n for n in ("ok.glb", "ok.gltf", "ok.obj")] + [data_uri_gltf(tmp_path)]
    for path in paths:
        mesh = load_mesh(path, up_axis="z", normalize=False, quiet=True,
                         limits=MeshLimits(max_file_bytes=SMALL_LIMIT))  # fmt: skip
        np.testing.assert_allclose(mesh.vertices.numpy(), TRIANGLE, atol=1e-6)
        assert mesh.faces.tolist() == [[0, 1, 2]]


def test_missing_file_is_a_mesh_error_and_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(MeshNotFoundError) as caught:
        load_mesh(tmp_path / "nope.glb")
    assert isinstance(caught.value, FileNotFoundError) and "does not exist" in str(caught.value)


def test_size_limit_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = over_size_limit(tmp_path)
    load_mesh(path, quiet=True)  # 5 KB under the default 512 MiB
    monkeypatch.setenv(LIMIT_ENV["max_file_bytes"], str(SMALL_LIMIT))
    with pytest.raises(MeshLoadError, match="over the 4.0 KiB mesh size limit"):
        load_mesh(path, quiet=True)
    monkeypatch.setenv(LIMIT_ENV["max_file_bytes"], "lots")
    with pytest.raises(ConfigError, match="RA3D_MESH_MAX_BYTES='lots' is not an integer"):
        load_mesh(path, quiet=True)


def test_vertex_and_face_limits_apply_to_declared_and_parsed_counts(tmp_path: Path) -> None:
    (tmp_path / "ok.glb").write_bytes(glb_bytes())
    (tmp_path / "ok.obj").write_text(triangle_obj())
    for name in ("ok.glb", "ok.obj"):
        with pytest.raises(MeshLoadError, match="3 vertices, over the limit of 2"):
            load_mesh(tmp_path / name, limits=MeshLimits(max_vertices=2), quiet=True)
        with pytest.raises(MeshLoadError, match="1 triangles, over the limit of 1|over the limit"):
            load_mesh(tmp_path / name, limits=MeshLimits(max_faces=1, max_vertices=2), quiet=True)
    # A glTF accessor declaring 3 billion vertices is refused before any parser allocates them.
    doc = gltf_doc(None, 44, count=3_000_000_000)
    (tmp_path / "liar.glb").write_bytes(glb_bytes(doc))
    with pytest.raises(MeshLoadError, match="declares 3000000000 vertices"):
        load_mesh(tmp_path / "liar.glb", quiet=True)


def test_texture_pixel_limit_is_read_from_the_header(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "m.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd t.png\n")
    uv = "vt 0 0\nvt 1 0\nvt 0 1\n"
    (tmp_path / "m.obj").write_text(triangle_obj("m.mtl", uv, "f 1/1 2/2 3/3"))
    mesh = load_mesh(tmp_path / "m.obj", quiet=True, limits=MeshLimits(max_texture_pixels=64 * 32))
    assert mesh.texture is not None  # exactly at the limit: accepted
    with pytest.raises(MeshLoadError, match="64 = 2048 pixels, over the limit of 2047|2048 pixels"):
        load_mesh(tmp_path / "m.obj", quiet=True, limits=MeshLimits(max_texture_pixels=2047))


def test_images_and_symlinks_leaving_the_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "asset"
    folder.mkdir()
    outside = tmp_path / "secret.bin"
    outside.write_bytes(triangle_bin())
    (folder / "link.bin").symlink_to(outside)
    (folder / "a.gltf").write_text(json.dumps(gltf_doc("link.bin")))
    with pytest.raises(MeshLoadError, match="'link.bin' leaves the mesh's folder"):
        load_mesh(folder / "a.gltf")
    doc = gltf_doc(None, 44)
    doc["images"] = [{"uri": "https://example.com/t.png"}]
    (folder / "img.glb").write_bytes(glb_bytes(doc))
    with pytest.raises(MeshLoadError, match="is a URL"):
        load_mesh(folder / "img.glb")
    (folder / "w.mtl").write_text("newmtl m\nmap_Kd -s 1 1 1 ..\\..\\secret.png\n")
    (folder / "w.obj").write_text(triangle_obj("w.mtl"))
    with pytest.raises(MeshLoadError, match="leaves the mesh's folder"):
        load_mesh(folder / "w.obj")
    # mtllib text anywhere counts (trimesh takes the first occurrence, even in a comment).
    (folder / "c.obj").write_text("# mtllib /etc/hosts\n" + triangle_obj())
    with pytest.raises(MeshLoadError, match="is an absolute path"):
        load_mesh(folder / "c.obj")


def test_restricted_resolver_never_opens_a_file_outside_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trimesh with our resolver, bypassing the pre-parse checks: an OBJ whose MTL lies outside
    the folder loads without it (the outside red Kd never reaches the mesh), and no open() of
    the outside file happens; the inside MTL (green) is read through the same resolver."""
    folder = tmp_path / "asset"
    folder.mkdir()
    outside = tmp_path / "evil.mtl"
    outside.write_text("newmtl m\nKd 1 0 0\n")
    (folder / "good.mtl").write_text("newmtl m\nKd 0 1 0\n")
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(str(Path(file).resolve()) if isinstance(file, str | Path) else repr(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    for ref, colour in (("../evil.mtl", None), (str(outside), None), ("good.mtl", [0, 255, 0])):
        resolver = ConfinedResolver(folder, folder, "m.obj", 10**6)
        text = triangle_obj(ref).encode()
        scene = trimesh.load(io.BytesIO(text), file_type="obj", resolver=resolver,
                             force="scene", process=False)  # fmt: skip
        (geom,) = scene.dump(concatenate=False)
        material = getattr(geom.visual, "material", None)
        diffuse = None if material is None else getattr(material, "diffuse", None)
        if colour is None:
            assert resolver.opened == []
            assert diffuse is None or list(np.asarray(diffuse)[:3]) != [255, 0, 0]
        else:
            assert resolver.opened == [(folder / "good.mtl").resolve()]
            assert list(np.asarray(diffuse)[:3]) == colour
    assert str(outside.resolve()) not in opened
    with pytest.raises(MeshLoadError, match="leaves the mesh's folder"):
        ConfinedResolver(folder, folder, "m.obj", 10**6).get("../evil.mtl")
    with pytest.raises(MeshLoadError, match="file:// URL"):
        ConfinedResolver(folder, folder, "m.obj", 10**6)["file://" + str(outside)]
    with pytest.raises(MeshLoadError, match="read-only"):
        ConfinedResolver(folder, folder, "m.obj", 10**6).write("x.bin", b"")
    assert str(outside.resolve()) not in opened


def test_resolver_counts_bytes_against_the_budget(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\x00" * 100)
    resolver = ConfinedResolver(tmp_path, tmp_path, "m.gltf", 150)
    assert resolver.get("a.bin") == b"\x00" * 100
    with pytest.raises(MeshLoadError, match="byte budget"):
        resolver.get("a.bin")  # 100 more would make 200 > 150
