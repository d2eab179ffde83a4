"""The asset velocity (Eq. 10–11), the assignment π, and how assets enter the system."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import trimesh

from ra3d.augmentation.asset_term import AssetTerm, distinct_assignment
from ra3d.augmentation.assets import RetrievalConfig
from ra3d.augmentation.retrieval_augmentation import RetrievalAugmentation
from ra3d.cameras import orbit_cameras
from ra3d.errors import ConfigError
from ra3d.guidance.base import Guidance, GuidanceOutput
from ra3d.representations.mesh import MeshAsset
from ra3d.representations.metrics import silhouette_iou
from ra3d.representations.nerf import InstantNGPNeRF
from ra3d.training.callbacks import FinalCheckpoint
from ra3d.training.checkpoint import read_checkpoint
from ra3d.training.data import RandomCameraDataModule
from ra3d.training.system import Ra3dSystem
from tests.toys import ColorField, FreeImage, NoisyTargetGuidance


def cams(n: int = 1, size: int = 4):
    return orbit_cameras(n, size, size, elevation_deg=10.0, distance=1.5, fovy_deg=50.0)


# ---------------------------------------------------------------------------- the loss
def test_asset_loss_gradient_is_the_closed_form_per_particle_with_routing() -> None:
    lam, sigma, pi = 3.0, 2.0, [1, 0, 1]
    torch.manual_seed(0)
    system = Ra3dSystem(
        prompt="a cube", representation=functools.partial(FreeImage, 4, 4),
        guidance=NoisyTargetGuidance(), n_particles=3,
        loss_weights={"asset": lam}, asset_terms={"rgb": 1.0}, asset_sigma=sigma,
    )  # fmt: skip
    aug = RetrievalAugmentation(RetrievalConfig())
    aug.meshes = torch.nn.ModuleList([FreeImage(4, 4, colour=0.2), FreeImage(4, 4, colour=0.9)])
    aug.assets, aug.assignment = [object(), object()], pi  # type: ignore[list-item]
    cam = cams()
    outputs = [p.render(cam) for p in system.particles]
    asset_outs = aug.render_assigned(cam)
    for i, n in enumerate(pi):  # routing: particle i gets asset π(i)
        torch.testing.assert_close(asset_outs[i].rgb, aug.meshes[n].render(cam).rgb)
    loss = lam * system.asset_loss(outputs, asset_outs)
    loss.backward()
    p_count, b, h, w = 3, 1, 4, 4
    for i, particle in enumerate(system.particles):
        target = aug.meshes[pi[i]].colour.detach()
        expected = 2 * lam / sigma**2 * (particle.colour.detach() - target) / (p_count * b * h * w)
        torch.testing.assert_close(particle.colour.grad, expected, rtol=1e-5, atol=1e-7)
        assert aug.meshes[pi[i]].colour.grad is None  # the asset is a constant


def test_scheduled_sigma_scales_the_loss_by_one_over_sigma_squared() -> None:
    term = AssetTerm({"opacity": 1.0}, sigma=[10, 1.0, 4.0, 20])
    a, b = FreeImage(2, 2, colour=0.0), FreeImage(2, 2, colour=0.0)
    with torch.no_grad():
        b.alpha.fill_(1.0)  # opacity differs by 0.5 everywhere: mean squared distance 0.25
    out_a, out_b = a.render(cams(size=2)), b.render(cams(size=2))
    assert float(term.loss(out_a, out_b, 0)) == pytest.approx(0.25)
    assert float(term.loss(out_a, out_b, 15)) == pytest.approx(0.25 / 2.5**2)
    assert float(term.loss(out_a, out_b, 30)) == pytest.approx(0.25 / 16.0)


def test_asset_term_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown asset term 'colour'"):
        AssetTerm({"colour": 1.0})
    with pytest.raises(ConfigError, match="asset_sigma"):
        AssetTerm(sigma=0.0)
    with pytest.raises(ConfigError, match="at least one"):
        AssetTerm({"rgb": 0.0})
    with pytest.raises(ConfigError, match="normal_type"):
        AssetTerm({"normal": 1.0}).loss(FreeImage().render(cams()), FreeImage().render(cams()), 0)


# ---------------------------------------------------------------------------- π
def test_closest_assignment_has_the_known_answer() -> None:
    particles = [FreeImage(4, 4, colour=0.1), FreeImage(4, 4, colour=0.9)]
    assets = [
        FreeImage(4, 4, colour=0.85),
        FreeImage(4, 4, colour=0.15),
        FreeImage(4, 4, colour=0.5),
    ]
    term = AssetTerm(assignment="closest", assignment_size=4)
    assert term.assign(particles, assets) == [1, 0]


def test_one_per_particle_assigns_distinct_assets_with_least_total_distance() -> None:
    particles = [FreeImage(4, 4, colour=0.10), FreeImage(4, 4, colour=0.12)]
    assets = [FreeImage(4, 4, colour=0.1), FreeImage(4, 4, colour=0.5), FreeImage(4, 4, colour=0.9)]
    assert AssetTerm(assignment="closest", assignment_size=4).assign(particles, assets) == [0, 0]
    # distinct: (0, 1) costs 0 + 0.38² = 0.1444 < (1, 0): 0.4² + 0.02² = 0.1604 (per channel)
    assert AssetTerm(assignment="one_per_particle", assignment_size=4).assign(
        particles, assets
    ) == [0, 1]
    with pytest.raises(ConfigError, match="at least as many assets"):
        AssetTerm().assign(particles + [FreeImage(4, 4)], assets[:2])
    # the Hungarian path agrees with enumeration on a random cost matrix
    cost = torch.rand(6, 9, generator=torch.Generator().manual_seed(0))
    best = distinct_assignment(cost)
    assert len(set(best)) == 6
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.numpy())
    assert float(cost[torch.arange(6), torch.tensor(best)].sum()) == pytest.approx(
        float(cost.numpy()[rows, cols].sum())
    )


# ---------------------------------------------------------------------------- scale and frame
class _AnalyticBall(InstantNGPNeRF):
    """A NeRF whose density is 1000 inside the ball of radius 0.5 and 0 outside."""

    def geometry(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = (points.norm(dim=-1) < 0.5).to(points.dtype)
        return 1000.0 * inside, torch.zeros(*points.shape[:-1], 3, dtype=points.dtype)


def test_asset_render_lines_up_with_the_particle_render_of_the_same_object(tmp_path: Path) -> None:
    sphere = tmp_path / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=4, radius=3.0).export(sphere)  # any size: normalised
    mesh = MeshAsset(sphere, radius=0.5)  # the retrieval default asset_radius
    nerf = _AnalyticBall(radius=1.0, n_samples_per_ray=256, use_occupancy_grid=False,
                         normal_type="none", background="solid").eval()  # fmt: skip
    views = orbit_cameras(8, 48, 48, elevation_deg=20.0, distance=1.5, fovy_deg=50.0)
    with torch.no_grad():
        iou = silhouette_iou(nerf.render(views).opacity, mesh.render(views).opacity)
    assert float(iou.min()) >= 0.95


# ---------------------------------------------------------------------------- in the system
class SpyGuidance(Guidance):
    """Records what the system passes; a loss that trains nothing of the particles."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[torch.Tensor | None] = []
        self.cameras = []

    def forward(self, rgb, cameras, prompt, reference_rgb=None) -> GuidanceOutput:
        self.references.append(None if reference_rgb is None else reference_rgb.detach().clone())
        self.cameras.append(cameras)
        return GuidanceOutput(loss=0.0 * rgb.sum(), terms={"loss_spy": 0.0 * rgb.sum()})

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("spy",)


