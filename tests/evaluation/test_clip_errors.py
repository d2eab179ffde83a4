"""``ra3d evaluate`` with a CLIP the user asked for that cannot be loaded: exit 2 and one error
line, even when the asset-fidelity metrics alone could still be computed (before: exit 0 and a
note). The default CLIP missing offline stays a note."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ra3d.cli.evaluate import main_evaluate
from ra3d.training.checkpoint import RunRecord
from tests.evaluation.test_evaluation import PROMPT


def _run_with_an_asset(root: Path) -> Path:
    """A loadable checkpoint of one AzimuthCodedField particle guided by a sphere asset."""
    import trimesh

    mesh = root / "sphere.ply"
    root.mkdir(parents=True)
    trimesh.creation.icosphere(subdivisions=2, radius=1.0).export(mesh)
    asset = {"uid": "sphere", "caption": "a ball", "score": 1.0, "mesh_path": str(mesh),
             "front_azimuth_deg": 0.0}  # fmt: skip
    record = RunRecord(
        prompt=PROMPT, n_particles=1,
        representation={"class_path": "tests.evaluation.test_evaluation.AzimuthCodedField",
                        "init_args": {}},
        retrieval={"assets": [asset], "assignment": [0], "asset_radius": 0.5},
    )  # fmt: skip
    path = root / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"particles.0.janus": torch.tensor(0.0)}, "ra3d": record.to_dict()},
               path)  # fmt: skip
    return root


FAST = ["--size", "16", "--n-azimuths", "2", "--mesh-resolution", "16", "--chamfer-points", "200"]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_a_clip_file_open_clip_cannot_load_is_an_error(
    tiny_clip: tuple[str, Path, Path], tmp_path: Path, offline: None,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    name, weights, _ = tiny_clip
    run = _run_with_an_asset(tmp_path / "run")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(weights.read_bytes()[:200])  # a truncated copy
    code = main_evaluate([str(run), *FAST, "--clip-model", name, "--clip-pretrained", str(damaged)])
    # Log lines ("[ra3d] loaded ...") reach stderr too when an earlier test configured logging;
    # the error itself is one line.
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[ra3d]")]
    err = "\n".join(lines).strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("ra3d evaluate: error: open_clip cannot load the CLIP weights")
    assert str(damaged) in err and "Traceback" not in err
    assert not (run / "eval").exists()  # stopped before writing a report


def test_an_asked_clip_that_is_not_here_is_an_error(
    tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_with_an_asset(tmp_path / "run")
    assert main_evaluate([str(run), *FAST, "--clip-model", "ViT-B-32"]) == 2
    err = capsys.readouterr().err
    assert "cannot load CLIP weights ViT-B-32/openai" in err
    assert "ra3d weights download --clip ViT-B-32:openai" in err
    # The default CLIP missing offline only disables the CLIP metrics: asset fidelity is computed.
    assert main_evaluate([str(run), *FAST]) == 0
    captured = capsys.readouterr()
    assert "CLIP metrics (relative view similarity, CLIP score) not computed" in captured.err
    assert "ra3d weights download --clip ViT-L-14:openai" in captured.err
    assert (run / "eval" / "metrics.json").is_file()
