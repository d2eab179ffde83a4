"""``ra3d adapt``: the lightweight adaptation of Eq. 12 as a command.

    ra3d adapt --prompt "a teddy bear"                  # retrieve 3 assets, adapt the tiny prior
    ra3d adapt --assets chair.glb --captions "a chair" --prior stabilityai/stable-diffusion-2-1-base
    ra3d adapt --prompt "a sofa" -k 2 --steps 500 --out sofa_view.safetensors

Assets come from the asset database (``--prompt``, the retrieval of Sec. 4.4) or from the user's
own meshes (``--assets``). The adapter is trained once per (prior, assets, captions, settings)
into ra3d's cache and copied to ``--out``; a second identical call reuses it. Use the result in a
fit with ``--model.guidance.init_args.view_adapter_path <file>``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ra3d.errors import ConfigError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ra3d adapt",
        description="Adapt the 2D prior to retrieved (or your own) 3D assets with a LoRA adapter "
        "trained on ~100 view-captioned renders per asset (paper Sec. 4.2, Eq. 12).",
    )
    p.add_argument("--prompt", default=None, help="retrieve assets for this prompt")
    p.add_argument(
        "--assets", nargs="+", type=Path, default=None, metavar="MESH",
        help="your own meshes (.obj .glb .gltf .ply .stl .off) instead of retrieval",
    )  # fmt: skip
    p.add_argument(
        "--captions", nargs="+", default=None, metavar="TEXT",
        help="one caption per --assets mesh (default: the prompt, else the file name)",
    )  # fmt: skip
    p.add_argument(
        "--front-azimuth", nargs="+", type=float, default=None, metavar="DEG",
        help="per --assets mesh: the azimuth its front faces (default 0 = +X, ra3d's front)",
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
    p.add_argument("--views", type=int, default=100, help="renders per asset (100)")
    p.add_argument("--steps", type=int, default=500, help="training steps (500)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (1e-4)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (4)")
    p.add_argument("--batch-size", type=int, default=4, help="renders per step (4)")
    p.add_argument("--seed", type=int, default=0, help="seed of views split, t and noise (0)")
    p.add_argument(
        "--render-size", type=int, default=None,
        help="render resolution in pixels (default: the prior's native resolution)",
    )  # fmt: skip
    p.add_argument(
        "--shading", choices=("albedo", "lambertian"), default="albedo",
        help="asset render shading (lambertian gives untextured assets visible shape)",
    )  # fmt: skip
    p.add_argument("--radius", type=float, default=0.5, help="asset normalisation radius (0.5)")
    p.add_argument("--db", type=Path, default=None, help="asset database folder (starter library)")
    p.add_argument(
        "--embedder", choices=("auto", "clip", "minilm"), default="auto",
        help="retrieval embedder (auto: CLIP if its weights are here, else MiniLM)",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--dtype", default="float32", help="prior precision: float32/float16/bfloat16")
    p.add_argument("--no-cache", action="store_true", help="train even if a cached adapter exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _user_assets(args: argparse.Namespace) -> list[tuple[Path, str, float]]:
    paths: list[Path] = args.assets
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"mesh file not found: {path}. Pass existing files to --assets")
    captions = args.captions
    if captions is None:
        captions = [args.prompt or p.stem.replace("_", " ").replace("-", " ") for p in paths]
    if len(captions) != len(paths):
        raise ConfigError(
            f"--captions gives {len(captions)} caption(s) for {len(paths)} mesh(es); give one "
            "per mesh, in the same order"
        )
    azimuths = args.front_azimuth or [0.0] * len(paths)
    if len(azimuths) != len(paths):
        raise ConfigError(
            f"--front-azimuth gives {len(azimuths)} value(s) for {len(paths)} mesh(es); give one "
            "per mesh"
        )
    return [(p, c, float(a)) for p, c, a in zip(paths, captions, azimuths, strict=True)]


def _retrieved_assets(args: argparse.Namespace) -> list[tuple[Path, str, float]]:
    from ra3d.retrieval.search import TwoStageRetriever

    retriever = TwoStageRetriever(
        database=args.db, embedder=args.embedder, device=args.device or "cpu"
    )
    found = retriever.retrieve(args.prompt, k=args.k)
    for asset in found:
        logger.info("retrieved %s: %s (score %.3f)", asset.uid, asset.caption, asset.score)
    return [(Path(a.mesh_path), a.caption, float(a.front_azimuth_deg)) for a in found]


def main_adapt(argv: list[str]) -> int:
    """Entry point of ``ra3d adapt``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError('the prompt is empty: pass one with --prompt "a teddy bear"')
    if args.prompt is None and not args.assets:
        raise ConfigError(
            'nothing to adapt on: pass --prompt "a teddy bear" (retrieve assets) or '
            "--assets mesh.glb (your own meshes)"
        )
    if args.captions is not None and not args.assets:
        raise ConfigError("--captions goes with --assets (retrieved assets bring their captions)")
    for flag, value in (
        ("-k", args.k),
        ("--views", args.views),
        ("--steps", args.steps),
        ("--rank", args.rank),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if not args.lr > 0 or args.lr == float("inf"):
        raise ConfigError(f"--lr must be a positive finite number, got {args.lr}")
    if args.out is not None and args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {args.out}")
    if not args.radius > 0:
        raise ConfigError(f"--radius must be > 0, got {args.radius}")

    from ra3d.guidance.adaptation import (
        AdaptationSettings,
        adapt_prior,
        asset_fingerprint,
        cached_adapt,
        sidecar_path,
    )

    settings = AdaptationSettings(
        n_views=args.views,
        steps=args.steps,
        lr=args.lr,
        rank=args.rank,
        batch_size=args.batch_size,
        seed=args.seed,
        render_size=args.render_size,
        shading=args.shading,
    )  # validates before anything heavy is loaded
    specs = _user_assets(args) if args.assets else _retrieved_assets(args)

    from ra3d.guidance.prior import DiffusionPrior
    from ra3d.representations.mesh import MeshAsset, MeshLoadError

    prior = DiffusionPrior(args.prior, dtype=args.dtype, device=args.device)
    assets, fingerprints = [], []
    for path, caption, azimuth in specs:
        try:
            mesh = MeshAsset(path, front_azimuth_deg=azimuth, radius=args.radius)
        except MeshLoadError as err:
            raise ConfigError(f"cannot read mesh {path}: {err}") from err
        assets.append((mesh.to(prior.device), caption))
        fingerprints.append(asset_fingerprint(path, azimuth, args.radius))
    progress = not args.no_progress
    if args.no_cache:
        out = args.out or Path("adapter.safetensors")
        result = adapt_prior(prior, assets, settings, out, progress, fingerprints)
    else:
        result = cached_adapt(prior, assets, fingerprints, settings, progress=progress)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(result.path, args.out)
            shutil.copyfile(sidecar_path(result.path), sidecar_path(args.out))
            result.path = args.out
    before, after = result.heldout_loss_before, result.heldout_loss_after
    print(f"view adapter: {result.path}")
    if before is not None and after is not None:
        print(f"held-out diffusion loss: {before:.4f} before, {after:.4f} after adaptation")
    print(f"use it: ra3d fit ... --model.guidance.init_args.view_adapter_path {result.path}")
    return 0
