"""``ra3d retrieve``: search the asset database for a prompt (paper Sec. 4.4).

    ra3d retrieve "a teddy bear" -k 3
    ra3d retrieve "a wooden chair" -k 5 --json
    ra3d retrieve "a sofa" --embedder clip --clip-pretrained /models/vit-l-14.safetensors \\
        --save-previews previews/

Offline it works out of the box: ``--embedder auto`` uses CLIP ViT-L/14 when its weights are on
this machine and otherwise the bundled MiniLM text embedder, and the shipped starter library is
the default database.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ra3d.retrieval.base import RetrievedAsset

logger = logging.getLogger(__name__)

MAX_VIEWS = 360  # azimuths per asset for rerank/alignment: one per degree is already plenty
MAX_PREVIEW_SIZE = 4096  # pixels per preview tile


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ra3d retrieve",
        description="Retrieve the 3D assets closest to a text prompt: caption search (top N'), "
        "image rerank (top k) and frontal alignment, as in the paper's Sec. 4.4.",
    )
    p.add_argument("prompt", help='text prompt, e.g. "a teddy bear"')
    p.add_argument(
        "-k", "--top-k", dest="k", type=int, default=3, help="assets to return (N; default 3)"
    )
    p.add_argument(
        "--candidates", type=int, default=16,
        help="caption matches passed to the image rerank (N' > N; default 16)",
    )  # fmt: skip
    p.add_argument(
        "--embedder", choices=("auto", "clip", "minilm"), default="auto",
        help="auto: CLIP if its weights are on this machine, else the offline MiniLM text embedder",
    )  # fmt: skip
    p.add_argument(
        "--clip-model", default="ViT-L-14", help="open_clip model name or local-dir:PATH"
    )
    p.add_argument(
        "--clip-pretrained", default="openai",
        help="open_clip pretrained tag or a local checkpoint file (/path/to/open_clip_model.safetensors)",
    )  # fmt: skip
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        help="asset database folder (default: $RA3D_DATABASE or the starter library)",
    )
    p.add_argument(
        "--index",
        type=Path,
        default=None,
        help="prebuilt caption index folder (default: cached per database)",
    )
    p.add_argument("--index-kind", choices=("auto", "exact", "scann"), default="auto")
    p.add_argument(
        "--licenses", default=None, metavar="SPDX[,SPDX...]",
        help="only assets under these licences, e.g. CC0-1.0,CC-BY-4.0 (a family such as CC-BY "
        "accepts every version); applied before any mesh is fetched",
    )  # fmt: skip
    p.add_argument(
        "--mirror", type=Path, default=None, metavar="DIR",
        help="take Objaverse meshes from this local copy (DIR/glbs/<group>/<uid>.glb) instead of "
        "the one recorded with the database or downloading them",
    )  # fmt: skip
    p.add_argument("--no-rerank", action="store_true", help="rank by caption similarity only")
    p.add_argument("--no-align", action="store_true", help="skip frontal alignment")
    p.add_argument(
        "--views", type=int, default=8, help="azimuths rendered for rerank/alignment (K)"
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument(
        "--rebuild", action="store_true", help="rebuild the cached index and view embeddings"
    )
    p.add_argument("--json", action="store_true", help="print results as JSON (for scripts)")
    p.add_argument(
        "--save-previews", type=Path, default=None, metavar="DIR",
        help="save a PNG strip of each aligned asset (front, left, back, right) into DIR",
    )  # fmt: skip
    p.add_argument("--preview-size", type=int, default=256, help="preview image size in pixels")
    return p


def asset_to_json(rank: int, asset: RetrievedAsset) -> dict:
    return {
        "rank": rank,
        "uid": asset.uid,
        "caption": asset.caption,
        "score": round(float(asset.score), 6),
        "path": str(asset.mesh_path),
        "front_azimuth_deg": asset.front_azimuth_deg,
        "source": asset.source,
        "license": asset.license,
        "attribution": asset.attribution,
        "extras": asset.extras,
    }


def format_table(results: list[RetrievedAsset]) -> str:
    """A plain-text table: rank, uid, caption, score, path."""
    rows = [("rank", "uid", "caption", "score", "path")]
    for i, a in enumerate(results, 1):
        caption = a.caption if len(a.caption) <= 60 else a.caption[:57] + "..."
        rows.append((str(i), a.uid, caption, f"{a.score:.4f}", str(a.mesh_path)))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [
        "  ".join(
            [
                r[0].rjust(widths[0]),
                r[1].ljust(widths[1]),
                r[2].ljust(widths[2]),
                r[3].rjust(widths[3]),
                r[4],
            ]
        )
        for r in rows
    ]
    return "\n".join(lines)


def save_previews(
    results: list[RetrievedAsset], folder: Path, size: int, device: str
) -> list[Path]:
    """Render each aligned asset from azimuths 0/90/180/270 and save one PNG strip per asset."""
    import numpy as np

    from ra3d.cameras import orbit_cameras
    from ra3d.io import write_image_atomic
    from ra3d.representations.mesh import MeshAsset

    folder.mkdir(parents=True, exist_ok=True)
    cams = orbit_cameras(4, size, size, elevation_deg=15.0, distance=2.0, fovy_deg=40.0)
    paths = []
    for rank, asset in enumerate(results, 1):
        mesh = MeshAsset.from_retrieved(asset, shading="lambertian").to(device)
        rgb = mesh.render(cams).rgb.detach().cpu()  # [4, H, W, 3]
        strip = (rgb.permute(1, 0, 2, 3).reshape(size, 4 * size, 3).numpy() * 255).round()
        path = folder / f"{rank:02d}_{asset.uid}.png"
        paths.append(write_image_atomic(strip.astype(np.uint8), path))
    return paths


def main_retrieve(argv: list[str]) -> int:
    """Entry point of ``ra3d retrieve``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.prompt.strip():  # before the ~3 s of torch/embedder imports
        parser.error('the prompt is empty; give a text such as "a teddy bear"')
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    if args.candidates < 1:
        parser.error(f"--candidates must be >= 1, got {args.candidates}")
    if not 2 <= args.views <= MAX_VIEWS:
        parser.error(f"--views must be in [2, {MAX_VIEWS}], got {args.views}")
    if not 16 <= args.preview_size <= MAX_PREVIEW_SIZE:
        parser.error(f"--preview-size must be in [16, {MAX_PREVIEW_SIZE}], got {args.preview_size}")

    from ra3d.retrieval.search import TwoStageRetriever

    fetcher = None
    if args.mirror is not None:
        from ra3d.retrieval.fetch import MirrorFetcher

        fetcher = MirrorFetcher(args.mirror)
    licenses = None
    if args.licenses is not None:
        from ra3d.retrieval.licenses import LicenseFilter

        licenses = list(LicenseFilter.parse(args.licenses).allowed)  # type: ignore[union-attr]

    t0 = time.perf_counter()
    retriever = TwoStageRetriever(
        database=args.db,
        embedder=args.embedder,
        n_candidates=args.candidates,
        rerank=not args.no_rerank,
        align=not args.no_align,
        index_kind=args.index_kind,
        index_path=args.index,
        n_views=args.views,
        clip_model=args.clip_model,
        clip_pretrained=args.clip_pretrained,
        device=args.device,
        fetcher=fetcher,
        licenses=licenses,
    )
    if args.rebuild:
        retriever.clear_cache()
    results = retriever.retrieve(args.prompt, k=args.k)
    if len(results) < args.k:
        logger.warning(
            "-k %d asked for more assets than the database holds: it has %d, all returned",
            args.k, len(retriever.database),
        )  # fmt: skip
    logger.info(
        "retrieved %d of %d assets in %.2f s with %s",
        len(results), len(retriever.database), time.perf_counter() - t0, retriever.embedder.id,
    )  # fmt: skip
    previews: list[Path] = []
    if args.save_previews is not None:
        previews = save_previews(results, args.save_previews, args.preview_size, args.device)
    if args.json:
        out = [asset_to_json(i, a) for i, a in enumerate(results, 1)]
        for item, path in zip(out, previews, strict=False):
            item["preview"] = str(path)
        print(json.dumps(out, indent=2))
    else:
        print(format_table(results))
        for path in previews:
            print(f"preview: {path}")
    return 0
