"""Profile VSD steps of the full-size SD 2.1-base UNet (random weights) on a CUDA GPU.

    python bench/profile_vsd.py --res 64 --steps 3

Prints torch.profiler tables (by CPU and by CUDA time) and a cProfile summary, which tell whether
a step is bound by GPU arithmetic or by Python / kernel-launch overhead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vsd_step as vb  # noqa: E402

from ra3d.guidance.vsd import VSDGuidance  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("profile_vsd.py needs a CUDA GPU", file=sys.stderr)
        return 2
    prior = vb.build_prior("sd21-unet-random", args.dtype, "cuda", "sd21", Path(tempfile.mkdtemp()))
    guidance = VSDGuidance(prior, seed=0)
    cameras = vb.cameras_for(1, args.res, "cuda")
    particle = nn.Parameter(torch.rand(1, args.res, args.res, 3, device="cuda"))
    optimizer = torch.optim.Adam([{"params": [particle]}, *guidance.trainable_parameter_groups()])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        guidance(torch.sigmoid(particle), cameras, vb.PROMPT).loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
