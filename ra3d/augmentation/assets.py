"""Retrieval at the start of a fit: ξ_N(c, D) once, recorded in the run (paper Sec. 4.1, 4.4).

A fit with a ``retrieval`` section gets its N assets here before the first step — either from the
asset database (two-stage CLIP/MiniLM search + frontal alignment, :mod:`ra3d.retrieval.search`) or
from meshes the user names (an artist's base mesh is a first-class input). The run folder gets
``retrieved.json`` and a preview strip per asset, and the checkpoint records the assets (see
:mod:`ra3d.training.checkpoint`), so a resume or the fine stage reuses them and never retrieves again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ra3d.augmentation.relevance import WEAK_MATCH_CHOICES, check_min_score, check_on_weak_match
from ra3d.errors import ConfigError
from ra3d.representations.mesh import (
    SUPPORTED_SUFFIXES,
    UP_AXES,
    MeshAsset,
    MeshLoadError,
    load_mesh,
)
from ra3d.retrieval.base import RetrievedAsset
from ra3d.retrieval.embed import EMBEDDER_CHOICES

logger = logging.getLogger(__name__)


@dataclass
class RetrievalConfig:
    """The ``model.retrieval`` section of a fit.

    Its user-mesh and database fields are also the flags of ``ra3d adapt``
    (:mod:`ra3d.cli.options`), so both commands read one definition.

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
        assets: the user's own meshes (OBJ, GLB, GLTF, PLY, STL, OFF) instead of retrieval.
        captions: captions c_ret of the user meshes, one per mesh in the same order (Eq. 12's
            view-augmented captions); default: the prompt for each (``ra3d adapt`` without a
            prompt: the file name).
        front_azimuths_deg: the azimuth each user mesh's front faces, one per mesh, in degrees
            (default 0 = +X after the up-axis rule of :func:`ra3d.representations.mesh.load_mesh`).
        up_axis: ``auto``, ``y`` or ``z``: the up axis of the user meshes (see ``load_mesh``).
        asset_radius: assets are centred and scaled so their farthest vertex lies at this radius
            (0.5: inside the NeRF's bounding sphere of radius 1, the size threestudio's cameras at
            distance 1–1.5 frame; it must be smaller than the representation's radius).
        assignment: π of Eq. 10: ``one_per_particle`` (App. B.3) or ``closest`` (render distance
            at step 0, Eq. 10 / App. E).
        preview_size: pixel size of each view in the preview strips.
        clip_model: open_clip model name for the ``clip`` embedder.
        clip_pretrained: open_clip pretrained tag or weights file for the ``clip`` embedder.
        min_score: the relevance floor: a retrieved asset scoring below it is a weak match
            (:mod:`ra3d.augmentation.relevance`); None = the embedder's default
            (``DEFAULT_MIN_SCORES``: MiniLM 0.44, calibrated; CLIP 0.20, not calibrated).
        on_weak_match: what a weak match does: ``skip`` (default: the asset is not used; its
            particles run without the asset term and delta distillation), ``stop`` (an error
            naming the scores) or ``use`` (used anyway).
        licenses: accept only database assets under these licences (SPDX ids such as
            ``CC0-1.0``, ``CC-BY-4.0``; a family such as ``CC-BY`` accepts every version), applied
            before any mesh is fetched, as ``ra3d retrieve --licenses``; None = every licence.
    """

    enabled: bool = True
    database: str | None = field(default=None, metadata={"flag": "--db", "metavar": "DIR"})
    embedder: str = field(default="auto", metadata={"choices": EMBEDDER_CHOICES})
    n_assets: int | None = None
    n_candidates: int = 16
    align: bool = True
    prompt: str | None = None
    assets: list[str] | None = field(default=None, metadata={"metavar": "MESH"})
    captions: list[str] | None = field(default=None, metadata={"metavar": "TEXT"})
    front_azimuths_deg: list[float] | None = field(
        default=None, metadata={"flag": "--front-azimuth", "metavar": "DEG"}
    )
    up_axis: str = field(default="auto", metadata={"choices": UP_AXES})
    asset_radius: float = field(default=0.5, metadata={"flag": "--radius"})
    assignment: str = "one_per_particle"
    preview_size: int = 192
    clip_model: str | None = None
    clip_pretrained: str | None = None
    min_score: float | None = None
    on_weak_match: str = field(default="skip", metadata={"choices": WEAK_MATCH_CHOICES})
    licenses: list[str] | None = field(default=None, metadata={"metavar": "SPDX"})

    def validate(self, n_particles: int, names: Mapping[str, str] | None = None) -> None:
        """Clear errors for settings that cannot work. ``names`` maps a field to what the user
        wrote (a ``ra3d adapt`` flag); default: its YAML key ``retrieval.<field>``."""
        name = _namer(names)
        if self.n_assets is not None and self.n_assets < 1:
            raise ConfigError(
                f"{name('n_assets')} must be >= 1 (or null = n_particles), got {self.n_assets}"
            )
        if self.n_candidates < 1:
            raise ConfigError(f"{name('n_candidates')} (N') must be >= 1, got {self.n_candidates}")
        if not 0.0 < float(self.asset_radius) < float("inf"):
            raise ConfigError(f"{name('asset_radius')} must be > 0, got {self.asset_radius}")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError(
                f"{name('prompt')} is empty; remove it to query with the generation prompt"
            )
        if self.preview_size < 16:
            raise ConfigError(f"{name('preview_size')} must be >= 16, got {self.preview_size}")
        check_min_score(self.min_score, name("min_score"))
        check_on_weak_match(self.on_weak_match, name("on_weak_match"))
        if self.licenses is not None:
            from ra3d.retrieval.licenses import LicenseFilter

            try:
                LicenseFilter.parse(self.licenses)
            except ConfigError as err:
                raise ConfigError(f"{name('licenses')}: {err}") from None
        _check_user_lists(self, name)

    def n_wanted(self, n_particles: int) -> int:
        return int(self.n_assets) if self.n_assets is not None else int(n_particles)


def _namer(names: Mapping[str, str] | None) -> Callable[[str], str]:
    """How an error names a field: the given flag, else the YAML key."""
    return lambda key: (names or {}).get(key, f"retrieval.{key}")


def _check_user_lists(config: RetrievalConfig, name: Callable[[str], str]) -> None:
    """``captions`` and ``front_azimuths_deg`` describe ``assets``, one entry per mesh."""
    if config.assets is not None:
        if not config.assets:
            raise ConfigError(f"{name('assets')} is an empty list; name mesh files or remove it")
        for key, values in (
            ("captions", config.captions),
            ("front_azimuths_deg", config.front_azimuths_deg),
        ):
            if values is not None and len(values) != len(config.assets):
                raise ConfigError(
                    f"{name(key)} gives {len(values)} value(s) for {len(config.assets)} mesh(es) "
                    f"of {name('assets')}; give one per mesh, in the same order (or none)"
                )
    elif config.captions is not None or config.front_azimuths_deg is not None:
        raise ConfigError(
            f"{name('captions')}/{name('front_azimuths_deg')} describe the meshes of "
            f"{name('assets')}; name the meshes too"
        )


def caption_from_file_name(path: str | Path) -> str:
    """``teddy_bear-01.glb`` → ``teddy bear 01``: the caption of a user mesh when neither a
    caption nor a prompt is given (only ``ra3d adapt`` can lack a prompt)."""
    return Path(path).stem.replace("_", " ").replace("-", " ").strip()


def user_assets(
    config: RetrievalConfig, prompt: str | None, names: Mapping[str, str] | None = None
) -> list[RetrievedAsset]:
    """RetrievedAssets for the user's own meshes (``retrieval.assets``, ``ra3d adapt --assets``).

    The one user-mesh rule of ``ra3d fit`` and ``ra3d adapt``, so that the same meshes give the
    same assets — hence the same renders, captions and cache key of ω (Eq. 12) — in both:

    * ``uid`` ``user-<i>-<file stem>``, ``mesh_path`` the resolved file, ``front_azimuth_deg``
      from ``front_azimuths_deg`` (default 0), the up axis ``config.up_axis`` (in ``extras``);
    * caption c_ret: ``captions[i]`` when given, else the prompt (fit's generation prompt, adapt's
      ``--prompt``), else — ``ra3d adapt`` without a prompt — the file name
      (:func:`caption_from_file_name`).

    ``names`` maps fields to the flags the user wrote, for the error messages (default: the YAML
    keys ``retrieval.<field>``).
    """
    name = _namer(names)
    _check_user_lists(config, name)
    if prompt is not None and not prompt.strip():
        prompt = None
    out = []
    for i, entry in enumerate(config.assets or []):
        path = _user_mesh_path(entry, f"{name('assets')}[{i}]")
        if config.captions:
            caption = config.captions[i]
        else:
            caption = prompt if prompt is not None else caption_from_file_name(path)
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


def _user_mesh_path(entry: str, label: str) -> Path:
    """The file a user-mesh entry names, after checking it is a file of a supported format."""
    path = Path(entry).expanduser()
    if not path.is_file():
        what = "is a directory, not a mesh file" if path.is_dir() else "mesh file not found"
        raise ConfigError(
            f"{label}: {what}: {path}; name a mesh file (OBJ, GLB, GLTF, PLY, STL, OFF)"
        )
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ConfigError(
            f"{label}: {path.name} is not a supported mesh ({', '.join(SUPPORTED_SUFFIXES)})"
        )
    return path


def check_user_meshes(assets: Sequence[str] | None, names: Mapping[str, str] | None = None) -> None:
    """Read every user mesh once with the loader's checks (:func:`~ra3d.representations.mesh.
    load_mesh`: size limits, GLB structure, references inside the mesh's folder, finite
    coordinates, faces, indices in range), so that ``ra3d fit`` and ``ra3d adapt`` report an
    unusable file as one ``ra3d: error:`` line before any model is loaded. Small textures: only
    validity matters here; the run loads the mesh again at its own settings."""
    name = _namer(names)
    for i, entry in enumerate(assets or []):
        label = f"{name('assets')}[{i}]"
        path = _user_mesh_path(entry, label)
        try:
            load_mesh(path, max_texture_size=64, quiet=True)
        except MeshLoadError as err:
            raise ConfigError(f"{label}: {err}") from err


def up_axis_of(asset: RetrievedAsset) -> str:
    """The up axis an asset's mesh is loaded with: the one recorded with it (user meshes carry
    ``retrieval.up_axis``), else ``auto``."""
    return str((asset.extras or {}).get("up_axis", "auto"))


def mesh_for(asset: RetrievedAsset, radius: float) -> MeshAsset:
    """The MeshAsset of an asset at the run's scale, up axis and frontal rotation (what both the
    fit and ``ra3d adapt`` render)."""
    try:
        return MeshAsset.from_retrieved(asset, radius=radius, up_axis=up_axis_of(asset))
    except MeshLoadError as err:
        raise ConfigError(f"cannot read mesh {asset.mesh_path}: {err}") from err


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
        align=config.align, licenses=config.licenses, **kwargs,
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
    "caption_from_file_name",
    "check_recorded_assets",
    "check_user_meshes",
    "mesh_for",
    "retrieve_assets",
    "up_axis_of",
    "user_assets",
]
