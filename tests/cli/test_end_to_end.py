"""The real pipeline through the ``ra3d`` CLI: retrieval from the starter library, adaptation of
the tiny Stable Diffusion (Eq. 12), Instant-NGP NeRF particles distilled with VSD and guided by
their assets (Eq. 10-11, 13)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from ra3d.cli import main
from tests.paths import CONFIGS

DEMO = str(CONFIGS / "demo.yaml")
SMALL = [
    "--data.height", "16", "--data.width", "16", "--data.eval_height", "16",
    "--data.eval_width", "16", "--data.n_val_views", "2", "--trainer.val_check_interval", "3",
    "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
    "--model.representation.init_args.n_samples_per_ray", "16",
    "--model.representation.init_args.occupancy_update_every", "2",
    "--model.retrieval.preview_size", "16", "--model.adaptation.n_views", "10",
    "--model.adaptation.steps", "3", "--model.adaptation.batch_size", "2",
]  # fmt: skip


def fit(root: Path, steps: int, *extra: str) -> Path:
    args = ["fit", "--config", DEMO, *SMALL, "--trainer.max_steps", str(steps),
            "--trainer.logger.init_args.save_dir", str(root)]  # fmt: skip
    assert main([*args, *extra]) == 0
    runs = sorted((root / "demo").iterdir())
    return runs[-1]


def nerf_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("particles.")}


@pytest.fixture(autouse=True)
def tiny_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ra3d-cache"))


def test_fit_writes_images_and_checkpoint_and_resumes_exactly(tmp_path: Path) -> None:
    straight = fit(tmp_path / "straight", 6)
    assert (straight / "val" / "step000003.png").is_file()
    assert (straight / "val" / "step000006.gif").is_file()
    # columns: 2 orbit views; rows: the demo config's 2 particles, each followed by its asset
    assert Image.open(straight / "val" / "step000006.png").size == (2 * 16, 4 * 16)
    assert (straight / "retrieved.json").is_file()
    assert (straight / "adapter" / "view_adapter.safetensors").is_file()
    header, *rows = (straight / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    ious = [r.split(",")[columns.index("val/asset_iou")] for r in rows]
    assert any(v for v in ious)  # logged at every validation
    state_straight = nerf_state(straight / "checkpoints" / "last.ckpt")
    assert any("occupancy" in k for k in state_straight)  # the grid is part of the state

    half = fit(tmp_path / "resumed", 3)
    state_half = nerf_state(half / "checkpoints" / "last.ckpt")
    assert any(not torch.equal(state_half[k], state_straight[k]) for k in state_straight)
    resumed = fit(tmp_path / "resumed", 6, "--ckpt_path", str(half / "checkpoints" / "last.ckpt"))
    state_resumed = nerf_state(resumed / "checkpoints" / "last.ckpt")
    assert state_resumed.keys() == state_straight.keys()
    for key, value in state_straight.items():
        torch.testing.assert_close(state_resumed[key], value, rtol=0, atol=0, msg=key)

    # No frozen Stable Diffusion weights in the checkpoint: only the VSD LoRA (ζ) and its camera
    # embedding, which are trained.
    full = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    guidance_keys = [k for k in full if k.startswith("guidance.")]
    assert guidance_keys and all(".lora_" in k or "camera_embedding" in k for k in guidance_keys)
    assert "guidance.prior.unet.conv_in.weight" not in full


def test_test_subcommand_writes_a_turntable(tmp_path: Path) -> None:
    run = fit(tmp_path, 1)
    code = main(["test", "--config", DEMO, *SMALL, "--data.n_test_views", "3",
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "t"),
                 "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])  # fmt: skip
    assert code == 0
    test_dir = next((tmp_path / "t" / "demo").iterdir()) / "test"
    gif = Image.open(test_dir / "turntable.gif")
    assert gif.n_frames == 3
    assert sorted(p.name for p in test_dir.glob("view*.png")) == [
        "view000.png",
        "view001.png",
        "view002.png",
    ]


@pytest.fixture
def python_default_signals():
    """Python's own SIGINT/SIGTERM handlers for the test, whatever the runner inherited (a shell
    starts background jobs with SIGINT ignored), and the inherited ones back afterwards."""
    inherited = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in inherited.items():
        signal.signal(sig, handler)


def test_chain_goes_from_prompt_to_textured_glb(
    tmp_path: Path, capsys, python_default_signals
) -> None:
    configs = CONFIGS
    tiny = ("--trainer.max_steps 2 --trainer.val_check_interval 2 --trainer.limit_val_batches 1 "
            "--data.height 16 --data.width 16 --data.eval_height 16 --data.eval_width 16 "
            "--data.n_val_views 1 --trainer.enable_progress_bar false "
            "--model.retrieval.preview_size 16 --model.adaptation.n_views 10 "
            "--model.adaptation.steps 2 --model.adaptation.batch_size 2")  # fmt: skip
    code = main(["chain", "--prompt", "a wooden chair", "--out", str(tmp_path), "--run-id", "r1",
                 "--coarse", str(configs / "demo.yaml"), "--fine", str(configs / "demo_fine.yaml"),
                 "--texture", str(configs / "demo_texture.yaml"), "--fit-args", tiny])  # fmt: skip
    assert code == 0
    # Three stages ran inside one command: Ctrl-C is Python's own again once it returns.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    out = capsys.readouterr().out
    export = tmp_path / "demo_texture" / "r1" / "export"
    glbs = sorted(export.glob("particle*.glb"))
    assert [g.name for g in glbs] == ["particle0.glb", "particle1.glb"]
    assert all(str(g) in out for g in glbs)  # the command says where the files are
    texture = torch.load(export.parent / "checkpoints" / "last.ckpt", weights_only=True)["ra3d"]
    coarse = torch.load(tmp_path / "demo" / "r1" / "checkpoints" / "last.ckpt",
                        weights_only=True)["ra3d"]  # fmt: skip
    assert texture["prompt"] == "a wooden chair" and texture["stage"] == "texture"
    assert texture["retrieval"]["assignment"] == coarse["retrieval"]["assignment"]
    assert texture["adapter"]["path"].endswith("view_adapter.safetensors")
