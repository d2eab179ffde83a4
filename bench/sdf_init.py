"""NeRF → DMTet SDF initialisation: ``clamp`` (threestudio) against ``normalize`` (ra3d before).

Converts each particle of a coarse run (or, without one, a fresh blob-initialised NeRF shaped as
``configs/demo.yaml``'s, at ``threshold: auto``) to a DMTet both ways
(``init_options.sdf_init``, see :mod:`ra3d.representations.convert`) and prints, per particle and
scaling:

* the density level and, for ``normalize``, its divisor ``c`` (largest ``|threshold - σ|`` over
  the crossing cubes), from the conversion's log line (``DMTet from NeRF: ...``);
* the distribution of ``|s|`` at the *near-surface* vertices (the ends of the tetrahedron edges
  the surface crosses: the vertices whose sign decides the mesh) — 10/50/90th percentiles and the
  share at ±1;
* how many Adam steps a unit gradient pushing a near-surface vertex towards the other sign needs
  to flip it, simulated with ``torch.optim.Adam`` at the given learning rates (threestudio's
  geometry stage: Adam, lr 0.005, betas (0.9, 0.99), eps 1e-15; the demo's SDF lr 0.02).
  Adam's step is ≈ lr whatever the gradient's size, so this is ≈ ``|s| / lr``: the scaling, not
  the guidance's gradient magnitude, sets how fast normal SDS can move the surface;
* the silhouette IoU of the DMTet against the NeRF's own renders (``opacity > 0.5``, 8 orbit views),
  i.e. what clamping costs in initial shape (it moves crossings whose edge has an end with
  ``|threshold - σ| > 1``).

    python bench/sdf_init.py                          # a fresh blob NeRF, threshold auto, grid 48
    python bench/sdf_init.py outputs/demo/version_0   # a coarse run, threshold silhouette (demo_fine)
    python bench/sdf_init.py RUN --threshold 25 --grid 128   # fine_dmtet.yaml's conversion
"""

from __future__ import annotations

import argparse
import logging

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="a coarse run folder or checkpoint (default: blob NeRF)")
    p.add_argument("--threshold", default=None,
                   help="density level, 'auto' or 'silhouette' (default: silhouette for a run, "
                        "auto for the blob NeRF)")  # fmt: skip
    p.add_argument("--grid", type=int, default=48, help="DMTet grid (the demo's 48)")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.02], help="Adam lrs")
    p.add_argument("--max-steps", type=int, default=5000, help="cap of the flip simulation")
    p.add_argument("--size", type=int, default=64, help="silhouette IoU render size")
    return p.parse_args(argv)


def near_surface(dmtet) -> torch.Tensor:
    """``[K]`` indices of the vertices at the ends of tetrahedron edges with a sign change."""
    tets = dmtet.grid.tets.to(dmtet.sdf.device)  # [T, 4]
    inside = dmtet.sdf.detach() < 0
    ends = []
    for a in range(4):
        for b in range(a + 1, 4):
            i, j = tets[:, a], tets[:, b]
            cross = inside[i] != inside[j]
            ends += [i[cross], j[cross]]
    return torch.unique(torch.cat(ends))


def steps_to_flip(values: torch.Tensor, lr: float, max_steps: int) -> torch.Tensor:
    """``[K]`` Adam steps (betas (0.9, 0.99), eps 1e-15) until each value changes sign under a
    constant unit gradient pushing it towards zero; ``max_steps + 1`` where it never does."""
    x = torch.nn.Parameter(values.detach().double().clone())
    sign = torch.sign(x.detach())
    opt = torch.optim.Adam([x], lr=lr, betas=(0.9, 0.99), eps=1e-15)
    steps = torch.full_like(sign, float(max_steps + 1))
    for step in range(1, max_steps + 1):
        opt.zero_grad()
        x.grad = sign.clone()  # d(loss)/dx = sign(s0): descent moves s towards the other sign
        opt.step()
        flipped = (torch.sign(x.detach()) != sign) & (steps > max_steps)
        steps[flipped] = step
        if bool((steps <= max_steps).all()):
            break
    return steps


def percentiles(x: torch.Tensor, qs=(0.1, 0.5, 0.9)) -> list[float]:
    ordered = x.double().sort().values
    return [float(ordered[round(q * (len(ordered) - 1))]) for q in qs]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(name)s: %(message)s")
    logging.getLogger("ra3d.representations.convert").setLevel(logging.INFO)
    from ra3d.cameras import orbit_cameras
    from ra3d.representations.convert import SDF_INITS
    from ra3d.representations.dmtet import DMTet
    from ra3d.representations.metrics import silhouette_iou
    from ra3d.representations.nerf import InstantNGPNeRF

    torch.manual_seed(0)
    if args.run:
        from ra3d.training.checkpoint import load_run

        particles = list(load_run(args.run).particles)
        threshold = args.threshold or "silhouette"
    else:
        encoding = {"n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 14,
                    "base_resolution": 16, "per_level_scale": 1.447269237440378,
                    "backend": "torch"}  # fmt: skip
        particles = [InstantNGPNeRF(radius=1.0, hidden_dim=32, normal_type="none",
                                    encoding=encoding, random_background_prob=0.0)]  # fmt: skip
        threshold = args.threshold or "auto"
    try:
        threshold = float(threshold)
    except ValueError:
        pass
    cams = orbit_cameras(8, args.size, args.size, elevation_deg=20.0, distance=2.0, fovy_deg=50.0)
    header = (
        "| particle | sdf_init | near-surface vertices | abs(s) p10 / p50 / p90 | at ±1 | "
        + " | ".join(f"Adam steps to flip p10 / p50 / p90, lr {lr:g}" for lr in args.lrs)
        + " | IoU vs NeRF |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for k, nerf in enumerate(particles):
        nerf.eval()
        with torch.no_grad():
            reference = nerf.render(cams).opacity
        level = threshold
        for sdf_init in SDF_INITS:
            dmtet = DMTet.from_nerf(nerf, threshold=level, grid_resolution=args.grid,
                                   copy_texture=False, backend="torch", sdf_init=sdf_init,
                                   random_background_prob=0.0).eval()  # fmt: skip
            s = dmtet.sdf.detach()
            idx = near_surface(dmtet)
            near = s[idx].abs()
            cells = []
            for lr in args.lrs:
                steps = steps_to_flip(s[idx], lr, args.max_steps)
                cells.append(" / ".join(f"{v:.0f}" for v in percentiles(steps)))
            with torch.no_grad():
                iou = float(silhouette_iou(dmtet.render(cams).opacity, reference).mean())
            p = " / ".join(f"{v:.3f}" for v in percentiles(near))
            at_one = float((near >= 1.0 - 1e-6).double().mean())
            print(f"| {k} | {sdf_init} | {len(idx)} | {p} | {at_one:.2f} | "
                  + " | ".join(cells) + f" | {iou:.4f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
