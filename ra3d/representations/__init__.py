"""3D representations θ with differentiable renderers g(θ, ψ)."""

from ra3d.representations.base import Representation, RenderOutput, TriangleMesh

__all__ = ["RenderOutput", "Representation", "TriangleMesh"]
