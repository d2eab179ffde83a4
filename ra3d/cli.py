"""The ``ra3d`` command.

``ra3d fit|validate|test|predict`` are LightningCLI subcommands (YAML with ``class_path`` /
``init_args``, so new representations or guidances plug in by naming their class). ``ra3d
retrieve`` and ``ra3d db`` are the retrieval tools. ``--prompt`` is a shortcut for
``--model.prompt``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ra3d.errors import CheckpointError, Ra3dError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
USAGE = """usage: ra3d <command> [options]

commands:
  fit        train (ra3d fit --config configs/coarse_nerf.yaml --prompt "a teddy bear")
  validate   render validation orbits of a checkpoint
  test       render a full turntable of a checkpoint
  predict    same as test, for scripting
  retrieve   search the 3D asset database (ra3d retrieve "a teddy bear" -k 3)
  db         inspect or import asset databases (ra3d db info, ra3d db import ...)
  adapt      lightweight adaptation of the prior on asset renders, Eq. 12 (ra3d adapt --prompt ...)
  export     textured mesh export of a checkpoint (ra3d export CKPT --format glb obj)
  evaluate   relative CLIP view metric, asset fidelity, plots (ra3d evaluate RUN_DIR [RUN_DIR ...])

run `ra3d <command> --help` for the options of a command.
"""


def _rewrite_shortcuts(argv: list[str]) -> list[str]:
    """``--prompt X`` → ``--model.prompt X`` (also ``--prompt=X``)."""
    out = []
    for arg in argv:
        if arg == "--prompt":
            out.append("--model.prompt")
        elif arg.startswith("--prompt="):
            out.append("--model.prompt=" + arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


def _option_values(argv: list[str], name: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _check_paths(argv: list[str]) -> None:
    """Fail early, with the fix, on paths that LightningCLI would report deep inside."""
    for path in _option_values(argv, "--config") + _option_values(argv, "-c"):
        if not Path(path).is_file():
            raise Ra3dError(
                f"config file not found: {path}. The shipped configs are in the repository's "
                "configs/ folder (e.g. configs/demo.yaml)."
            )
    for prompt in _option_values(argv, "--model.prompt"):
        if not prompt.strip():
            raise Ra3dError('the prompt is empty: pass one with --prompt "a teddy bear"')
    for path in _option_values(argv, "--ckpt_path"):
        if path in ("last", "best", "hpc", "registry"):
            continue
        if not Path(path).is_file():
            raise CheckpointError(
                f"checkpoint not found: {path}. Pass the .ckpt file of an earlier run, e.g. "
                "outputs/<run>/version_0/checkpoints/last.ckpt"
            )


def run_lightning(argv: list[str]) -> int:
    from lightning.pytorch.cli import LightningCLI

    from ra3d.data import RandomCameraDataModule
    from ra3d.system import RA3DSystem

    # Known, harmless Lightning/torch notices that would bury ra3d's own log lines: the frozen
    # prior is in eval mode on purpose, and ra3d's own checkpoints are what --ckpt_path loads.
    for pattern in (
        r".*module\(s\) in eval mode.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*does not have many workers.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    for name in (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",  # "weights_only not set"
        "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",  # ads
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    saved_argv = sys.argv
    sys.argv = ["ra3d", *argv]  # LightningCLI reads sys.argv; passing args too only warns
    try:
        LightningCLI(
            RA3DSystem,
            RandomCameraDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "outputs"},
        )
    finally:
        sys.argv = saved_argv
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be swapped, e.g. by tests)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - logging assigns it in __init__
        pass


def _configure_logging() -> None:
    """ra3d's own log lines on stderr; Lightning keeps its own handlers."""
    logger = logging.getLogger("ra3d")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[ra3d] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("RA3D_LOG_LEVEL", "INFO"))
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _configure_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "retrieve":
            from ra3d.retrieval.retrieve_cli import main_retrieve

            return main_retrieve(rest)
        if command == "db":
            from ra3d.retrieval.db_cli import main_db

            return main_db(rest)
        if command == "adapt":
            from ra3d.guidance.adapt_cli import main_adapt

            return main_adapt(rest)
        if command == "export":
            from ra3d.export_cli import main_export

            return main_export(rest)
        if command == "evaluate":
            from ra3d.evaluation_cli import main_evaluate

            return main_evaluate(rest)
        if command in LIGHTNING_SUBCOMMANDS:
            rest = _rewrite_shortcuts(rest)
            _check_paths(rest)
            return run_lightning([command, *rest])
        print(f"ra3d: error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    except Ra3dError as err:
        print(f"ra3d: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ra3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
