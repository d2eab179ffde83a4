"""The Representation interface: anything that renders images g(θ, ψ) from cameras ψ.

This is the whole contract that guidance, the asset term (Eq. 11) and the metrics rely on. A
retrieved mesh is a Representation too, so the asset velocity compares any two representations
through the same cameras and renderer conventions (see :mod:`ra3d.cameras`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ra3d.cameras import Cameras
from ra3d.errors import CheckpointError, ConfigError


@dataclass
class RenderOutput:
    """Images rendered for a batch of ``B`` cameras of size ``H x W``.

    Attributes:
        rgb: ``[B, H, W, 3]`` colour composited over the background, in [0, 1].
        opacity: ``[B, H, W, 1]`` accumulated alpha (1 = surface hit).
        depth: ``[B, H, W, 1]`` expected distance along the ray (0 where nothing was hit).
        normal: ``[B, H, W, 3]`` world-space unit normals where defined, else ``None``.
        extras: anything else a representation wants to expose (e.g. per-sample weights).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 4 or self.rgb.shape[-1] != 3:
            raise ValueError(f"RenderOutput.rgb must be [B, H, W, 3], got {tuple(self.rgb.shape)}")
        expected = (*self.rgb.shape[:3], 1)
        for name in ("opacity", "depth"):
            if tuple(getattr(self, name).shape) != expected:
                raise ValueError(
                    f"RenderOutput.{name} must be {list(expected)}, got "
                    f"{tuple(getattr(self, name).shape)}"
                )


@dataclass
class TriangleMesh:
    """A triangle mesh in world space: ``vertices [V, 3]``, ``faces [F, 3]`` (int64), optional
    per-vertex colours ``[V, 3]`` in [0, 1]."""

    vertices: Tensor
    faces: Tensor
    vertex_colors: Tensor | None = None


class Representation(nn.Module, ABC):
    """A differentiable 3D representation θ with a renderer g(θ, ψ).

    Subclasses implement :meth:`render`. Everything else a representation *may* be able to do is
    declared here with a default, so callers ask and never probe with ``hasattr``:

    * :meth:`regularizers` / :attr:`regularizer_names` — loss terms that depend only on θ and the
      render (e.g. sparsity); none by default;
    * :meth:`update_step` — schedules such as the occupancy grid; nothing by default;
    * :attr:`radius` — the bounding sphere the representation lives in (the assets must fit
      inside it); ``None`` when it has none;
    * :attr:`has_density` / :meth:`density` — a volume density field (a NeRF's), which a mesh
      stage can be initialised from; none by default;
    * :meth:`freeze_geometry` — keep the geometry fixed and train only the colour (the DMTet
      texture phase); refused by default;
    * :meth:`create_from` — build this representation from an earlier stage's (threestudio's
      ``create_from``); by default only from one of the same class;
    * :meth:`query_albedo`, :meth:`extract_mesh` — a colour field and a surface (export, the
      coarse → fine hand-over); refused with a clear message by default.
    """

    #: Radius of the bounding sphere (world units) the representation fills; None if unbounded.
    radius: float | None = None
    #: Whether :meth:`density` is a volume density field.
    has_density: bool = False

    @abstractmethod
    def render(self, cameras: Cameras) -> RenderOutput:
        """Render ``len(cameras)`` images at ``cameras.height x cameras.width``."""

    def regularizers(self, output: RenderOutput) -> dict[str, Tensor]:
        """Named, unweighted regularizer terms for this render (weights live in the system)."""
        return {}

    @property
    def regularizer_names(self) -> tuple[str, ...]:
        """Every name :meth:`regularizers` can return: the system accepts exactly these (plus the
        guidance terms and ``asset``) as ``loss_weights`` keys, so a typo is an error."""
        return ()

    def update_step(self, epoch: int, global_step: int) -> None:
        """Called once at the start of every training step (schedules, occupancy updates)."""

    def density(self, points: Tensor) -> Tensor:
        """Volume density ``[N]`` at world ``points [N, 3]`` (see :attr:`has_density`)."""
        raise ConfigError(
            f"{type(self).__name__} has no volume density field; a density is what a NeRF has"
        )

    def freeze_geometry(self, frozen: bool = True) -> None:
        """Keep the geometry fixed (``frozen``) or trainable again; only the colour then learns."""
        raise ConfigError(
            f"{type(self).__name__} cannot freeze its geometry; freeze_geometry is for the DMTet "
            "texture phase"
        )

    @classmethod
    def create_from(
        cls, source: Representation, init_args: dict[str, Any], options: Any = None
    ) -> Representation:
        """A new ``cls(**init_args)`` that continues ``source``, an earlier stage's particle.

        The default takes over a particle of the same class by copying its state (the texture
        phase from the geometry phase); a subclass that can convert another kind overrides it
        (DMTet from a NeRF's density, with ``options``). Anything else is refused clearly.
        """
        if not isinstance(source, cls):
            raise CheckpointError(
                f"cannot initialise a {cls.__name__} from a {type(source).__name__} checkpoint; "
                "init_from takes a coarse NeRF checkpoint (or a DMTet one for the texture phase)"
            )
        particle = cls(**init_args)
        try:
            particle.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"the earlier {cls.__name__} does not fit this config's "
                f"({str(err).splitlines()[0]}); use the same grid/encoding settings"
            ) from err
        return particle

    def query_albedo(self, points: Tensor) -> Tensor:
        """Surface colour ``[N, 3]`` in [0, 1] at world ``points [N, 3]`` (texture baking for
        export, colour transfer from the coarse to the fine stage). Representations without a
        colour field say so clearly."""
        raise NotImplementedError(
            f"{type(self).__name__} has no colour field to query; texture baking needs a "
            "representation with one (NeRF, DMTet)."
        )

    @torch.no_grad()
    def extract_mesh(self, resolution: int = 128, threshold: float | None = None) -> TriangleMesh:
        """A triangle mesh of the surface. Representations without a surface say so clearly."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot extract a mesh; use a representation with a surface "
            "(NeRF, DMTet or a mesh asset)."
        )
