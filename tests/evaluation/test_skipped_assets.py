"""A run where the relevance floor skipped one particle's asset (issue 16 item 3): evaluation
compares only the particles that used their asset, and the export credits only used assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from ra3d.evaluation.run import EvalSettings, evaluate_run
from ra3d.export.pipeline import credited_assets
from ra3d.export.viewer import attribution_text
from ra3d.representations.mesh import MeshAsset, MeshData
from ra3d.retrieval.base import RetrievedAsset
from ra3d.training.checkpoint import RunRecord
from tests.evaluation.test_evaluation import icosphere, toy_run


def _asset(tmp_path: Path, uid: str, radius: float) -> dict:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    sphere.visual.vertex_colors = np.tile([0, 0, 255, 255], (len(sphere.vertices), 1))
    sphere.export(tmp_path / f"{uid}.ply")
    return {"uid": uid, "caption": uid, "score": 0.5, "mesh_path": str(tmp_path / f"{uid}.ply"),
            "front_azimuth_deg": 0.0, "license": "CC0-1.0", "source": "test"}  # fmt: skip


def _relevance(used: list[bool]) -> dict:
    return {
        "on_weak_match": "skip",
        "decisions": [
            {"uid": f"a{k}", "score": 0.5 if u else 0.3, "floor": 0.44, "used": u, "reason": ""}
            for k, u in enumerate(used)
        ],
        "particles_with_asset": used,
        "skipped": [],
    }


def test_record_maps_skipped_assets_to_no_asset() -> None:
    retrieval = {"assets": [], "assignment": [1, 0, 1], "relevance": _relevance([True, False])}
    retrieval["assets"] = [{"uid": f"a{k}", "caption": "x", "mesh_path": "m.obj"} for k in (0, 1)]
    record = RunRecord(prompt="p", n_particles=3, retrieval=retrieval)
    assert record.used_assets == [True, False]
    assert record.particle_assets == [None, 0, None]
    # A record from before the floor (no relevance key) used every asset.
    old = RunRecord(prompt="p", n_particles=3, retrieval={**retrieval, "relevance": None})
    assert old.used_assets == [True, True] and old.particle_assets == [1, 0, 1]


def test_export_credits_only_used_assets() -> None:
    assets = [RetrievedAsset(uid=f"a{k}", caption=f"c{k}", score=0.5, mesh_path="m.obj",
                             license="CC0-1.0") for k in range(3)]  # fmt: skip
    kept, index = credited_assets(assets, [2, 1, 0], [True, False, True])
    assert [a.uid for a in kept] == ["a0", "a2"] and index == [1, None, 0]
    text = attribution_text("p", kept, {f"particle{i}": a for i, a in enumerate(index)})
    assert "a0" in text and "a2" in text and "a1" not in text
    assert "particle0: asset 1" in text and "particle1" not in text
    everything, same = credited_assets(assets, [2, 1, 0])
    assert everything == assets and same == [2, 1, 0]


def test_evaluation_skips_asset_fidelity_of_a_particle_whose_asset_was_skipped(
    tmp_path: Path,
) -> None:
    assets = [_asset(tmp_path, "a0", 1.0), _asset(tmp_path, "a1", 1.0)]
    red = torch.tensor([1.0, 0.0, 0.0])

    def particle() -> MeshAsset:
        v, f = icosphere(0.45, (0.0, 0.0, 0.0))
        return MeshAsset(MeshData(v, f, vertex_colors=red.expand(len(v), 3).contiguous()),
                         backend="torch")  # fmt: skip

    settings = EvalSettings(n_azimuths=2, size=32, distance=3.0, fovy_deg=40.0,
                            chamfer_points=2000)  # fmt: skip
    mixed = toy_run(tmp_path / "mixed", [False, False], particles=[particle(), particle()],
                    retrieval={"assets": assets, "assignment": [0, 1], "asset_radius": 0.5,
                               "relevance": _relevance([True, False])})  # fmt: skip
    both = toy_run(tmp_path / "both", [False, False], particles=[particle(), particle()],
                   retrieval={"assets": assets, "assignment": [0, 1], "asset_radius": 0.5})  # fmt: skip
    r_mixed = evaluate_run(mixed, settings, embedder=None, clip_unavailable="test")
    r_both = evaluate_run(both, settings, embedder=None, clip_unavailable="test")
    p0, p1 = r_mixed.particles
    # The particle that used its asset is measured exactly as in a run that used every asset.
    assert p0.asset_uid == "a0"
    assert torch.equal(p0.asset_iou, r_both.particles[0].asset_iou)
    assert p0.chamfer == r_both.particles[0].chamfer
    # The other one is not compared with an asset that never guided it, and says why.
    assert p1.asset_uid is None and p1.asset_iou is None and p1.chamfer is None
    assert any("skipped by the relevance floor" in n for n in p1.notes)
    assert r_both.particles[1].asset_uid == "a1"
