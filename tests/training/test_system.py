"""The Lightning system: exact resume, checkpoint contents, validation outputs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from ra3d.errors import CheckpointError, ConfigError
from ra3d.training.callbacks import FinalCheckpoint
from ra3d.training.data import RandomCameraDataModule
from ra3d.training.system import Ra3dSystem
from tests.paths import CONFIGS
from tests.toys import ColorField, NoisyTargetGuidance


def make_system(n_particles: int = 2) -> Ra3dSystem:
    torch.manual_seed(0)
    return Ra3dSystem(prompt="a cube", representation=ColorField, guidance=NoisyTargetGuidance(),
                      n_particles=n_particles, loss_weights={"guidance": 1.0, "sparsity": 0.1},
                      learning_rates={"encoding": 0.05, "default": 0.01})  # fmt: skip


def make_trainer(root: Path, max_steps: int) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=root, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, callbacks=[FinalCheckpoint()],
                      val_check_interval=2, limit_val_batches=2, num_sanity_val_steps=0)  # fmt: skip


def make_data() -> RandomCameraDataModule:
    return RandomCameraDataModule(height=6, width=6, batch_size=2, eval_height=6, eval_width=6,
                                  n_val_views=2, seed=3)  # fmt: skip


def particle_state(system: Ra3dSystem) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in system.particles.state_dict().items()}


def test_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    straight = make_system()
    make_trainer(tmp_path / "a", 6).fit(straight, make_data())

    first = make_system()
    make_trainer(tmp_path / "b", 3).fit(first, make_data())
    ckpt = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    resumed = make_system()
    torch.manual_seed(123)  # a different global RNG state must not matter
    make_trainer(tmp_path / "c", 6).fit(resumed, make_data(), ckpt_path=ckpt)

    for key, value in particle_state(straight).items():
        torch.testing.assert_close(particle_state(resumed)[key], value, rtol=0, atol=0)
    torch.testing.assert_close(resumed.guidance.adapter, straight.guidance.adapter, rtol=0, atol=0)
    # and training actually moved the particles
    assert not torch.equal(
        particle_state(first)["0.weight"], particle_state(make_system())["0.weight"]
    )


def test_checkpoint_drops_frozen_prior_but_keeps_trainables(tmp_path: Path) -> None:
    system = make_system()
    make_trainer(tmp_path, 1).fit(system, make_data())
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert "guidance.adapter" in state
    assert "guidance.prior_weight" not in state and "guidance.prior_buffer" not in state
    assert {"particles.0.weight", "particles.1.weight"} <= set(state)


def test_checkpoint_of_other_config_is_rejected(tmp_path: Path) -> None:
    make_trainer(tmp_path, 1).fit(make_system(n_particles=1), make_data())
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="1 particle.*asks for 2"):
        make_trainer(tmp_path / "x", 2).fit(make_system(n_particles=2), make_data(), ckpt_path=ckpt)


def test_particles_start_different_and_validation_writes_grid(tmp_path: Path) -> None:
    system = make_system(n_particles=2)
    assert not torch.equal(system.particles[0].weight, system.particles[1].weight)
    make_trainer(tmp_path, 2).fit(system, make_data())
    grid = Image.open(tmp_path / "val" / "step000002.png")
    assert grid.size == (2 * 6, 2 * 6)  # columns: 2 views, rows: 2 particles, 6 px tiles
    gif = Image.open(tmp_path / "val" / "step000002.gif")
    assert gif.n_frames == 2
    # Tile (row p, column v) is particle p rendered at orbit camera v.
    system.eval()
    cams = make_data().orbit(2)
    pixels = torch.tensor(list(grid.getdata()), dtype=torch.float32).reshape(12, 12, 3)
    for p in range(2):
        for v in range(2):
            expected = system.particles[p].render(cams[v]).rgb[0].detach() * 255
            tile = pixels[6 * p : 6 * p + 6, 6 * v : 6 * v + 6]
            assert (tile - expected).abs().max() <= 1.0, (p, v)


def test_optimizer_groups_follow_learning_rates() -> None:
    system = make_system()
    opt = system.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"particles/default": 0.01, "particles/encoding": 0.05, "adapter": 1e-2}


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt_is_rejected(prompt: str) -> None:
    with pytest.raises(ConfigError, match="prompt is empty"):
        Ra3dSystem(prompt=prompt, representation=ColorField, guidance=NoisyTargetGuidance())


def test_weight_decay_defaults_to_what_threestudio_runs() -> None:
    # threestudio's ProlificDreamer sets no weight_decay, so torch's AdamW default applies.
    torch_default = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).defaults["weight_decay"]
    opt = make_system().configure_optimizers()
    assert {g["weight_decay"] for g in opt.param_groups} == {torch_default}


def test_guidance_terms_are_weighted_separately() -> None:
    from ra3d.guidance.base import GuidanceOutput

    system = Ra3dSystem(prompt="a cube", representation=ColorField, guidance=NoisyTargetGuidance(),
                        loss_weights={"guidance": 2.0, "toy": 0.25})  # fmt: skip
    a, b = torch.tensor(3.0, requires_grad=True), torch.tensor(5.0, requires_grad=True)
    out = GuidanceOutput(loss=a + b, terms={"loss_toy": a, "loss_other": b})
    loss = system.weighted_guidance_loss(out)  # "other" is not weighted: default 1
    loss.backward()
    assert float(loss) == pytest.approx(2.0 * (0.25 * 3.0 + 5.0))
    assert float(a.grad) == pytest.approx(0.5) and float(b.grad) == pytest.approx(2.0)


def test_unknown_loss_weight_key_lists_the_known_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"unknown loss_weights key\(s\) \['sparsty'\].*'asset'.*'sparsity'.*'toy'",
    ):
        Ra3dSystem(prompt="a cube", representation=ColorField, guidance=NoisyTargetGuidance(),
                   loss_weights={"sparsty": 1.0})  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, key",
    [({"loss_weights": {"toy": float("nan")}}, "loss_weights.toy"),
     ({"loss_weights": {"toy": [0, 1.0, float("inf"), 10]}}, "loss_weights.toy"),
     ({"learning_rates": {"default": float("nan")}}, "learning_rates.default"),
     ({"weight_decay": float("nan")}, "weight_decay")],
)  # fmt: skip
def test_non_finite_settings_are_refused(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Ra3dSystem(
            prompt="a cube", representation=ColorField, guidance=NoisyTargetGuidance(), **kwargs
        )


def test_coarse_config_uses_threestudio_view_thresholds() -> None:
    import yaml

    config = yaml.safe_load((CONFIGS / "coarse_nerf.yaml").read_text())
    guidance = config["model"]["guidance"]["init_args"]
    # threestudio's prolificdreamer.yaml prompt_processor: front_threshold 30, back_threshold 30
    assert guidance["front_threshold"] == 30.0 and guidance["back_threshold"] == 30.0
