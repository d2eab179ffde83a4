"""The preflight reports a prior that cannot load here before the memory estimate: on a machine
with little free memory an offline run must still say that its weights are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

import ra3d.training.preflight as preflight
from ra3d.errors import OfflineModelError


def _cfg(prior: str | None) -> dict:
    args = {} if prior is None else {"prior": prior}
    return {
        "model": {"prompt": "a chair", "n_particles": 1,
                  "guidance": {"class_path": "ra3d.guidance.vsd.VSDGuidance", "init_args": args}},
        "trainer": {"accelerator": "cpu"},
        "data": {"height": 64, "width": 64, "batch_size": 1},
    }  # fmt: skip


def test_offline_prior_is_named_before_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(preflight, "_available_bytes", lambda cfg: (1, "available RAM"))
    for prior in ("someorg/not-cached", None):  # None: the default SD 2.1-base id
        with pytest.raises(OfflineModelError, match="not available offline"):
            preflight.check_config(_cfg(prior), "fit", {})
    # An incomplete local folder is named too (not the memory).
    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    with pytest.raises(Exception, match="not a complete Stable Diffusion folder"):
        preflight.check_config(_cfg(str(folder)), "fit", {})
    # A built-in prior is not resolved (it is built on first use): the memory check speaks.
    with pytest.raises(Exception, match="available RAM"):
        preflight.check_config(_cfg("ra3d/sd21-base-random"), "fit", {})
