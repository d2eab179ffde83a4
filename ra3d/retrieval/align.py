"""Frontal alignment of retrieved assets by CLIP view prompts (paper Sec. 4.4).

Objaverse assets come in arbitrary orientations, but the prior and the view prompts of training
assume azimuth 0 is the object's front. The paper renders each asset from several camera poses,
scores every render against the prompts "front view", "side view" and "back view" with CLIP, and
rotates the asset to the pose with the *relatively* highest front score.

The scores come from :mod:`ra3d.retrieval.view_scores`, the one implementation shared with the
Fig. 9 evaluation. Alignment uses its **shifted** form
(:func:`~ra3d.retrieval.view_scores.shifted_relative_similarity`): with cosine similarities
``s_p = cos(E_img(view), E_txt(p))`` for ``p`` in (front, side, back),

    r_front(view) = s'_front / (s'_front + s'_side + s'_back),   s'_p = (1 + s_p) / 2 ∈ [0, 1],

rather than the paper's raw ratio ``s_front / Σ_p s_p`` that ``ra3d evaluate`` reports. Mapping
cosines to ``[0, 1]`` keeps the ratio defined for any embedder and any sign (raw cosines of
unrelated pairs can be negative, and a near-zero sum would flip the arg-max) and leaves it monotone
in each similarity; no softmax or temperature is involved. The view with the largest ``r_front``
wins: using a ratio rather than ``s_front`` alone cancels how "photogenic" a view is in general (a
view that scores high against every prompt is not a front view).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ra3d.cameras import Cameras, orbit_cameras
from ra3d.errors import ConfigError
from ra3d.representations.base import Representation
from ra3d.retrieval.embed import Embedder, TextOnlyEmbedderError
from ra3d.retrieval.view_scores import (
    VIEW_PROMPTS,
    cosine_similarities,
    shifted_relative_similarity,
)

logger = logging.getLogger(__name__)


def relative_view_scores(view_emb: Tensor, prompt_emb: Tensor) -> Tensor:
    """Shifted relative similarities ``[K, P]`` of ``K`` view embeddings to ``P`` view prompts.

    Args:
        view_emb: ``[K, D]`` image embeddings of the renders.
        prompt_emb: ``[P, D]`` text embeddings of the view prompts (front first).

    Returns:
        ``r[k, p] = s'[k, p] / Σ_q s'[k, q]`` with ``s' = (1 + cos) / 2`` (float32); rows sum to 1.
        See :func:`ra3d.retrieval.view_scores.shifted_relative_similarity`.
    """
    return shifted_relative_similarity(cosine_similarities(view_emb, prompt_emb)).float()


@dataclass
class AlignmentResult:
    """Outcome of :meth:`FrontalAligner.align` / :func:`pick_front`.

    Attributes:
        front_azimuth_deg: camera azimuth (degrees, in (-180, 180]) from which the asset's front
            is seen; rotating the asset by ``-front_azimuth_deg`` about +Z brings its front to
            azimuth 0 (the ``MeshAsset(front_azimuth_deg=...)`` convention).
        azimuths_deg: ``[K]`` azimuths of the scored views.
        relative_front: ``[K]`` relative front score of each view.
        scores: ``[K, P]`` relative scores for every prompt.
    """

    front_azimuth_deg: float
    azimuths_deg: Tensor
    relative_front: Tensor
    scores: Tensor


def pick_front(azimuths_deg: Tensor, view_emb: Tensor, prompt_emb: Tensor) -> AlignmentResult:
    """The view whose render is relatively most "front view" (prompt 0 of ``prompt_emb``)."""
    if azimuths_deg.shape[0] != view_emb.shape[0]:
        raise ConfigError(
            f"{azimuths_deg.shape[0]} azimuths for {view_emb.shape[0]} view embeddings"
        )
    scores = relative_view_scores(view_emb, prompt_emb)  # [K, P]
    rel_front = scores[:, 0]
    best = int(torch.argmax(rel_front))
    az = float(azimuths_deg[best])
    az = (az + 180.0) % 360.0 - 180.0
    if az == -180.0:
        az = 180.0
    return AlignmentResult(az, azimuths_deg.clone(), rel_front, scores)


def alignment_cameras(
    n_views: int = 8,
    image_size: int = 224,
    elevation_deg: float = 15.0,
    distance: float = 2.0,
    fovy_deg: float = 40.0,
) -> Cameras:
    """``n_views`` cameras at evenly spaced azimuths (0 first) around the origin.

    The defaults frame a :class:`~ra3d.representations.mesh.MeshAsset` (fitted into a sphere of
    radius 0.5) with margin (half-height ≈ 0.73 at the origin), from slightly above, as product
    photos and most CLIP "front view" images are.
    """
    if n_views < 2:
        raise ConfigError(f"frontal alignment needs at least 2 views, got n_views={n_views}")
    return orbit_cameras(n_views, image_size, image_size, elevation_deg, distance, fovy_deg)


@torch.no_grad()
def render_view_embeddings(
    asset: Representation, embedder: Embedder, cameras: Cameras, batch_size: int = 8
) -> Tensor:
    """``[K, D]`` image embeddings of ``asset`` rendered at each of the ``K`` cameras."""
    if not embedder.supports_images:
        raise TextOnlyEmbedderError(
            f"rendering-based embeddings need an image embedder; {embedder.id!r} is text-only "
            "(use --embedder clip)."
        )
    out = []
    for s in range(0, len(cameras), batch_size):
        rgb = asset.render(cameras[s : s + batch_size]).rgb  # [B, H, W, 3]
        out.append(embedder.embed_images(rgb.detach().float().cpu().clamp(0, 1)))
    return torch.cat(out)


class FrontalAligner:
    """Renders an asset at ``n_views`` azimuths and picks its front by CLIP view prompts.

    Args:
        embedder: an image-capable embedder (CLIP).
        n_views: number ``K`` of azimuths (evenly spaced, starting at 0).
        image_size: render resolution (CLIP resizes to its own input size).
        elevation_deg, distance, fovy_deg: the orbit the views are rendered from.
        prompts: the (front, side, back) prompts; front must come first.
    """

    def __init__(
        self,
        embedder: Embedder,
        n_views: int = 8,
        image_size: int = 224,
        elevation_deg: float = 15.0,
        distance: float = 2.0,
        fovy_deg: float = 40.0,
        prompts: tuple[str, ...] = VIEW_PROMPTS,
    ) -> None:
        if not embedder.supports_images:
            raise TextOnlyEmbedderError(
                f"frontal alignment renders the asset and needs an image embedder; {embedder.id!r} "
                "is text-only (use --embedder clip)."
            )
        if len(prompts) < 2:
            raise ConfigError("frontal alignment needs a front prompt and at least one other")
        self.embedder = embedder
        self.cameras = alignment_cameras(n_views, image_size, elevation_deg, distance, fovy_deg)
        self.prompts = tuple(prompts)
        self._prompt_emb: Tensor | None = None

    @property
    def azimuths_deg(self) -> Tensor:
        return self.cameras.azimuth.clone()

    @property
    def prompt_embeddings(self) -> Tensor:
        """``[P, D]`` text embeddings of the view prompts (computed once)."""
        if self._prompt_emb is None:
            self._prompt_emb = self.embedder.embed_text(list(self.prompts))
        return self._prompt_emb

    def view_embeddings(self, asset: Representation) -> Tensor:
        """``[K, D]`` embeddings of the asset's renders at :attr:`azimuths_deg`."""
        return render_view_embeddings(asset, self.embedder, self.cameras)

    def align_embeddings(self, view_emb: Tensor) -> AlignmentResult:
        """Alignment from precomputed view embeddings (e.g. cached by the retriever)."""
        return pick_front(self.azimuths_deg, view_emb, self.prompt_embeddings)

    def align(self, asset: Representation) -> AlignmentResult:
        """Render, embed and score ``asset``; see :class:`AlignmentResult`."""
        result = self.align_embeddings(self.view_embeddings(asset))
        logger.debug(
            "frontal alignment: front at azimuth %.1f° (relative front scores %s)",
            result.front_azimuth_deg,
            [round(float(x), 4) for x in result.relative_front],
        )
        return result


def angle_difference_deg(a: float, b: float) -> float:
    """Smallest absolute difference between two azimuths in degrees, in [0, 180]."""
    d = math.fmod(abs(a - b), 360.0)
    return min(d, 360.0 - d)
