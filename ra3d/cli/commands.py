"""The command table of ``ra3d``: each command's module, entry function and one-line summary.

The usage text is generated from it, and a command's module is imported only when that command
runs, so ``ra3d --help`` and the light commands never pay for torch or Lightning.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One ``ra3d <name>`` command: ``module:function`` takes the arguments after the name (the
    Lightning subcommands also get their own name first) and returns the exit code."""

    name: str
    module: str
    function: str
    summary: str
    takes_name: bool = False  # fit/validate/test/predict share one entry point

    def load(self) -> Callable[[list[str]], int]:
        return getattr(importlib.import_module(self.module), self.function)


COMMANDS: tuple[Command, ...] = (
    Command("fit", "ra3d.cli.fit", "main_lightning",
            'train (ra3d fit --config configs/coarse_nerf.yaml --prompt "a teddy bear")', True),
    Command("validate", "ra3d.cli.fit", "main_lightning",
            "render validation orbits of a checkpoint", True),
    Command("test", "ra3d.cli.fit", "main_lightning", "render a full turntable of a checkpoint",
            True),
    Command("predict", "ra3d.cli.fit", "main_lightning", "same as test, for scripting", True),
    Command("retrieve", "ra3d.cli.retrieve", "main_retrieve",
            'search the 3D asset database (ra3d retrieve "a teddy bear" -k 3)'),
    Command("db", "ra3d.cli.db", "main_db",
            "inspect or import asset databases (ra3d db info, ra3d db import ...)"),
    Command("weights", "ra3d.cli.weights", "main_weights",
            "fetch the prior and CLIP weights ahead (ra3d weights download), check them offline"),
    Command("adapt", "ra3d.cli.adapt", "main_adapt",
            "lightweight adaptation of the prior on asset renders, Eq. 12 (ra3d adapt --prompt ...)"),
    Command("export", "ra3d.cli.export", "main_export",
            "textured mesh export of a checkpoint (ra3d export CKPT --format glb obj)"),
    Command("evaluate", "ra3d.cli.evaluate", "main_evaluate",
            "relative CLIP view metric, asset fidelity, plots (ra3d evaluate RUN_DIR [RUN_DIR ...])"),
    Command("chain", "ra3d.cli.chain", "main_chain",
            "the whole workflow: coarse NeRF -> fine DMTet -> texture -> GLB (ra3d chain --prompt ...)"),
)  # fmt: skip

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}


def usage() -> str:
    """The ``ra3d --help`` text, one line per command of :data:`COMMANDS`."""
    width = max(len(c.name) for c in COMMANDS) + 3
    lines = ["usage: ra3d <command> [options]", "", "commands:"]
    lines += [f"  {c.name:<{width}}{c.summary}" for c in COMMANDS]
    lines += [
        "",
        "run `ra3d <command> --help` for the options of a command.",
        "",
        "exit codes: 0 done, 2 bad input, 3 training diverged, 4 run folder in use,",
        "            130 stopped by Ctrl-C, 143 stopped by SIGTERM (both save a checkpoint first)",
    ]
    return "\n".join(lines) + "\n"
