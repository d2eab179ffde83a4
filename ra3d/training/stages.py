"""Stages of the coarse-to-fine workflow: a run initialised from an earlier run's checkpoint.

ProlificDreamer (and the paper, which builds on it) runs a coarse NeRF stage, then refines a DMTet
mesh initialised from it: first its geometry (the guidance sees normal maps), then its texture
(the guidance sees colour, the geometry fixed). ``model.init_from`` names the earlier stage's
checkpoint; the new run inherits its prompt, its retrieved assets and π, its view adapter ω and,
when both runs use VSD, its LoRA score model ζ — it never retrieves again. Each particle is
converted from the earlier particle of the same index: NeRF → DMTet by the density level set
(:meth:`ra3d.representations.dmtet.DMTet.create_from`), DMTet → DMTet by copying its state.

Where this differs from threestudio's ProlificDreamer stages (kept, or followed, on purpose):

* Texture field. threestudio's geometry stage is geometry-only and its texture stage starts a
  fresh texture field. ra3d's NeRF → DMTet hand-over copies the NeRF's texture field by default
  (``init_options.copy_texture``, see :class:`~ra3d.representations.convert.ConversionOptions`)
  and the texture phase takes the geometry phase's field with its state. With
  ``copy_texture: false`` the geometry phase gets a freshly initialised field that normal-map
  guidance never trains, so the texture phase starts fresh, as in threestudio.
* Background. threestudio's texture stage keeps its neural environment map with random
  backgrounds off (``random_aug`` false; they exist in the coarse stage so that density does not
  paint the background, which a fixed geometry cannot do). The texture configs follow it with the
  representation's ``random_background_prob: 0`` (the DMTet's own default stays the NeRF's 0.5).
* SDF. The hand-over clamps ``threshold − σ`` to ``[−1, 1]`` as threestudio does
  (``init_options.sdf_init``; ``bench/sdf_init.py`` measures the alternative).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ra3d.errors import ConfigError
from ra3d.representations.base import RenderOutput, Representation
from ra3d.representations.convert import ConversionOptions
from ra3d.training.checkpoint import RunRecord, build_particles, read_checkpoint
from ra3d.training.checks import check_same_particles, check_same_prompt

logger = logging.getLogger(__name__)

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
    target_cls: type[Representation],
    init_args: dict[str, Any],
    options: ConversionOptions | None = None,
) -> Representation:
    """``source`` (an earlier stage's particle) as a ``target_cls`` particle, through the target's
    declared :meth:`~ra3d.representations.base.Representation.create_from`."""
    return target_cls.create_from(source, init_args, options)


def inherit(
    path: str | Path,
    n_particles: int,
    prompt: str | None,
    target_cls: type,
    init_args: dict[str, Any],
    options: ConversionOptions | None = None,
) -> Inherited:
    """Read the earlier stage (``path``) and convert its particles (see the module docstring)."""
    record, state, file = read_checkpoint(path)
    check_same_particles(file, record.n_particles, n_particles)
    check_same_prompt(file, record.prompt, prompt, later_stage=True)
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
