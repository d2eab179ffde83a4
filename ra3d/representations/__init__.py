"""3D representations θ with differentiable renderers g(θ, ψ): the interface (base), the NeRF, the
DMTet, mesh assets, the NeRF → DMTet conversion and render-space metrics; internals in components/.

The interface is exported lazily (PEP 562): ``base`` imports torch, and the package also holds
torch-free modules (``components.mesh_files``, ``components.gltf_geometry``) that the catalog
commands (``ra3d db import``, ``db info``) use without paying torch's few-second import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ra3d.representations.base import RenderOutput, Representation, TriangleMesh

__all__ = ["RenderOutput", "Representation", "TriangleMesh"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ra3d.representations import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
