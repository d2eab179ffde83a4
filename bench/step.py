"""Seconds per training step of a ra3d config (default: the offline demo).

    python bench/step.py --config configs/demo.yaml --steps 20 --warmup 3
    python bench/step.py --config configs/demo.yaml --accelerator cuda --set data.height=512

Builds the model and data exactly as ``ra3d fit`` does (LightningCLI, ``run=False``), then times
``trainer.fit`` step by step (validation and checkpointing off). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import lightning.pytorch as pl
import torch


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, *args) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--set", nargs="*", default=[], help="extra overrides, e.g. data.height=128"
    )
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from lightning.pytorch.cli import LightningCLI

    from ra3d.training.data import RandomCameraDataModule
    from ra3d.training.system import Ra3dSystem

    overrides = [f"--{item}" if "=" in item else item for item in args.set]
    sys.argv = ["bench", "--config", args.config, *overrides]
    cli = LightningCLI(Ra3dSystem, RandomCameraDataModule, run=False, seed_everything_default=0)
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=args.warmup + args.steps, accelerator=args.accelerator, logger=False,
        default_root_dir=tempfile.mkdtemp(prefix="ra3d-bench-"),  # retrieved.json, adapter/
        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(cli.model, cli.datamodule)
    times = timer.times[args.warmup :]
    dm = cli.datamodule.train_dataset
    result = {
        "config": args.config,
        "overrides": args.set,
        "device": torch.cuda.get_device_name() if args.accelerator == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "render_px": f"{dm.height[0]}x{dm.width[0]}",
        "batch_size": dm.batch_size[0],
        "n_particles": cli.model.n_particles,
        "steps": len(times),
        "mean_s": statistics.mean(times),
        "median_s": statistics.median(times),
        "min_s": min(times),
    }
    print("| config | device | render | particles | steps | mean s/step | median | min |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.config} {' '.join(args.set)} | {result['device']} | {result['render_px']} | "
        f"{result['n_particles']} | {len(times)} | {result['mean_s']:.3f} | "
        f"{result['median_s']:.3f} | {result['min_s']:.3f} |"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
