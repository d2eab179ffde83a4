"""2D diffusion guidance: the prior, SDS, VSD, delta distillation, the asset term, adaptation."""

from ra3d.guidance.base import Guidance, GuidanceOutput

__all__ = ["Guidance", "GuidanceOutput"]
