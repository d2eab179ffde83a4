"""Looking at an export without extra software: a turntable GIF, a viewer page, the credits.

* The turntable renders the *exported file itself* (loaded back with
  :func:`~ra3d.representations.mesh.load_mesh`, no renormalisation) with ra3d's mesh rasteriser
  (:class:`~ra3d.representations.mesh.MeshAsset`), so it shows exactly what a viewer will show:
  the decimated geometry, the unwrapped UVs and the baked texture.
* ``index.html`` shows every GLB interactively with Google's ``<model-viewer>`` web component.
  It works offline: the component's script is copied into the export folder when it is found
  (``RA3D_MODEL_VIEWER_JS``, an ``npm install @google/model-viewer`` in the repository's
  ``tests/browser`` folder, the current folder, or the global ``node_modules``). Without it the page
  shows the turntables and says how to get the interactive view. Browsers refuse to run module
  scripts and fetch models for pages opened from disk, so the page says to serve the folder
  (``python3 -m http.server``) when it is opened as a file.
* ``ATTRIBUTION.md`` credits the retrieved assets behind the result (many Objaverse assets are
  CC-BY) with the prompt and ra3d's version.
"""

from __future__ import annotations

import html
import importlib.resources
import logging
import math
import os
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import torch

from ra3d import __version__
from ra3d.export.write import METRES_PER_UNIT
from ra3d.io import write_bytes_atomic, write_text_atomic

logger = logging.getLogger(__name__)

MODEL_VIEWER_FILE = "model-viewer.min.js"
MODEL_VIEWER_ENV = "RA3D_MODEL_VIEWER_JS"
_MODEL_VIEWER_DIST = Path("@google") / "model-viewer" / "dist" / MODEL_VIEWER_FILE


def model_viewer_candidates() -> list[Path]:
    """Places where the ``<model-viewer>`` script may be installed, in order of preference."""
    repo = Path(__file__).resolve().parents[2]  # ra3d/export/viewer.py → the checkout
    out = []
    if os.environ.get(MODEL_VIEWER_ENV):
        out.append(Path(os.environ[MODEL_VIEWER_ENV]))
    for root in (
        repo / "tests" / "browser" / "node_modules",
        Path.cwd() / "node_modules",
        Path("/usr/local/lib/node_modules"),
        Path("/usr/lib/node_modules"),
    ):
        out.append(root / _MODEL_VIEWER_DIST)
    return out


def find_model_viewer() -> Path | None:
    """The first installed ``model-viewer.min.js`` of :func:`model_viewer_candidates`."""
    return next((p for p in model_viewer_candidates() if p.is_file()), None)


# ---------------------------------------------------------------------- turntable
@torch.no_grad()
def render_turntable(
    glb_path: Path,
    gif_path: Path,
    frames: int = 24,
    size: int = 192,
    elevation_deg: float = 15.0,
    batch: int = 4,
) -> Path:
    """A looping GIF of ``glb_path`` orbiting once, rendered by :class:`MeshAsset` (Lambertian
    shading with the light at the camera, white background). The camera distance frames the
    mesh's bounding sphere in a 40° field of view."""
    import imageio.v3 as iio

    from ra3d.cameras import orbit_cameras
    from ra3d.representations.mesh import MeshAsset, load_mesh

    data = load_mesh(glb_path, up_axis="y", normalize=False, max_texture_size=4096)
    radius = float(data.vertices.norm(dim=-1).max())
    fovy = 40.0
    distance = 1.15 * radius / math.sin(math.radians(fovy / 2))
    asset = MeshAsset(data, shading="lambertian", ambient=0.45, backend="torch")
    cameras = orbit_cameras(frames, size, size, elevation_deg, distance, fovy)
    images = []
    for start in range(0, frames, batch):
        index = torch.arange(start, min(start + batch, frames))
        rgb = asset.render(_select(cameras, index)).rgb
        images.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    video = np.concatenate(images)  # [frames, H, W, 3]

    gif = iio.imwrite("<bytes>", video, extension=".gif", duration=80, loop=0)
    return write_bytes_atomic(gif_path, gif)


def _select(cameras: Any, index: torch.Tensor) -> Any:
    """The cameras ``index`` of a batch (every per-camera field indexed, the size kept)."""
    from dataclasses import fields, replace

    changes = {}
    for f in fields(cameras):
        value = getattr(cameras, f.name)
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == len(cameras):
            changes[f.name] = value[index]
    return replace(cameras, **changes)


