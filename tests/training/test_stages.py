"""The fine stage: ``init_from`` a coarse checkpoint (inheritance, conversion, errors, resume)."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import trimesh
import yaml

from ra3d.augmentation.assets import RetrievalConfig
from ra3d.cameras import make_cameras
from ra3d.errors import CheckpointError, ConfigError
from ra3d.representations.convert import ConversionOptions
from ra3d.representations.dmtet import DMTet
from ra3d.representations.nerf import InstantNGPNeRF
from ra3d.training.callbacks import FinalCheckpoint
from ra3d.training.checkpoint import read_checkpoint
from ra3d.training.data import RandomCameraDataModule
from ra3d.training.stages import guidance_image
from ra3d.training.system import Ra3dSystem
from tests.paths import CONFIGS
from tests.toys import ColorField, NoisyTargetGuidance

ENCODING = {"n_levels": 2, "n_features_per_level": 2, "log2_hashmap_size": 8, "backend": "torch"}
NERF = functools.partial(InstantNGPNeRF, radius=1.0, n_samples_per_ray=16, encoding=ENCODING,
                         hidden_dim=16, normal_type="none", use_occupancy_grid=False)  # fmt: skip
FINE = functools.partial(DMTet, grid_resolution=12, encoding=ENCODING, hidden_dim=16,
                         backend="torch")  # fmt: skip
OPTIONS = ConversionOptions(threshold=3.0, margin=0.1)


def _fit(root: Path, system: Ra3dSystem, steps: int, ckpt: Path | None = None) -> Path:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=[FinalCheckpoint()],
                         limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    data = RandomCameraDataModule(height=8, width=8, batch_size=1, seed=2)
    trainer.fit(system, data, ckpt_path=ckpt)
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("coarse")
    box = root / "box.ply"
    trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(box)
    ball = root / "ball.ply"
    trimesh.creation.icosphere(subdivisions=2).export(ball)
    paths = [str(box), str(ball)]
    system = Ra3dSystem(prompt="a box", representation=NERF, guidance=NoisyTargetGuidance(),
                        n_particles=2, loss_weights={"asset": 1.0},
                        retrieval=RetrievalConfig(assets=paths, preview_size=16))  # fmt: skip
    return _fit(root / "run", system, 1), paths


def fine_system(
    ckpt: Path, prompt: str | None = None, n_particles: int = 2, **kwargs
) -> Ra3dSystem:
    return Ra3dSystem(prompt=prompt, representation=FINE, guidance=NoisyTargetGuidance(),
                      n_particles=n_particles, init_from=str(ckpt), init_options=OPTIONS,
                      retrieval=RetrievalConfig(preview_size=16), loss_weights={"asset": 1.0},
                      stage="geometry", **kwargs)  # fmt: skip


def test_fine_run_inherits_prompt_assets_and_assignment(
    coarse, tmp_path: Path, monkeypatch
) -> None:
    ckpt, _ = coarse
    record, _, _ = read_checkpoint(ckpt)
    import ra3d.augmentation.retrieval_augmentation

    def no_retrieval(*args, **kwargs):
        raise AssertionError("a later stage must not retrieve again")

    monkeypatch.setattr(ra3d.augmentation.retrieval_augmentation, "retrieve_assets", no_retrieval)
    system = fine_system(ckpt)
    assert system.prompt == "a box" and all(isinstance(p, DMTet) for p in system.particles)
    fine_ckpt = _fit(tmp_path, system, 2)
    fine, _, _ = read_checkpoint(fine_ckpt)
    assert fine.prompt == record.prompt and fine.stage == "geometry"
    assert fine.assignment == record.assignment
    assert [a.uid for a in fine.assets] == [a.uid for a in record.assets]
    assert fine.representation["class_path"] == "ra3d.representations.dmtet.DMTet"


def test_texture_phase_keeps_geometry_fixed_and_takes_dmtet_state(coarse, tmp_path: Path) -> None:
    geometry_ckpt = _fit(tmp_path / "geo", fine_system(coarse[0]), 1)
    texture = Ra3dSystem(prompt=None, representation=FINE, guidance=NoisyTargetGuidance(),
                         n_particles=2, init_from=str(geometry_ckpt), freeze_geometry=True,
                         retrieval=RetrievalConfig(preview_size=16), stage="texture")  # fmt: skip
    _, state, _ = read_checkpoint(geometry_ckpt)
    torch.testing.assert_close(texture.particles[1].sdf, state["particles.1.sdf"])
    sdf_before = texture.particles[0].sdf.detach().clone()
    _fit(tmp_path / "tex", texture, 2)
    assert torch.equal(texture.particles[0].sdf, sdf_before)
    assert not texture.particles[0].sdf.requires_grad


@pytest.mark.parametrize("config", ["fine_texture.yaml", "demo_texture.yaml"])
def test_texture_phase_background_is_not_augmented(config: str) -> None:
    """threestudio's texture stage keeps its neural environment map with ``random_aug`` off (the
    geometry is fixed, so the reason for random backgrounds — density painting the background —
    is gone): the texture configs set ``random_background_prob: 0``, and a DMTet built with
    their arguments renders, in training mode, the environment map itself at every step."""
    args = yaml.safe_load((CONFIGS / config).read_text())["model"]["representation"]["init_args"]
    assert args["random_background_prob"] == 0.0 and args["background"] == "neural_env"

    def empty_dmtet(prob: float) -> DMTet:  # no surface: every pixel is background
        model = DMTet(grid_resolution=4, encoding=ENCODING, hidden_dim=8, backend="torch",
                      background=args["background"], random_background_prob=prob).train()  # fmt: skip
        with torch.no_grad():
            model.sdf.fill_(1.0)
        return model

    cams = make_cameras(torch.tensor([10.0]), torch.tensor([30.0]), torch.tensor([2.0]),
                        torch.tensor([45.0]), 6, 6)  # fmt: skip
    torch.manual_seed(0)
    model = empty_dmtet(args["random_background_prob"])
    with torch.no_grad():
        env = model.background(cams.rays()[1])  # [1, 6, 6, 3], the map at the pixels' rays
        for _ in range(8):
            torch.testing.assert_close(model.render(cams).rgb, env, rtol=0, atol=0)
        # The DMTet's default (0.5, the coarse NeRF's augmentation) does replace it.
        augmented = empty_dmtet(0.5)
        augmented.background.load_state_dict(model.background.state_dict())
        replaced = [not torch.equal(augmented.render(cams).rgb, env) for _ in range(8)]
    assert any(replaced) and not all(replaced)  # p = 0.5 per render; deterministic (seed 0)


def test_fine_run_resumes_exactly(coarse, tmp_path: Path) -> None:
    straight = fine_system(coarse[0])
    _fit(tmp_path / "a", straight, 4)
    half = _fit(tmp_path / "b", fine_system(coarse[0]), 2)
    resumed = fine_system(coarse[0])
    torch.manual_seed(7)  # another global RNG state must not matter
    _fit(tmp_path / "b", resumed, 4, ckpt=half)
    for key, value in straight.particles.state_dict().items():
        torch.testing.assert_close(
            resumed.particles.state_dict()[key], value, rtol=0, atol=0, msg=key
        )


def test_init_from_errors_are_clear(coarse, tmp_path: Path) -> None:
    ckpt, _ = coarse
    with pytest.raises(CheckpointError, match="not found"):
        fine_system(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="without checkpoints/last.ckpt"):
        fine_system(tmp_path)
    with pytest.raises(CheckpointError, match="has 2 particle.*asks for 1"):
        fine_system(ckpt, n_particles=1)
    with pytest.raises(ConfigError, match="was trained for 'a box', not 'a ball'"):
        fine_system(ckpt, prompt="a ball")
    toy = Ra3dSystem(prompt="a box", representation=ColorField, guidance=NoisyTargetGuidance())
    toy_ckpt = _fit(tmp_path / "toy", toy, 1)
    with pytest.raises(CheckpointError, match="cannot initialise a DMTet from a ColorField"):
        fine_system(toy_ckpt, n_particles=1)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        fine_system(garbage)


def test_normal_guidance_image_encodes_normals_on_black() -> None:
    from ra3d.representations.base import RenderOutput

    normal = torch.tensor([[[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]])  # [1, 1, 2, 3]
    opacity = torch.tensor([[[[1.0], [0.0]]]])
    out = RenderOutput(rgb=torch.zeros(1, 1, 2, 3), opacity=opacity, depth=opacity, normal=normal)
    expected = torch.tensor([[[[0.5, 0.5, 1.0], [0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(guidance_image(out, "normal"), expected)
    with pytest.raises(ConfigError, match="renders normals"):
        guidance_image(RenderOutput(rgb=out.rgb, opacity=opacity, depth=opacity), "normal")


class _CoreAndHalo(InstantNGPNeRF):
    """Density 100 inside r < 0.5 and 2 in the shell 0.5 <= r < 0.8: the shell is thick enough to
    be seen (a chord through it has optical depth up to 2.5, opacity 0.92), so the NeRF's
    silhouette is the r = 0.8 sphere, while threestudio's level 25 keeps only the core."""

    def geometry(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = points.norm(dim=-1)
        sigma = torch.where(r < 0.5, 100.0, torch.where(r < 0.8, 2.0, 0.0)).to(points.dtype)
        return sigma, torch.zeros(*points.shape[:-1], 3, dtype=points.dtype)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.geometry(points)[0]


def test_silhouette_threshold_keeps_what_the_nerf_shows() -> None:
    nerf = _CoreAndHalo(radius=1.0, n_samples_per_ray=128, encoding=ENCODING, hidden_dim=16,
                        normal_type="none", use_occupancy_grid=False, background="solid")  # fmt: skip
    kwargs = {"grid_resolution": 24, "encoding": ENCODING, "hidden_dim": 16, "backend": "torch"}
    cell = 2.0 / 24  # the probe grid spans the radius-1 cube
    matched = DMTet.from_nerf(nerf, threshold="silhouette", **kwargs)
    core = DMTet.from_nerf(nerf, threshold=25.0, **kwargs)
    r_matched = float(matched.surface()[0].norm(dim=-1).median())
    r_core = float(core.surface()[0].norm(dim=-1).median())
    assert abs(r_matched - 0.8) < cell and abs(r_core - 0.5) < cell
