"""``ra3d/sd21-base-random``: SD 2.1-base's architectures with random weights, built offline.

The expected values below are copied from the published configuration files of
stabilityai/stable-diffusion-2-1-base (unet/, vae/, text_encoder/, tokenizer/, scheduler/) and its
published parameter counts, not from the builder, so a drift in either shows here.
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from ra3d.errors import DiskFullError
from ra3d.guidance import random_prior
from ra3d.guidance.random_prior import (
    RANDOM_MODEL_ID,
    TEXT_ENCODER_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    ensure_sd21_base_random,
)

PUBLISHED_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024, "use_linear_projection": True, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "flip_sin_to_cos": True, "freq_shift": 0, "upcast_attention": False,
}  # fmt: skip
PUBLISHED_VAE = {
    "block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2,
    "in_channels": 3, "out_channels": 3, "norm_num_groups": 32, "sample_size": 512,
    "scaling_factor": 0.18215,
}  # fmt: skip
PUBLISHED_TEXT = {
    "hidden_size": 1024, "num_hidden_layers": 23, "num_attention_heads": 16,
    "intermediate_size": 4096, "hidden_act": "gelu", "projection_dim": 512,
    "max_position_embeddings": 77, "vocab_size": 49408, "layer_norm_eps": 1e-05,
}  # fmt: skip
PUBLISHED_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
}  # fmt: skip
UNET_PARAMETERS = 865_910_724
VAE_PARAMETERS = 83_653_863


def clip_text_parameters(width: int, layers: int, mlp: int, vocab: int, positions: int) -> int:
    """Parameters of a CLIP text transformer, counted by hand: per layer q/k/v/out projections
    with biases, the two MLP linears with biases and two LayerNorms; token and position
    embeddings; the final LayerNorm."""
    per_layer = 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    per_layer += 2 * 2 * width
    return layers * per_layer + vocab * width + positions * width + 2 * width


TEXT_PARAMETERS = clip_text_parameters(1024, 23, 4096, 49408, 77)  # 340 387 840


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_architectures_have_the_published_shapes_and_parameter_counts() -> None:
    """On the meta device (no memory, no init): the builder's configs give SD 2.1-base's
    published networks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    assert TEXT_PARAMETERS == 340_387_840
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNET_CONFIG)
        vae = AutoencoderKL.from_config(VAE_CONFIG)
        text = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    assert _count(unet) == UNET_PARAMETERS
    assert _count(vae) == VAE_PARAMETERS
    assert _count(text) == TEXT_PARAMETERS
    for key, value in PUBLISHED_UNET.items():
        assert unet.config[key] == value, key
    for key, value in PUBLISHED_VAE.items():
        assert vae.config[key] == value, key
    for key, value in PUBLISHED_TEXT.items():
        assert getattr(text.config, key) == value, key
    assert random_prior.N_PARAMETERS == UNET_PARAMETERS + VAE_PARAMETERS + TEXT_PARAMETERS


def test_disk_space_is_checked_before_building(tmp_path: Path, monkeypatch) -> None:
    built = []
    monkeypatch.setattr(random_prior, "build_sd21_base_random", lambda *a, **k: built.append(a))
    monkeypatch.setattr(
        random_prior.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**30})()
    )
    with pytest.raises(DiskFullError, match=r"needs 2\.4 GiB .* only 1\.0 GiB is free.*RA3D_CACHE"):
        ensure_sd21_base_random(tmp_path)
    assert built == []


def test_an_interrupted_build_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    def half_build(path: Path, seed: int = 0) -> Path:
        (path / "unet").mkdir()
        (path / "unet" / "config.json").write_text("{}")
        (path / "model_index.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(random_prior, "build_sd21_base_random", half_build)
    with pytest.raises(DiskFullError, match="filled up while building ra3d/sd21-base-random"):
        ensure_sd21_base_random(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no final folder and no temporary one


def test_prior_resolves_the_id_to_the_cache(tmp_path: Path, monkeypatch) -> None:
    from ra3d.guidance.prior import resolve_model_path

    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path))
    seen = []

    def fake(cache: Path, seed: int = 0) -> Path:
        seen.append(cache)
        return cache / "built"

    monkeypatch.setattr(random_prior, "ensure_sd21_base_random", fake)
    assert resolve_model_path(RANDOM_MODEL_ID, local_files_only=True) == str(tmp_path / "built")
    assert seen == [tmp_path]


@pytest.mark.slow
def test_built_folder_is_sd21_base(tmp_path: Path) -> None:
    """The end-to-end build (~30 s on 2 CPU cores): published configs on disk, float16 weights
    of the published sizes, the real tokenizer with SD 2's padding, the real schedule; a second
    call reuses the folder."""
    from diffusers import DDPMScheduler
    from safetensors import safe_open
    from transformers import CLIPTokenizer

    folder = ensure_sd21_base_random(tmp_path, seed=0)
    assert ensure_sd21_base_random(tmp_path, seed=0) == folder
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    text = json.loads((folder / "text_encoder" / "config.json").read_text())
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert {k: unet[k] for k in PUBLISHED_UNET} == PUBLISHED_UNET
    assert {k: vae[k] for k in PUBLISHED_VAE} == PUBLISHED_VAE
    assert {k: text[k] for k in PUBLISHED_TEXT} == PUBLISHED_TEXT
    assert {k: sched[k] for k in PUBLISHED_SCHEDULER} == PUBLISHED_SCHEDULER
    assert sched["_class_name"] == "PNDMScheduler"

    files = {"unet": ("diffusion_pytorch_model", UNET_PARAMETERS),
             "vae": ("diffusion_pytorch_model", VAE_PARAMETERS),
             "text_encoder": ("model", TEXT_PARAMETERS)}  # fmt: skip
    for sub, (stem, expected) in files.items():
        n = 0
        with safe_open(str(folder / sub / f"{stem}.safetensors"), "pt") as f:
            for key in f.keys():
                tensor = f.get_slice(key)
                assert tensor.get_dtype() == "F16", key
                n += math.prod(tensor.get_shape())
        assert n == expected, sub

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    # CLIP's ids of this sentence (openai/CLIP and every CLIP tokenizer), then SD 2's "!" padding.
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[7:] == [0] * 70

    # ᾱ_t in closed form: scaled_linear β_t = (√β_0 + t/(T−1)(√β_1 − √β_0))², ᾱ_t = Π(1 − β_s),
    # in float64; diffusers computes it in float32, whose relative error over 1000 factors is
    # at most ~1000 × 2⁻²⁴ ≈ 6e-5.
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    t = torch.arange(1000, dtype=torch.float64)
    beta = (0.00085**0.5 + t / 999 * (0.012**0.5 - 0.00085**0.5)) ** 2
    abar = torch.cumprod(1 - beta, 0)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), abar, rtol=6e-5, atol=0)
    assert scheduler.config.prediction_type == "epsilon"
