"""``ra3d export CKPT_OR_RUN_DIR``: textured meshes of a run's particles (see :mod:`ra3d.export.pipeline`).

Heavy imports (torch, trimesh, xatlas) happen after the arguments parse, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse

from ra3d.cli.options import add_dataclass_arguments, dataclass_from_args
from ra3d.errors import ConfigError
from ra3d.export.options import ExportOptions

DESCRIPTION = """Export the particles of a ra3d checkpoint (coarse NeRF or fine stage) as textured
meshes: particle<i>.glb (glTF 2.0, Y-up, 1 unit = 1 m, PBR baseColorTexture), particle<i>.obj +
.mtl + _albedo.png, a turntable GIF of the exported mesh, index.html (interactive viewer) and
ATTRIBUTION.md (prompt, ra3d version, retrieved assets and their licences)."""


def build_parser() -> argparse.ArgumentParser:
    """The command's own arguments, then one flag per :class:`ExportOptions` field (their
    defaults and help are the dataclass's: the fine stage's ``model.export_at_end`` reads the same
    definition)."""
    parser = argparse.ArgumentParser(prog="ra3d export", description=DESCRIPTION)
    parser.add_argument(
        "checkpoint", help="a .ckpt file or a run folder (outputs/<name>/version_N)"
    )
    parser.add_argument(
        "--particle", default="all", help="particle index to export, or 'all' (default)"
    )
    parser.add_argument("--out", default=None, help="output folder (default <run>/export)")
    add_dataclass_arguments(parser.add_argument_group("export options"), ExportOptions)
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
    options = dataclass_from_args(ExportOptions, args)
    files = export_run(run, out_dir=args.out, options=options, particles=particles)
    print(describe_written(files))
    return 0
