"""``ra3d evaluate``: the paper's 3D-consistency metric (Fig. 9), CLIP score and asset fidelity.

    ra3d evaluate outputs/demo/version_0
    ra3d evaluate outputs/with_asset/version_0 outputs/no_asset/version_0 --out eval_compare
    ra3d evaluate RUN --clip-model ViT-L-14 --clip-pretrained /models/open_clip_model.safetensors

Each run's files go to ``<run>/eval/`` (see :mod:`ra3d.evaluation.report`); with several runs the
overlaid plots and the side-by-side table go to ``--out``. The summary table is printed.

Offline without the default CLIP's weights the CLIP metrics cannot be computed: the command says
so and still computes and writes the asset fidelity. A CLIP asked for with ``--clip-model`` or
``--clip-pretrained`` that cannot be loaded — missing, not downloadable here, or a file open_clip
cannot read — is an error (exit 2, one line), like a folder that is not a run or a checkpoint
without particles.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_COMPARE_DIR = Path("eval_compare")
#: The paper's CLIP (ra3d.retrieval.embed.DEFAULT_CLIP_MODEL / _PRETRAINED; spelled out so that
#: ``--help`` does not import torch).
DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED = "ViT-L-14", "openai"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ra3d evaluate",
        description="Evaluate runs: relative CLIP similarity to front/side/back view prompts vs "
        "azimuth (paper Sec. 5.2, Fig. 9), CLIP score against the prompt, and fidelity of each "
        "particle to its retrieved asset (silhouette IoU, foreground PSNR, Chamfer distance).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR|CKPT", help="run folders or checkpoints")
    p.add_argument("--elevation", type=float, default=0.0, help="orbit elevation in degrees (0)")
    p.add_argument("--n-azimuths", type=int, default=36, help="azimuths on the orbit (36)")
    p.add_argument("--size", type=int, default=224, help="render size in pixels (224)")
    p.add_argument(
        "--distance", type=float, default=None,
        help="camera distance (default: the run's data.eval_camera_distance, else 1.5)",
    )  # fmt: skip
    p.add_argument(
        "--fovy", type=float, default=None,
        help="vertical field of view in degrees (default: the run's data.eval_fovy_deg, else 70)",
    )  # fmt: skip
    p.add_argument(
        "--background", choices=("render", "white"), default="render",
        help="score renders as rendered (learned background) or composited on white",
    )  # fmt: skip
    p.add_argument(
        "--clip-model", default=None,
        help=f"open_clip model name, or local-dir:FOLDER ({DEFAULT_CLIP_MODEL} as the paper)",
    )  # fmt: skip
    p.add_argument(
        "--clip-pretrained", default=None,
        help=f"open_clip pretrained tag or a local weights file ({DEFAULT_CLIP_PRETRAINED})",
    )  # fmt: skip
    p.add_argument("--no-clip", action="store_true", help="skip the CLIP metrics")
    p.add_argument(
        "--mesh-resolution", type=int, default=128,
        help="grid resolution of the particle surface for the Chamfer distance (128)",
    )  # fmt: skip
    p.add_argument(
        "--mesh-threshold", type=float, default=None,
        help="density iso-level of the particle surface (default: the representation's, 25)",
    )  # fmt: skip
    p.add_argument(
        "--chamfer-points", type=int, default=20000, help="surface samples per mesh (20000)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="views rendered per call (4)")
    p.add_argument(
        "--out", type=Path, default=None,
        help=f"folder of the comparison of several runs (default ./{DEFAULT_COMPARE_DIR}/)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    return p


def _unique_labels(results: list[Any]) -> None:
    seen: dict[str, int] = {}
    for result in results:
        n = seen.get(result.label, 0)
        seen[result.label] = n + 1
        if n:
            result.label = f"{result.label} ({n + 1})"


def main_evaluate(argv: list[str]) -> int:
    """Entry point of ``ra3d evaluate``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from ra3d.errors import Ra3dError

    try:
        return _run(args)
    except Ra3dError as err:
        print(f"ra3d evaluate: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from ra3d.errors import Ra3dError
    from ra3d.evaluation.report import summary_markdown, write_comparison, write_run_report
    from ra3d.evaluation.run import EvalSettings, evaluate_run
    from ra3d.training.checkpoint import load_run

    settings = EvalSettings(
        elevation_deg=args.elevation,
        n_azimuths=args.n_azimuths,
        size=args.size,
        distance=args.distance,
        fovy_deg=args.fovy,
        background=args.background,
        batch_size=args.batch_size,
        mesh_resolution=args.mesh_resolution,
        mesh_threshold=args.mesh_threshold,
        chamfer_points=args.chamfer_points,
    )
    runs = [load_run(path, device=args.device) for path in args.runs]  # every input checked first
    for path, run in zip(args.runs, runs, strict=True):
        if not run.particles:
            raise Ra3dError(
                f"{path}: the checkpoint holds no particles; evaluate a checkpoint written by "
                "ra3d fit"
            )
    embedder, why_not = None, "skipped (--no-clip)"
    if not args.no_clip:
        from ra3d.evaluation.clip import load_clip

        asked = args.clip_model is not None or args.clip_pretrained is not None
        model = args.clip_model if args.clip_model is not None else DEFAULT_CLIP_MODEL
        pretrained = args.clip_pretrained
        if pretrained is None:
            pretrained = DEFAULT_CLIP_PRETRAINED
        embedder, why_not = load_clip(model, pretrained, args.device, required=asked)
    if embedder is None and not any(run.assets for run in runs):
        raise Ra3dError(
            f"nothing to evaluate: the CLIP metrics are unavailable ({why_not}) and no run has "
            "retrieved assets for the asset-fidelity metrics"
        )
    if embedder is None:
        print(f"ra3d evaluate: CLIP metrics (relative view similarity, CLIP score) not "
              f"computed: {why_not}. Asset fidelity is computed.", file=sys.stderr)  # fmt: skip
    results = [evaluate_run(run, settings, embedder, why_not) for run in runs]
    _unique_labels(results)
    for result in results:
        files = write_run_report(result)
        logger.info("%s: wrote %s", result.label, ", ".join(str(f) for f in files.values()))
        for note in (n for p in result.particles for n in p.notes):
            print(f"ra3d evaluate: {result.label}: {note}", file=sys.stderr)
    if len(results) > 1:
        out = args.out if args.out is not None else DEFAULT_COMPARE_DIR
        files = write_comparison(results, out)
        logger.info("comparison: wrote %s", ", ".join(str(f) for f in files.values()))
    print(summary_markdown(results), end="")
    return 0
