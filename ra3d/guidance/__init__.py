"""2D diffusion guidance: the prior, SDS, VSD with LoRA, delta distillation (Eq. 13)."""

from ra3d.guidance.base import Guidance, GuidanceOutput

__all__ = ["Guidance", "GuidanceOutput"]
