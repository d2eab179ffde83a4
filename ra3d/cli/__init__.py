"""The ``ra3d`` command: one command table (:mod:`ra3d.cli.commands`) and one module per command.

The console script is ``ra3d.cli:main``. Exit codes (see :mod:`ra3d.errors`): 0 success, 1 a bug
(traceback), 2 bad input, 3 training diverged, 4 run folder in use, 130 Ctrl-C, 143 SIGTERM — the
last two after saving a checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from ra3d.cli.commands import BY_NAME, usage
from ra3d.errors import Interrupted, Ra3dError
from ra3d.training.signals import STOP


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be swapped, e.g. by tests)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - logging assigns it in __init__
        pass


def configure_logging() -> None:
    """ra3d's own log lines on stderr as ``[ra3d] ...``; Lightning keeps its own handlers."""
    logger = logging.getLogger("ra3d")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[ra3d] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(os.environ.get("RA3D_LOG_LEVEL", "INFO"))
    logger.propagate = False


def interrupted_message(err: Interrupted) -> str:
    """``stopped by Ctrl-C; saved ...`` (what a stopped command ends with)."""
    how = "Ctrl-C" if err.signum == signal.SIGINT else err.signal_name
    if err.saved is not None:
        return (
            f"stopped by {how}; saved {err.saved}. Resume with: ra3d fit --config "
            f"<run>/config.yaml --ckpt_path {err.saved}"
        )
    if err.kept is not None:
        return f"stopped by {how}; the last saved checkpoint is {err.kept}"
    return f"stopped by {how}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ra3d <command> ...``; returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command = BY_NAME.get(argv[0])
    if command is None:
        print(f"ra3d: error: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    rest = argv if command.takes_name else argv[1:]
    with STOP.installed():
        try:
            return command.load()(rest)
        except Ra3dError as err:
            print(f"ra3d: error: {err}", file=sys.stderr)
            return err.exit_code
        except Interrupted as err:
            print(f"ra3d: {interrupted_message(err)}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print("ra3d: interrupted", file=sys.stderr)
            return 130


__all__ = ["configure_logging", "main"]
