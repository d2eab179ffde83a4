"""Checks of a parsed ``ra3d fit|validate|test|predict`` configuration, before anything heavy.

LightningCLI instantiates the guidance (loading a diffusion prior takes ~30 s and gigabytes) before
the system checks its own arguments, and Lightning only notices an impossible render size when
memory runs out minutes later. These checks read the merged configuration (a plain dict) and
refuse bad values up front with a message that names the key and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ra3d.errors import CheckpointError, ConfigError, ModelNotFoundError, Ra3dError
from ra3d.training.checks import check_n_particles, check_prompt, check_same_prompt

logger = logging.getLogger(__name__)

MAX_RENDER_SIDE = 16384  # pixels; renders are resized to the prior's 64 or 512 px anyway
LIGHTNING_CKPT_ALIASES = ("last", "best", "hpc", "registry")


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return default
        node = node[key]
    return node


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def check_model(cfg: dict[str, Any]) -> None:
    inherits = _get(cfg, "model.init_from") is not None  # a later stage takes the earlier prompt
    check_prompt(_get(cfg, "model.prompt"), inherited=inherits)
    check_n_particles(_get(cfg, "model.n_particles", 1))
    check_user_meshes(cfg)


def check_user_meshes(cfg: dict[str, Any]) -> None:
    """``model.retrieval.assets``: every user mesh passes the mesh loader's checks here, before
    the prior is loaded (see :func:`ra3d.augmentation.assets.check_user_meshes`)."""
    retrieval = _get(cfg, "model.retrieval")
    if not isinstance(retrieval, dict) or retrieval.get("enabled", True) is False:
        return
    from ra3d.augmentation.assets import check_user_meshes as check

    check(retrieval.get("assets"), {"assets": "model.retrieval.assets"})


def check_trainer(cfg: dict[str, Any], subcommand: str) -> None:
    max_steps = _get(cfg, "trainer.max_steps", -1)
    if subcommand == "fit" and (not isinstance(max_steps, int) or max_steps == 0 or max_steps < -1):
        raise ConfigError(
            f"trainer.max_steps must be a positive number of steps (or -1 for no limit), got "
            f"{max_steps!r}: e.g. --trainer.max_steps 150"
        )


def check_retrieval(cfg: dict[str, Any], subcommand: str) -> None:
    """``retrieval.embedder: clip`` (the paper's retrieval, the full-size configs') needs CLIP
    weights on this machine: without them the fit would load the prior (minutes, gigabytes) and
    only then fail to retrieve, so it stops here and names the command that fetches them. Only
    where the fit will retrieve: not with user meshes (``retrieval.assets``), a later stage
    (``init_from``: the assets are inherited) or a resume (``ckpt_path``: they are recorded)."""
    retrieval = _get(cfg, "model.retrieval")
    if subcommand != "fit" or not isinstance(retrieval, dict):
        return
    if retrieval.get("enabled", True) is False or retrieval.get("assets") is not None:
        return
    if _get(cfg, "model.init_from") is not None or _get(cfg, "ckpt_path") is not None:
        return
    if retrieval.get("embedder") != "clip":
        return
    from ra3d.retrieval.embed import (
        DEFAULT_CLIP_MODEL,
        DEFAULT_CLIP_PRETRAINED,
        find_local_clip_weights,
    )

    model = retrieval.get("clip_model") or DEFAULT_CLIP_MODEL
    pretrained = retrieval.get("clip_pretrained") or DEFAULT_CLIP_PRETRAINED
    if str(model).startswith("local-dir:"):
        return  # an open_clip folder: the embedder checks it when it loads
    if find_local_clip_weights(str(model), str(pretrained)) is not None:
        return
    raise ModelNotFoundError(
        f"retrieval.embedder is clip (the paper's retrieval: caption search, image rerank, "
        f"frontal alignment) but the CLIP {model}/{pretrained} weights are not on this machine: "
        f"fetch them with `ra3d weights download --clip {model}:{pretrained}` (then "
        "`ra3d weights check` shows them), or give retrieval.clip_pretrained a weights file; "
        "--model.retrieval.embedder minilm retrieves by captions only"
    )


#: Class of the volume renderer whose per-sample memory :func:`estimate_train_bytes` models.
NERF_CLASS = "ra3d.representations.nerf.InstantNGPNeRF"
#: Per-ray floats any representation keeps for backpropagation: origin and direction, the four
#: outputs (rgb, opacity, depth, normal), the background colour, and their gradients.
PER_RAY_FLOATS = 32


def _reachable_stages(cfg: dict[str, Any]) -> int:
    """How many entries of the resolution schedule a run of ``trainer.max_steps`` reaches (entry
    ``i`` starts at ``data.resolution_milestones[i - 1]``)."""
    milestones = [int(m) for m in _as_list(_get(cfg, "data.resolution_milestones", []))]
    max_steps = _get(cfg, "trainer.max_steps", -1)
    if not isinstance(max_steps, int) or max_steps < 0:
        return len(milestones) + 1
    return 1 + sum(1 for m in milestones if m < max_steps)


#: Parameters of SD 2.1-base (UNet 865 910 724 + VAE 83 653 863 + text encoder 340 387 840), the
#: size of every prior a shipped full-size config names (hub id, its copies, ra3d/sd21-base-random).
SD21_PARAMETERS = 1_289_952_427
#: SD's KL-f8 VAE (``block_out_channels``, ``layers_per_block``) and native resolution.
SD21_VAE = ((128, 256, 512, 512), 2)
SD21_IMAGE_SIZE = 512
#: The offline demo's tiny prior: its weights and activations are a few MB, not counted.
TINY_PRIOR = "ra3d/tiny-sd"


def vae_encoder_saved_floats(
    side: int, channels: tuple[int, ...], layers_per_block: int, latent_channels: int = 4
) -> int:
    """Floats the VAE encoder keeps for backward when a ``side²`` render is encoded with
    gradient (SDS/VSD back-propagate ∂z/∂x into the 3D parameters).

    Counted per tensor the autograd graph saves, at each level ``l`` (``c_l`` channels, side
    ``s = side / 2^l``): a ResnetBlock2D keeps its input (GroupNorm's, also the 1×1 shortcut's),
    the first GroupNorm's output (SiLU's input) and the SiLU's output (the first 3×3
    convolution's input), all of the input width; then the convolution's output, the second
    GroupNorm's output and SiLU's output, of the output width: ``3 c_in + 3 c`` per block. Every
    level but the last ends in a strided convolution that keeps its padded input, ``c (s + 1)²``.
    The mid block is two more ResnetBlocks and a single-head self-attention (GroupNorm output,
    q, k, v and the attention output: ``5 c``); the head keeps GroupNorm input and output and the
    SiLU output (``3 c``), the moments and the quantisation convolution's tensors
    (``5 × latent_channels``); ``conv_in`` keeps the RGB input. SD 2.1-base at 512 px: 794 M
    floats, 3.0 GiB in float32; autograd's saved-tensor hooks on the real module count the same
    (tests/training/test_preflight_prior.py).
    """
    total = 3 * side * side  # conv_in's input
    c_prev = channels[0]  # conv_in's output, the first ResnetBlock's input
    s = side
    for level, c in enumerate(channels):
        for _ in range(layers_per_block):
            total += 3 * (c_prev + c) * s * s
            c_prev = c
        if level < len(channels) - 1:
            total += c * (s + 1) * (s + 1)
            s //= 2
    c = channels[-1]
    total += (2 * 6 * c + 5 * c + 3 * c + 5 * latent_channels) * s * s
    return total


def _prior_source(cfg: dict[str, Any]) -> str | None:
    """The prior a config's guidance loads: its ``prior`` argument; ra3d's own guidance classes
    default to SD 2.1-base; another class (a user's or a test's) without a ``prior`` argument is
    not assumed to load one."""
    guidance = _get(cfg, "model.guidance", {}) or {}
    if not isinstance(guidance, dict) or not guidance:
        return None
    args = guidance.get("init_args") or {}
    if "prior" in args:
        return None if args["prior"] is None else str(args["prior"])
    ours = str(guidance.get("class_path", "ra3d.guidance")).startswith("ra3d.guidance")
    return "default" if ours else None


def _folder_parameters(folder: Path) -> int | None:
    """Parameters in a diffusers folder's weight files, read from the safetensors headers only."""
    import json
    import struct

    total = 0
    for sub in ("unet", "vae", "text_encoder"):
        files = sorted((folder / sub).glob("*.safetensors")) if (folder / sub).is_dir() else []
        if not files:
            return None
        for file in files:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for key, entry in header.items():
                if key != "__metadata__":
                    count = 1
                    for dim in entry["shape"]:
                        count *= int(dim)
                    total += count
    return total


