"""3D representations θ with differentiable renderers g(θ, ψ)."""

from ra3d.representations.base import RenderOutput, Representation, TriangleMesh

__all__ = ["RenderOutput", "Representation", "TriangleMesh"]
