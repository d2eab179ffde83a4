"""What a ra3d checkpoint records about its run, and loading a run's particles back.

Every checkpoint written by :class:`~ra3d.training.system.Ra3dSystem` carries, besides Lightning's own
entries, a ``checkpoint["ra3d"]`` dict (:class:`RunRecord`): the prompt, the number of particles,
how to rebuild one particle (its ``class_path`` and ``init_args``), the stage, and — for
retrieval-augmented runs — the retrieved assets, the one-hot assignment π of Eq. 10 (as the asset
index of each particle), the scale the assets were normalised to, and the view-adaptation adapter
ω of Eq. 12. A resume, the fine stage (``--model.init_from``), ``ra3d export`` and ``ra3d evaluate``
read it back through :func:`load_run`, so none of them ever retrieves again.

Checkpoints are read with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ra3d import __version__
from ra3d.errors import CheckpointError
from ra3d.representations.base import Representation
from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)

RECORD_KEY = "ra3d"
PARTICLE_PREFIX = "particles."


@dataclass
class RunRecord:
    """The ``checkpoint["ra3d"]`` entry.

    Attributes:
        prompt: the text c of the run.
        n_particles: number of particles θ⁽ⁱ⁾.
        representation: ``{"class_path": ..., "init_args": {...}}`` of one particle, or None when
            the factory could not be described (then the run folder's ``config.yaml`` is used).
        stage: ``"coarse"`` (NeRF), ``"fine"`` or another name the config gives.
        retrieval: None for a run without assets, else ``{"assets": [RetrievedAsset.to_json()],
            "assignment": [asset index of particle i], "asset_radius": float, "prompt": str,
            "database": {...}}``.
        adapter: None, or ``{"path": str, "key": str}`` of the view adapter ω (Eq. 12).
        global_step: the step the checkpoint was written at.
        ra3d_version: the package version that wrote it.
    """

    prompt: str
    n_particles: int
    representation: dict[str, Any] | None = None
    stage: str = "coarse"
    retrieval: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    global_step: int = 0
    ra3d_version: str = __version__
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        if not isinstance(data, dict) or "prompt" not in data or "n_particles" not in data:
            raise CheckpointError(
                "the checkpoint's ra3d record is incomplete (no prompt or particle count); was it "
                "written by ra3d?"
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    # -------------------------------------------------------------- retrieval views
    @property
    def assets(self) -> list[RetrievedAsset]:
        if not self.retrieval:
            return []
        return [RetrievedAsset.from_json(a) for a in self.retrieval.get("assets", [])]

    @property
    def assignment(self) -> list[int]:
        """π as the asset index of each particle (empty without retrieval)."""
        if not self.retrieval:
            return []
        return [int(i) for i in self.retrieval.get("assignment", [])]

    @property
    def used_assets(self) -> list[bool]:
        """Per recorded asset: whether the run used it (it passed the relevance floor of
        :mod:`ra3d.augmentation.relevance`). A record from before the floor used every asset."""
        decisions = ((self.retrieval or {}).get("relevance") or {}).get("decisions") or []
        n = len(self.assets)
        if len(decisions) != n:
            return [True] * n
        return [bool(d.get("used", True)) if isinstance(d, dict) else True for d in decisions]

    @property
    def particle_assets(self) -> list[int | None]:
        """π restricted to the used assets: the asset index of each particle, None for a particle
        whose asset was skipped (it ran without the asset term and delta distillation). Export
        credits and evaluation's asset fidelity follow this, not the raw assignment."""
        used = self.used_assets
        return [a if 0 <= a < len(used) and used[a] else None for a in self.assignment]


def describe_factory(factory: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a particle factory, or None if it cannot be described.

    Understands a Representation class, a ``functools.partial`` of one (also the partial that
    LightningCLI/jsonargparse builds for ``class_path``/``init_args`` YAML, whose class is one of
    the partial's positional arguments).
    """
    cls: Any = None
    kwargs: dict[str, Any] = {}
    if isinstance(factory, type):
        cls = factory
    elif isinstance(factory, functools.partial):
        if isinstance(factory.func, type):
            cls = factory.func
        else:
            cls = next(
                (a for a in factory.args if isinstance(a, type) and issubclass(a, Representation)),
                None,
            )
        kwargs = dict(factory.keywords)
    if cls is None or not issubclass(cls, Representation):
        return None
    try:
        init_args = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError):
        return None  # e.g. an nn.Module passed as an argument
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def import_representation_class(class_path: str) -> type[Representation]:
    """Import ``class_path`` and check that it names a Representation (never anything else)."""
    module_name, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(f"cannot import the particle class {class_path!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Representation)):
        raise CheckpointError(f"{class_path!r} is not a ra3d Representation; refusing to build it")
    return cls


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (``<run>/checkpoints/last.ckpt``)."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"{p} is a folder without checkpoints/last.ckpt; pass a run folder "
            "(outputs/<name>/version_N) or a .ckpt file"
        )
    if not p.exists():
        raise CheckpointError(
            f"checkpoint not found: {p}. Pass the .ckpt file of an earlier run, e.g. "
            "outputs/<run>/version_0/checkpoints/last.ckpt, or its run folder"
        )
    return p


def read_checkpoint(path: str | Path) -> tuple[RunRecord, dict[str, Tensor], Path]:
    """``(record, state_dict, file)`` of a ra3d checkpoint, with one clear error for anything that
    is not one (missing, a folder without a checkpoint, truncated, not a ra3d checkpoint)."""
    file = resolve_checkpoint_path(path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, random bytes, a pickle with code in it, ...
        detail = (str(err).strip().splitlines() or ["no detail"])[0]
        detail = detail.split(". ")[0][:160]  # torch appends long weights_only advice
        raise CheckpointError(
            f"{file} cannot be read as a checkpoint ({type(err).__name__}: {detail}); it may be "
            "truncated or not a ra3d checkpoint"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{file} is not a Lightning checkpoint (no state_dict)")
    if RECORD_KEY not in checkpoint:
        raise CheckpointError(f"{file} has no ra3d record; it was not written by ra3d fit")
    record = RunRecord.from_dict(checkpoint[RECORD_KEY])
    if record.representation is None:
        record.representation = _representation_from_run_config(file)
    return record, checkpoint["state_dict"], file


def _representation_from_run_config(ckpt: Path) -> dict[str, Any] | None:
    """Fallback for checkpoints of ra3d 0.1 without a particle description: the run folder's
    ``config.yaml`` (``<run>/checkpoints/last.ckpt`` → ``<run>/config.yaml``)."""
    import yaml

    config = ckpt.parent.parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        rep = (yaml.safe_load(config.read_text()) or {}).get("model", {}).get("representation")
    except yaml.YAMLError:
        return None
    if isinstance(rep, dict) and "class_path" in rep:
        return {"class_path": rep["class_path"], "init_args": rep.get("init_args") or {}}
    return None


def particle_state(state: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """The state dict of particle ``index`` (keys without the ``particles.i.`` prefix)."""
    prefix = f"{PARTICLE_PREFIX}{index}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def build_particles(
    record: RunRecord, state: dict[str, Tensor], device: str | torch.device = "cpu"
) -> list[Representation]:
    """Rebuild every particle of a checkpoint with its trained weights, in eval mode."""
    spec = record.representation
    if not spec:
        raise CheckpointError(
            "the checkpoint does not say how to build its particles and its run folder has no "
            "config.yaml; export/evaluate need either"
        )
    cls = import_representation_class(spec["class_path"])
    particles = []
    for i in range(record.n_particles):
        weights = particle_state(state, i)
        if not weights:
            raise CheckpointError(f"the checkpoint has no weights for particle {i}")
        particle = cls(**spec.get("init_args", {}))
        try:
            particle.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"particle {i}'s weights do not fit {spec['class_path']} "
                f"({str(err).splitlines()[0]})"
            ) from err
        particles.append(particle.to(device).eval())
    return particles


@dataclass
class LoadedRun:
    """A run's record and particles, loaded from its checkpoint (see :func:`load_run`)."""

    checkpoint_path: Path
    record: RunRecord
    particles: list[Representation]

    @property
    def prompt(self) -> str:
        return self.record.prompt

    @property
    def run_dir(self) -> Path:
        """``<run>`` for ``<run>/checkpoints/last.ckpt``, else the checkpoint's folder."""
        parent = self.checkpoint_path.parent
        return parent.parent if parent.name == "checkpoints" else parent

    @property
    def assets(self) -> list[RetrievedAsset]:
        return self.record.assets

    @property
    def assignment(self) -> list[int]:
        return self.record.assignment

    @property
    def particle_assets(self) -> list[int | None]:
        return self.record.particle_assets

    def asset_meshes(self, **kwargs: Any) -> list[Representation]:
        """One :class:`~ra3d.representations.mesh.MeshAsset` per retrieved asset, normalised and
        rotated as during training (``kwargs`` go to ``MeshAsset``, e.g. ``backend``)."""
        from ra3d.representations.mesh import MeshAsset

        radius = float((self.record.retrieval or {}).get("asset_radius", 0.5))
        meshes = []
        for asset in self.assets:
            if not Path(asset.mesh_path).is_file():
                raise CheckpointError(
                    f"retrieved asset {asset.uid!r}: its mesh {asset.mesh_path} is missing "
                    "(was the database moved or deleted?)"
                )
            meshes.append(MeshAsset.from_retrieved(asset, radius=radius, **kwargs))
        return meshes


def load_run(path: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run (checkpoint file or run folder) for export or evaluation."""
    record, state, file = read_checkpoint(path)
    particles = build_particles(record, state, device)
    logger.info(
        "loaded %s: %d particle(s) of %s, prompt %r",
        file,
        len(particles),
        (record.representation or {}).get("class_path", "?"),
        record.prompt,
    )
    return LoadedRun(checkpoint_path=file, record=record, particles=particles)


__all__ = [
    "RECORD_KEY",
    "LoadedRun",
    "RunRecord",
    "build_particles",
    "describe_factory",
    "load_run",
    "read_checkpoint",
    "resolve_checkpoint_path",
]
