"""How to export a representation (one dataclass for ``ra3d export``'s flags, the fine stage's
``model.export_at_end`` and the Python API). Light on purpose: ``ra3d export --help`` imports
this module, not torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ra3d.errors import ConfigError

FORMATS: tuple[str, ...] = ("glb", "obj")
#: Default face budget before unwrapping: a grid-256 surface (~230k-500k faces) decimates to
#: this and unwraps + bakes at 1024^2 in seconds on 2 CPU cores (bench/export.py).
DEFAULT_MAX_FACES = 50_000


@dataclass
class ExportOptions:
    """How to export a representation as textured meshes.

    The one definition of the export defaults: ``ra3d export``'s flags are made from these fields
    (:mod:`ra3d.cli.options`; the help below is theirs too), and the fine stage's
    ``model.export_at_end`` section is this dataclass.

    Args:
        formats: file formats to write, any of ``glb`` and ``obj``.
        texture_size: side of the square albedo texture in texels.
        resolution: grid size of the surface extraction (``extract_mesh``).
        threshold: density level of a NeRF's surface (as the coarse-to-fine hand-over, 25);
            none (YAML ``null``) = the representation's own default.
        max_faces: decimate to at most this many faces before unwrapping.
        turntable: write ``<name>_turntable.gif`` of the exported mesh.
        turntable_frames: frames of the turntable GIF.
        turntable_size: pixel size of the turntable GIF.
        viewer: write ``index.html`` (+ the model-viewer script when installed).
    """

    formats: Sequence[str] = field(
        default=FORMATS, metadata={"flag": "--format", "choices": FORMATS}
    )
    texture_size: int = 1024
    resolution: int = 128
    threshold: float | None = 25.0
    max_faces: int = DEFAULT_MAX_FACES
    turntable: bool = field(default=True, metadata={"help": "skip the turntable GIF"})
    turntable_frames: int = 24
    turntable_size: int = 192
    viewer: bool = field(
        default=True, metadata={"help": "skip index.html (the interactive viewer page)"}
    )

    def validate(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ConfigError(
                f"unknown export format(s) {unknown or '(none)'}; choose from {', '.join(FORMATS)}"
            )
        if not 16 <= self.texture_size <= 8192:
            raise ConfigError(
                f"--texture-size must be between 16 and 8192 texels, got {self.texture_size}"
            )
        if self.resolution < 8:
            raise ConfigError(f"--resolution must be >= 8 grid cells, got {self.resolution}")
        if self.max_faces < 100:
            raise ConfigError(f"--max-faces must be >= 100, got {self.max_faces}")
        if self.threshold is not None and self.threshold <= 0:
            raise ConfigError(f"--threshold must be > 0, got {self.threshold}")
