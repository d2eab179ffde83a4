"""The preflight's CLIP check (issue 16): ``retrieval.embedder: clip`` without CLIP weights stops
before anything loads, and only where the fit would retrieve."""

from __future__ import annotations

from pathlib import Path

import pytest

from ra3d.errors import ModelNotFoundError
from ra3d.training.preflight import check_retrieval


@pytest.fixture
def no_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def cfg(**retrieval) -> dict:
    return {"model": {"prompt": "a corgi", "retrieval": {"embedder": "clip", **retrieval}}}


def test_clip_without_weights_names_the_download(no_clip: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"ra3d weights download --clip ViT-L-14:openai"):
        check_retrieval(cfg(), "fit")
    with pytest.raises(ModelNotFoundError, match=r"--clip ViT-B-32:laion2b_s34b_b79k"):
        check_retrieval(cfg(clip_model="ViT-B-32", clip_pretrained="laion2b_s34b_b79k"), "fit")


def test_only_a_fit_that_retrieves_with_clip_is_checked(no_clip: Path) -> None:
    check_retrieval(cfg(embedder="minilm"), "fit")  # asked for: no CLIP needed
    check_retrieval(cfg(embedder="auto"), "fit")  # auto falls back (with a warning)
    check_retrieval(cfg(enabled=False), "fit")
    check_retrieval(cfg(assets=["box.ply"]), "fit")  # the user's meshes: nothing retrieved
    inherited = cfg()
    inherited["model"]["init_from"] = "outputs/coarse/version_0/checkpoints/last.ckpt"
    check_retrieval(inherited, "fit")  # a later stage inherits the assets
    resumed = {**cfg(), "ckpt_path": "last.ckpt"}
    check_retrieval(resumed, "fit")  # a resume reads them from its checkpoint
    check_retrieval(cfg(), "test")


def test_weights_present_pass(no_clip: Path) -> None:
    snapshot = (no_clip / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai"
                / "snapshots" / "0123")  # fmt: skip
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    check_retrieval(cfg(), "fit")
    weights = no_clip / "my_clip.safetensors"
    weights.write_bytes(b"weights")
    check_retrieval(cfg(clip_pretrained=str(weights)), "fit")
