"""Benchmark textured mesh export: decimation, xatlas unwrap, UV-space bake and file writing.

Input meshes are surface-nets level sets (what ``extract_mesh`` gives) of a bumpy analytic
density, at grid sizes chosen so the meshes have about 10k, 50k and 200k faces, plus the
grid-256 surface of the issue; the texture field is an analytic function of position (so the
bake time is the rasterisation and gather, not a NeRF's MLP). Each configuration runs with
decimation (to a quarter of the faces, or ``--max-faces``) and without. Prints a markdown table;
``--json PATH`` also writes the rows.

Examples::

    python bench/export.py
    python bench/export.py --grids 64 --texture-sizes 1024 --json export.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ra3d.export.bake import (
    UVMesh,
    bake_albedo,
    decimate,
    fast_simplification_available,
    seam_padding,
    unwrap,
)
from ra3d.export.write import world_to_file, write_glb, write_obj
from ra3d.representations.components.volume import surface_nets

# Grid sizes whose bumpy-sphere surface has ~10k, ~50k and ~200k faces (grid 256: ~230k).
DEFAULT_GRIDS = (54, 120, 240)


def bumpy_density(grid: int) -> np.ndarray:
    """``[grid]^3`` density of a sphere of radius 0.6 with +-0.06 bumps, on [-1, 1]^3."""
    axis = np.linspace(-1.0, 1.0, grid)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    bumps = 0.06 * np.sin(7 * x) * np.sin(7 * y) * np.sin(7 * z)
    return 50.0 * (0.6 + bumps - r) + 25.0  # the level 25 is the surface


def albedo(points: torch.Tensor) -> torch.Tensor:
    x, y, z = points.unbind(-1)
    return torch.stack(
        [0.5 + 0.4 * torch.sin(9 * x), 0.5 + 0.4 * torch.cos(7 * y), 0.5 + 0.4 * torch.sin(5 * z)],
        -1,
    )


def surface(grid: int) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = surface_nets(bumpy_density(grid), 25.0)
    return (vertices * (2.0 / (grid - 1)) - 1.0).astype(np.float32), faces.astype(np.int64)


def run_one(
    vertices: np.ndarray, faces: np.ndarray, size: int, max_faces: int | None, out: Path
) -> dict[str, Any]:
    row: dict[str, Any] = {"faces_in": len(faces), "texture": size}
    t0 = time.perf_counter()
    if max_faces is not None:
        vertices, faces = decimate(vertices, faces, max_faces)
    row["faces_out"] = len(faces)
    t1 = time.perf_counter()
    mesh = unwrap(vertices, faces, size, seam_padding(size))
    t2 = time.perf_counter()
    texture = bake_albedo(albedo, mesh, size, margin=seam_padding(size))
    t3 = time.perf_counter()
    file_mesh = UVMesh(world_to_file(mesh.vertices), mesh.faces, mesh.uvs)
    write_glb(out, "bench", file_mesh, texture, {"bench": True})
    write_obj(out, "bench", file_mesh, texture)
    t4 = time.perf_counter()
    row.update(
        decimate_s=t1 - t0, unwrap_s=t2 - t1, bake_s=t3 - t2, write_s=t4 - t3, total_s=t4 - t0
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=list(DEFAULT_GRIDS))
    parser.add_argument("--texture-sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument(
        "--max-faces", type=int, default=None, help="decimation target (default: a quarter)"
    )
    parser.add_argument("--no-plain", action="store_true", help="skip runs without decimation")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    print(
        f"# export benchmark: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, quadric decimation: "
        f"{fast_simplification_available()}"
    )
    print("| faces in | faces out | texture | decimate s | unwrap s | bake s | write s | total s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for grid in args.grids:
            vertices, faces = surface(grid)
            for size in args.texture_sizes:
                targets = [args.max_faces or len(faces) // 4]
                if not args.no_plain:
                    targets.insert(0, None)
                for target in targets:
                    row = run_one(vertices, faces, size, target, Path(tmp))
                    row["grid"] = grid
                    rows.append(row)
                    print(
                        f"| {row['faces_in']} | {row['faces_out']} | {size} | "
                        f"{row['decimate_s']:.2f} | {row['unwrap_s']:.2f} | {row['bake_s']:.2f} | "
                        f"{row['write_s']:.2f} | {row['total_s']:.2f} |",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
