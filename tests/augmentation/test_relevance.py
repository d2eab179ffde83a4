"""The relevance floor ``retrieval.min_score`` / ``on_weak_match`` (issue 16): which assets are
used, what a skipped asset removes from its particle (the asset term of Eq. 10–11 and delta
distillation of Eq. 13), and what the run folder and the checkpoint record."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import trimesh
from torch import nn

import ra3d.augmentation.retrieval_augmentation as ra_module
from ra3d.augmentation.adaptation import AdaptationConfig
from ra3d.augmentation.assets import RetrievalConfig
from ra3d.augmentation.relevance import (
    DEFAULT_MIN_SCORES,
    RelevanceDecision,
    WeakMatchError,
    judge,
)
from ra3d.cameras import orbit_cameras
from ra3d.errors import ConfigError
from ra3d.guidance.base import Guidance, GuidanceOutput
from ra3d.retrieval.base import RetrievedAsset
from ra3d.training.callbacks import FinalCheckpoint
from ra3d.training.checkpoint import read_checkpoint
from ra3d.training.data import RandomCameraDataModule
from ra3d.training.system import Ra3dSystem
from tests.toys import ColorField, FreeImage

MINILM = {"embedder": "minilm:all-MiniLM-L6-v2:test"}


def asset(uid: str, score: float, path: str | Path = "x.obj", **extras) -> RetrievedAsset:
    return RetrievedAsset(uid=uid, caption=f"a {uid}; category: test", score=score,
                          mesh_path=Path(path), source="test", extras=extras or dict(MINILM))  # fmt: skip


# ---------------------------------------------------------------------------- decisions
def test_decision_per_score_against_the_embedders_floor() -> None:
    floor = DEFAULT_MIN_SCORES["minilm"]
    scores = [0.70, floor, floor - 1e-4, 0.10]
    got = judge([asset(f"a{i}", s) for i, s in enumerate(scores)], None, "skip")
    assert [d.used for d in got] == [True, True, False, False]  # >= floor is kept
    assert all(d.floor == floor for d in got)
    assert "not used" in got[2].reason and f"{floor:.3f}" in got[2].reason

    explicit = judge([asset(f"a{i}", s) for i, s in enumerate(scores)], 0.5, "skip")
    assert [d.used for d in explicit] == [True, False, False, False]
    anyway = judge([asset(f"a{i}", s) for i, s in enumerate(scores)], None, "use")
    assert all(d.used for d in anyway) and "use" in anyway[3].reason

    clip = {"embedder": "open_clip:ViT-L-14/openai", "image_score": 0.0}
    by_clip = judge([asset("c1", 0.25, **clip), asset("c2", 0.15, **clip)], None, "skip")
    assert [(d.used, d.floor) for d in by_clip] == [
        (True, DEFAULT_MIN_SCORES["clip"]),
        (False, DEFAULT_MIN_SCORES["clip"]),
    ]
    other = judge([asset("o", -0.9, embedder="my-embedder")], None, "skip")[0]
    assert other.used and other.floor is None  # no default floor for an unknown score
    user = RetrievedAsset(uid="user-0-box", caption="a box", score=1.0, mesh_path=Path("b.ply"),
                          source="user")  # fmt: skip
    assert judge([user], 0.99, "stop")[0].used  # the user's own mesh is never judged


def test_stop_is_one_error_naming_the_scores_and_the_options() -> None:
    weak = [asset("teddybear", 0.345), asset("chicken", 0.281), asset("chair", 0.9)]
    with pytest.raises(WeakMatchError) as err:
        judge(weak, None, "stop")
    message = str(err.value)
    assert "\n" not in message
    assert "teddybear" in message and "0.345" in message and "chicken" in message
    assert "0.281" in message and "chair (" not in message  # only the weak ones are named
    for option in ("on_weak_match", "skip", "use", "min_score", "objaverse"):
        assert option in message
    assert all(d.used for d in judge([asset("chair", 0.9)], None, "stop"))


def test_floor_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="on_weak_match must be one of skip, stop, use"):
        RetrievalConfig(on_weak_match="maybe").validate(1)
    with pytest.raises(ConfigError, match=r"retrieval.min_score must be a similarity in \[-1, 1\]"):
        RetrievalConfig(min_score=2.0).validate(1)
    RetrievalConfig(min_score=0.3, on_weak_match="stop").validate(1)


# ---------------------------------------------------------------------------- per particle
class DeltaGuidance(Guidance):
    """A deterministic guidance with SDS's conventions: per-sample residual ``x − 0.3`` (minus
    the same at the reference when one is given, i.e. ``x − ref``), loss
    ``0.5 Σ (x − sg(x − r))² / B`` so that ``∂loss/∂x = r / B``. Records each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def forward(self, rgb, cameras, prompt, reference_rgb=None) -> GuidanceOutput:
        self.calls.append((rgb.shape[0], reference_rgb is not None))
        residual = (rgb - 0.3) if reference_rgb is None else (rgb - reference_rgb)
        target = (rgb - residual).detach()
        loss = 0.5 * (rgb - target).square().sum() / rgb.shape[0]
        return GuidanceOutput(loss=loss, terms={"loss_delta": loss})

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("delta",)


