"""The memory preflight of ``ra3d fit``: bounds against hand computation and the shipped configs.

The full-size configs must pass it on a large GPU: ProlificDreamer's coarse stage renders 512 px
with 512 samples per ray only because the occupancy grid skips empty space, so all samples are an
upper bound (a warning), never a reason to refuse.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from ra3d.errors import ConfigError
from ra3d.training import preflight
from ra3d.training.preflight import NERF_CLASS, PER_RAY_FLOATS, estimate_train_bytes
from tests.paths import CONFIGS


def nerf_config(occupancy: bool, max_steps: int = 10000) -> dict:
    return {
        "trainer": {"max_steps": max_steps},
        "model": {"n_particles": 2, "representation": {"class_path": NERF_CLASS, "init_args": {
            "n_samples_per_ray": 8, "hidden_dim": 4, "n_hidden_layers": 1,
            "use_occupancy_grid": occupancy,
            "encoding": {"n_levels": 2, "n_features_per_level": 2}}}},
        "data": {"height": [4, 16], "width": [4, 16], "batch_size": [1, 3],
                 "resolution_milestones": [100]},
    }  # fmt: skip


def test_bounds_match_hand_computation_and_follow_the_reachable_schedule() -> None:
    per_sample = 4 * (2 * 2 + 2 * 4 * 2 + 32) + 2 * 8 * 12  # features, MLP, other; corners
    per_ray = 4 * PER_RAY_FLOATS
    rays = 2 * 3 * 16 * 16  # particles x batch x H x W of the second stage
    lower, upper, _ = estimate_train_bytes(nerf_config(occupancy=False))
    assert lower == upper == rays * (per_ray + 8 * per_sample)
    lower, upper, _ = estimate_train_bytes(nerf_config(occupancy=True))
    assert (lower, upper) == (rays * per_ray, rays * (per_ray + 8 * per_sample))
    # A run that stops before the milestone only ever renders the first stage.
    lower, upper, _ = estimate_train_bytes(nerf_config(occupancy=False, max_steps=100))
    assert lower == 2 * 1 * 4 * 4 * (per_ray + 8 * per_sample)
    # Not a NeRF (a DMTet, a user's representation): no samples, per-ray memory only.
    other = {"model": {"representation": {"class_path": "ra3d.representations.dmtet.DMTet"}},
             "data": {"height": 512, "width": 512}}  # fmt: skip
    assert estimate_train_bytes(other)[:2] == (512 * 512 * per_ray, 512 * 512 * per_ray)


@pytest.mark.parametrize("name", ["coarse_nerf.yaml", "fine_dmtet.yaml", "fine_texture.yaml"])
def test_full_size_configs_pass_on_an_80_gib_gpu(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    monkeypatch.setattr(preflight, "_available_bytes", lambda cfg: (80 * 2**30, "free GPU memory"))
    with caplog.at_level(logging.WARNING, logger="ra3d.training.preflight"):
        preflight.check_resources(cfg, "fit")
    # The coarse stage's 512 px phase with all 512 samples would need ~350 GiB: a warning.
    assert ("may need up to" in caplog.text) == (name == "coarse_nerf.yaml")


def test_a_render_too_large_even_per_ray_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = nerf_config(occupancy=True)
    cfg["data"] = {"height": 8000, "width": 8000, "batch_size": 4}
    monkeypatch.setattr(preflight, "_available_bytes", lambda cfg: (8 * 2**30, "available RAM"))
    with pytest.raises(ConfigError, match=r"needs at least ~61\.0 GiB .* lower --data.height"):
        preflight.check_resources(cfg, "fit")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_weight_only_terms_their_parts_compute(path: Path, tiny_prior_path) -> None:
    """Every ``loss_weights`` key of a shipped config is a term its guidance or representation
    reports (the system refuses the others at start), checked on the instantiated parts with the
    tiny prior in place of Stable Diffusion."""
    import importlib

    from ra3d.training.system import SYSTEM_LOSS_KEYS

    def build(spec: dict, **override):
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{**spec.get("init_args", {}), **override})

    model = yaml.safe_load(path.read_text())["model"]
    guidance = build(model["guidance"], prior=str(tiny_prior_path))
    representation = build(model["representation"])
    known = set(SYSTEM_LOSS_KEYS) | set(guidance.loss_term_names)
    known |= set(representation.regularizer_names)
    assert set(model["loss_weights"]) <= known, sorted(set(model["loss_weights"]) - known)
