"""ra3d: retrieval-augmented text-to-3D generation. The top level holds the core every room uses
(cameras, errors, schedules, atomic file writes); docs/architecture.md maps the rooms."""

__version__ = "0.1.0"
