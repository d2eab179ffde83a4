"""CLIP view-prompt scores: the one implementation behind frontal alignment and the Fig. 9 metric.

Both the frontal alignment of retrieved assets (paper Sec. 4.4) and the 3D-consistency evaluation
(Sec. 5.2, Fig. 9) score renders against the three view prompts ``"front view"``, ``"side view"``
and ``"back view"``. With the cosine similarities

    s_p(x) = cos(E_img(x), E_txt(p)),   p ∈ {front, side, back},

of a render ``x`` there are two relative forms, both computed here:

* :func:`relative_similarity` — **the paper's definition** (Sec. 5.2): a prompt's CLIP similarity
  divided by the sum over the three prompts, the raw ratio of cosines,
  ``r_p = s_p / (s_front + s_side + s_back)``. ``ra3d evaluate`` reports this one. It is only
  meaningful while the denominator is positive; for real CLIP models the image–text cosines of
  these prompts are positive (≈ 0.1–0.3), but an arbitrary (e.g. random) embedder can produce a
  non-positive sum, and then the ratio is undefined: it is returned as NaN and counted.
* :func:`shifted_relative_similarity` — the same ratio of cosines mapped to ``[0, 1]`` first,
  ``r'_p = s'_p / Σ_q s'_q`` with ``s'_p = (1 + s_p) / 2``. It is defined for any embedder and any
  sign, and preserves the ordering of the views for one prompt that alignment needs. **Frontal
  alignment uses this form** (:mod:`ra3d.retrieval.align`): the paper only says the asset is
  rotated to the pose of "relatively highest" front score, alignment runs with whatever embedder the
  user picked, and an arg-max must never be decided by a sign flip of a near-zero denominator.

The view prompt that *matches* a camera is the view word of DreamFusion's view-dependent prompting
(:func:`ra3d.cameras.view_direction` at elevation 0): "front" within ±45° of azimuth 0, "back"
within ±45° of 180°, "side" otherwise — the shaded regions of Fig. 9.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ra3d.cameras import view_direction
from ra3d.errors import ConfigError

#: The view prompts of Sec. 4.4 / 5.2, in the order every score array uses (front, side, back).
VIEW_PROMPTS: tuple[str, str, str] = ("front view", "side view", "back view")
#: The view word of each prompt, as :func:`ra3d.cameras.view_direction` names it.
VIEW_WORDS: tuple[str, str, str] = ("front", "side", "back")
#: Half-width (degrees) of the front and back regions of Fig. 9.
REGION_HALF_WIDTH_DEG = 45.0


def cosine_similarities(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """``[K, P]`` cosines of ``K`` image embeddings ``[K, D]`` with ``P`` text embeddings ``[P, D]``.

    Inputs need not be normalised (they are, here); computed in float64 so that the ratios below
    are not limited by float32 rounding of nearly cancelling sums.
    """
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ConfigError(
            f"image embeddings [K, D] and text embeddings [P, D] must share D, got "
            f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    a = torch.nn.functional.normalize(image_emb.double(), dim=-1)
    b = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    return a @ b.T


def relative_similarity(cosines: Tensor, eps: float = 1e-8) -> Tensor:
    """The paper's relative similarity ``r[k, p] = s[k, p] / Σ_q s[k, q]`` (Sec. 5.2), ``[K, P]``.

    Rows whose cosine sum is not positive (``<= eps``) have no meaningful ratio and are NaN.
    """
    total = cosines.sum(dim=-1, keepdim=True)  # [K, 1]
    ratio = cosines / total.where(total > eps, torch.ones_like(total))
    return ratio.where(total > eps, torch.full_like(ratio, float("nan")))


def shifted_relative_similarity(cosines: Tensor) -> Tensor:
    """``r'[k, p] = s'[k, p] / Σ_q s'[k, q]`` with ``s' = (1 + s) / 2 ∈ [0, 1]``, ``[K, P]``.

    The always-defined form used by frontal alignment (see the module docstring); rows sum to 1.
    """
    shifted = 0.5 * (1.0 + cosines)
    return shifted / shifted.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def matching_view_index(azimuths_deg: Tensor) -> Tensor:
    """``[K]`` index into :data:`VIEW_PROMPTS` of the prompt that matches each azimuth.

    Front within ±45° of 0°, back within ±45° of 180°, side otherwise (boundaries belong to front
    and back, as in :func:`ra3d.cameras.view_direction`). Elevation is ignored: the metric of
    Fig. 9 is defined on an orbit at one elevation, and the three prompts have no "overhead".
    """
    words = [
        view_direction(float(a), 0.0, REGION_HALF_WIDTH_DEG, REGION_HALF_WIDTH_DEG)
        for a in azimuths_deg.tolist()
    ]
    return torch.tensor([VIEW_WORDS.index(w) for w in words], dtype=torch.long)


@dataclass
class ViewPromptScores:
    """Scores of ``K`` renders (at known azimuths) against the three view prompts.

    Attributes:
        azimuths_deg: ``[K]`` camera azimuths of the renders.
        cosine: ``[K, 3]`` CLIP cosines ``s_p`` (front, side, back).
        relative: ``[K, 3]`` the paper's relative similarity (NaN where undefined).
        matching: ``[K]`` index of the prompt matching each azimuth (0 front, 1 side, 2 back).
    """

    azimuths_deg: Tensor
    cosine: Tensor
    relative: Tensor
    matching: Tensor

    @property
    def matching_relative(self) -> Tensor:
        """``[K]`` relative similarity of the prompt that matches each azimuth."""
        return self.relative.gather(1, self.matching[:, None])[:, 0]

    @property
    def best(self) -> Tensor:
        """``[K]`` index of the prompt with the highest relative similarity (-1 where undefined).

        The ratio shares one denominator per row, so for a positive sum this is also the prompt
        with the highest cosine.
        """
        defined = ~torch.isnan(self.relative).any(dim=1)
        best = torch.argmax(self.cosine, dim=1)
        return best.where(defined, torch.full_like(best, -1))

    @property
    def best_is_matching(self) -> Tensor:
        """``[K]`` bool: the best prompt is the one that matches the azimuth."""
        return self.best == self.matching

    @property
    def n_undefined(self) -> int:
        """Renders whose cosine sum is not positive (relative similarity undefined)."""
        return int(torch.isnan(self.relative).any(dim=1).sum())

    def summary(self) -> dict[str, float | int]:
        """Fig. 9 in numbers: view-consistency, best-prompt accuracy, region means.

        ``view_consistency``: mean relative similarity of the matching prompt over all azimuths;
        ``best_prompt_accuracy``: fraction of azimuths whose best prompt is the matching one;
        ``front_in_front`` / ``back_in_back``: mean relative "front view" (resp. "back view")
        similarity inside the ±45° front (resp. back) region — the shaded areas of Fig. 9.
        Means skip undefined renders (``n_undefined`` counts them).
        """
        rel = self.relative
        front, back = self.matching == 0, self.matching == 2
        return {
            "view_consistency": _nanmean(self.matching_relative),
            "best_prompt_accuracy": float(self.best_is_matching.double().mean()),
            "front_in_front": _nanmean(rel[front, 0]),
            "back_in_back": _nanmean(rel[back, 2]),
            "n_views": int(rel.shape[0]),
            "n_undefined": self.n_undefined,
        }


def _nanmean(x: Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else float("nan")


def view_prompt_scores(
    azimuths_deg: Tensor, image_emb: Tensor, prompt_emb: Tensor
) -> ViewPromptScores:
    """Score renders at ``azimuths_deg [K]`` (embeddings ``[K, D]``) against the view prompts
    (``prompt_emb [3, D]``, embeddings of :data:`VIEW_PROMPTS` in that order)."""
    if prompt_emb.shape[0] != len(VIEW_PROMPTS):
        raise ConfigError(
            f"need the embeddings of the {len(VIEW_PROMPTS)} prompts {VIEW_PROMPTS}, got "
            f"{prompt_emb.shape[0]}"
        )
    if azimuths_deg.shape[0] != image_emb.shape[0]:
        raise ConfigError(f"{azimuths_deg.shape[0]} azimuths for {image_emb.shape[0]} renders")
    cos = cosine_similarities(image_emb, prompt_emb)  # [K, 3]
    return ViewPromptScores(
        azimuths_deg=azimuths_deg.double().cpu(),
        cosine=cos,
        relative=relative_similarity(cos),
        matching=matching_view_index(azimuths_deg),
    )


__all__ = [
    "REGION_HALF_WIDTH_DEG",
    "VIEW_PROMPTS",
    "VIEW_WORDS",
    "ViewPromptScores",
    "cosine_similarities",
    "matching_view_index",
    "relative_similarity",
    "shifted_relative_similarity",
    "view_prompt_scores",
]