def estimate_prior_bytes(cfg: dict[str, Any], n_renders: int) -> tuple[int, str]:
    """``(bytes, how)``: the prior's weights plus what encoding ``n_renders`` renders keeps for
    backward (:func:`vae_encoder_saved_floats` at the prior's resolution). Weights are float32
    unless ``half_precision_weights`` is set and a GPU is asked for; a local folder's parameters
    are read from its files, any other prior is taken to be SD 2.1-base-sized. Not counted: the
    VSD score model's LoRA backward through the UNet at 64² latents, the no-grad UNet passes'
    transient activations, and the framework (~1–2 GB of a CPU process)."""
    source = _prior_source(cfg)
    if source is None or source == TINY_PRIOR:
        return 0, ""
    params = None
    folder = Path(source).expanduser()
    if folder.is_dir():
        params = _folder_parameters(folder)
    params = params or SD21_PARAMETERS
    args = _get(cfg, "model.guidance.init_args", {}) or {}
    accelerator = str(_get(cfg, "trainer.accelerator", "auto"))
    half = bool(args.get("half_precision_weights", False)) and accelerator != "cpu"
    if half:
        import torch

        half = torch.cuda.is_available()
    width = 2 if half else 4
    channels, layers = SD21_VAE
    activations = n_renders * vae_encoder_saved_floats(SD21_IMAGE_SIZE, channels, layers) * 4
    how = (f"prior {params / 1e9:.2f} B parameters × {width} bytes + VAE encoder backward "
           f"{n_renders} × {SD21_IMAGE_SIZE}² px")  # fmt: skip
    return params * width + activations, how


