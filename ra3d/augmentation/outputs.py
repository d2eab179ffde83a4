"""What a retrieval-augmented run writes about its assets into the run folder: ``retrieved.json``
and one 4-view preview strip per asset (``retrieved/assetNN_<uid>.png``), each written atomically
and readable by everyone (:mod:`ra3d.io`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ra3d.augmentation.relevance import RelevanceDecision
from ra3d.io import write_image_atomic, write_json_atomic
from ra3d.retrieval.base import RetrievedAsset

RETRIEVED_JSON = "retrieved.json"
PREVIEW_DIR = "retrieved"


def write_retrieval_outputs(
    run_dir: Path,
    assets: list[RetrievedAsset],
    assignment: list[int],
    meshes: list[Any],
    preview_size: int = 192,
    decisions: Sequence[RelevanceDecision] | None = None,
    on_weak_match: str | None = None,
) -> Path:
    """``retrieved.json`` and ``retrieved/assetNN_<uid>.png`` (front, side, back, other side).

    One ``retrieved.json`` entry per asset: uid, caption, score, rotation, licence, attribution,
    mesh path, ``particles`` (those π assigned to it), ``preview``; and the relevance floor's
    verdict (:mod:`ra3d.augmentation.relevance`): ``floor`` (None: no floor applied), ``used``,
    ``decision`` (``used`` or ``skipped``), ``reason``, ``on_weak_match`` and
    ``particles_using`` (the particles that train against it: ``particles`` when used, else
    none). Without ``decisions`` every asset is used."""
    from ra3d.cameras import orbit_cameras

    cams = orbit_cameras(
        4, preview_size, preview_size, elevation_deg=15.0, distance=1.5, fovy_deg=50.0
    )
    entries = []
    for n, (asset, mesh) in enumerate(zip(assets, meshes, strict=True)):
        with torch.no_grad():
            rgb = mesh.render(cams.to(mesh.vertices.device)).rgb.detach().float().cpu()
        strip = rgb.permute(1, 0, 2, 3).reshape(preview_size, 4 * preview_size, 3)
        preview = run_dir / PREVIEW_DIR / f"asset{n:02d}_{asset.uid}.png"
        write_image_atomic((strip.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8), preview)
        entry = asset.to_json()
        particles = [i for i, a in enumerate(assignment) if a == n]
        decision = decisions[n] if decisions else None
        used = decision is None or decision.used
        entry.update(
            index=n,
            rotation_deg_about_z=-asset.front_azimuth_deg,
            particles=particles,
            preview=str(preview.relative_to(run_dir)),
            floor=None if decision is None or decision.floor is None else float(decision.floor),
            used=used,
            decision="used" if used else "skipped",
            reason=decision.reason if decision is not None else "used",
            on_weak_match=on_weak_match,
            particles_using=particles if used else [],
        )
        entries.append(entry)
    path = run_dir / RETRIEVED_JSON
    write_json_atomic(path, entries)
    return path


__all__ = ["PREVIEW_DIR", "RETRIEVED_JSON", "write_retrieval_outputs"]
