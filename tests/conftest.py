"""Shared pytest fixtures.

Tests never reach a model hub: ``HF_HUB_OFFLINE`` is forced on before any Hugging Face library is
imported, and the diffusion prior used by tests is a tiny random-weight Stable Diffusion built
locally (:func:`ra3d.guidance.tiny.build_tiny_stable_diffusion`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread: the suite's tensors are small, and on a shared 2-core machine several
# OpenMP threads per process spin against each other (measured: a 48-px mesh render took 1.9 s
# with the default threads under load and 0.15 s with one). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_prior_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random-weight Stable Diffusion (64 px native, latents 4×16×16), built
    once per test session (~2 s). Load it with ``DiffusionPrior(str(tiny_prior_path))``; do not
    modify the files (copy the folder first if a test needs to)."""
    from ra3d.guidance.tiny import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny_sd"), seed=0, image_size=64)


#: open_clip configuration of the tiny random CLIP the retrieval and evaluation tests use.
TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """A tiny random open_clip model (seed 0) registered as 'ra3d-tiny-clip', saved as a weights
    file and as a 'local-dir:' folder, so the real loading paths are exercised offline. Returns
    (registered name, weights file, folder)."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_clip")
    (root / "ra3d-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(root / "ra3d-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("ra3d-tiny-clip")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = root / "tiny.safetensors"
    save_file(state, str(weights))
    folder = root / "local"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG}))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return "ra3d-tiny-clip", weights, folder
