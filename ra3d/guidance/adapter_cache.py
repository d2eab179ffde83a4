"""Identity of a view adapter: asset fingerprints, the cache key, and the files beside it.

:func:`ra3d.guidance.adaptation.cached_adapt` names each adapter by what it was trained from —
the prior, the assets (their files, pose and scale), their captions and the settings — so a second
fit or a resume finds it instead of training again, and any change trains a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ra3d.errors import ConfigError
from ra3d.io import write_json_atomic as write_json_atomic  # adaptation imports it here

#: Bumped when the training procedure changes, so old cached adapters are not reused.
ADAPTATION_VERSION = 1


def sidecar_path(adapter_path: str | Path) -> Path:
    """The JSON written next to an adapter: ``x.safetensors`` → ``x.json``."""
    return Path(adapter_path).with_suffix(".json")


def _dependencies(mesh_path: Path) -> list[Path]:
    """Files a mesh reads besides itself: an OBJ's MTL libraries and their texture maps, a glTF's
    external buffers and images (GLB, PLY, STL, OFF are self-contained)."""
    suffix = mesh_path.suffix.lower()
    found: list[Path] = []
    if suffix == ".obj":
        text = mesh_path.read_text(errors="replace")
        for name in re.findall(r"^\s*mtllib\s+(.+?)\s*$", text, flags=re.M):
            mtl = mesh_path.parent / name
            if mtl.is_file():
                found.append(mtl)
                mtl_text = mtl.read_text(errors="replace")
                for tex in re.findall(r"^\s*map_\w+\s+(?:-\S+\s+\S+\s+)*(.+?)\s*$", mtl_text, re.M):
                    if (mtl.parent / tex).is_file():
                        found.append(mtl.parent / tex)
    elif suffix == ".gltf":
        data = json.loads(mesh_path.read_text())
        for item in data.get("buffers", []) + data.get("images", []):
            uri = item.get("uri", "")
            if uri and not uri.startswith("data:") and (mesh_path.parent / uri).is_file():
                found.append(mesh_path.parent / uri)
    return sorted(set(found))


def asset_fingerprint(
    mesh_path: str | Path,
    front_azimuth_deg: float = 0.0,
    radius: float = 0.5,
    up_axis: str = "auto",
) -> str:
    """sha256 of what an asset's renders depend on: the mesh file's bytes (and its MTL, textures
    or glTF buffers), its pose (front azimuth, up axis) and its scale (the normalisation radius)."""
    path = Path(mesh_path)
    if not path.is_file():
        raise ConfigError(f"mesh file not found: {path}")
    h = hashlib.sha256()
    for f in [path, *_dependencies(path)]:
        h.update(f.name.encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    pose = {"front_azimuth_deg": round(float(front_azimuth_deg), 6), "radius": float(radius)}
    h.update(json.dumps({**pose, "up_axis": up_axis}, sort_keys=True).encode())
    return h.hexdigest()


def adaptation_cache_key(
    prior_id: str,
    asset_fingerprints: list[str],
    settings: Any,
    captions: list[str] | None = None,
) -> str:
    """sha256 naming the adapter of (prior, assets in order, their captions, settings); ``settings``
    is an :class:`~ra3d.guidance.adaptation.AdaptationSettings`."""
    payload = {
        "version": ADAPTATION_VERSION,
        "prior": prior_id,
        "assets": list(asset_fingerprints),
        "captions": None if captions is None else list(captions),
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
