"""Textured mesh export of any representation or run: GLB, OBJ/MTL/PNG, turntable, viewer page.

The pipeline for one particle θ⁽ⁱ⁾ (issue 9):

``extract_mesh(resolution, threshold)`` (the surface: DMTet's own, or the NeRF's density level set
as in the coarse→fine conversion) → decimation to ``max_faces`` → xatlas unwrap → albedo baked
from ``query_albedo`` in UV space with padded seams (:mod:`ra3d.export.bake`) → files in glTF's
Y-up frame, 1 unit = 1 m (:mod:`ra3d.export.write`) → turntable of the written GLB, ``index.html``
and ``ATTRIBUTION.md`` (:mod:`ra3d.export.viewer`).

Python API (what ``ra3d export`` and the fine stage call): :func:`export_run` for a
:class:`~ra3d.training.checkpoint.LoadedRun`, :func:`export_particles` for live particles (the fine stage
at its end), :func:`export_representation` for one representation.
Everything works through the :class:`~ra3d.representations.base.Representation` interface, so
any particle type with a surface and a colour field exports.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ra3d import __version__
from ra3d.errors import ConfigError, Ra3dError
from ra3d.export.bake import UVMesh, bake_albedo, decimate, seam_padding, unwrap
from ra3d.export.options import DEFAULT_MAX_FACES, FORMATS, ExportOptions
from ra3d.export.viewer import attribution_text, render_turntable, write_attribution, write_viewer
from ra3d.export.write import METRES_PER_UNIT, world_to_file, write_glb, write_obj
from ra3d.representations.base import Representation

logger = logging.getLogger(__name__)


def ensure_writable(out_dir: Path) -> Path:
    """Create ``out_dir`` and prove it is writable, or raise one clear error."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise Ra3dError(
            f"cannot write to the output folder {out_dir} ({err.strerror or err}); pass a "
            "writable folder with --out DIR"
        ) from err
    return out_dir


