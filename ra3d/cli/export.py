"""``ra3d export CKPT_OR_RUN_DIR``: textured meshes of a run's particles (see :mod:`ra3d.export.pipeline`).

Heavy imports (torch, trimesh, xatlas) happen after the arguments parse, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse

from ra3d.errors import ConfigError
from ra3d.export.options import DEFAULT_MAX_FACES, FORMATS, ExportOptions

DESCRIPTION = """Export the particles of a ra3d checkpoint (coarse NeRF or fine stage) as textured
meshes: particle<i>.glb (glTF 2.0, Y-up, 1 unit = 1 m, PBR baseColorTexture), particle<i>.obj +
.mtl + _albedo.png, a turntable GIF of the exported mesh, index.html (interactive viewer) and
ATTRIBUTION.md (prompt, ra3d version, retrieved assets and their licences)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ra3d export", description=DESCRIPTION)
    parser.add_argument(
        "checkpoint", help="a .ckpt file or a run folder (outputs/<name>/version_N)"
    )
    parser.add_argument(
        "--format", nargs="+", choices=FORMATS, default=list(FORMATS), help="file formats"
    )
    parser.add_argument(
        "--particle", default="all", help="particle index to export, or 'all' (default)"
    )
    parser.add_argument("--texture-size", type=int, default=1024, help="albedo texture side")
    parser.add_argument("--out", default=None, help="output folder (default <run>/export)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=25.0,
        help="density level of a NeRF's surface (as the coarse-to-fine hand-over; default 25)",
    )
    parser.add_argument(
        "--resolution", type=int, default=128, help="grid size of the surface extraction"
    )
    parser.add_argument(
        "--max-faces",
        type=int,
        default=DEFAULT_MAX_FACES,
        help=f"decimate to at most this many faces before unwrapping (default {DEFAULT_MAX_FACES})",
    )
    parser.add_argument("--no-turntable", action="store_true", help="skip the turntable GIF")
    return parser


def parse_particles(value: str) -> list[int] | None:
    if value.strip().lower() == "all":
        return None
    try:
        return [int(value)]
    except ValueError:
        raise ConfigError(
            f"--particle must be an index (0, 1, ...) or 'all', got {value!r}"
        ) from None


def main_export(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    particles = parse_particles(args.particle)

    from ra3d.export.pipeline import describe_written, export_run
    from ra3d.training.checkpoint import load_run

    run = load_run(args.checkpoint)
    options = ExportOptions(
        formats=tuple(args.format),
        texture_size=args.texture_size,
        resolution=args.resolution,
        threshold=args.threshold,
        max_faces=args.max_faces,
        turntable=not args.no_turntable,
    )
    files = export_run(run, out_dir=args.out, options=options, particles=particles)
    print(describe_written(files))
    return 0
