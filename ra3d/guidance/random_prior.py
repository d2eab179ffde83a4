"""``ra3d/sd21-base-random``: Stable Diffusion 2.1-base's architectures with random weights.

The full-size chain (``configs/coarse_nerf.yaml`` → ``fine_dmtet.yaml`` → ``fine_texture.yaml``)
needs a prior of the real size to measure its memory and speed, and the real weights cannot be
had on a machine without the hub (nor, since Nov 2025, from Stability AI's own repository). This
module builds, offline and in well under a minute, a diffusers folder with

* the published ``UNet2DConditionModel`` of SD 2.1-base (865 910 724 parameters: 4 levels of
  320/640/1280/1280 channels, linear-projection transformers with 5/10/20/20 heads of 64, 1024-d
  cross-attention),
* its ``AutoencoderKL`` (83 653 863 parameters, latents 4 × 64 × 64 for 512 px),
* its text encoder, OpenCLIP ViT-H/14's text tower as ``CLIPTextModel`` (340 387 840 parameters,
  23 layers of width 1024: SD 2 uses the penultimate of ViT-H's 24 layers),
* the real CLIP BPE tokenizer, padding with ``"!"`` like SD 2's, and
* the real noise schedule (the published ``PNDMScheduler`` config: scaled-linear β from 0.00085
  to 0.012, T = 1000, ε-prediction),

with seeded random weights in each framework's default initialisation. The folder is loaded by
the same ``from_pretrained`` code as the real checkpoint, so every shape, every kernel and every
byte of activation memory is the real model's; only what the prior *knows* is missing (its
scores are those of an untrained network, so images and gradient directions mean nothing, while
gradient sizes are those of a network at initialisation, not of the trained one).

Weights are written in float16 safetensors (2.6 GB instead of 5.2 GB); ``DiffusionPrior`` loads
them in the dtype the config asks (float32 by default), as it does the real fp16 variant.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ra3d.errors import DiskFullError
from ra3d.guidance.tiny import write_clip_tokenizer, write_model_index
from ra3d.io import build_folder_atomically

logger = logging.getLogger(__name__)

RANDOM_MODEL_ID = "ra3d/sd21-base-random"

#: ``unet/config.json`` of SD 2.1-base (the architecture keys of the published file).
UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "upcast_attention": False,
    "use_linear_projection": True,
}

#: ``vae/config.json`` of SD 2.1-base (the KL-f8 autoencoder SD 1.x and 2.x share).
VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

#: ``text_encoder/config.json`` of SD 2.1-base, token ids included as published (bos 0, eos 2,
#: pad 1 are the conversion's values, not the tokenizer's; transformers then finds the pooled
#: token by the largest id, which only the pooled output uses and the prior does not).
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "vocab_size": 49408,
}

#: ``scheduler/scheduler_config.json`` of SD 2.1-base (a PNDM sampler over the training
#: schedule; the prior reads it into a ``DDPMScheduler``, only the training schedule matters).
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

#: SD 2's tokenizer pads with "!" (id 0), OpenCLIP's padding, where SD 1.x pads with <|endoftext|>.
PAD_TOKEN = "!"

#: Parameters of the three networks (the published counts; tests check the built models).
N_PARAMETERS = 865_910_724 + 83_653_863 + 340_387_840
WEIGHTS_DTYPE = torch.float16
#: Bytes the folder takes: weights in float16, plus the tokenizer files (~3 MB) and configs.
FOLDER_BYTES = N_PARAMETERS * 2 + 4 * 2**20


def build_sd21_base_random(path: str | Path, seed: int = 0) -> Path:
    """Build the random SD 2.1-base folder at ``path`` without touching the caller's global RNG
    (building it inside a run must not change that run's random initialisation)."""
    with torch.random.fork_rng(devices=[]):
        return _build(Path(path), seed)


def _build(out: Path, seed: int) -> Path:
    """One network at a time (peak memory: the UNet in float32, ~3.5 GB), each seeded on its own
    (``seed``, ``seed + 1``, ``seed + 2``, like the tiny model) and saved in float16."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
    text_encoder.to(WEIGHTS_DTYPE).save_pretrained(out / "text_encoder")
    del text_encoder
    write_clip_tokenizer(out / "tokenizer", pad_token=PAD_TOKEN)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(VAE_CONFIG)
    vae.to(WEIGHTS_DTYPE).save_pretrained(out / "vae")
    del vae
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    unet.to(WEIGHTS_DTYPE).save_pretrained(out / "unet")
    del unet
    PNDMScheduler.from_config(SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    write_model_index(out, scheduler_class="PNDMScheduler")
    logger.info("built %s (seed %d, float16) at %s", RANDOM_MODEL_ID, seed, out)
    return out


def check_disk_space(folder: Path, needed: int = FOLDER_BYTES) -> None:
    """Refuse to start a build that cannot finish: a full disk half way through 2.6 GB would
    leave the user with a cryptic ``ENOSPC`` after a minute of work."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"building {RANDOM_MODEL_ID} needs {needed / 2**30:.1f} GiB in {folder} but only "
            f"{free / 2**30:.1f} GiB is free: free some space there, or set RA3D_CACHE_DIR to a "
            "folder on a larger disk"
        )


def ensure_sd21_base_random(cache: Path, seed: int = 0) -> Path:
    """The random SD 2.1-base folder under ``cache``, built on first use.

    Built in a temporary folder beside its final place and renamed into it, so an interrupted
    build never leaves a half-written model that a later run would take as complete.
    """
    folder = cache / f"sd21-base-random-s{seed}-fp16"
    if (folder / "model_index.json").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    check_disk_space(cache)
    logger.warning(
        "building %s (SD 2.1-base's architecture, random weights, %.1f GB) in %s; once only",
        RANDOM_MODEL_ID, FOLDER_BYTES / 1e9, folder,
    )  # fmt: skip

    def build(tmp: Path) -> None:
        try:
            build_sd21_base_random(tmp, seed=seed)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise DiskFullError(
                f"the disk of {cache} filled up while building {RANDOM_MODEL_ID} (it needs "
                f"{FOLDER_BYTES / 2**30:.1f} GiB): free some space there, or set RA3D_CACHE_DIR "
                "to a folder on a larger disk"
            ) from err

    return build_folder_atomically(folder, build, "model_index.json", ".sd21-base-random-")