def estimate_train_bytes(cfg: dict[str, Any]) -> tuple[int, int, str]:
    """``(lower, upper, how)``: bounds of the memory of one training step, over the resolution
    stages the run reaches: the prior (:func:`estimate_prior_bytes`) plus the renders'
    activations.

    Every particle renders ``batch × H × W`` rays, each keeping :data:`PER_RAY_FLOATS` floats
    whatever the representation (the lower bound). The NeRF also keeps, per sample of
    ``n_samples_per_ray``, the hash-grid features and corner weights/indices (8 corners × 12
    bytes per level), two activations per MLP layer and ~32 other floats; with its occupancy grid
    on, empty space is skipped (threestudio's ProlificDreamer at 512 px relies on it), so all
    samples are only the upper bound, else they are the lower bound too."""
    rep_cfg = _get(cfg, "model.representation", {}) or {}
    rep = (rep_cfg.get("init_args") if isinstance(rep_cfg, dict) else None) or {}
    is_nerf = isinstance(rep_cfg, dict) and rep_cfg.get("class_path") == NERF_CLASS
    enc = rep.get("encoding") if isinstance(rep.get("encoding"), dict) else {}
    enc = enc or {}
    samples = int(rep.get("n_samples_per_ray", 64) or 64)
    hidden = int(rep.get("hidden_dim", 64) or 64)
    layers = int(rep.get("n_hidden_layers", 1) or 1) + 1
    levels = int(enc.get("n_levels", 16) or 16)
    features = levels * int(enc.get("n_features_per_level", 2) or 2)
    per_sample = 4 * (features + 2 * hidden * layers + 32) + levels * 8 * 12
    per_ray = 4 * PER_RAY_FLOATS
    particles = int(_get(cfg, "model.n_particles", 1))
    heights = _as_list(_get(cfg, "data.height", 64))
    widths = _as_list(_get(cfg, "data.width", 64))
    batches = _as_list(_get(cfg, "data.batch_size", 1))
    stages = min(max(len(heights), len(widths), len(batches)), _reachable_stages(cfg))
    worst = renders = 0
    for i in range(stages):
        h = int(heights[min(i, len(heights) - 1)])
        w = int(widths[min(i, len(widths) - 1)])
        b = int(batches[min(i, len(batches) - 1)])
        worst = max(worst, particles * b * h * w)
        renders = max(renders, particles * b)
    prior, prior_how = estimate_prior_bytes(cfg, renders)
    prior_how = f" + {prior_how}" if prior_how else ""
    if not is_nerf:
        rays = worst * per_ray + prior
        return rays, rays, f"{worst} rays × ~{per_ray} bytes{prior_how}"
    all_samples = worst * (per_ray + samples * per_sample) + prior
    how = f"{worst} rays × {samples} samples × ~{per_sample} bytes{prior_how}"
    occupancy = rep.get("use_occupancy_grid", True) is not False
    return (worst * per_ray + prior if occupancy else all_samples), all_samples, how


