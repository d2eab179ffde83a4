"""View-dependent prompt embeddings e(c, ψ) for score distillation.

A 2D prior asked for "a teddy bear" from every camera paints a frontal bear on every side (the
Janus problem). DreamFusion's remedy, kept by ProlificDreamer and by the paper (Sec. 4.2), is to
append a view word chosen from the camera's azimuth/elevation — "front", "side", "back" or
"overhead" — so the condition depends on ψ. The words and thresholds live in
:mod:`ra3d.cameras` (``view_direction``, ``view_prompt``); this module turns them into cached text
embeddings for a batch of cameras.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ra3d.cameras import VIEW_DIRECTIONS, Cameras, view_direction, view_prompt
from ra3d.errors import ConfigError
from ra3d.guidance.prior import DiffusionPrior


class PromptEmbeddings:
    """Embeddings of one prompt (and its negative prompt) for any batch of cameras.

    The five strings involved (the plain prompt and its four view variants) are embedded once at
    construction through the prior's text cache; :meth:`get` only indexes them.

    Args:
        prior: supplies the tokenizer/text encoder.
        prompt: the caption c.
        negative_prompt: the unconditional branch of classifier-free guidance ("" = the true
            unconditional embedding, as in SD training).
        front_threshold, back_threshold: half-widths in degrees of the azimuth sectors called
            front (around 0°) and back (around ±180°); the rest is "side".
        overhead_threshold: elevations above this (degrees) are "overhead".
        use_view_dependent: if False, every camera gets the plain prompt.
    """

    def __init__(
        self,
        prior: DiffusionPrior,
        prompt: str,
        negative_prompt: str = "",
        front_threshold: float = 45.0,
        back_threshold: float = 45.0,
        overhead_threshold: float = 60.0,
        use_view_dependent: bool = True,
    ) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string, got {prompt!r}")
        if not (0.0 <= front_threshold and 0.0 <= back_threshold):
            raise ConfigError("front_threshold and back_threshold must be >= 0 degrees")
        if front_threshold + back_threshold > 180.0:
            raise ConfigError(
                f"front_threshold + back_threshold must be <= 180 degrees (the front and back "
                f"sectors would overlap), got {front_threshold} + {back_threshold}"
            )
        self.prior = prior
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.front_threshold = float(front_threshold)
        self.back_threshold = float(back_threshold)
        self.overhead_threshold = float(overhead_threshold)
        self.use_view_dependent = use_view_dependent

        self.view_prompts: dict[str, str] = {d: view_prompt(prompt, d) for d in VIEW_DIRECTIONS}
        strings = [prompt, negative_prompt, *self.view_prompts.values()]
        embeddings = prior.encode_text(strings)  # [6, L, D]
        self.cond_embedding: Tensor = embeddings[0]  # [L, D]
        self.uncond_embedding: Tensor = embeddings[1]  # [L, D]
        self.view_embeddings: Tensor = embeddings[2:]  # [4, L, D], in VIEW_DIRECTIONS order

    def directions(self, cameras: Cameras) -> list[str]:
        """The view word chosen for each camera (the plain prompt is used if not view-dependent)."""
        return [
            view_direction(a, e, self.front_threshold, self.back_threshold, self.overhead_threshold)
            for a, e in zip(cameras.azimuth.tolist(), cameras.elevation.tolist(), strict=True)
        ]

    def prompts(self, cameras: Cameras) -> list[str]:
        """The conditional prompt string e(c, ψ) for each camera."""
        if not self.use_view_dependent:
            return [self.prompt] * len(cameras)
        return [self.view_prompts[d] for d in self.directions(cameras)]

    def get(self, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """``(cond [B, L, D], uncond [B, L, D])`` for a batch of ``B`` cameras."""
        b = len(cameras)
        device = self.prior.device
        if self.use_view_dependent:
            index = torch.tensor(
                [VIEW_DIRECTIONS.index(d) for d in self.directions(cameras)], device=device
            )
            cond = self.view_embeddings.to(device)[index]
        else:
            cond = self.cond_embedding.to(device).repeat(b, 1, 1)
        uncond = self.uncond_embedding.to(device).repeat(b, 1, 1)
        return cond, uncond
