"""A resume or a later stage whose recorded asset mesh was replaced by a broken file stops in the
preflight, before the prior loads, with one error naming the file (issue 17 item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ra3d.errors import ConfigError
from ra3d.training.checkpoint import RunRecord
from ra3d.training.preflight import check_recorded_meshes

GOOD = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"


def _run(tmp_path: Path) -> tuple[Path, Path]:
    mesh = tmp_path / "assets" / "chair.obj"
    mesh.parent.mkdir()
    mesh.write_text(GOOD)
    asset = {"uid": "chair", "caption": "a chair", "score": 0.9, "mesh_path": str(mesh),
             "front_azimuth_deg": 0.0}  # fmt: skip
    record = RunRecord(prompt="a chair", n_particles=1,
                       retrieval={"assets": [asset], "assignment": [0], "asset_radius": 0.5})  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "ra3d": record.to_dict()}, ckpt)
    return ckpt, mesh


@pytest.mark.parametrize("key", ["ckpt_path", "init_from"])
def test_a_changed_recorded_mesh_stops_before_the_prior(tmp_path: Path, key: str) -> None:
    ckpt, mesh = _run(tmp_path)
    cfg = {"ckpt_path": str(ckpt)} if key == "ckpt_path" else {"model": {"init_from": str(ckpt)}}
    check_recorded_meshes(cfg, "fit", {})  # the file as recorded: accepted
    mesh.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")  # replaced since
    with pytest.raises(ConfigError) as caught:
        check_recorded_meshes(cfg, "fit", {})
    message = str(caught.value)
    assert str(mesh) in message and "NaN" in message and "\n" not in message
    # A run folder resolves to its checkpoint the same way.
    folder_cfg = {"model": {"init_from": str(ckpt.parent.parent)}}
    with pytest.raises(ConfigError, match="NaN"):
        check_recorded_meshes(folder_cfg, "fit", {})
    mesh.unlink()
    with pytest.raises(ConfigError, match="missing"):
        check_recorded_meshes(cfg, "fit", {})
    check_recorded_meshes(cfg, "validate", {})  # only a fit rebuilds the assets


def test_only_guidance_that_loads_a_prior_is_counted_as_one() -> None:
    from ra3d.training.preflight import SD21_PARAMETERS, estimate_prior_bytes

    def cfg(guidance: dict) -> dict:
        return {"model": {"guidance": guidance}, "trainer": {"accelerator": "cpu"}}

    toy = cfg({"class_path": "tests.toys.NoisyTargetGuidance"})  # loads no prior
    assert estimate_prior_bytes(toy, 1) == (0, "")
    vsd = cfg({"class_path": "ra3d.guidance.vsd.VSDGuidance"})  # default: SD 2.1-base
    size, how = estimate_prior_bytes(vsd, 0)
    assert size == SD21_PARAMETERS * 4 and "1.29 B" in how
    named = cfg({"class_path": "my.Guidance", "init_args": {"prior": "some/model"}})
    assert estimate_prior_bytes(named, 0)[0] == SD21_PARAMETERS * 4
