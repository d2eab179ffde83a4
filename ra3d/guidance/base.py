"""The Guidance interface: turns rendered images into a loss whose gradient is a velocity.

Score distillation methods (SDS, VSD) do not have a loss in the usual sense; they produce a
velocity ``v`` for the rendered image (Eq. 2). We express it as ``0.5 * ||x - sg(x - v)||²`` so
autograd delivers exactly ``v`` to the render and on to θ through ∂g/∂θ.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.errors import ConfigError

if TYPE_CHECKING:
    from ra3d.guidance.prior import DiffusionPrior


@dataclass
class GuidanceOutput:
    """What a guidance step returns.

    Attributes:
        loss: scalar to back-propagate, the plain sum of :attr:`terms`.
        terms: the named, *unweighted* scalar parts of ``loss`` (``loss_vsd``, ``loss_lora``);
            a system that weights the parts separately (``loss_weights[name]``) sums
            ``weight[name] * terms["loss_" + name]`` instead of using ``loss``.
        diagnostics: detached values for logging only (timestep, grad norm, …).
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)


class Guidance(nn.Module, ABC):
    """A 2D prior that scores renders of a prompt from cameras ψ.

    ``forward(rgb, cameras, prompt)`` takes ``rgb [B, H, W, 3]`` in [0, 1] with gradient attached
    and returns a :class:`GuidanceOutput`. ``reference_rgb`` (same shape, no gradient) enables
    delta distillation (Eq. 13) in guidances that support it.
    """

    @abstractmethod
    def forward(
        self,
        rgb: Tensor,
        cameras: Cameras,
        prompt: str,
        reference_rgb: Tensor | None = None,
    ) -> GuidanceOutput:
        """Score ``rgb`` rendered at ``cameras`` for ``prompt``."""

    @property
    def loss_term_names(self) -> tuple[str, ...]:
        """Names of the parts in :attr:`GuidanceOutput.terms`, without the ``loss_`` prefix (SDS:
        ``("sds",)``, VSD: ``("vsd", "lora")``), so a system can validate its ``loss_weights``
        keys before the first step. Empty for a guidance that reports no separate parts."""
        return ()

    def update_step(self, epoch: int, global_step: int, max_steps: int) -> None:
        """Called once per training step (time-step annealing)."""

    def trainable_parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups (``{"params": [...], "lr": ..., "name": ...}``) of what the guidance
        itself learns during the fit (VSD's LoRA score model ζ); none by default."""
        return []

    def view_adapter_prior(self) -> DiffusionPrior | None:
        """The diffusion prior a view adapter ω (Eq. 12) is trained on and loaded into, or None
        for a guidance without one (then a fit cannot adapt)."""
        return None

    def set_view_adapter(self, path: str | Path | None) -> None:
        """Use the view adapter ω saved at ``path`` in the prior term (None: the base prior)."""
        raise ConfigError(
            f"{type(self).__name__} has no diffusion prior to adapt; the view adapter (Eq. 12) "
            "needs SDS or VSD guidance: set model.adaptation.enabled false"
        )