def _device_of(rep: Representation) -> torch.device:
    tensor = next(iter(rep.parameters()), None)
    if tensor is None:
        tensor = next(iter(rep.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def surface_uv_mesh(rep: Representation, options: ExportOptions, name: str) -> UVMesh:
    """The representation's surface, decimated and unwrapped (ra3d world frame)."""
    t0 = time.perf_counter()
    try:
        surface = rep.extract_mesh(options.resolution, options.threshold)
    except NotImplementedError as err:
        raise Ra3dError(f"{name}: {err}") from err
    except ValueError as err:  # e.g. the NeRF's "no density above threshold"
        raise Ra3dError(
            f"{name}: no surface to export ({err}). Lower --threshold (the density level of the "
            "surface) or export a longer-trained checkpoint"
        ) from err
    vertices = surface.vertices.detach().float().cpu().numpy()
    faces = surface.faces.detach().long().cpu().numpy()
    if len(faces) == 0:
        raise Ra3dError(
            f"{name}: the extracted surface is empty at threshold {options.threshold}; lower "
            "--threshold or export a longer-trained checkpoint"
        )
    logger.info(
        "%s: surface extracted (grid %d, threshold %s) in %.1fs",
        name, options.resolution, options.threshold, time.perf_counter() - t0,
    )  # fmt: skip
    before = len(faces)
    t0 = time.perf_counter()
    vertices, faces = decimate(vertices, faces, options.max_faces)
    logger.info(
        "%s: %d faces extracted, %d after decimation (--max-faces %d) in %.1fs",
        name, before, len(faces), options.max_faces, time.perf_counter() - t0,
    )  # fmt: skip
    t0 = time.perf_counter()
    mesh = unwrap(vertices, faces, options.texture_size, seam_padding(options.texture_size))
    logger.info(
        "%s: xatlas unwrap: %d vertices after seam splits, %.1fs",
        name, len(mesh.vertices), time.perf_counter() - t0,
    )  # fmt: skip
    return mesh


def export_representation(
    rep: Representation,
    out_dir: str | Path,
    name: str,
    options: ExportOptions | None = None,
    provenance: dict[str, Any] | None = None,
) -> list[Path]:
    """Export one representation as ``<name>.glb`` / ``<name>.obj`` (+ ``.mtl``,
    ``_albedo.png``) and ``<name>_turntable.gif`` into ``out_dir``; returns the written files.

    ``provenance`` (JSON-safe: prompt, assets, ...) goes into the GLB's ``asset.extras``.
    No ``index.html``/``ATTRIBUTION.md`` here: :func:`export_run` writes them for all particles.
    """
    options = options or ExportOptions()
    options.validate()
    out_dir = ensure_writable(Path(out_dir))
    was_training = rep.training
    rep.eval()
    try:
        mesh = surface_uv_mesh(rep, options, name)
        t0 = time.perf_counter()
        texture = bake_albedo(
            rep.query_albedo,
            mesh,
            options.texture_size,
            margin=seam_padding(options.texture_size),
            device=_device_of(rep),
        )
        logger.info("%s: albedo baked in %.1fs", name, time.perf_counter() - t0)
    finally:
        rep.train(was_training)
    file_mesh = UVMesh(world_to_file(mesh.vertices), mesh.faces, mesh.uvs)
    extras = {
        "generator": f"ra3d {__version__}",
        "up": "+Y",
        "front": "+Z",
        "metres_per_unit": METRES_PER_UNIT,
        **(provenance or {}),
    }
    written: list[Path] = []
    t0 = time.perf_counter()
    if "obj" in options.formats:
        header = f"ra3d {__version__}; Y-up, front +Z, 1 unit = {METRES_PER_UNIT:g} m"
        if provenance and provenance.get("prompt"):
            header += f"\nprompt: {provenance['prompt']}"
        written += write_obj(out_dir, name, file_mesh, texture, header)
    glb = None
    if "glb" in options.formats:
        glb = write_glb(out_dir, name, file_mesh, texture, extras)
        written.append(glb)
    logger.info("%s: files written in %.1fs", name, time.perf_counter() - t0)
    if options.turntable:
        source = glb if glb is not None else out_dir / f"{name}.obj"
        t0 = time.perf_counter()
        written.append(
            render_turntable(
                source,
                out_dir / f"{name}_turntable.gif",
                frames=options.turntable_frames,
                size=options.turntable_size,
            )
        )
        logger.info("%s: turntable rendered in %.1fs", name, time.perf_counter() - t0)
    return written


def _particle_indices(n: int, particles: Sequence[int] | None) -> list[int]:
    if particles is None:
        return list(range(n))
    bad = [i for i in particles if not 0 <= int(i) < n]
    if bad:
        raise ConfigError(
            f"particle index {bad[0]} is out of range: the checkpoint has {n} particle(s), "
            f"pass --particle 0..{n - 1} or --particle all"
        )
    return [int(i) for i in particles]


def export_run(
    run: Any,
    out_dir: str | Path | None = None,
    options: ExportOptions | None = None,
    particles: Sequence[int] | None = None,
) -> list[Path]:
    """Export particles of a loaded run (a :class:`~ra3d.training.checkpoint.LoadedRun`: its
    ``particles``, ``prompt``, ``assets``, ``assignment``, ``record.stage``, ``checkpoint_path``
    and ``run_dir``) into ``out_dir`` (default ``<run>/export``); all particles when
    ``particles`` is None. See :func:`export_particles`."""
    return export_particles(
        run.particles,
        Path(out_dir) if out_dir is not None else run.run_dir / "export",
        prompt=run.prompt,
        assets=run.assets,
        assignment=run.assignment,
        used_assets=run.record.used_assets,
        stage=run.record.stage,
        checkpoint=str(run.checkpoint_path),
        options=options,
        particles=particles,
    )


def credited_assets(
    assets: Sequence[Any], assignment: Sequence[int], used: Sequence[bool] | None = None
) -> tuple[list[Any], list[int | None]]:
    """The assets to credit and each particle's index into them (None: the particle used none).

    An asset the relevance floor skipped (``used[k]`` False) guided neither a particle (no asset
    term, no delta distillation) nor the view adapter, so it is left out and the others are
    numbered in their original order.
    """
    flags = list(used) if used is not None else [True] * len(assets)
    if len(flags) != len(assets):
        raise ValueError(f"{len(flags)} used-asset flag(s) for {len(assets)} asset(s)")
    kept = [k for k, flag in enumerate(flags) if flag]
    renumber = {old: new for new, old in enumerate(kept)}
    return [assets[k] for k in kept], [renumber.get(int(a)) for a in assignment]


def export_particles(
    representations: Sequence[Representation],
    out_dir: str | Path,
    prompt: str,
    assets: Sequence[Any] = (),
    assignment: Sequence[int] = (),
    stage: str = "",
    checkpoint: str = "",
    options: ExportOptions | None = None,
    particles: Sequence[int] | None = None,
    used_assets: Sequence[bool] | None = None,
) -> list[Path]:
    """Export particles θ⁽ⁱ⁾ as ``particle<i>.*`` into ``out_dir``, with one ``index.html`` and
    ``ATTRIBUTION.md`` for all of them; returns every written file.

    For callers that hold live particles rather than a checkpoint (the fine stage at its end).
    ``assets`` are :class:`~ra3d.retrieval.base.RetrievedAsset` s and ``assignment`` the asset
    index of each particle (Eq. 10's π); both go into the credits and the GLBs' extras.
    ``used_assets`` (one flag per asset; default: all) says which assets the run used: one that
    the relevance floor skipped guided nothing and is not credited (see
    :func:`credited_assets`).
    """
    options = options or ExportOptions()
    options.validate()
    indices = _particle_indices(len(representations), particles)
    out = ensure_writable(Path(out_dir))
    assets, particle_index = credited_assets(assets, assignment, used_assets)
    base = {
        "prompt": prompt,
        "ra3d_version": __version__,
        "checkpoint": checkpoint,
        "stage": stage,
        "assets": [
            {k: a.to_json()[k] for k in ("uid", "caption", "source", "license", "attribution")}
            for a in assets
        ],
    }
    written: list[Path] = []
    glbs, gifs, particle_assets = [], [], {}
    for i in indices:
        name = f"particle{i}"
        asset_index = particle_index[i] if i < len(particle_index) else None
        particle_assets[name] = asset_index
        provenance = {**base, "particle": i, "asset_index": asset_index}
        files = export_representation(representations[i], out, name, options, provenance)
        written += files
        glbs += [f for f in files if f.suffix == ".glb"]
        gifs += [f for f in files if f.suffix == ".gif"]
    written.append(write_attribution(out, attribution_text(prompt, assets, particle_assets)))
    if options.viewer and glbs:
        written += write_viewer(out, prompt, glbs, gifs)
    logger.info("exported %d particle(s) to %s", len(indices), out)
    return written


def describe_written(files: list[Path]) -> str:
    """Human summary of an export, for the CLI and the fine stage's log."""
    if not files:
        return "nothing was written"
    folder = files[0].parent
    lines = [f"exported to {folder}/"]
    lines += [f"  {f.name}  ({f.stat().st_size / 1024:.0f} KiB)" for f in files]
    if any(f.name == "index.html" for f in files):
        lines.append(
            "view in a browser: python3 -m http.server --bind 127.0.0.1 --directory "
            f"{folder} 8000  then open http://127.0.0.1:8000/index.html"
        )
    return "\n".join(lines)


__all__ = [
    "DEFAULT_MAX_FACES",
    "FORMATS",
    "ExportOptions",
    "describe_written",
    "ensure_writable",
    "export_particles",
    "export_representation",
    "export_run",
]
