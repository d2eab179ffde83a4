"""``ra3d chain``: prompt → retrieval → adaptation → coarse NeRF → fine DMTet → textured mesh.

The whole workflow of the paper in one command, by running the stages' ``ra3d fit`` one after the
other, each ``--init_from`` the previous stage's ``last.ckpt`` (see :mod:`ra3d.training.stages`), all runs
sharing one run id as their version folder. The defaults are the offline CPU demo configs; pass
the full-size ones for a real run on a GPU::

    ra3d chain                                             # demo: a teddy bear, a few minutes on a CPU
    ra3d chain --prompt "a wooden chair"
    ra3d chain --coarse configs/coarse_nerf.yaml --fine configs/fine_dmtet.yaml \\
               --texture configs/fine_texture.yaml --prompt "a teddy bear"

The texture stage's config exports the textured GLB/OBJ at its end (``model.export_at_end``);
when the chain stops earlier, or the config does not export, ``ra3d export`` runs on the last
stage. The command ends by printing where the files are.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from pathlib import Path

from ra3d.errors import ConfigError, Interrupted, Ra3dError
from ra3d.training.checks import check_prompt

logger = logging.getLogger(__name__)

DEMO_CONFIGS = {
    "coarse": "configs/demo.yaml",
    "fine": "configs/demo_fine.yaml",
    "texture": "configs/demo_texture.yaml",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ra3d chain",
        description="Run coarse NeRF -> fine DMTet geometry -> texture -> export in one go.",
    )
    p.add_argument("--prompt", default=None, help="the text prompt (default: the coarse config's)")
    for stage, default in DEMO_CONFIGS.items():
        p.add_argument(f"--{stage}", default=default, help=f"{stage} stage config ({default})")
    p.add_argument("--stop-after", choices=("coarse", "fine", "texture"), default="texture",
                   help="last stage to run (default: texture)")  # fmt: skip
    p.add_argument("--out", default="outputs", help="save_dir of every stage (outputs)")
    p.add_argument("--run-id", default=None, help="version folder of every stage (chain-<time>)")
    p.add_argument("--no-export", action="store_true", help="do not export meshes at the end")
    p.add_argument(
        "--fit-args", default="",
        help="extra ra3d fit options for every stage, one quoted string "
        "(e.g. \"--trainer.max_steps 20 --data.height 32 --data.width 32\")",
    )  # fmt: skip
    return p


def _check_config(path: str, stage: str) -> Path:
    config = Path(path)
    if not config.is_file():
        raise ConfigError(
            f"{stage} config {config} {'is a directory' if config.is_dir() else 'not found'}; "
            "run ra3d chain from the repository root (configs/ holds the shipped configs) or "
            f"pass --{stage} PATH"
        )
    return config


def _logger_name(config: Path) -> str:
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    logger_cfg = (data.get("trainer") or {}).get("logger") or {}
    name = (logger_cfg.get("init_args") or {}).get("name") if isinstance(logger_cfg, dict) else None
    return str(name or "lightning_logs")


def main_chain(argv: list[str]) -> int:
    """Entry point of ``ra3d chain``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.prompt is not None:
        check_prompt(args.prompt)
    order = ["coarse", "fine", "texture"]
    stages = order[: order.index(args.stop_after) + 1]
    configs = {s: _check_config(getattr(args, s), s) for s in stages}
    run_id = args.run_id or time.strftime("chain-%Y%m%d-%H%M%S")

    from ra3d.cli import fit

    t0 = time.perf_counter()
    previous: Path | None = None
    run_dirs: dict[str, Path] = {}
    for stage in stages:
        argv_stage = ["fit", "--config", str(configs[stage]),
                      "--trainer.logger.init_args.save_dir", args.out,
                      "--trainer.logger.init_args.version", run_id]  # fmt: skip
        if stage == "coarse" and args.prompt:
            argv_stage += ["--prompt", args.prompt]
        if previous is not None:
            argv_stage += ["--init_from", str(previous)]
        if stage == "texture" and args.no_export:
            argv_stage += ["--model.export_at_end", "null"]
        argv_stage += shlex.split(args.fit_args)
        logger.info("chain: %s stage (%s)", stage, configs[stage])
        try:
            fit.run(argv_stage)  # the fit command itself: its checks, run folder and checkpoints
        except (Ra3dError, Interrupted):
            logger.error("chain: the %s stage stopped; see the message below", stage)
            raise
        run_dirs[stage] = Path(args.out) / _logger_name(configs[stage]) / run_id
        previous = run_dirs[stage] / "checkpoints" / "last.ckpt"
        if not previous.is_file():
            raise Ra3dError(f"the {stage} stage wrote no checkpoint at {previous}")
    last = run_dirs[stages[-1]]
    export_dir = last / "export"
    if not args.no_export and not any(export_dir.glob("*.glb")):
        from ra3d.export.pipeline import describe_written, export_run
        from ra3d.training.checkpoint import load_run

        written = export_run(load_run(previous), export_dir)
        logger.info("exported: %s", describe_written(written))
    minutes = (time.perf_counter() - t0) / 60.0
    print(f"\nra3d chain finished in {minutes:.1f} min. Runs:")
    for stage, run_dir in run_dirs.items():
        print(f"  {stage:8s} {run_dir}   (val/ images, metrics.csv, retrieved.json)")
    if not args.no_export:
        for glb in sorted(export_dir.glob("*.glb")):
            print(f"  mesh     {glb}")
        if (export_dir / "index.html").is_file():
            print(f"  viewer   {export_dir / 'index.html'}   (python3 -m http.server --bind "
                  f"127.0.0.1 --directory {export_dir} 8000, then open http://127.0.0.1:8000)")  # fmt: skip
    return 0