def _available_bytes(cfg: dict[str, Any]) -> tuple[int, str]:
    accelerator = str(_get(cfg, "trainer.accelerator", "auto"))
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), "free GPU memory"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM"


def check_resources(cfg: dict[str, Any], subcommand: str) -> None:
    """Refuse render sizes that cannot fit, before allocating anything."""
    sides = [("data.eval_height", _get(cfg, "data.eval_height", 512)),
             ("data.eval_width", _get(cfg, "data.eval_width", 512))]  # fmt: skip
    if subcommand == "fit":
        sides += [("data.height", v) for v in _as_list(_get(cfg, "data.height", 64))]
        sides += [("data.width", v) for v in _as_list(_get(cfg, "data.width", 64))]
    for key, value in sides:
        if isinstance(value, int) and value > MAX_RENDER_SIDE:
            raise ConfigError(
                f"{key} is {value} px, above the limit of {MAX_RENDER_SIDE} px per side; renders "
                "are resized to the prior's resolution (64 or 512 px), so use e.g. "
                f"--{key} 64 (training) or 512 (evaluation)"
            )
    if subcommand != "fit":
        return
    lower, upper, how = estimate_train_bytes(cfg)
    have, what = _available_bytes(cfg)
    if lower > have:
        raise ConfigError(
            f"one training step needs at least ~{lower / 2**30:.1f} GiB ({how}) but only "
            f"{have / 2**30:.1f} GiB of {what} is left: lower --data.height/--data.width, "
            "--data.batch_size, --model.n_particles or n_samples_per_ray"
        )
    if upper > have:
        logger.warning(
            "one training step may need up to ~%.1f GiB (%s) if the occupancy grid skips no "
            "samples, and %.1f GiB of %s is left; it usually skips most of them, but if memory "
            "runs out lower --data.height/--data.width or n_samples_per_ray",
            upper / 2**30, how, have / 2**30, what,
        )  # fmt: skip


def check_checkpoint(
    cfg: dict[str, Any], subcommand: str, records: dict[str, Any] | None = None
) -> None:
    """``--ckpt_path``: required for validate/test/predict; a readable ra3d checkpoint with
    finite weights; for a resume, of the same prompt."""
    ckpt = _get(cfg, "ckpt_path")
    if ckpt is None:
        if subcommand != "fit":
            raise CheckpointError(
                f"ra3d {subcommand} renders a trained run: pass its checkpoint with --ckpt_path "
                "outputs/<run>/version_N/checkpoints/last.ckpt"
            )
        return
    ckpt = str(ckpt)
    if ckpt in LIGHTNING_CKPT_ALIASES:
        raise CheckpointError(
            f"--ckpt_path {ckpt} is not supported: ra3d writes <run folder>/checkpoints/last.ckpt; "
            "pass that file (e.g. outputs/demo/version_0/checkpoints/last.ckpt)"
        )
    if Path(ckpt).is_dir():
        raise CheckpointError(
            f"--ckpt_path {ckpt} is a directory; pass the checkpoint file inside it, e.g. "
            f"{Path(ckpt) / 'checkpoints' / 'last.ckpt'}"
        )
    record = read_checked_checkpoint(ckpt, records)
    prompt = _get(cfg, "model.prompt")
    if subcommand == "fit" and isinstance(prompt, str):
        check_same_prompt(ckpt, record.prompt, prompt, later_stage=False)


