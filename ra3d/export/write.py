"""Writing exported meshes: OBJ + MTL + PNG and binary glTF (GLB), atomically.

Frame and scale. ra3d's world is Z-up with the object's front facing +X (:mod:`ra3d.cameras`);
glTF (and most OBJ consumers: Blender's default OBJ import, three.js, game engines) is Y-up with
the front facing +Z. Files are written in the file frame ``p_file = R^T p_world`` where ``R`` is
:data:`ra3d.representations.mesh.Y_UP_TO_Z_UP`, the rotation :func:`~ra3d.representations.mesh.
load_mesh` applies to Y-up files, so loading an exported file back with ``up_axis="y"`` and
``normalize=False`` gives the world coordinates exactly. One world unit is written as
:data:`METRES_PER_UNIT` metres (glTF's unit is the metre): the object sits in ra3d's bounding
sphere of radius ~0.5-1, i.e. about one metre across, centred at the origin.

Every file is written by :mod:`ra3d.io`'s one rule: a temporary name in its target folder first,
fsync, then ``os.replace`` (atomic on POSIX), so an interrupted export — or a full disk — never
leaves a half-written file, and an earlier file of the same name stays intact.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ra3d.export.bake import UVMesh
from ra3d.io import write_bytes_atomic, write_text_atomic
from ra3d.representations.mesh import Y_UP_TO_Z_UP

METRES_PER_UNIT = 1.0
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # glTF bufferView.target values


def world_to_file(points: np.ndarray, scale: float = METRES_PER_UNIT) -> np.ndarray:
    """ra3d world (Z-up, front +X) → glTF/OBJ file frame (Y-up, front +Z), in metres."""
    return (np.asarray(points, np.float64) @ Y_UP_TO_Z_UP * scale).astype(np.float32)


def file_to_world(points: np.ndarray, scale: float = METRES_PER_UNIT) -> np.ndarray:
    """Inverse of :func:`world_to_file` (what ``load_mesh(up_axis="y")`` applies, unscaled)."""
    return (np.asarray(points, np.float64) @ Y_UP_TO_Z_UP.T / scale).astype(np.float32)


def png_bytes(texture: np.ndarray) -> bytes:
    """``[H, W, 3]`` float in [0, 1] → 8-bit RGB PNG bytes."""
    from PIL import Image

    image = Image.fromarray(np.round(np.clip(texture, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_obj(
    out_dir: Path, name: str, mesh: UVMesh, texture: np.ndarray, header: str = ""
) -> list[Path]:
    """``<name>.obj``, ``<name>.mtl`` and ``<name>_albedo.png``; ``mesh`` is in the file frame.

    OBJ's ``vt`` origin is the image's bottom-left, which is :class:`UVMesh`'s convention, so the
    UVs are written as they are (readers that put the origin at the top flip ``v`` themselves).
    """
    png_name = f"{name}_albedo.png"
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    mtl = f"{comment}newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png_name}\n"
    lines = [comment, f"mtllib {name}.mtl\no {name}\n"]
    lines.append("".join("v {:.6f} {:.6f} {:.6f}\n".format(*p) for p in mesh.vertices.tolist()))
    lines.append("".join("vt {:.6f} {:.6f}\n".format(*t) for t in mesh.uvs.tolist()))
    lines.append(f"usemtl {name}\n")
    lines.append(
        "".join("f {0}/{0} {1}/{1} {2}/{2}\n".format(*f) for f in (mesh.faces + 1).tolist())
    )
    obj = "".join(lines).encode()
    png = png_bytes(texture)
    return [
        write_bytes_atomic(out_dir / png_name, png),
        write_text_atomic(out_dir / f"{name}.mtl", mtl),
        write_bytes_atomic(out_dir / f"{name}.obj", obj),
    ]


def glb_bytes(mesh: UVMesh, texture: np.ndarray, name: str, extras: dict[str, Any]) -> bytes:
    """A GLB with one mesh, smooth normals, and the PNG ``texture`` embedded as the PBR
    ``baseColorTexture`` (metallic 0, roughness 1: the albedo is unlit diffuse colour).

    ``extras`` (JSON-safe) goes into ``asset.extras``. trimesh flips ``v`` to glTF's top-left
    origin when it writes ``TEXCOORD_0``.
    """
    import trimesh
    from PIL import Image
    from trimesh.visual.material import PBRMaterial
    from trimesh.visual.texture import TextureVisuals

    image = Image.open(io.BytesIO(png_bytes(texture)))
    material = PBRMaterial(
        name=name,
        baseColorTexture=image,
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=True,
    )
    geometry = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        visual=TextureVisuals(uv=mesh.uvs, material=material),
        process=False,
    )
    scene = trimesh.Scene()
    scene.add_geometry(geometry, node_name=name, geom_name=name)
    safe_extras = json.loads(json.dumps(extras, default=str))

    def add_extras(tree: dict[str, Any]) -> None:
        tree.setdefault("asset", {})["extras"] = safe_extras
        # Declare what each buffer view holds (vertex data or indices), as the validator advises.
        for gltf_mesh in tree.get("meshes", []):
            for primitive in gltf_mesh.get("primitives", []):
                for accessor in primitive.get("attributes", {}).values():
                    view = tree["accessors"][accessor].get("bufferView")
                    if view is not None:
                        tree["bufferViews"][view]["target"] = ARRAY_BUFFER
                if "indices" in primitive:
                    view = tree["accessors"][primitive["indices"]].get("bufferView")
                    if view is not None:
                        tree["bufferViews"][view]["target"] = ELEMENT_ARRAY_BUFFER

    return trimesh.exchange.gltf.export_glb(
        scene, include_normals=True, tree_postprocessor=add_extras
    )


def write_glb(
    out_dir: Path, name: str, mesh: UVMesh, texture: np.ndarray, extras: dict[str, Any]
) -> Path:
    """``<name>.glb`` (see :func:`glb_bytes`); ``mesh`` is in the file frame."""
    data = glb_bytes(mesh, texture, name, extras)
    return write_bytes_atomic(out_dir / f"{name}.glb", data)
