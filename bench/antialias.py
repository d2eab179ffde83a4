"""Silhouette antialiasing of fine DMTets: accuracy, cost, and what it does to silhouette fitting.

``sphere`` (default): a DMTet sphere of radius 0.5 seen from distance 2 (fovy 45°, two views) at
several grid / image sizes; prints the total antialiased opacity against the projected disc's
closed-form area ``π R²`` (pixels), its derivative w.r.t. the radius against ``2 π R dR/dr``, and
the time of one :func:`silhouette_antialias` pass (forward, and forward + backward). A grid finer
than the pixels is the case the scanline search exists for (see ``ra3d/representations/antialias.py``).

``fit RUN_DIR``: converts each particle of a coarse run (e.g. ``outputs/demo/version_0``) to a
DMTet as ``configs/demo_fine.yaml`` does and fits it to its asset's opacity alone (Adam on the SDF
and deformation, 8 orbit views, nothing else), printing the silhouette IoU at the 4 validation
views every 20 steps: how far the silhouette gradients alone can take the fine stage.

    python bench/antialias.py
    python bench/antialias.py --cases 48:24 64:32 128:512
    python bench/antialias.py fit outputs/demo/version_0 --steps 100 --lr 0.02
"""

from __future__ import annotations

import argparse
import math
import time

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", choices=["sphere", "fit"], default="sphere")
    p.add_argument("run", nargs="?", help="fit: a coarse run folder or checkpoint")
    p.add_argument("--cases", nargs="+", default=["16:24", "48:24", "64:32", "96:32", "128:256"],
                   help="sphere: GRID:PIXELS pairs")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="sphere: timed repetitions (median)")
    p.add_argument("--grid", type=int, default=48, help="fit: DMTet grid (the demo's 48)")
    p.add_argument("--size", type=int, default=64, help="fit: training image size")
    p.add_argument("--steps", type=int, default=100, help="fit: Adam steps")
    p.add_argument("--lr", type=float, default=0.02, help="fit: Adam learning rate")
    return p.parse_args(argv)


def sphere(grid: int, size: int, repeats: int) -> dict:
    from ra3d.cameras import make_cameras
    from ra3d.representations.components.antialias import silhouette_antialias
    from ra3d.representations.dmtet import DMTet

    r, distance, fovy = 0.5, 2.0, 45.0
    model = DMTet(grid_resolution=grid, radius=1.0, background="solid", backend="torch",
                  random_background_prob=0.0).double().eval()  # fmt: skip
    with torch.no_grad():
        model.sdf.copy_(model.grid_vertices().norm(dim=-1) - r)
    e = torch.tensor([0.0, 35.0], dtype=torch.float64)
    a = torch.tensor([0.0, 120.0], dtype=torch.float64)
    one = torch.ones(2, dtype=torch.float64)
    cams = make_cameras(e, a, distance * one, fovy * one, size, size)
    total = model.render(cams).opacity.sum(dim=(1, 2, 3))
    (grad,) = torch.autograd.grad(total.sum(), model.sdf)
    focal = (size / 2) / math.tan(math.radians(fovy) / 2)
    x = r / distance
    disc = focal * x / math.sqrt(1 - x * x)
    d_disc = focal / distance / (1 - x * x) ** 1.5

    with torch.no_grad():
        vertices, faces = model.surface()
        homog = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
        clip = torch.einsum("bij,vj->bvi", cams.mvp(model.near, model.far), homog)
        frags = model.rasterizer.rasterize(clip, faces, size, size)
    hit = frags.mask[..., None].double()

    def forward() -> None:
        with torch.no_grad():
            silhouette_antialias([hit], clip, faces, frags.triangle_id)

    def backward() -> None:
        c = clip.detach().requires_grad_(True)
        (out,) = silhouette_antialias([hit], c, faces, frags.triangle_id)
        out.sum().backward()

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    return {
        "grid": grid, "px": size, "faces": int(faces.shape[0]),
        "area": float(total.mean()), "area_closed": math.pi * disc**2,
        "d_area_dr": -float(grad.sum()) / 2, "d_area_dr_closed": 2 * math.pi * disc * d_disc,
        "forward_s": timed(forward), "forward_backward_s": timed(backward),
    }  # fmt: skip


def fit(args: argparse.Namespace) -> None:
    from ra3d.cameras import orbit_cameras
    from ra3d.representations.dmtet import DMTet
    from ra3d.representations.metrics import silhouette_iou
    from ra3d.training.checkpoint import load_run

    torch.manual_seed(0)
    run = load_run(args.run)
    meshes = run.asset_meshes()
    val = orbit_cameras(4, 64, 64, elevation_deg=15.0, distance=2.0, fovy_deg=50.0)
    train = orbit_cameras(8, args.size, args.size, elevation_deg=15.0, distance=2.0, fovy_deg=50.0)
    for i, nerf in enumerate(run.particles):
        asset = meshes[run.assignment[i]].eval()
        fine = DMTet.from_nerf(nerf, threshold="silhouette", grid_resolution=args.grid,
                               copy_texture=False, backend="torch").eval()  # fmt: skip
        with torch.no_grad():
            ref_val, ref_train = asset.render(val).opacity, asset.render(train).opacity
        params = [p for p in (fine.sdf, fine.deformation) if p is not None]
        opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99), eps=1e-15)
        start = time.perf_counter()
        for step in range(args.steps + 1):
            if step % 20 == 0 or step == args.steps:
                with torch.no_grad():
                    iou = float(silhouette_iou(fine.render(val).opacity, ref_val).mean())
                print(f"particle {i} step {step:4d}  val IoU {iou:.4f}  "
                      f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
            if step == args.steps:
                break
            k = step % len(train)
            loss = ((fine.render(train[k : k + 1]).opacity - ref_train[k : k + 1]) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "fit":
        if not args.run:
            raise SystemExit(
                "fit needs a coarse run folder or checkpoint, e.g. outputs/demo/version_0"
            )
        fit(args)
        return 0
    print(
        "| grid / px | faces | area (px) | π R² | d(area)/dr | 2πR dR/dr | antialias fwd (s) | fwd+bwd (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        grid, size = (int(v) for v in case.split(":"))
        r = sphere(grid, size, args.repeats)
        print(f"| {grid} / {size} | {r['faces']} | {r['area']:.1f} | {r['area_closed']:.1f} | "
              f"{r['d_area_dr']:.0f} | {r['d_area_dr_closed']:.0f} | {r['forward_s']:.4f} | "
              f"{r['forward_backward_s']:.4f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