def read_checked_checkpoint(path: str, records: dict[str, Any] | None = None) -> Any:
    """The :class:`~ra3d.training.checkpoint.RunRecord` of a readable ra3d checkpoint with finite
    weights; one clear :class:`CheckpointError` otherwise (truncated, empty, random bytes, not
    ra3d's, a diverged run's). ``records`` is the caller's cache (one command asks several times
    for the same file; the CLI keeps one per call)."""
    key = str(Path(path).resolve())
    if records is not None and key in records:
        return records[key]
    import torch

    from ra3d.training.checkpoint import read_checkpoint

    record, state, file = read_checkpoint(path)
    bad = [
        k for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(v.isfinite().all())
    ]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"{file} holds non-finite weights ({', '.join(bad[:3])}): it was written by a "
            "diverged run. Use an earlier checkpoint of that run, or retrain with lower "
            "learning rates"
        )
    if records is not None:
        records[key] = record
    return record


def check_recorded_meshes(
    cfg: dict[str, Any], subcommand: str, records: dict[str, Any] | None = None
) -> None:
    """The asset meshes a resumed (``--ckpt_path``) or later-stage (``--init_from``) fit takes
    from its checkpoint's record pass the mesh loader's checks now, before the prior loads: a
    file replaced since the run started (issue 17: every mesh is untrusted, also on a resume)
    is one ``ra3d: error`` naming it."""
    if subcommand != "fit":
        return
    from ra3d.augmentation.assets import check_recorded_assets, check_user_meshes
    from ra3d.training.checkpoint import resolve_checkpoint_path

    for key in ("ckpt_path", "model.init_from"):
        value = _get(cfg, key)
        if value is None:
            continue
        try:
            path = str(resolve_checkpoint_path(str(value)))
        except (OSError, ValueError, Ra3dError):
            continue  # the checks that own this path report it
        record = read_checked_checkpoint(path, records)
        if not record.retrieval or not record.retrieval.get("assets"):
            continue
        assets = check_recorded_assets(record.retrieval)  # missing files: one error
        where = f"the assets recorded in {Path(path).name} ({key})"
        check_user_meshes([str(a.mesh_path) for a in assets], {"assets": where})


def check_prior_available(cfg: dict[str, Any]) -> None:
    """A prior that cannot load here — a hub id offline with no cached copy, an incomplete local
    folder — is reported before the memory estimate, which would otherwise ask for memory for a
    model that is not on the machine. Online nothing is fetched here (the load fetches and
    reports hub failures); ra3d's built-in priors (``ra3d/...``) are built on first use."""
    source = _prior_source(cfg)
    if source is None or source.startswith("ra3d/"):
        return
    from ra3d.guidance.prior import DEFAULT_MODEL, hub_offline, resolve_model_path

    name = DEFAULT_MODEL if source == "default" else source
    local_only = (_get(cfg, "model.guidance.init_args", {}) or {}).get("local_files_only")
    if Path(name).expanduser().is_dir() or hub_offline(local_only):
        resolve_model_path(name, local_only)


def check_config(
    cfg: dict[str, Any], subcommand: str, records: dict[str, Any] | None = None
) -> None:
    """All checks, cheapest first (``records``: see :func:`read_checked_checkpoint`)."""
    check_model(cfg)
    check_trainer(cfg, subcommand)
    check_retrieval(cfg, subcommand)
    if subcommand == "fit":
        check_prior_available(cfg)
    check_resources(cfg, subcommand)
    check_checkpoint(cfg, subcommand, records)
    check_recorded_meshes(cfg, subcommand, records)
