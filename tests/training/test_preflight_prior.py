"""The prior's part of the memory preflight: weights and the VAE encoder's saved activations,
against independent counts (published parameter counts, autograd's saved-tensor hooks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ra3d.training import preflight
from ra3d.training.preflight import (
    SD21_PARAMETERS,
    estimate_prior_bytes,
    estimate_train_bytes,
    vae_encoder_saved_floats,
)
from tests.paths import CONFIGS

#: Published parameter counts of SD 2.1-base: UNet, VAE, OpenCLIP ViT-H text encoder.
PUBLISHED = 865_910_724 + 83_653_863 + 340_387_840


def saved_activation_floats(vae, side: int) -> int:  # noqa: ANN001 - an AutoencoderKL
    """Floats autograd keeps for backward when ``vae`` encodes a ``side²`` image with gradient:
    every distinct storage the saved-tensor hooks see, less the (frozen) weights."""
    weights = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            seen[ptr] = t.untyped_storage().nbytes() // t.element_size()
        return t

    x = torch.zeros(1, 3, side, side, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vae.encode(x).latent_dist.mean.sum()
    return sum(seen.values())


@pytest.mark.parametrize(
    "channels, layers, side",
    [((16, 32, 32), 1, 64), ((128, 256, 512, 512), 2, 32)],
    ids=["tiny", "sd21-base"],
)
def test_vae_encoder_formula_matches_saved_tensor_hooks(
    channels: tuple[int, ...], layers: int, side: int
) -> None:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(
            block_out_channels=channels,
            down_block_types=("DownEncoderBlock2D",) * len(channels),
            up_block_types=("UpDecoderBlock2D",) * len(channels),
            layers_per_block=layers,
            norm_num_groups=8 if channels[0] == 16 else 32,
        )
    vae = vae.to_empty(device="cpu").requires_grad_(False)  # values do not change the count
    counted = saved_activation_floats(vae, side)
    formula = vae_encoder_saved_floats(side, channels, layers)
    # The formula leaves out GroupNorm's per-group statistics and attention's per-token
    # log-sum-exp: O(groups + tokens) floats against O(channels × pixels), < 0.5 % here.
    assert formula <= counted
    assert (counted - formula) / counted < 0.005


def test_prior_bytes_are_weights_plus_the_encoder_backward(monkeypatch) -> None:
    assert SD21_PARAMETERS == PUBLISHED
    cfg = yaml.safe_load((CONFIGS / "coarse_nerf.yaml").read_text())
    cfg["trainer"]["accelerator"] = "cpu"  # float32 weights on a CPU
    got, how = estimate_prior_bytes(cfg, n_renders=2)
    assert got == PUBLISHED * 4 + 2 * vae_encoder_saved_floats(512, (128, 256, 512, 512), 2) * 4
    assert "1.29 B parameters × 4 bytes" in how
    # The tiny demo prior is not counted; nor is a config without guidance.
    cfg["model"]["guidance"]["init_args"]["prior"] = "ra3d/tiny-sd"
    assert estimate_prior_bytes(cfg, 1) == (0, "")


def test_a_local_folder_counts_its_own_parameters(tiny_prior_path: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    expected = sum(
        sum(p.numel() for p in cls.from_pretrained(tiny_prior_path, subfolder=sub).parameters())
        for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae"),
                         (CLIPTextModel, "text_encoder"))
    )  # fmt: skip
    assert preflight._folder_parameters(tiny_prior_path) == expected


def test_coarse_64px_estimate_is_below_the_measured_peak() -> None:
    """The lower bound of the coarse stage's 64 px phase with SD 2.1-base on a CPU, in GiB,
    against the peak RSS measured on this 2-core CPU (bench/full_size.py, ra3d fit of 2 steps:
    12.1 GiB; the difference is the framework, the UNet's LoRA backward and transient passes)."""
    cfg = yaml.safe_load((CONFIGS / "coarse_nerf.yaml").read_text())
    cfg["trainer"].update(accelerator="cpu", max_steps=2)
    lower, upper, _ = estimate_train_bytes(cfg)
    assert 7.0 < lower / 2**30 < 12.1
    assert upper > lower
