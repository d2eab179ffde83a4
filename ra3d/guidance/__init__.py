"""2D diffusion guidance: the Guidance interface, the diffusion prior (and the tiny offline one),
view prompts, SDS, VSD with its LoRA score model (Eq. 1–2), delta distillation (Eq. 13) and the
lightweight adaptation of the prior on asset renders (Eq. 12)."""

from ra3d.guidance.base import Guidance, GuidanceOutput

__all__ = ["Guidance", "GuidanceOutput"]