# ---------------------------------------------------------------------- viewer page
def write_viewer(out_dir: Path, title: str, glbs: list[Path], turntables: list[Path]) -> list[Path]:
    """``index.html`` for ``glbs`` (and ``model-viewer.min.js`` beside it when installed)."""
    template = (
        importlib.resources.files("ra3d").joinpath("assets", "viewer", "index.html").read_text()
    )
    script_src = find_model_viewer()
    written = []
    if script_src is not None:
        target = out_dir / MODEL_VIEWER_FILE
        written.append(write_bytes_atomic(target, script_src.read_bytes()))
        licence = script_src.parent.parent / "LICENSE"
        if licence.is_file():
            written.append(
                write_bytes_atomic(out_dir / "model-viewer.LICENSE.txt", licence.read_bytes())
            )
    gif_by_stem = {p.stem.removesuffix("_turntable"): p.name for p in turntables}
    figures = []
    for glb in glbs:
        name = html.escape(glb.name)
        gif = gif_by_stem.get(glb.stem)
        if script_src is not None:
            view = (
                f'<model-viewer src="{name}" alt="{name}" camera-controls auto-rotate '
                'environment-image="neutral" shadow-intensity="0" interaction-prompt="none">'
                "</model-viewer>"
            )
        elif gif is not None:
            view = f'<img src="{html.escape(gif)}" alt="{name} turntable">'
        else:
            view = ""
        figures.append(
            f'<figure>{view}<figcaption><a href="{name}">{name}</a></figcaption></figure>'
        )
    missing = ""
    if script_src is None:
        missing = (
            '<div class="note" style="display:block">The interactive viewer needs the '
            "<code>&lt;model-viewer&gt;</code> script, which was not found on this machine, so "
            "the turntables are shown instead. Install it with <code>npm install "
            "@google/model-viewer</code> in the repository's <code>tests/browser</code> folder "
            f"(or point <code>{MODEL_VIEWER_ENV}</code> at <code>{MODEL_VIEWER_FILE}</code>) and "
            "export again. The GLB files open in Blender, three.js and any glTF viewer.</div>"
        )
    page = Template(template).substitute(
        title=html.escape(title),
        version=html.escape(__version__),
        metres=f"{METRES_PER_UNIT:g}",
        folder=html.escape(str(out_dir.resolve())),
        script=(
            f'<script type="module" src="{MODEL_VIEWER_FILE}"></script>'
            if script_src is not None
            else ""
        ),
        missing=missing,
        models="\n".join(figures),
        interactive="true" if script_src is not None else "false",
    )
    written.append(write_text_atomic(out_dir / "index.html", page))
    if script_src is None:
        logger.warning(
            "model-viewer script not found; index.html shows turntables (npm install "
            "@google/model-viewer in tests/browser for the interactive viewer)"
        )
    return written


# ---------------------------------------------------------------------- attribution
def attribution_text(prompt: str, assets: list[Any], particle_assets: dict[str, int | None]) -> str:
    """``ATTRIBUTION.md``: what was made, by what, from which (credited) assets."""
    lines = [
        "# Attribution",
        "",
        f"Generated by ra3d {__version__} (retrieval-augmented text-to-3D) from the prompt:",
        "",
        f"> {prompt}",
        "",
    ]
    if not assets:
        lines += ["No retrieved 3D assets were used for this result.", ""]
    else:
        lines += [
            "The result was guided by these retrieved 3D assets. Keep this credit with the files "
            "when you share them; CC-BY assets require it.",
            "",
            "| # | asset | source | licence | attribution | caption |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for i, a in enumerate(assets):
            cells = [
                str(i),
                a.uid,
                a.source or "unknown",
                a.license or "unknown",
                a.attribution or "-",
                a.caption,
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
        used = [f"{name}: asset {idx}" for name, idx in particle_assets.items() if idx is not None]
        if used:
            lines += ["Asset assigned to each model (Eq. 10's assignment): " + ", ".join(used), ""]
    lines += [
        "Files: GLB (glTF 2.0 binary, Y-up, front +Z, 1 unit = "
        f"{METRES_PER_UNIT:g} m) and OBJ/MTL/PNG in the same frame.",
        "",
    ]
    return "\n".join(lines)


def write_attribution(out_dir: Path, text: str) -> Path:
    """``ATTRIBUTION.md`` (see :func:`attribution_text`), written atomically."""
    return write_text_atomic(out_dir / "ATTRIBUTION.md", text)
