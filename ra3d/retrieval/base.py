"""The Retriever interface: prompt c → the N nearest 3D assets ξ_N(c, D) (Sec. 4.1, 4.4)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RetrievedAsset:
    """One retrieved asset θ_ret with what is needed to render and credit it.

    Attributes:
        uid: database identifier.
        caption: its text caption c_ret (used for Eq. 12's view-augmented captions).
        score: retrieval similarity (higher is closer).
        mesh_path: path of the mesh file on disk.
        front_azimuth_deg: rotation about the up axis that brings its front to azimuth 0
            (frontal alignment, Sec. 4.4).
        source, license, attribution: provenance, kept with every asset.
    """

    uid: str
    caption: str
    score: float
    mesh_path: Path
    front_azimuth_deg: float = 0.0
    source: str = ""
    license: str = ""
    attribution: str = ""
    extras: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (what ``retrieved.json`` and checkpoints record)."""
        return {
            "uid": self.uid,
            "caption": self.caption,
            "score": float(self.score),
            "mesh_path": str(self.mesh_path),
            "front_azimuth_deg": float(self.front_azimuth_deg),
            "source": self.source,
            "license": self.license,
            "attribution": self.attribution,
            "extras": json.loads(json.dumps(self.extras, default=str)),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrievedAsset:
        """Inverse of :meth:`to_json`."""
        return cls(
            uid=str(data["uid"]),
            caption=str(data.get("caption", "")),
            score=float(data.get("score", 0.0)),
            mesh_path=Path(data["mesh_path"]),
            front_azimuth_deg=float(data.get("front_azimuth_deg", 0.0)),
            source=str(data.get("source", "")),
            license=str(data.get("license", "")),
            attribution=str(data.get("attribution", "")),
            extras=dict(data.get("extras", {})),
        )


class Retriever(ABC):
    """Finds the assets of a database closest to a text prompt."""

    @abstractmethod
    def retrieve(self, prompt: str, k: int = 3) -> list[RetrievedAsset]:
        """The ``k`` best assets for ``prompt``, best first."""
