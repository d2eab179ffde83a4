"""Runs saved before the layout change (issue 15) keep working: a resume and a later stage.

``tests/fixtures/pre_layout_run`` was written by the code before the move (see its README): its
``config.yaml`` names ``ra3d.callbacks.FinalCheckpoint`` and the NeRF/VSD classes by their paths,
and its checkpoint's record names the NeRF class.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ra3d.cli import main
from ra3d.training.checkpoint import load_run
from tests.paths import CONFIGS, FIXTURES

FIXTURE = FIXTURES / "pre_layout_run"
QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ra3d-cache"))


def test_pre_layout_checkpoint_loads_its_particles_exactly() -> None:
    """The record's class path still builds the particle, and every saved tensor is loaded as is."""
    run = load_run(FIXTURE / "checkpoints" / "last.ckpt")
    saved = torch.load(FIXTURE / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    (particle,) = run.particles
    assert type(particle).__module__ == "ra3d.representations.nerf"
    own = particle.state_dict()
    expected = {
        k.removeprefix("particles.0."): v for k, v in saved.items() if k.startswith("particles.0.")
    }
    assert set(own) == set(expected)
    assert all(torch.equal(own[k], expected[k]) for k in expected)


def test_pre_layout_run_resumes_with_its_own_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "pre_layout" / "run"
    shutil.copytree(FIXTURE, run_dir)
    code = main(["fit", "--config", str(run_dir / "config.yaml"),
                 "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                 "--trainer.max_steps", "3", "--trainer.logger.init_args.save_dir", str(tmp_path),
                 *QUIET])  # fmt: skip
    assert code == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["ra3d"]["global_step"] == 3
    assert (run_dir / "config.resume-1.yaml").is_file()  # the first config.yaml is kept
    assert (run_dir / "config.yaml").read_bytes() == (FIXTURE / "config.yaml").read_bytes()


def test_pre_layout_run_initialises_the_fine_stage(tmp_path: Path) -> None:
    code = main(["fit", "--config", str(CONFIGS / "demo_fine.yaml"),
                 "--init_from", str(FIXTURE / "checkpoints" / "last.ckpt"),
                 "--model.n_particles", "1", "--model.retrieval.enabled", "false",
                 "--model.loss_weights.asset", "0",
                 "--model.representation.init_args.grid_resolution", "16",
                 "--model.representation.init_args.encoding.n_levels", "4",
                 "--model.representation.init_args.encoding.log2_hashmap_size", "10",
                 "--model.representation.init_args.hidden_dim", "16",
                 "--trainer.max_steps", "1", "--trainer.val_check_interval", "1",
                 "--trainer.limit_val_batches", "1", "--data.n_val_views", "1",
                 "--data.height", "16", "--data.width", "16", "--data.eval_height", "16",
                 "--data.eval_width", "16", "--trainer.logger.init_args.save_dir", str(tmp_path),
                 "--trainer.logger.init_args.version", "fine", *QUIET])  # fmt: skip
    assert code == 0
    record = torch.load(tmp_path / "demo_fine" / "fine" / "checkpoints" / "last.ckpt",
                        weights_only=True)["ra3d"]  # fmt: skip
    assert record["prompt"] == "a teddy bear"  # inherited from the pre-layout run
    assert record["stage"] == "geometry"
    assert record["representation"]["class_path"] == "ra3d.representations.dmtet.DMTet"
