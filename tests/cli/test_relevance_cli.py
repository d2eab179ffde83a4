"""Issue 16 through ``ra3d fit``: the full-size config stops at once without CLIP weights, and the
demo runs without the assets the relevance floor skips (or stops with ``on_weak_match: stop``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from ra3d.cli import main
from ra3d.guidance.prior import DiffusionPrior
from tests.paths import CONFIGS

SMALL = [
    "--trainer.max_steps", "1", "--data.height", "16", "--data.width", "16",
    "--data.eval_height", "16", "--data.eval_width", "16", "--data.n_val_views", "1",
    "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--model.representation.init_args.n_samples_per_ray", "16",
    "--model.retrieval.preview_size", "16", "--model.adaptation.n_views", "10",
    "--model.adaptation.steps", "2", "--model.adaptation.batch_size", "2",
]  # fmt: skip


@pytest.fixture
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ra3d cache (the tiny prior, the caption index) for the demo runs of this session."""
    return tmp_path_factory.getbasetemp() / "ra3d-cache"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ra3d: error:")]


def test_full_size_config_without_clip_weights_stops_before_the_prior(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # nor ~/.cache/clip
    loaded = []
    monkeypatch.setattr(DiffusionPrior, "__init__", lambda *a, **k: loaded.append(a))
    t0 = time.perf_counter()
    code = main(["fit", "--config", str(CONFIGS / "coarse_nerf.yaml"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "out")])  # fmt: skip
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2
    assert loaded == []  # the prior was never loaded
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert "ra3d weights download --clip ViT-L-14:openai" in lines[0]
    assert "embedder minilm" in lines[0]
    assert seconds < 60  # in seconds: the config is parsed and checked, nothing is loaded
    assert not (tmp_path / "out").exists()


def test_demo_with_a_wrong_best_match_runs_without_assets_and_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    shared_cache: Path,
) -> None:
    monkeypatch.setenv("RA3D_CACHE_DIR", str(shared_cache))
    with caplog.at_level("WARNING"):
        code = main(["fit", "--config", str(CONFIGS / "demo.yaml"), *SMALL,
                     "--prompt", "a corgi puppy",
                     "--trainer.logger.init_args.save_dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    assert "no retrieved asset passes the relevance floor" in caplog.text
    assert "blend-swap-cc-0-teddybear" in caplog.text and "0.345 < floor 0.440" in caplog.text
    run = next((tmp_path / "demo").iterdir())
    entries = json.loads((run / "retrieved.json").read_text())
    assert [e["uid"] for e in entries][0] == "blend-swap-cc-0-teddybear"
    assert all(e["decision"] == "skipped" for e in entries)
    assert not (run / "adapter").exists()  # no ω trained on assets that are not used
    # validation rows: the 2 particles only, no asset beside them (a used asset adds a row each)
    assert Image.open(run / "val" / "step000001.png").size == (16, 2 * 16)


def test_on_weak_match_stop_is_one_error_line(tmp_path: Path, shared_cache: Path) -> None:
    """A fresh process, as a user runs it, so stderr is exactly what they see."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RA3D_CACHE_DIR": str(shared_cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "ra3d.cli", "fit", "--config", str(CONFIGS / "demo.yaml"), *SMALL,
         "--prompt", "a corgi puppy", "--model.retrieval.on_weak_match", "stop",
         "--trainer.logger.init_args.save_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = error_lines(proc.stderr)
    assert len(lines) == 1
    assert "blend-swap-cc-0-teddybear" in lines[0] and "0.345" in lines[0]
    assert "on_weak_match" in lines[0] and "min_score" in lines[0]
