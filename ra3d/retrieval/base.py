"""The Retriever interface: prompt c → the N nearest 3D assets ξ_N(c, D) (Sec. 4.1, 4.4)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path


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


class Retriever(ABC):
    """Finds the assets of a database closest to a text prompt."""

    @abstractmethod
    def retrieve(self, prompt: str, k: int = 3) -> list[RetrievedAsset]:
        """The ``k`` best assets for ``prompt``, best first."""
