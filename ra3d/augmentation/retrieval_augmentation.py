"""The retrieval-augmented parts of a run: assets θ_ret, assignment π, adapter ω (Sec. 4.1–4.3).

:class:`RetrievalAugmentation` is composed into the Lightning system. Before the first step it

1. obtains the N assets — from the checkpoint being resumed or initialised from (never retrieving
   again), else by retrieval or from the user's meshes (:mod:`ra3d.augmentation.assets`);
2. builds each as a :class:`~ra3d.representations.mesh.MeshAsset` normalised to ``asset_radius``
   and rotated to face azimuth 0, so it renders through the same cameras as the particles;
3. judges each retrieved asset against the relevance floor ``retrieval.min_score``
   (:mod:`ra3d.augmentation.relevance`): with ``on_weak_match: skip`` a weak match is not used,
   ``stop`` ends the run with one error, ``use`` keeps every asset;
4. fixes π (Eq. 10): recorded, or computed from step-0 render distances over the assets that
   passed when there are enough of them (:mod:`ra3d.augmentation.asset_term`); a particle whose
   asset was skipped has no asset (:attr:`RetrievalAugmentation.particles_with_asset`);
5. with ``adaptation`` on, trains (or reuses from the cache) the view adapter ω of Eq. 12 on ~100
   renders of the used assets and hands it, frozen, to the guidance's prior term
   (:mod:`ra3d.augmentation.adaptation`, the path ``ra3d adapt`` takes too); not when no asset
   passed;
6. writes ``retrieved.json`` (with each asset's score, floor and decision), the preview strips and
   the adapter into the run folder.

During training it renders each particle's assigned asset at the step's cameras, for the asset
term (Eq. 11) and as the reference of delta distillation (Eq. 13), for the particles that have
one. When no asset passed the floor, :attr:`~RetrievalAugmentation.active` is False and the run is
plain score distillation; the checkpoint then records no assets (so export and evaluation credit
none), only what was skipped and why.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ra3d.augmentation.adaptation import ADAPTER_FILE, AdaptationConfig, view_adapter_for_run
from ra3d.augmentation.asset_term import AssetTerm
from ra3d.augmentation.assets import (
    RetrievalConfig,
    check_recorded_assets,
    mesh_for,
    retrieve_assets,
)
from ra3d.augmentation.outputs import write_retrieval_outputs
from ra3d.augmentation.relevance import RelevanceDecision, judge, log_decisions
from ra3d.cameras import Cameras
from ra3d.errors import ConfigError
from ra3d.guidance.base import Guidance
from ra3d.representations.base import RenderOutput, Representation
from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)


class RetrievalAugmentation(nn.Module):
    """Assets, π and ω of one run (see the module docstring)."""

    def __init__(self, config: RetrievalConfig, adaptation: AdaptationConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.adaptation = adaptation
        self.meshes = nn.ModuleList()  # MeshAssets: buffers only, never checkpointed
        self.assets: list[RetrievedAsset] = []
        self.assignment: list[int] = []
        self.database_info: dict[str, Any] = {}
        self.adapter: dict[str, Any] | None = None
        self.query: str = ""
        #: the scale of this run's assets: the config's, or the one a checkpoint recorded
        self.asset_radius = float(config.asset_radius)
        #: the relevance floor's decision per asset of ``assets`` (empty: every asset is used)
        self.decisions: list[RelevanceDecision] = []
        #: what the record keeps when no asset passed (then ``assets`` is empty)
        self.skipped_record: list[dict[str, Any]] = []
        self.prepared = False

    @property
    def ready(self) -> bool:
        """Some particle has an asset (the same as :attr:`active`; kept for callers)."""
        return self.active

    def asset_used(self, n: int) -> bool:
        """Whether asset ``n`` passed the relevance floor."""
        return not self.decisions or self.decisions[n].used

    @property
    def particles_with_asset(self) -> list[bool]:
        """Per particle: whether it has an asset (its assigned one passed the floor)."""
        return [self.asset_used(n) for n in self.assignment]

    @property
    def active(self) -> bool:
        """Whether any particle has an asset: the asset term and delta distillation apply."""
        return bool(self.assets) and any(self.particles_with_asset)

    # ------------------------------------------------------------------ before the first step
    def prepare(
        self,
        prompt: str,
        particles: list[Representation],
        asset_term: AssetTerm,
        guidance: Guidance,
        run_dir: Path | None,
        recorded: dict[str, Any] | None = None,
        recorded_adapter: dict[str, Any] | None = None,
    ) -> None:
        """Steps 1–5 of the module docstring. ``recorded`` is a checkpoint's retrieval record
        (resume or ``init_from``); then nothing is retrieved again."""
        self.config.validate(len(particles))
        _check_scale(self.config.asset_radius, particles)
        fresh = recorded is None
        self.asset_radius = float(self.config.asset_radius)
        if fresh:
            self.assets, self.database_info = retrieve_assets(self.config, prompt, len(particles))
            self.query = self.config.prompt or prompt
            self.decisions = judge(self.assets, self.config.min_score, self.config.on_weak_match)
        else:
            self.assets = check_recorded_assets(recorded)
            self.database_info = dict(recorded.get("database") or {})
            self.query = str(recorded.get("prompt", prompt))
            radius = float(recorded.get("asset_radius", self.config.asset_radius))
            if radius != self.config.asset_radius:
                logger.info("using the recorded asset radius %.3g", radius)
            self.asset_radius = radius
            self.decisions = _recorded_decisions(recorded, self.assets)
            self.skipped_record = list((recorded.get("relevance") or {}).get("skipped") or [])
            if self.assets:
                logger.info("reusing the %d recorded asset(s): %s", len(self.assets),
                            ", ".join(a.uid for a in self.assets))  # fmt: skip
        device = next((b.device for p in particles for b in p.parameters()), None)
        self.meshes = nn.ModuleList(mesh_for(a, self.asset_radius) for a in self.assets)
        if device is not None:
            self.meshes.to(device)
        if not self.assets:
            self.assignment = []
        elif fresh or not recorded.get("assignment"):
            self.assignment = self._assign(particles, asset_term)
        else:
            self.assignment = [int(i) for i in recorded["assignment"]]
        if self.assets and (
            len(self.assignment) != len(particles)
            or any(not 0 <= i < len(self.assets) for i in self.assignment)
        ):
            raise ConfigError(
                f"the recorded assignment {self.assignment} does not fit {len(particles)} "
                f"particle(s) and {len(self.assets)} asset(s); was the particle count changed?"
            )
        if self.assets:
            logger.info("assignment π: %s", ", ".join(f"particle {i} → {self.assets[n].uid}"
                                                     for i, n in enumerate(self.assignment)))  # fmt: skip
        if fresh:
            log_decisions(self.assets, self.decisions, self.assignment)
        elif not self.active:
            logger.warning(
                "the earlier stage used no retrieved asset (none passed the relevance floor): "
                "this run goes on without assets too"
            )
        if run_dir is not None and self.assets:
            write_retrieval_outputs(run_dir, self.assets, self.assignment, list(self.meshes),
                                    self.config.preview_size, self.decisions,
                                    self.config.on_weak_match)  # fmt: skip
        if self.assets and not self.active:
            # Nothing passed: keep what was skipped for the record, and run without assets.
            self.skipped_record = [
                {**a.to_json(), **d.to_json()}
                for a, d in zip(self.assets, self.decisions, strict=True)
            ]
            self.assets, self.assignment, self.decisions = [], [], []
            self.meshes = nn.ModuleList()
        if self.active and self.adaptation is not None and self.adaptation.enabled:
            self._adapt(guidance, run_dir, recorded_adapter)
        elif recorded_adapter:
            # Not used in this run (e.g. normal-map guidance), but kept in the record so that a
            # later stage inherits ω without training it again.
            self.adapter = dict(recorded_adapter)
        self.prepared = True

    def _assign(self, particles: list[Representation], asset_term: AssetTerm) -> list[int]:
        """π over the assets that passed the floor when there are enough for the rule (any one
        for ``closest``, one per particle for ``one_per_particle``), else over all of them; a
        particle then assigned to a skipped asset runs without one."""
        used = [n for n in range(len(self.assets)) if self.asset_used(n)]
        need = len(particles) if asset_term.assignment == "one_per_particle" else 1
        if len(used) == len(self.assets) or len(used) < need:
            return asset_term.assign(particles, list(self.meshes))
        pi = asset_term.assign(particles, [self.meshes[n] for n in used])
        return [used[i] for i in pi]

    def _adapt(
        self, guidance: Guidance, run_dir: Path | None, recorded: dict[str, Any] | None
    ) -> None:
        """Eq. 12: ω from the record, the cache or trained now on the used assets, loaded frozen
        into the guidance (:func:`ra3d.augmentation.adaptation.view_adapter_for_run`, shared with
        ``ra3d adapt``)."""
        assert self.adaptation is not None
        used = [n for n in range(len(self.assets)) if self.asset_used(n)]
        self.adapter = view_adapter_for_run(
            guidance, self.adaptation, [self.assets[n] for n in used],
            [self.meshes[n] for n in used], self.asset_radius, self.query, run_dir, recorded,
        )  # fmt: skip

    # ------------------------------------------------------------------ during training
    def render_assigned(self, cameras: Cameras) -> list[RenderOutput]:
        """The assigned asset of every particle rendered at ``cameras`` (each asset once)."""
        cache: dict[int, RenderOutput] = {}
        for n in self.assignment:
            if n not in cache:
                cache[n] = self.meshes[n].render(cameras)
        return [cache[n] for n in self.assignment]

    def render_used(self, cameras: Cameras) -> list[RenderOutput | None]:
        """Like :meth:`render_assigned`, with None for a particle whose asset the relevance floor
        skipped (that particle has no asset term and no delta-distillation reference)."""
        cache: dict[int, RenderOutput] = {}
        out: list[RenderOutput | None] = []
        for n in self.assignment:
            if not self.asset_used(n):
                out.append(None)
                continue
            if n not in cache:
                cache[n] = self.meshes[n].render(cameras)
            out.append(cache[n])
        return out

    @staticmethod
    def reference_rgb(asset_out: RenderOutput, particle_out: RenderOutput) -> Tensor:
        """The asset's foreground over the particle's own background (detached), so that delta
        distillation (Eq. 13) compares the two objects, not their backgrounds."""
        fg = asset_out.extras.get("rgb_foreground")
        bg = particle_out.extras.get("background")
        if fg is None or bg is None:
            return asset_out.rgb.detach()
        return (fg + (1.0 - asset_out.opacity) * bg.to(fg.dtype)).detach()

    def record(self) -> dict[str, Any] | None:
        """The checkpoint's retrieval record (see :class:`ra3d.training.checkpoint.RunRecord`)."""
        if not self.prepared:
            return None
        record: dict[str, Any] = {
            "assets": [a.to_json() for a in self.assets],
            "assignment": list(self.assignment),
            "asset_radius": float(self.asset_radius),
            "prompt": self.query,
            "database": self.database_info,
        }
        # The floor's decisions, so a resume or a later stage keeps them (never judging again).
        record["relevance"] = {
            "on_weak_match": self.config.on_weak_match,
            "decisions": [d.to_json() for d in self.decisions],
            "particles_with_asset": self.particles_with_asset,
            "skipped": list(self.skipped_record),
        }
        return record


def _recorded_decisions(
    recorded: dict[str, Any], assets: list[RetrievedAsset]
) -> list[RelevanceDecision]:
    """The floor's decisions a checkpoint recorded; a record from before the floor used every
    asset, and keeps doing so."""
    data = (recorded.get("relevance") or {}).get("decisions") or []
    decisions = [RelevanceDecision.from_json(d) for d in data]
    if len(decisions) != len(assets) or any(
        d.uid != a.uid for d, a in zip(decisions, assets, strict=True)
    ):
        return []
    return decisions


def _check_scale(asset_radius: float, particles: list[Representation]) -> None:
    """Scales must agree: the assets must fit inside every particle's bounding volume."""
    for particle in particles:
        radius = particle.radius
        if radius is not None and asset_radius >= float(radius):
            raise ConfigError(
                f"retrieval.asset_radius ({asset_radius}) must be smaller than the "
                f"representation's radius ({radius}), or the asset would be cut off; "
                "the default 0.5 fits the NeRF's radius 1"
            )


__all__ = [
    "ADAPTER_FILE",
    "AdaptationConfig",  # defined in ra3d.augmentation.adaptation; importable here as before
    "RetrievalAugmentation",
    "mesh_for",
]
