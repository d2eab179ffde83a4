"""A CLIP the user named that cannot be loaded is an error, never a silent fallback; ``auto``'s
fallback to MiniLM is a warning that names ``ra3d weights download --clip``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ra3d.errors import CheckpointError, Ra3dError
from ra3d.retrieval.embed import (
    ClipLoadError,
    MiniLMTextEmbedder,
    OpenCLIPEmbedder,
    make_embedder,
    weights_fingerprint,
)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.mark.parametrize("embedder", ["clip", "auto"])
def test_a_damaged_clip_file_is_an_error(
    tiny_clip: tuple[str, Path, Path], tmp_path: Path, offline: None, embedder: str
) -> None:
    name, weights, _ = tiny_clip
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(ClipLoadError) as info:
        make_embedder(embedder, clip_model=name, clip_pretrained=str(damaged))
    message = str(info.value)
    assert isinstance(info.value, Ra3dError) and "\n" not in message
    assert f"open_clip cannot load the CLIP weights {damaged} as {name}" in message
    # The intact file loads, and its id is the fingerprint of that file.
    ok = make_embedder(embedder, clip_model=name, clip_pretrained=str(weights))
    assert isinstance(ok, OpenCLIPEmbedder)
    assert ok.id == f"open_clip:{name}:{weights_fingerprint(weights)}"


def test_auto_with_a_local_dir_that_cannot_load_is_an_error(
    tiny_clip: tuple[str, Path, Path], tmp_path: Path, offline: None
) -> None:
    """Before, an incomplete ``local-dir:`` folder silently fell back to MiniLM."""
    with pytest.raises(CheckpointError, match="open_clip_config.json not found"):
        make_embedder("auto", clip_model=f"local-dir:{tmp_path / 'nothing'}")
    broken = tmp_path / "broken"
    broken.mkdir()
    _, _, folder = tiny_clip
    (broken / "open_clip_config.json").write_bytes((folder / "open_clip_config.json").read_bytes())
    (broken / "open_clip_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ClipLoadError, match="fresh copy of the folder"):
        make_embedder("auto", clip_model=f"local-dir:{broken}")
    assert isinstance(make_embedder("auto", clip_model=f"local-dir:{folder}"), OpenCLIPEmbedder)


def test_auto_fallback_is_a_warning_naming_the_download(
    offline: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ra3d.retrieval.embed"):
        embedder = make_embedder("auto")
    assert isinstance(embedder, MiniLMTextEmbedder)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "`ra3d weights download --clip ViT-L-14:openai`" in text
    assert "no image rerank" in text and "azimuth 0" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ra3d.retrieval.embed"):
        make_embedder("minilm")  # asked for: no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