def _system(used: list[bool] | None, lam: float = 3.0) -> tuple[Ra3dSystem, DeltaGuidance]:
    """Two FreeImage particles (seed 0), assets of colour 0.2 and 0.9 with π = [0, 1];
    ``used`` = the floor's verdict per asset, None = no retrieval at all."""
    guidance = DeltaGuidance()
    system = Ra3dSystem(
        prompt="a cube", representation=functools.partial(FreeImage, 4, 4), guidance=guidance,
        n_particles=2, loss_weights={"asset": lam}, asset_terms={"rgb": 1.0, "opacity": 1.0},
        retrieval=RetrievalConfig() if used is not None else None,
    )  # fmt: skip
    if used is not None:
        aug = system.augmentation
        aug.meshes = nn.ModuleList([FreeImage(4, 4, colour=0.2), FreeImage(4, 4, colour=0.9)])
        aug.assets = [asset("dim", 0.6), asset("bright", 0.3)]
        aug.assignment = [0, 1]
        aug.decisions = [RelevanceDecision(a.uid, a.score, 0.44, u, "test")
                         for a, u in zip(aug.assets, used, strict=True)]  # fmt: skip
        aug.prepared = True
    system._trainer = SimpleNamespace(max_steps=10, global_step=0, current_epoch=0)  # type: ignore[assignment]
    system.log = lambda *a, **k: None  # type: ignore[method-assign]
    system.log_dict = lambda *a, **k: None  # type: ignore[method-assign]
    return system, guidance


def _step_grads(system: Ra3dSystem) -> list[dict[str, torch.Tensor]]:
    cams = orbit_cameras(2, 4, 4, elevation_deg=10.0, distance=1.5, fovy_deg=50.0)
    loss = system.training_step(cams, 0)
    loss.backward()
    return [
        {n: p.grad.clone() for n, p in particle.named_parameters()} for particle in system.particles
    ]


def test_a_skipped_asset_removes_its_particles_asset_term_and_delta_distillation() -> None:
    skipped, spy = _system([True, False])
    with_all, _ = _system([True, True])  # the same particles, every asset used
    without, _ = _system(None)  # the same particles, no assets at all
    for other in (with_all, without):
        for a, b in zip(skipped.particles.parameters(), other.particles.parameters(), strict=True):
            assert torch.equal(a, b)  # same seed: the same particles
    g_skip, g_all, g_none = _step_grads(skipped), _step_grads(with_all), _step_grads(without)
    # particle 0 keeps its asset: asset term and delta distillation exactly as with every asset
    for name in g_skip[0]:
        torch.testing.assert_close(g_skip[0][name], g_all[0][name], rtol=1e-6, atol=1e-9)
    # particle 1's asset was skipped: exactly the run without assets (no asset term, no delta)
    for name in g_skip[1]:
        torch.testing.assert_close(g_skip[1][name], g_none[1][name], rtol=1e-6, atol=1e-9)
        assert not torch.allclose(g_skip[1][name], g_all[1][name])  # and it differs from using it
    # the guidance saw particle 0 with its reference and particle 1 without one (B = 2 each)
    assert spy.calls == [(2, True), (2, False)]

    # Closed form of particle 1's colour gradient without any asset: only the guidance,
    # ∂/∂x = (x − 0.3) / (P·B) per pixel and the FreeImage colour enters rgb once per view.
    p1 = skipped.particles[1]
    x = p1.colour.detach() + (1 - p1.alpha.detach())  # rgb = colour + (1 − α)·white
    expected = 2 * (x - 0.3) / (2 * 2)  # 2 views, each pixel's gradient (x − 0.3)/(P·B)
    torch.testing.assert_close(g_skip[1]["colour"], expected, rtol=1e-6, atol=1e-9)


