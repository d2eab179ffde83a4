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
