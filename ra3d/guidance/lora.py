"""Named LoRA adapters and camera conditioning on *one* shared diffusion UNet.

VSD (paper Eq. 2) needs two noise predictors that differ only by a low-rank residual:

* the prior ``ε_φ`` (or the view-adapted prior ``ε_(φ,ω)`` of Eq. 12), frozen, and
* the score model of the rendered-image distribution ``ε_(φ,ζ)(x_t, t, c, ψ)``, trained online.

Rather than two UNet copies, both live in one UNet: peft injects each adapter (``ω`` =
``"view"``, ``ζ`` = ``"vsd"``) as a named branch inside the same attention ``Linear`` layers, and
:class:`AdapterManager` selects which branches are active for each call. Memory is one copy of the
base weights plus the (tiny) adapters.

Why the manager does not simply call ``unet.set_adapters``: peft's ``set_adapter`` also flips
``requires_grad`` (active → trainable, inactive → frozen). Switching to the frozen ``ω`` for the
prior branch would then freeze ``ζ``, and the next switch would make ``ω`` trainable. The manager
switches the peft layers and then re-imposes each adapter's *declared* trainability after every
switch, so "ζ trainable, ω frozen, base frozen" holds at all times.

Camera conditioning (ProlificDreamer conditions the score model on the camera ψ): the flattened
camera matrix goes through :class:`CameraEmbedding` into the UNet's time-embedding space and is
added to the time embedding. Only the score-model branch may see it, while the prior branch on the
same UNet must not. diffusers' ``class_labels`` path would do the addition, but it needs
``unet.class_embedding`` set permanently (and then *every* call must pass ``class_labels``,
including the prior's). Instead :class:`CameraConditioner` registers one forward hook on
``unet.time_embedding`` that adds the embedding only inside ``with conditioner.condition(cam):``.
For ``class_embeddings_concat=False`` (SD 1.x/2.x) this is exactly what the class-label path
computes (``emb = time_embedding(t) + class_embedding(labels)``), which the tests check against
diffusers itself. The UNet's module tree and state dict are untouched.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.io import write_bytes_atomic

logger = logging.getLogger(__name__)

#: Attention projections that carry LoRA in ProlificDreamer (every self/cross attention of the UNet).
LORA_TARGET_MODULES: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
CAMERA_CONDITION_TYPES: tuple[str, ...] = ("extrinsics", "mvp")
_CAMERA_PREFIX = "camera_embedding."
_FORMAT_TAG = "ra3d-lora-adapter-v1"


# ---------------------------------------------------------------------------------------- camera
def camera_condition(cameras: Cameras, kind: str = "extrinsics") -> Tensor:
    """The camera ψ as a flat vector ``[B, 16]`` for the score model ``ε_(φ,ζ)(x_t, t, c, ψ)``.

    ``"extrinsics"`` flattens the camera-to-world matrix (ProlificDreamer's default); ``"mvp"``
    flattens the world-to-clip matrix, which also carries the field of view.
    """
    if kind == "extrinsics":
        matrix = cameras.c2w
    elif kind == "mvp":
        matrix = cameras.mvp()
    else:
        raise ValueError(
            f"camera_condition_type must be one of {CAMERA_CONDITION_TYPES}, got {kind!r}"
        )
    return matrix.reshape(len(cameras), 16).float()


def drop_camera_condition(
    condition: Tensor, p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Zero whole rows of ``condition [B, D]`` with probability ``p`` (classifier-free training).

    Zeroed rows teach the score model an unconditional branch, the way text dropout does for the
    text condition. One uniform draw per row from ``generator`` (on the generator's device).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"camera_dropout must lie in [0, 1], got {p}")
    if p == 0.0:
        return condition
    device = generator.device if generator is not None else condition.device
    u = torch.rand(condition.shape[0], generator=generator, device=device).to(condition.device)
    keep = (u >= p).to(condition.dtype)[:, None]  # [B, 1]
    return condition * keep


class CameraEmbedding(nn.Module):
    """``[B, in_features]`` camera vector → ``[B, embed_dim]`` offset of the UNet time embedding.

    Two-layer MLP with SiLU, the shape of a diffusers ``TimestepEmbedding``. The output layer is
    zero-initialised so that, with LoRA's ``B`` at zero too, the score model at step 0 equals the
    text-conditioned prior for *any* camera (the embedding adds exactly 0 to the time embedding).
    Deviation from threestudio's ProlificDreamer, whose ``TimestepEmbedding(16, 1280)`` keeps
    PyTorch's default (random) initialisation: its score model starts with a random
    camera-dependent offset that the LoRA loss must first train away.
    """

    def __init__(self, in_features: int = 16, embed_dim: int = 1280, hidden_dim: int | None = None):
        super().__init__()
        hidden = hidden_dim or embed_dim
        self.in_features = in_features
        self.embed_dim = embed_dim
        self.linear_1 = nn.Linear(in_features, hidden)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, embed_dim)
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)

    def forward(self, condition: Tensor) -> Tensor:
        if condition.ndim != 2 or condition.shape[1] != self.in_features:
            raise ValueError(
                f"camera condition must have shape [B, {self.in_features}], got {tuple(condition.shape)}"
            )
        x = condition.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(x)))


def time_embedding_dim(unet: nn.Module) -> int:
    """Width of ``unet.time_embedding``'s output (1280 for SD 1.x/2.x)."""
    te = getattr(unet, "time_embedding", None)
    if te is None:
        raise ValueError("the UNet has no `time_embedding` module; camera conditioning needs one")
    last = getattr(te, "linear_2", None)
    if isinstance(last, nn.Linear):
        return last.out_features
    linears = [m for m in te.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot infer the time-embedding width: no nn.Linear in time_embedding")
    return linears[-1].out_features


class CameraConditioner:
    """Adds ``embedding(camera)`` to ``unet.time_embedding``'s output, only inside a context.

    A single forward hook is registered at construction; outside :meth:`condition` it is a no-op,
    so the prior branch on the same UNet is unchanged bit for bit.
    """

    def __init__(self, unet: nn.Module, embedding: CameraEmbedding):
        self.unet = unet
        self.embedding = embedding
        self._pending: Tensor | None = None
        te = getattr(unet, "time_embedding", None)
        if te is None:
            raise ValueError(
                "the UNet has no `time_embedding` module; camera conditioning needs one"
            )
        self._handle = te.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if self._pending is None:
            return None
        offset = self._pending  # [B, D]
        if offset.shape[0] != output.shape[0]:
            raise ValueError(
                f"camera condition batch {offset.shape[0]} does not match the UNet batch "
                f"{output.shape[0]}; pass one camera row per latent"
            )
        return output + offset.to(output.dtype)

    @contextmanager
    def condition(self, camera: Tensor | None) -> Iterator[None]:
        """Inside the block, every UNet call sees ``time_emb + embedding(camera [B, 16])``."""
        if camera is None:
            yield
            return
        previous = self._pending
        self._pending = self.embedding(camera)
        try:
            yield
        finally:
            self._pending = previous

    def remove(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------------------- adapters
def lora_config(
    rank: int,
    alpha: float | None = None,
    target_modules: Sequence[str] = LORA_TARGET_MODULES,
    init: str | bool = "gaussian",
) -> LoraConfig:
    """A peft ``LoraConfig`` for the UNet attention projections.

    ``init="gaussian"`` draws ``A ~ N(0, 1/r²)`` and zeros ``B``, which is what the LoRA attention
    processors used by ProlificDreamer do; ``alpha`` defaults to ``rank`` (scaling α/r = 1, their
    behaviour without a network alpha).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=float(rank if alpha is None else alpha),
        target_modules=list(target_modules),
        init_lora_weights=init,
    )


class AdapterManager:
    """Several named LoRA adapters on one UNet, with explicit activation and trainability.

    One manager per UNet: :attr:`ra3d.guidance.prior.DiffusionPrior.adapters` owns it, and every
    component sharing the prior's UNet uses that one (two managers on one UNet would disagree
    about which adapters exist and which are active).

    Example::

        adapters = prior.adapters
        adapters.add("vsd", lora_config(4), trainable=True)
        adapters.load("view", "omega.safetensors", trainable=False)
        with adapters.use(["view"]):   # ε_(φ,ω): the prior term
            ...
        with adapters.use(["vsd"]):    # ε_(φ,ζ): the score model
            ...
    """

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self._trainable: dict[str, bool] = {}
        self._configs: dict[str, LoraConfig] = {}
        self._active: tuple[str, ...] = ()
        self._layers: list[BaseTunerLayer] = []
        self._flags_ready = False  # the layers were selected (and flags restored) at least once
        self._params: dict[str, list[tuple[str, nn.Parameter]]] = {}  # per-adapter cache

    # -------------------------------------------------------------- bookkeeping
    @property
    def names(self) -> list[str]:
        return list(self._trainable)

    @property
    def active(self) -> tuple[str, ...]:
        return self._active

    def config(self, name: str) -> LoraConfig:
        self._check(name)
        return self._configs[name]

    def is_trainable(self, name: str) -> bool:
        self._check(name)
        return self._trainable[name]

    def _check(self, name: str) -> None:
        if name not in self._trainable:
            raise ValueError(f"unknown adapter {name!r}; the UNet has {self.names}")

    def named_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """``(key, parameter)`` pairs of one adapter; keys omit the adapter name."""
        self._check(name)
        if name not in self._params:
            tag = f".{name}."
            self._params[name] = [
                (key.replace(tag, ".", 1), param)
                for key, param in self.unet.named_parameters()
                if "lora_" in key and tag in key
            ]
        return list(self._params[name])

    def parameters(self, name: str) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters(name)]

    # -------------------------------------------------------------- adding / switching
    def add(self, name: str, config: LoraConfig, trainable: bool) -> list[nn.Parameter]:
        """Inject a new adapter ``name`` into the UNet; returns its parameters."""
        if not name or "." in name:
            raise ValueError(f"adapter names must be non-empty and dot-free, got {name!r}")
        if name in self._trainable:
            raise ValueError(f"adapter {name!r} already exists; pick another name")
        with warnings.catch_warnings():
            # peft warns that several adapters share the model: that is the point here.
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            if hasattr(
                self.unet, "add_adapter"
            ):  # diffusers' PeftAdapterMixin keeps unet.peft_config
                self.unet.add_adapter(config, adapter_name=name)
            else:
                from peft import inject_adapter_in_model

                inject_adapter_in_model(config, self.unet, adapter_name=name)
        self._layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        self._params.clear()
        self._trainable[name] = trainable
        self._configs[name] = config
        params = self.parameters(name)
        if not params:
            raise ValueError(
                f"adapter {name!r} matched no layer: target_modules={config.target_modules}"
            )
        # Adapter weights stay float32 on a half-precision UNet (Adam on fp16 weights loses the
        # small updates); peft casts the layer input to the adapter dtype and the result back.
        for p in params:
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = p.data.float()
        self._apply(self._active, force=True)
        logger.info(
            "added LoRA adapter %r (rank %d, %d tensors, trainable=%s)",
            name,
            config.r,
            len(params),
            trainable,
        )
        return params

    def remove(self, name: str) -> None:
        """Delete adapter ``name`` from the UNet (its LoRA tensors go away; the base weights and
        the other adapters are untouched). The current selection minus ``name`` stays active."""
        self._check(name)
        with warnings.catch_warnings():
            # peft announces which adapter it activates instead; the manager re-selects below.
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            if hasattr(self.unet, "delete_adapters"):  # diffusers: also drops unet.peft_config
                self.unet.delete_adapters(name)
            else:
                for layer in self._layers:
                    layer.delete_adapter(name)
        del self._trainable[name]
        del self._configs[name]
        self._params.clear()
        self._layers = [m for m in self.unet.modules() if isinstance(m, BaseTunerLayer)]
        self._apply([n for n in self._active if n != name], force=True)
        logger.info("removed LoRA adapter %r", name)

    def set_trainable(self, name: str, trainable: bool) -> None:
        self._check(name)
        self._trainable[name] = trainable
        self._restore_requires_grad()

    def _restore_requires_grad(self, names: Sequence[str] | None = None) -> None:
        """Give every adapter tensor its adapter's trainability.

        With ``names``, the flags are those peft's ``set_adapter(names)`` just left (tensors of
        the selected adapters require grad, the others do not), and only the adapters where that
        differs from their trainability are touched."""
        for adapter, trainable in self._trainable.items():
            if names is not None and (adapter in names) == trainable:
                continue
            for p in self.parameters(adapter):
                p.requires_grad_(trainable)

    def _apply(self, names: Sequence[str], force: bool = False) -> None:
        """Select ``names`` on every LoRA layer through peft's public API.

        peft's ``set_adapter`` also marks the selected adapters' tensors trainable and the others
        frozen; the manager then restores each adapter's own trainability (a frozen ω stays
        frozen while selected). A VSD step switches several times, so a switch to the current
        selection does nothing, adapters are only re-enabled after the base UNet alone was used,
        and only the adapters whose flags peft changed wrongly are restored. (An earlier version
        wrote peft's private selection attributes to skip the flag updates; on an H100 it did not
        change the step time, see BENCHMARKS.md.)
        """
        names = tuple(names)
        if not force and self._flags_ready and names == self._active:
            return
        enable = force or not self._flags_ready or not self._active
        for layer in self._layers:
            if names:
                if enable:
                    layer.enable_adapters(True)
                layer.set_adapter(list(names))
            else:
                layer.enable_adapters(False)
        self._active = names
        self._restore_requires_grad(names)
        self._flags_ready = True

    def activate(self, names: Sequence[str] | str | None) -> None:
        """Make exactly ``names`` active (``None``/``[]``: the base UNet alone)."""
        if isinstance(names, str):
            names = [names]
        names = list(names or [])
        for n in names:
            self._check(n)
        self._apply(names)

    @contextmanager
    def use(self, names: Sequence[str] | str | None) -> Iterator[None]:
        """Context manager form of :meth:`activate`; restores the previous selection."""
        previous = self._active
        self.activate(names)
        try:
            yield
        finally:
            self._apply(previous)

    # -------------------------------------------------------------- persistence
    def state_dict(self, name: str) -> dict[str, Tensor]:
        return {k: p.detach().clone().contiguous() for k, p in self.named_parameters(name)}

    def save(self, path: str | Path, name: str, extra: dict[str, Tensor] | None = None) -> Path:
        """Write adapter ``name`` (and e.g. its camera embedding, ``extra``) to a safetensors file.

        The LoRA config travels in the file's metadata so :meth:`load` can rebuild the adapter on a
        fresh UNet; keys are adapter-name-free, so a file may be loaded under another name.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(
                f"adapter files are safetensors; use a '.safetensors' path, got {path}"
            )
        cfg = self.config(name)
        tensors = self.state_dict(name)
        for key, value in (extra or {}).items():
            tensors[_CAMERA_PREFIX + key if not key.startswith(_CAMERA_PREFIX) else key] = (
                value.detach().clone().contiguous()
            )
        init = cfg.init_lora_weights
        metadata = {
            "format": _FORMAT_TAG,
            "rank": str(cfg.r),
            "alpha": str(cfg.lora_alpha),
            "target_modules": json.dumps(sorted(cfg.target_modules)),
            "init_lora_weights": json.dumps(init),
            "adapter_name": name,
        }
        # Atomic (ra3d.io): a crash or a concurrent reader (a cache lookup) never sees a
        # half-written adapter. An adapter is a few MB, so it is serialised in memory first.
        write_bytes_atomic(path, save_safetensors(tensors, metadata=metadata))
        logger.info("saved adapter %r (%d tensors) to %s", name, len(tensors), path)
        return path

    def load(
        self, path: str | Path, name: str, trainable: bool
    ) -> tuple[list[nn.Parameter], dict[str, Tensor]]:
        """Load a file written by :meth:`save` as adapter ``name``.

        Creates the adapter if the UNet lacks it (config from the file metadata). Returns the
        adapter's parameters and the extra tensors (camera embedding), keys without prefix.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"adapter file not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if metadata.get("format") != _FORMAT_TAG:
            raise ValueError(
                f"{path} is not an ra3d LoRA adapter file (metadata format "
                f"{metadata.get('format')!r}); write it with AdapterManager.save"
            )
        if name not in self._trainable:
            cfg = lora_config(
                rank=int(metadata["rank"]),
                alpha=float(metadata["alpha"]),
                target_modules=json.loads(metadata["target_modules"]),
                init=json.loads(metadata["init_lora_weights"]),
            )
            self.add(name, cfg, trainable=trainable)
        extra = {
            k[len(_CAMERA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_CAMERA_PREFIX)
        }
        lora = {k: v for k, v in tensors.items() if not k.startswith(_CAMERA_PREFIX)}
        own = dict(self.named_parameters(name))
        missing = sorted(set(own) - set(lora))
        unexpected = sorted(set(lora) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not fit adapter {name!r} of this UNet: missing {missing[:3]}"
                f"{'…' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                f"{'…' if len(unexpected) > 3 else ''}; was it saved from another model?"
            )
        with torch.no_grad():
            for key, param in own.items():
                value = lora[key]
                if value.shape != param.shape:
                    raise ValueError(
                        f"{path}: {key} has shape {tuple(value.shape)}, the UNet expects "
                        f"{tuple(param.shape)} (different LoRA rank or model?)"
                    )
                param.copy_(value.to(param.dtype))
        self.set_trainable(name, trainable)
        logger.info("loaded adapter %r from %s (trainable=%s)", name, path, trainable)
        return self.parameters(name), extra
