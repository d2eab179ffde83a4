"""Fine-stage (DMTet) timings: marching tetrahedra, rasterisation, one render + backward.

For each grid resolution (cubes per side) a fresh subprocess builds a DMTet whose SDF is a sphere
of radius 0.6 in the box ``[-0.8, 0.8]^3`` (the object fills the grid, as after
``DMTet.from_nerf``), with ProlificDreamer's hash-grid texture field, and measures

* ``march``: :meth:`DMTet.surface` (deformed vertices + marching tetrahedra), forward only;
* ``raster``: :meth:`Rasterizer.rasterize` of that mesh for one view at each image size;
* ``step``: ``render`` + ``backward`` of a loss on rgb, opacity, depth and normals for one view
  (what a fine-stage step costs without the diffusion prior);
* ``peak``: the subprocess's peak resident memory (``ru_maxrss``) on CPU, or
  ``torch.cuda.max_memory_allocated`` on CUDA.

    python bench/dmtet.py                               # grids 64 128 256, sizes 64 256 512, CPU
    python bench/dmtet.py --grids 64 --sizes 64 --repeats 1
    python bench/dmtet.py --device cuda --backends torch nvdiffrast
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="+", default=["auto"], help="rasteriser backends")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (caches, kernels)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run_one(grid: int, args: argparse.Namespace) -> dict:
    from ra3d.cameras import make_cameras
    from ra3d.representations.dmtet import DMTet

    device = args.device
    model = DMTet(grid_resolution=grid, radius=1.0, bbox=[[-0.8] * 3, [0.8] * 3],
                  backend=args.backend, random_background_prob=0.0).to(device)  # fmt: skip
    with torch.no_grad():
        model.sdf.copy_(model.grid_vertices().norm(dim=-1) - 0.6)
    result: dict = {"grid": grid, "device": device, "backend": args.backend}
    with torch.no_grad():
        result["march_s"] = _timed(model.surface, device, args.repeats)
        vertices, faces = model.surface()
    result["faces"] = int(faces.shape[0])
    one = torch.ones(1)
    for size in args.sizes:
        cams = make_cameras(20 * one, 30 * one, 2.0 * one, 45 * one, size, size).to(device)
        with torch.no_grad():
            mvp = cams.mvp(model.near, model.far)
            homog = torch.cat([vertices, torch.ones_like(vertices[:, :1])], dim=-1)
            clip = torch.einsum("bij,vj->bvi", mvp, homog)
            raster = _timed(
                lambda c=clip, s=size: model.rasterizer.rasterize(c, faces, s, s),
                device,
                args.repeats,
            )

        def step(cams=cams) -> None:
            model.zero_grad(set_to_none=True)
            out = model.render(cams)
            loss = out.rgb.mean() + out.opacity.mean() + out.depth.mean() + out.normal.mean()
            loss.backward()

        result[f"raster_{size}_s"] = raster
        result[f"step_{size}_s"] = _timed(step, device, args.repeats)
    if device.startswith("cuda"):
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args)))
        return 0
    rows = []
    for backend in args.backends:
        for grid in args.grids:
            cmd = [sys.executable, __file__, "--one", str(grid), "--device", args.device,
                   "--backend", backend, "--repeats", str(args.repeats),
                   "--sizes", *map(str, args.sizes)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"grid {grid} ({backend}) failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    header = ["backend", "grid", "faces", "march (s)"]
    for size in args.sizes:
        header += [f"raster {size}px (s)", f"render+backward {size}px (s)"]
    header.append("peak (MB)")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        cells = [r["backend"], str(r["grid"]), str(r["faces"]), f"{r['march_s']:.3f}"]
        for size in args.sizes:
            cells += [f"{r[f'raster_{size}_s']:.3f}", f"{r[f'step_{size}_s']:.3f}"]
        cells.append(f"{r['peak_mb']:.0f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
