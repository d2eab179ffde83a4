"""Seconds per VSD training step (Eq. 2 + score-model update), optionally with delta distillation.

One step = encode the render(s) → prior term (classifier-free guided, 2 UNet rows per render) →
score-model term (base + ζ + camera, 1 row) → [delta: the same at the reference render, in the same
batch] → score-model diffusion loss (1 row, forward + backward through the UNet) → backward into the
render → one Adam step on the "particle" (a learnable image standing in for a renderer) and ζ.

Models:

* ``tiny``: the offline tiny Stable Diffusion of :mod:`ra3d.guidance.tiny` (CPU-friendly).
* ``sd21-unet-random``: a UNet with Stable Diffusion 2.1-base's published architecture (config
  below, checked against ``stabilityai/stable-diffusion-2-1-base/unet/config.json``) and random
  weights, so the UNet compute and memory match the real model without downloading it. The VAE and
  text encoder are small random stand-ins by default (the UNet dominates a VSD step);
  ``--vae sd21`` uses SD's full VAE architecture instead (its encoder runs at 512 px every step).

Memory (CUDA): ``peak`` is ``torch.cuda.max_memory_allocated`` over the timed steps with the one
shared UNet. ``two-copy`` is *analytic*: that peak plus the bytes of one more set of base UNet
weights (what ProlificDreamer's separate LoRA UNet would hold); activations are the same either way.

Examples::

    python bench/vsd_step.py --model tiny --res 64 --dtype float32 --delta off on
    python bench/vsd_step.py --model sd21-unet-random --res 64 512 --dtype float16 bfloat16 \\
        --delta off on --json vsd_step.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ra3d.cameras import Cameras, make_cameras  # noqa: E402
from ra3d.guidance.prior import DiffusionPrior, parse_dtype  # noqa: E402
from ra3d.guidance.tiny import build_tiny_stable_diffusion  # noqa: E402
from ra3d.guidance.vsd import VSDGuidance  # noqa: E402

#: stabilityai/stable-diffusion-2-1-base unet/config.json (architecture fields).
SD21_BASE_UNET_CONFIG: dict[str, object] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "upcast_attention": False,
    "num_class_embeds": None,
    "class_embed_type": None,
    "resnet_time_scale_shift": "default",
}

#: stabilityai/stable-diffusion-2-1-base vae/config.json (architecture fields).
SD21_BASE_VAE_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: A 4-level (8× down-sampling, like SD's) VAE with few channels: same latent shape, tiny cost.
TINY_VAE8_CONFIG: dict[str, object] = {
    **SD21_BASE_VAE_CONFIG,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 8,
}

PROMPT = "a DSLR photo of a corgi"
log = logging.getLogger("ra3d.bench.vsd_step")


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def build_prior(model: str, dtype: str, device: str, vae: str, workdir: Path) -> DiffusionPrior:
    """The tiny prior, or the tiny prior with SD 2.1-base's UNet (random weights) swapped in."""
    folder = build_tiny_stable_diffusion(workdir / "tiny_sd", seed=0, image_size=64)
    prior = DiffusionPrior(str(folder), dtype=dtype, device=device)
    if model == "tiny":
        return prior
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch_dtype = parse_dtype(dtype)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_BASE_UNET_CONFIG)
        vae_model = AutoencoderKL(**(SD21_BASE_VAE_CONFIG if vae == "sd21" else TINY_VAE8_CONFIG))
        # CLIP-sized output (77 × 1024 tokens) from one small layer.
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=prior.text_encoder.config.vocab_size,
                hidden_size=1024,
                intermediate_size=1024,
                num_hidden_layers=1,
                num_attention_heads=16,
                max_position_embeddings=77,
                bos_token_id=prior.text_encoder.config.bos_token_id,
                eos_token_id=prior.text_encoder.config.eos_token_id,
                pad_token_id=prior.text_encoder.config.pad_token_id,
            )
        )
    prior.unet = unet.to(torch_dtype)
    prior.vae = vae_model.to(torch_dtype)
    prior.text_encoder = text_encoder.to(torch_dtype)
    prior.vae_scale_factor = 2 ** (len(prior.vae.config.block_out_channels) - 1)
    prior.image_size = int(unet.config.sample_size) * prior.vae_scale_factor  # 512
    prior.scaling_factor = float(prior.vae.config.scaling_factor)
    prior.clear_text_cache()
    prior.freeze()
    return prior