def test_no_asset_passing_runs_plain_distillation() -> None:
    none_used, spy = _system([False, False])
    without, _ = _system(None)
    assert not none_used.augmentation.active
    g_a, g_b = _step_grads(none_used), _step_grads(without)
    for a, b in zip(g_a, g_b, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert spy.calls == [(4, False)]  # one call, no reference


# ---------------------------------------------------------------------------- through a fit
def _meshes(tmp_path: Path) -> list[Path]:
    box, ball = tmp_path / "box.ply", tmp_path / "ball.ply"
    trimesh.creation.box(extents=(1.0, 0.4, 0.8)).export(box)
    trimesh.creation.icosphere(subdivisions=2).export(ball)
    return [box, ball]


class SpyGuidance(Guidance):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def forward(self, rgb, cameras, prompt, reference_rgb=None) -> GuidanceOutput:
        self.calls.append((rgb.shape[0], reference_rgb is not None))
        return GuidanceOutput(loss=0.0 * rgb.sum(), terms={"loss_spy": 0.0 * rgb.sum()})

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        return ("spy",)


def _fit(root: Path, system: Ra3dSystem, steps: int, ckpt: Path | None = None) -> Path:
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=[FinalCheckpoint()],
                         limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    data = RandomCameraDataModule(height=8, width=8, batch_size=2, eval_height=8, eval_width=8,
                                  n_val_views=2, seed=5)  # fmt: skip
    trainer.fit(system, data, ckpt_path=ckpt)
    return root / "checkpoints" / "last.ckpt"


def _retrieving(monkeypatch: pytest.MonkeyPatch, assets: list[RetrievedAsset]) -> None:
    def fake(config, prompt, n_particles):  # noqa: ANN001, ANN202
        return list(assets), {"kind": "database", "query": prompt, "embedder": MINILM["embedder"]}

    monkeypatch.setattr(ra_module, "retrieve_assets", fake)


def test_fit_skips_the_weak_asset_and_records_why(tmp_path: Path, monkeypatch, caplog) -> None:
    box, ball = _meshes(tmp_path)
    _retrieving(monkeypatch, [asset("box", 0.61, box), asset("ball", 0.30, ball)])
    spy = SpyGuidance()
    system = Ra3dSystem(prompt="a box", representation=ColorField, guidance=spy, n_particles=2,
                        retrieval=RetrievalConfig(preview_size=16), loss_weights={"asset": 1.0})  # fmt: skip
    with caplog.at_level("WARNING"):
        ckpt = _fit(tmp_path / "run", system, 2)
    aug = system.augmentation
    pi = aug.assignment
    assert sorted(pi) == [0, 1] and aug.active
    assert aug.particles_with_asset == [n == 0 for n in pi]
    weak_particle = pi.index(1)
    assert f"particle(s) {weak_particle} run without the asset term" in caplog.text
    assert "ball" in caplog.text and "0.300 < floor 0.440" in caplog.text
    assert spy.calls == [(2, True), (2, False)] * 2  # per step: with reference, then without

    entries = json.loads((tmp_path / "run" / "retrieved.json").read_text())
    for key in ("uid", "caption", "score", "index", "particles", "preview", "license"):
        assert all(key in e for e in entries)  # the keys retrieved.json always had
    by_uid = {e["uid"]: e for e in entries}
    assert by_uid["box"]["decision"] == "used" and by_uid["box"]["used"] is True
    assert by_uid["ball"]["decision"] == "skipped" and by_uid["ball"]["used"] is False
    assert by_uid["ball"]["floor"] == pytest.approx(DEFAULT_MIN_SCORES["minilm"])
    assert by_uid["ball"]["score"] == pytest.approx(0.30)
    assert (
        by_uid["ball"]["particles"] == [weak_particle] and by_uid["ball"]["particles_using"] == []
    )
    assert by_uid["box"]["particles_using"] == [pi.index(0)]

    record, _, _ = read_checkpoint(ckpt)
    relevance = record.retrieval["relevance"]
    assert [d["used"] for d in relevance["decisions"]] == [True, False]
    assert relevance["particles_with_asset"] == aug.particles_with_asset

    # A resume keeps the decisions and never retrieves (or judges) again.
    monkeypatch.setattr(ra_module, "retrieve_assets", lambda *a, **k: pytest.fail("retrieved"))
    again = Ra3dSystem(prompt="a box", representation=ColorField, guidance=SpyGuidance(),
                       n_particles=2, retrieval=RetrievalConfig(preview_size=16, min_score=0.0),
                       loss_weights={"asset": 1.0})  # fmt: skip
    _fit(tmp_path / "run", again, 3, ckpt=ckpt)
    assert again.augmentation.particles_with_asset == aug.particles_with_asset


def test_closest_assigns_among_the_assets_that_pass(tmp_path: Path, monkeypatch) -> None:
    box, ball = _meshes(tmp_path)
    _retrieving(monkeypatch, [asset("ball", 0.30, ball), asset("box", 0.61, box)])
    system = Ra3dSystem(prompt="a box", representation=ColorField, guidance=SpyGuidance(),
                        n_particles=2, loss_weights={"asset": 1.0},
                        retrieval=RetrievalConfig(preview_size=16, assignment="closest"))  # fmt: skip
    _fit(tmp_path / "run", system, 1)
    assert system.augmentation.assignment == [1, 1]  # the box, the only asset that passed
    assert system.augmentation.particles_with_asset == [True, True]


def test_no_asset_passing_runs_without_assets_or_omega(tmp_path: Path, monkeypatch, caplog) -> None:
    box, ball = _meshes(tmp_path)
    _retrieving(monkeypatch, [asset("teddybear", 0.345, box), asset("chicken", 0.281, ball)])
    spy = SpyGuidance()
    # adaptation on: had it run, ω would be trained on a guidance without a prior and fail
    system = Ra3dSystem(prompt="a corgi puppy", representation=ColorField, guidance=spy,
                        n_particles=2, retrieval=RetrievalConfig(preview_size=16),
                        adaptation=AdaptationConfig(enabled=True), loss_weights={"asset": 1.0})  # fmt: skip
    with caplog.at_level("WARNING"):
        ckpt = _fit(tmp_path / "run", system, 2)
    assert "no retrieved asset passes the relevance floor" in caplog.text
    assert not system.augmentation.active and system.augmentation.adapter is None
    assert spy.calls == [(4, False)] * 2  # one plain call per step, no reference
    entries = json.loads((tmp_path / "run" / "retrieved.json").read_text())
    assert [e["decision"] for e in entries] == ["skipped", "skipped"]
    record, _, _ = read_checkpoint(ckpt)
    assert record.assets == [] and record.assignment == []  # export/evaluate credit no asset
    assert [s["uid"] for s in record.retrieval["relevance"]["skipped"]] == ["teddybear", "chicken"]

    # A later stage (or a resume) inherits "no assets" and never retrieves.
    monkeypatch.setattr(ra_module, "retrieve_assets", lambda *a, **k: pytest.fail("retrieved"))
    again = Ra3dSystem(prompt="a corgi puppy", representation=ColorField, guidance=SpyGuidance(),
                       n_particles=2, retrieval=RetrievalConfig(preview_size=16),
                       loss_weights={"asset": 1.0})  # fmt: skip
    _fit(tmp_path / "run", again, 3, ckpt=ckpt)
    assert not again.augmentation.active
    record, _, _ = read_checkpoint(ckpt)
    assert [s["uid"] for s in record.retrieval["relevance"]["skipped"]] == ["teddybear", "chicken"]


def test_stop_ends_the_fit_before_the_first_step(tmp_path: Path, monkeypatch) -> None:
    box, ball = _meshes(tmp_path)
    _retrieving(monkeypatch, [asset("teddybear", 0.345, box), asset("box", 0.61, ball)])
    spy = SpyGuidance()
    system = Ra3dSystem(prompt="a corgi puppy", representation=ColorField, guidance=spy,
                        n_particles=2, retrieval=RetrievalConfig(on_weak_match="stop"))  # fmt: skip
    with pytest.raises(WeakMatchError, match="teddybear .* 0.345"):
        _fit(tmp_path / "run", system, 2)
    assert spy.calls == []


def test_use_keeps_every_asset_as_before(tmp_path: Path, monkeypatch) -> None:
    box, ball = _meshes(tmp_path)
    _retrieving(monkeypatch, [asset("box", 0.61, box), asset("ball", 0.30, ball)])
    spy = SpyGuidance()
    system = Ra3dSystem(prompt="a box", representation=ColorField, guidance=spy, n_particles=2,
                        retrieval=RetrievalConfig(preview_size=16, on_weak_match="use"),
                        loss_weights={"asset": 1.0})  # fmt: skip
    _fit(tmp_path / "run", system, 1)
    assert system.augmentation.particles_with_asset == [True, True]
    assert spy.calls == [(4, True)]  # one batched call with every particle's reference