def _meshes(tmp_path: Path) -> list[str]:
    box = tmp_path / "box.ply"
    trimesh.creation.box(extents=(1.0, 0.4, 0.8)).export(box)
    ball = tmp_path / "ball.ply"
    trimesh.creation.icosphere(subdivisions=2).export(ball)
    return [str(box), str(ball)]


def _fit(tmp_path: Path, system: Ra3dSystem, steps: int, ckpt: Path | None = None) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=[FinalCheckpoint()],
                         limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    data = RandomCameraDataModule(height=8, width=8, batch_size=2, eval_height=8, eval_width=8,
                                  n_val_views=2, seed=5)  # fmt: skip
    trainer.fit(system, data, ckpt_path=ckpt)
    return trainer


def test_delta_reference_is_the_assigned_asset_rendered_at_the_step_cameras(tmp_path: Path) -> None:
    paths = _meshes(tmp_path)
    retrieval = RetrievalConfig(assets=paths, captions=["a box", "a ball"], preview_size=16)
    spy = SpyGuidance()
    system = Ra3dSystem(prompt="a box", representation=ColorField, guidance=spy, n_particles=2,
                        retrieval=retrieval, loss_weights={"asset": 1.0})  # fmt: skip
    _fit(tmp_path, system, 2)
    pi = system.augmentation.assignment
    assert sorted(pi) == [0, 1]
    data = RandomCameraDataModule(height=8, width=8, batch_size=2, seed=5)
    for step, reference in enumerate(spy.references):
        step_cams = data.train_dataset.cameras_for_step(step)
        # independent render: the asset files loaded afresh at the run's scale (radius 0.5)
        expected = torch.cat([MeshAsset(paths[n], radius=0.5).render(step_cams).rgb for n in pi])
        torch.testing.assert_close(reference, expected)
        torch.testing.assert_close(spy.cameras[step].c2w[:2], step_cams.c2w)
    assert (tmp_path / "retrieved.json").is_file()
    assert len(list((tmp_path / "retrieved").glob("asset*.png"))) == 2


