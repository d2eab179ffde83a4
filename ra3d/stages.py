"""Stages of the coarse-to-fine workflow: a run initialised from an earlier run's checkpoint.

ProlificDreamer (and the paper, which builds on it) runs a coarse NeRF stage, then refines a DMTet
mesh initialised from it: first its geometry (the guidance sees normal maps), then its texture
(the guidance sees colour, the geometry fixed). ``model.init_from`` names the earlier stage's
checkpoint; the new run inherits its prompt, its retrieved assets and π, its view adapter ω and,
when both runs use VSD, its LoRA score model ζ — it never retrieves again. Each particle is
converted from the earlier particle of the same index: NeRF → DMTet by the density level set
(:meth:`ra3d.representations.dmtet.DMTet.from_nerf`), DMTet → DMTet by copying its state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ra3d.checkpoint import RunRecord, build_particles, read_checkpoint
from ra3d.errors import CheckpointError, ConfigError
from ra3d.representations.base import RenderOutput, Representation

logger = logging.getLogger("ra3d.stages")

#: What the guidance scores: the colour render, or the normal map (geometry refinement).
GUIDE_ON: tuple[str, ...] = ("rgb", "normal")


@dataclass
class Inherited:
    """What a run takes over from the checkpoint of an earlier stage."""

    path: Path
    record: RunRecord
    particles: list[Representation]
    guidance_state: dict[str, Tensor]


def convert_particle(
    source: Representation,
    target_cls: type,
    init_args: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> Representation:
    """``source`` (an earlier stage's particle) as a ``target_cls`` particle; ``options`` go to the
    conversion (``from_nerf``: ``threshold``, ``margin``, ``remove_floaters``, ``copy_texture``)."""
    if isinstance(source, target_cls):
        particle = target_cls(**init_args)
        try:
            particle.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as err:
            raise CheckpointError(
                f"the earlier {target_cls.__name__} does not fit this config's "
                f"({str(err).splitlines()[0]}); use the same grid/encoding settings"
            ) from err
        return particle
    from_nerf = getattr(target_cls, "from_nerf", None)
    if from_nerf is not None and hasattr(source, "density") and hasattr(source, "radius"):
        # The conversion places the grid itself (the NeRF's radius, a box tightened around it).
        kwargs = {k: v for k, v in init_args.items() if k not in ("radius", "bbox")}
        return from_nerf(source, **kwargs, **(options or {}))
    raise CheckpointError(
        f"cannot initialise a {target_cls.__name__} from a {type(source).__name__} checkpoint; "
        "init_from takes a coarse NeRF checkpoint (or a DMTet one for the texture phase)"
    )


def inherit(
    path: str | Path,
    n_particles: int,
    prompt: str | None,
    target_cls: type,
    init_args: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> Inherited:
    """Read the earlier stage (``path``) and convert its particles (see the module docstring)."""
    record, state, file = read_checkpoint(path)
    if record.n_particles != n_particles:
        raise CheckpointError(
            f"{file} has {record.n_particles} particle(s) but this config asks for {n_particles}; "
            f"set model.n_particles {record.n_particles}"
        )
    if prompt is not None and prompt.strip() and prompt.strip() != record.prompt:
        raise ConfigError(
            f"{file} was trained for {record.prompt!r}, not {prompt.strip()!r}; a later stage keeps "
            "the earlier stage's prompt (leave --prompt out)"
        )
    sources = build_particles(record, state)
    particles = []
    for i, source in enumerate(sources):
        particle = convert_particle(source, target_cls, init_args, options)
        logger.info(
            "particle %d: %s → %s from %s", i, type(source).__name__, target_cls.__name__, file
        )
        particles.append(particle)
    guidance_state = {
        k[len("guidance.") :]: v for k, v in state.items() if k.startswith("guidance.")
    }
    return Inherited(path=file, record=record, particles=particles, guidance_state=guidance_state)


def load_matching(module: nn.Module, state: dict[str, Tensor]) -> int:
    """Copy the entries of ``state`` whose names and shapes ``module`` has (e.g. ζ from the coarse
    run into the fine run's VSD); returns how many tensors were copied."""
    own = module.state_dict()
    matching = {
        k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)
    }
    if matching:
        module.load_state_dict(matching, strict=False)
    return len(matching)


def guidance_image(output: RenderOutput, guide_on: str) -> Tensor:
    """``[B, H, W, 3]`` what the 2D prior scores: the colour render, or the normal map encoded as
    colour ``(n + 1) / 2`` on black (threestudio's geometry stage)."""
    if guide_on == "rgb":
        return output.rgb
    if guide_on == "normal":
        if output.normal is None:
            raise ConfigError(
                "guide_on: normal needs a representation that renders normals (DMTet, or a NeRF "
                "with normal_type set)"
            )
        return (output.normal + 1.0) * 0.5 * output.opacity
    raise ConfigError(f"guide_on must be one of {GUIDE_ON}, got {guide_on!r}")


__all__ = [
    "GUIDE_ON",
    "Inherited",
    "convert_particle",
    "guidance_image",
    "inherit",
    "load_matching",
]