def cameras_for(batch: int, res: int, device: str) -> Cameras:
    az = torch.linspace(0.0, 360.0, batch + 1)[:batch]
    return make_cameras(
        torch.full((batch,), 15.0),
        az,
        torch.full((batch,), 1.5),
        torch.full((batch,), 45.0),
        res,
        res,
    ).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_one(
    guidance: VSDGuidance,
    res: int,
    batch: int,
    delta: bool,
    warmup: int,
    steps: int,
    device: str,
) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    particle = nn.Parameter(torch.randn(batch, res, res, 3, generator=gen).to(device))
    reference = torch.rand(batch, res, res, 3, generator=gen).to(device) if delta else None
    cams = cameras_for(batch, res, device)
    optimizer = torch.optim.Adam(
        [{"params": [particle], "lr": 1e-2}, *guidance.trainable_parameter_groups()]
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = guidance(torch.sigmoid(particle), cams, PROMPT, reference_rgb=reference)
        out.loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    row = {
        "s_per_step": statistics.mean(times),
        "s_std": statistics.stdev(times) if len(times) > 1 else 0.0,
    }
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
        unet_base = sum(
            p.numel() * p.element_size()
            for n, p in guidance.prior.unet.named_parameters()
            if "lora_" not in n
        )
        row["peak_mib"] = peak / 2**20
        row["two_copy_mib_analytic"] = (peak + unet_base) / 2**20
    return row


def markdown(rows: list[dict[str, object]]) -> str:
    cols = ["model", "unet_params_m", "device", "dtype", "res", "batch", "delta", "s_per_step"]
    cols += ["s_std"]
    if any("peak_mib" in r for r in rows):
        cols += ["peak_mib", "two_copy_mib_analytic"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, float):
                cells.append(f"{v:.4f}" if c.startswith("s_") else f"{v:.1f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "sd21-unet-random"], default="tiny")
    ap.add_argument("--res", type=int, nargs="+", default=[64], help="render sizes (px)")
    ap.add_argument("--dtype", nargs="+", default=["float32"],
                    choices=["float32", "float16", "bfloat16"])  # fmt: skip
    ap.add_argument("--delta", nargs="+", default=["off", "on"], choices=["off", "on"])
    ap.add_argument("--batch", type=int, default=1, help="renders per step (particles × views)")
    ap.add_argument("--vae", choices=["tiny", "sd21"], default="tiny",
                    help="sd21-unet-random only: VAE architecture")  # fmt: skip
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "cast with to()" notes about the random UNet
    diffusers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else (args.device)
    )
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        print("--steps and --batch must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2

    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtype:
            prior = build_prior(args.model, dtype, device, args.vae, Path(tmp))
            guidance = VSDGuidance(prior, seed=0)  # one fresh prior per dtype: one ζ per UNet
            for res in args.res:
                for delta in args.delta:
                    row: dict[str, object] = {
                        "model": args.model,
                        "device": torch.cuda.get_device_name() if device.startswith("cuda")
                        else "cpu",
                        "dtype": dtype,
                        "res": res,
                        "batch": args.batch,
                        "delta": delta,
                        "unet_params_m": sum(p.numel() for p in prior.unet.parameters()) / 1e6,
                    }  # fmt: skip
                    row.update(
                        bench_one(
                            guidance,
                            res,
                            args.batch,
                            delta == "on",
                            args.warmup,
                            args.steps,
                            device,
                        )  # fmt: skip
                    )
                    rows.append(row)
                    print(markdown([row]).splitlines()[-1], flush=True)
            del guidance, prior
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    print()
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