def test_no_reference_without_delta_distillation(tmp_path: Path) -> None:
    spy = SpyGuidance()
    system = Ra3dSystem(prompt="a box", representation=ColorField, guidance=spy, n_particles=1,
                        retrieval=RetrievalConfig(assets=_meshes(tmp_path)[:1], preview_size=16),
                        delta_distillation=False, loss_weights={"asset": 1.0})  # fmt: skip
    _fit(tmp_path, system, 1)
    assert spy.references == [None]


def test_assignment_and_assets_survive_save_and_resume(tmp_path: Path, monkeypatch) -> None:
    paths = _meshes(tmp_path)

    def make(assignment: str) -> Ra3dSystem:
        return Ra3dSystem(prompt="a box", representation=ColorField, guidance=NoisyTargetGuidance(),
                          n_particles=2, loss_weights={"asset": 1.0},
                          retrieval=RetrievalConfig(assets=paths, assignment=assignment, preview_size=16))  # fmt: skip

    first = make("one_per_particle")
    _fit(tmp_path / "a", first, 2)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    record, _, _ = read_checkpoint(ckpt)
    assert record.assignment == first.augmentation.assignment
    assert [a.mesh_path.name for a in record.assets] == ["box.ply", "ball.ply"]

    import ra3d.augmentation.retrieval_augmentation

    def no_retrieval(*args, **kwargs):
        raise AssertionError("a resume must not retrieve again")

    monkeypatch.setattr(ra3d.augmentation.retrieval_augmentation, "retrieve_assets", no_retrieval)
    resumed = make("closest")  # a different rule must not matter: π comes from the checkpoint
    _fit(tmp_path / "a", resumed, 3, ckpt=ckpt)
    assert resumed.augmentation.assignment == first.augmentation.assignment


def test_missing_asset_mesh_on_resume_is_one_clear_error(tmp_path: Path) -> None:
    paths = _meshes(tmp_path)
    system = Ra3dSystem(prompt="a box", representation=ColorField, guidance=NoisyTargetGuidance(),
                        n_particles=1, retrieval=RetrievalConfig(assets=paths[:1], preview_size=16))  # fmt: skip
    _fit(tmp_path / "a", system, 1)
    Path(paths[0]).unlink()
    again = Ra3dSystem(prompt="a box", representation=ColorField, guidance=NoisyTargetGuidance(),
                       n_particles=1, retrieval=RetrievalConfig(assets=paths[:1], preview_size=16))  # fmt: skip
    with pytest.raises(ConfigError, match="missing: user-0-box"):
        _fit(tmp_path / "a", again, 2, ckpt=tmp_path / "a" / "checkpoints" / "last.ckpt")


def test_asset_radius_must_fit_inside_the_representation() -> None:
    from ra3d.augmentation.retrieval_augmentation import _check_scale

    nerf = InstantNGPNeRF(
        radius=1.0, encoding={"n_levels": 2, "log2_hashmap_size": 8, "backend": "torch"}
    )
    _check_scale(0.5, [nerf])
    with pytest.raises(ConfigError, match="asset_radius"):
        _check_scale(1.0, [nerf])
