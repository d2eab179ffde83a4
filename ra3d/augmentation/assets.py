"""Retrieval at the start of a fit: ξ_N(c, D) once, recorded in the run (paper Sec. 4.1, 4.4).

A fit with a ``retrieval`` section gets its N assets here before the first step — either from the
asset database (two-stage CLIP/MiniLM search + frontal alignment, :mod:`ra3d.retrieval.search`) or
from meshes the user names (an artist's base mesh is a first-class input). The run folder gets
``retrieved.json`` and a preview strip per asset, and the checkpoint records the assets (see
:mod:`ra3d.training.checkpoint`), so a resume or the fine stage reuses them and never retrieves again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ra3d.errors import ConfigError
from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)


@dataclass
class RetrievalConfig:
    """The ``model.retrieval`` section of a fit.

    Args:
        enabled: retrieve (or load ``assets``) before the first step; False runs plain VSD/SDS.
        database: an asset database folder; None = ``$RA3D_DATABASE`` or the built-in starter
            library (93 CC0 models).
        embedder: ``auto`` (CLIP when its weights are on disk, else MiniLM), ``clip`` or ``minilm``.
        n_assets: N, the number of assets; None = ``n_particles`` (one asset per particle).
        n_candidates: N′, caption matches passed to the image rerank (16).
        align: frontal alignment of the retrieved assets (Sec. 4.4).
        prompt: retrieval query when it should differ from the generation prompt (the paper allows
            a user-given query); None = the generation prompt.
        assets: the user's own meshes (OBJ/GLB/GLTF/PLY/...) instead of retrieval.
        captions: captions c_ret of ``assets`` (for Eq. 12's view-augmented captions); default:
            the generation prompt for each.
        front_azimuths_deg: where each user mesh's front faces (degrees, default 0 = +X after the
            up-axis rule of :func:`ra3d.representations.mesh.load_mesh`).
        up_axis: ``auto``, ``y`` or ``z`` for user meshes (see ``load_mesh``).
        asset_radius: assets are centred and scaled so their farthest vertex lies at this radius
            (0.5: inside the NeRF's bounding sphere of radius 1, the size threestudio's cameras at
            distance 1–1.5 frame; it must be smaller than the representation's radius).
        assignment: π of Eq. 10: ``one_per_particle`` (App. B.3) or ``closest`` (render distance
            at step 0, Eq. 10 / App. E).
        preview_size: pixel size of each view in the preview strips.
        clip_model, clip_pretrained: open_clip model and tag or weights file for ``clip``.
    """

    enabled: bool = True
    database: str | None = None
    embedder: str = "auto"
    n_assets: int | None = None
    n_candidates: int = 16
    align: bool = True
    prompt: str | None = None
    assets: list[str] | None = None
    captions: list[str] | None = None
    front_azimuths_deg: list[float] | None = None
    up_axis: str = "auto"
    asset_radius: float = 0.5
    assignment: str = "one_per_particle"
    preview_size: int = 192
    clip_model: str | None = None
    clip_pretrained: str | None = None

    def validate(self, n_particles: int) -> None:
        """Clear errors for settings that cannot work."""
        if self.n_assets is not None and self.n_assets < 1:
            raise ConfigError(
                f"retrieval.n_assets must be >= 1 (or null = n_particles), got {self.n_assets}"
            )
        if self.n_candidates < 1:
            raise ConfigError(f"retrieval.n_candidates (N') must be >= 1, got {self.n_candidates}")
        if not 0.0 < float(self.asset_radius) < float("inf"):
            raise ConfigError(f"retrieval.asset_radius must be > 0, got {self.asset_radius}")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError(
                "retrieval.prompt is empty; remove it to query with the generation prompt"
            )
        if self.preview_size < 16:
            raise ConfigError(f"retrieval.preview_size must be >= 16, got {self.preview_size}")
        if self.assets is not None:
            if not self.assets:
                raise ConfigError("retrieval.assets is an empty list; name mesh files or remove it")
            for name, values in (
                ("captions", self.captions),
                ("front_azimuths_deg", self.front_azimuths_deg),
            ):
                if values is not None and len(values) != len(self.assets):
                    raise ConfigError(
                        f"retrieval.{name} has {len(values)} entries for {len(self.assets)} assets; "
                        "give one per asset (or none)"
                    )
        elif self.captions is not None or self.front_azimuths_deg is not None:
            raise ConfigError(
                "retrieval.captions/front_azimuths_deg describe retrieval.assets; name the assets too"
            )

    def n_wanted(self, n_particles: int) -> int:
        return int(self.n_assets) if self.n_assets is not None else int(n_particles)


def user_assets(config: RetrievalConfig, prompt: str) -> list[RetrievedAsset]:
    """RetrievedAssets for the user's own meshes (``retrieval.assets``)."""
    from ra3d.representations.mesh import SUPPORTED_SUFFIXES

    out = []
    for i, name in enumerate(config.assets or []):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"retrieval.assets[{i}]: {path} {'is a directory' if path.is_dir() else 'does not exist'}; "
                "name a mesh file (OBJ, GLB, GLTF, PLY, STL, OFF)"
            )
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise ConfigError(
                f"retrieval.assets[{i}]: {path.name} is not a supported mesh ({', '.join(SUPPORTED_SUFFIXES)})"
            )
        caption = config.captions[i] if config.captions else prompt
        azimuth = float(config.front_azimuths_deg[i]) if config.front_azimuths_deg else 0.0
        out.append(
            RetrievedAsset(
                uid=f"user-{i}-{path.stem}",
                caption=caption,
                score=1.0,
                mesh_path=path.resolve(),
                front_azimuth_deg=azimuth,
                source="user",
                license="supplied by the user",
                attribution="",
                extras={"up_axis": config.up_axis},
            )
        )
    return out


