"""The ``ra3d`` command: each kind of bad input gives one clear message and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ra3d.cli import main
from tests.paths import CONFIGS

DEMO = str(CONFIGS / "demo.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # jsonargparse reports parse errors by exiting
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(capsys: pytest.CaptureFixture[str], prompt: str) -> None:
    code, out = run(capsys, "fit", "--config", DEMO, "--prompt", prompt)
    assert code == 2
    assert "prompt is empty" in out and "Traceback" not in out


def test_unknown_config_key_on_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "fit", "--config", DEMO, "--model.bogus", "1")
    assert code == 2
    assert "model.bogus" in out and "Traceback" not in out


def test_unknown_config_key_in_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  promt: a teddy bear\n")
    code, out = run(capsys, "fit", "--config", DEMO, "--config", str(bad))
    assert code == 2
    assert "promt" in out and "Traceback" not in out


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, "fit", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "config file not found" in out and "nope.yaml" in out


def test_missing_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = run(capsys, "fit", "--config", DEMO, "--ckpt_path", str(tmp_path / "x.ckpt"))
    assert code == 2
    assert "checkpoint not found" in out and "x.ckpt" in out


def test_offline_hub_id_in_a_real_process(tmp_path: Path) -> None:
    """Run as a user would (a fresh process), so stderr is exactly what they see."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "RA3D_CACHE_DIR": str(tmp_path / "ra3d-cache")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "ra3d.cli", "fit", "--config", DEMO,
         "--model.guidance.init_args.prior", "stabilityai/stable-diffusion-2-1-base"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not available offline" in proc.stderr and "configs/demo.yaml" in proc.stderr
    assert "model.guidance.init_args.prior" in proc.stderr  # the config key to set
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "ra3d-cache").exists()  # failed before building anything


def test_unknown_command_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "fitt")
    assert code == 2 and "unknown command 'fitt'" in out
    code, out = run(capsys, "--help")
    assert code == 0 and "retrieve" in out and "fit" in out


def test_print_config_shows_resolved_values(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "fit", "--config", DEMO, "--prompt", "a red chair", "--print_config")
    assert code == 0
    assert "prompt: a red chair" in out
    assert "class_path: ra3d.representations.nerf.InstantNGPNeRF" in out
