"""The relevance floor ``retrieval.min_score``: a retrieved asset that matches the prompt too
weakly is not used (issue 16).

A retrieval always returns its N best assets, however poor the best are: on the 93-model starter
library "a corgi puppy" retrieves the teddy bear (MiniLM caption score 0.35). With λ = 1000 the
asset term (Eq. 10–11) would then pull the particle into a teddy bear's shape for the whole run,
and delta distillation (Eq. 13) would subtract the prior's score of a teddy bear. The floor is
the score below which an asset is judged not to be the object the prompt asks for. What happens
then is ``retrieval.on_weak_match``:

* ``skip`` (default): the asset is not used. Every particle assigned to it (π, Eq. 10; one asset
  per particle, App. B.3) runs without the asset term and without delta distillation, as plain
  VSD/SDS; when no asset passes, the whole run goes on without assets (and without ω, Eq. 12);
* ``stop``: one error naming the scores, the floor and these options;
* ``use``: every asset is used whatever its score (ra3d before the floor).

User meshes (``retrieval.assets``) are the user's choice and are always used.

The default floor depends on what the score is, hence on the embedder
(:data:`DEFAULT_MIN_SCORES`):

* ``minilm``: cosine similarity of MiniLM (all-MiniLM-L6-v2) caption embeddings. Calibrated by
  ``bench/retrieval_floor.py`` on a labelled set of 107 prompts over the starter library and
  the five Sweet Home 3D catalogs (820 models): the floor that keeps precision >= 0.9 for the
  top asset with the best recall (numbers in BENCHMARKS.md).
* ``clip``: cosine similarity of the CLIP ViT-L/14 text embedding of the prompt and the mean
  image embedding of the asset's renders (the score after the image rerank). **Not calibrated**
  (no CLIP weights where the floor was written): 0.20 is set from the usual range of ViT-L/14
  text–image cosines, where captions that describe an image score about 0.25–0.35 and unrelated
  ones about 0.10–0.18; lambertian renders of untextured meshes score lower than photographs,
  so the floor sits at the low end of the matching range. Calibrate it with
  ``python bench/retrieval_floor.py --embedder clip`` once the weights are present
  (``ra3d weights download --clip``) and set ``retrieval.min_score``.

A score without a default (another embedder, CLIP without the rerank) has no floor unless
``retrieval.min_score`` gives one; the log says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ra3d.errors import ConfigError, Ra3dError
from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)

#: What to do with an asset below the floor (see the module docstring).
WEAK_MATCH_CHOICES: tuple[str, ...] = ("skip", "stop", "use")
#: The floor per kind of score (see the module docstring for how each was chosen).
DEFAULT_MIN_SCORES: dict[str, float] = {"minilm": 0.44, "clip": 0.20}


class WeakMatchError(Ra3dError):
    """``on_weak_match: stop`` and a retrieved asset scores below the relevance floor."""


@dataclass(frozen=True)
class RelevanceDecision:
    """Whether one asset is used, and why.

    Attributes:
        uid: the asset.
        score: its retrieval score.
        floor: the floor it was compared with (None: no floor applied).
        used: False when the floor skipped it.
        reason: one sentence for the log and ``retrieved.json``.
    """

    uid: str
    score: float
    floor: float | None
    used: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "score": float(self.score),
            "floor": None if self.floor is None else float(self.floor),
            "used": bool(self.used),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RelevanceDecision:
        floor = data.get("floor")
        return cls(
            uid=str(data["uid"]),
            score=float(data.get("score", 0.0)),
            floor=None if floor is None else float(floor),
            used=bool(data.get("used", True)),
            reason=str(data.get("reason", "")),
        )


def score_kind(asset: RetrievedAsset) -> str | None:
    """What an asset's score is: ``clip`` (text–image cosine after the rerank), ``minilm``
    (MiniLM caption cosine), or None (no default floor: another embedder, or CLIP captions
    without the image rerank)."""
    extras = asset.extras or {}
    embedder = str(extras.get("embedder", ""))
    if "image_score" in extras and embedder.startswith("open_clip"):
        return "clip"
    if embedder.startswith("minilm"):
        return "minilm"
    return None


def check_min_score(value: float | None, name: str = "retrieval.min_score") -> float | None:
    """A valid floor: None (the embedder's default) or a finite cosine in [-1, 1]."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [-1, 1] or null, got {value!r}") from None
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise ConfigError(
            f"{name} must be a similarity in [-1, 1] (or null = the embedder's default "
            f"{DEFAULT_MIN_SCORES}), got {value}"
        )
    return value


def check_on_weak_match(value: str, name: str = "retrieval.on_weak_match") -> str:
    if value not in WEAK_MATCH_CHOICES:
        raise ConfigError(f"{name} must be one of {', '.join(WEAK_MATCH_CHOICES)}, got {value!r}")
    return value


def floor_for(asset: RetrievedAsset, min_score: float | None) -> float | None:
    """The floor an asset is compared with: ``min_score`` when set, else its score kind's
    default (None when there is none)."""
    if min_score is not None:
        return float(min_score)
    kind = score_kind(asset)
    return DEFAULT_MIN_SCORES.get(kind) if kind is not None else None


def judge(
    assets: Sequence[RetrievedAsset], min_score: float | None, on_weak_match: str
) -> list[RelevanceDecision]:
    """One decision per asset (see the module docstring); ``stop`` with an asset below the floor
    raises :class:`WeakMatchError` naming every score."""
    check_on_weak_match(on_weak_match)
    min_score = check_min_score(min_score)
    decisions = []
    for asset in assets:
        score = float(asset.score)
        if asset.source == "user":
            decisions.append(RelevanceDecision(asset.uid, score, None, True, "a user mesh: used"))
            continue
        floor = floor_for(asset, min_score)
        if floor is None:
            reason = (
                "no relevance floor for this embedder's score (retrieval.min_score unset): used"
            )
            decisions.append(RelevanceDecision(asset.uid, score, None, True, reason))
        elif score >= floor:
            reason = f"score {score:.3f} >= floor {floor:.3f}: used"
            decisions.append(RelevanceDecision(asset.uid, score, floor, True, reason))
        elif on_weak_match == "use":
            reason = f"score {score:.3f} < floor {floor:.3f}, used anyway (on_weak_match: use)"
            decisions.append(RelevanceDecision(asset.uid, score, floor, True, reason))
        else:
            reason = (
                f"score {score:.3f} < floor {floor:.3f}: a weak match for the prompt, not used "
                "(on_weak_match: skip)"
            )
            decisions.append(RelevanceDecision(asset.uid, score, floor, False, reason))
    weak = [(a, d) for a, d in zip(assets, decisions, strict=True) if d.floor is not None
            and d.score < d.floor]  # fmt: skip
    if on_weak_match == "stop" and weak:
        listed = "; ".join(
            f"{a.uid} ({a.caption.split(';')[0].strip()}) {d.score:.3f}" for a, d in weak
        )
        raise WeakMatchError(
            f"{len(weak)} of {len(assets)} retrieved asset(s) score below the relevance floor "
            f"{weak[0][1].floor:.3f}: {listed}. The database holds nothing close to the prompt: "
            "use a database that does (e.g. Objaverse with Cap3D captions: ra3d db import "
            "objaverse --cap3d ...), or set retrieval.on_weak_match to skip (run without those "
            "assets) or use (use them anyway), or lower retrieval.min_score"
        )
    return decisions


def log_decisions(
    assets: Sequence[RetrievedAsset],
    decisions: Sequence[RelevanceDecision],
    assignment: Sequence[int],
) -> None:
    """Say which assets the floor skipped, why, and what that means for each particle."""
    skipped = [n for n, d in enumerate(decisions) if not d.used]
    if not skipped:
        return
    for n in skipped:
        particles = [i for i, a in enumerate(assignment) if a == n]
        who = (
            f"particle(s) {', '.join(map(str, particles))} run without the asset term (Eq. 10-11) "
            "and without delta distillation (Eq. 13)"
            if particles
            else "no particle was assigned to it"
        )
        logger.warning(
            "retrieved asset %s (%s) not used: %s; %s",
            assets[n].uid, assets[n].caption.split(";")[0].strip(), decisions[n].reason, who,
        )  # fmt: skip
    if all(not d.used for d in decisions):
        logger.warning(
            "no retrieved asset passes the relevance floor: the run goes on without assets (plain "
            "score distillation, no asset term, no delta distillation, no view adaptation ω). "
            "For the paper's retrieval use a database that holds such objects (Objaverse with "
            "Cap3D captions: ra3d db import objaverse --cap3d ...); retrieval.on_weak_match: use "
            "uses the assets anyway"
        )


__all__ = [
    "DEFAULT_MIN_SCORES",
    "WEAK_MATCH_CHOICES",
    "RelevanceDecision",
    "WeakMatchError",
    "check_min_score",
    "check_on_weak_match",
    "floor_for",
    "judge",
    "log_decisions",
    "score_kind",
]
