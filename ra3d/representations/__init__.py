"""3D representations θ with differentiable renderers g(θ, ψ): the interface (base), the NeRF, the
DMTet, mesh assets, the NeRF → DMTet conversion and render-space metrics; internals in components/."""

from ra3d.representations.base import RenderOutput, Representation, TriangleMesh

__all__ = ["RenderOutput", "Representation", "TriangleMesh"]