def retrieve_assets(
    config: RetrievalConfig, prompt: str, n_particles: int
) -> tuple[list[RetrievedAsset], dict[str, Any]]:
    """The N assets of a new run and a description of where they came from."""
    config.validate(n_particles)
    if config.assets is not None:
        assets = user_assets(config, prompt)
        logger.info("using %d user mesh(es) as retrieved assets", len(assets))
        return assets, {"kind": "user"}
    from ra3d.retrieval.search import TwoStageRetriever

    kwargs: dict[str, Any] = {}
    if config.clip_model is not None:
        kwargs["clip_model"] = config.clip_model
    if config.clip_pretrained is not None:
        kwargs["clip_pretrained"] = config.clip_pretrained
    retriever = TwoStageRetriever(
        database=config.database, embedder=config.embedder, n_candidates=config.n_candidates,
        align=config.align, **kwargs,
    )  # fmt: skip
    query = config.prompt or prompt
    k = config.n_wanted(n_particles)
    db = retriever.database
    if k > len(db):
        raise ConfigError(
            f"retrieval asks for {k} assets but the database holds {len(db)}; lower retrieval.n_assets"
        )
    assets = retriever.retrieve(query, k=k)
    for rank, a in enumerate(assets, 1):
        logger.info(
            "retrieved #%d %s (%s) score %.3f, front at %.0f°",
            rank,
            a.uid,
            a.caption,
            a.score,
            a.front_azimuth_deg,
        )
    info = {"kind": "database", "root": str(db.root), "manifest_hash": db.manifest_hash,
            "query": query, "embedder": retriever.embedder.id}  # fmt: skip
    return assets, info


def check_recorded_assets(retrieval: dict[str, Any]) -> list[RetrievedAsset]:
    """The assets a checkpoint recorded, after checking that their meshes are still there (and
    saying so when the database they came from has changed since)."""
    assets = [RetrievedAsset.from_json(a) for a in retrieval.get("assets", [])]
    missing = [a for a in assets if not Path(a.mesh_path).is_file()]
    if missing:
        names = ", ".join(f"{a.uid} ({a.mesh_path})" for a in missing)
        raise ConfigError(
            f"the run's retrieved asset mesh(es) are missing: {names}. Restore the database (or the "
            "user meshes) at those paths; ra3d does not retrieve again for a resumed or later stage"
        )
    database = retrieval.get("database") or {}
    if database.get("kind") == "database" and database.get("root"):
        manifest = Path(database["root"]) / "manifest.json"
        try:
            from ra3d.retrieval.database import AssetDatabase

            current = AssetDatabase.open(database["root"]).manifest_hash
        except Exception:  # noqa: BLE001 - any failure to read it means "cannot compare"
            current = None
        if current is not None and current != database.get("manifest_hash"):
            logger.warning(
                "the asset database %s changed since this run retrieved its assets; keeping the "
                "recorded assets (%s)", manifest.parent, ", ".join(a.uid for a in assets),
            )  # fmt: skip
    return assets


__all__ = [
    "RetrievalConfig",
    "check_recorded_assets",
    "retrieve_assets",
    "user_assets",
]
