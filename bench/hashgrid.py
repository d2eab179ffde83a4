"""Benchmark the Instant-NGP hash encoding: forward and forward+backward throughput (points/s).

Runs the torch backend on the chosen device and, on CUDA, the Triton kernels (when triton imports)
and the tcnn backend (when tinycudann imports) too, with the default 16-level config (2 features,
2^19 table, base 16, scale 1.447). Each backend's first calls (warm-up, untimed) include Triton's
JIT compilation.
The backward computes gradients for the table *and* the inputs (a NeRF needs both for analytic
normals). Prints a markdown table; ``--json PATH`` also writes the rows as JSON.

Examples::

    python bench/hashgrid.py --device cpu --batch-sizes 16384 65536 --repeats 3
    python bench/hashgrid.py --device cuda --json hashgrid_cuda.json
    python bench/hashgrid.py --device cuda --backends torch triton --batch-sizes 262144 4194304
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ra3d.representations.components.hashgrid import (
    HashGridEncoding,
    tcnn_available,
    triton_available,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run on (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[2**14, 2**15, 2**16, 2**17, 2**18],
        help="numbers of points per call (default: 2^14 .. 2^18)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["torch", "triton", "tcnn"],
        default=["torch", "triton", "tcnn"],
        help="backends to time; triton and tcnn are skipped unless on CUDA with triton / "
        "tinycudann importable",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--n-levels", type=int, default=16)
    parser.add_argument("--log2-hashmap-size", type=int, default=19)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or any(n < 1 for n in args.batch_sizes):
        parser.error("--repeats must be >= 1, --warmup >= 0 and batch sizes positive")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Any, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_one(
    backend: str, device: torch.device, n_points: int, args: argparse.Namespace
) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    enc = HashGridEncoding(
        n_levels=args.n_levels, log2_hashmap_size=args.log2_hashmap_size, backend=backend
    ).to(device)
    x = torch.rand(n_points, 3, device=device)
    grad_out = torch.randn(n_points, enc.n_output_dims, device=device)

    def forward() -> None:
        with torch.no_grad():
            enc(x)

    def forward_backward() -> None:
        xi = x.detach().requires_grad_()
        enc.params.grad = None
        out = enc(xi)
        out.backward(grad_out)

    fwd = time_call(forward, device, args.repeats, args.warmup)
    fwd_bwd = time_call(forward_backward, device, args.repeats, args.warmup)
    return {
        "backend": enc.backend,
        "device": str(device),
        "n_points": n_points,
        "forward_ms": fwd * 1e3,
        "forward_backward_ms": fwd_bwd * 1e3,
        "forward_points_per_s": n_points / fwd,
        "forward_backward_points_per_s": n_points / fwd_bwd,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | device | points | fwd ms | fwd+bwd ms | fwd Mpts/s | fwd+bwd Mpts/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['n_points']} | {r['forward_ms']:.1f} | "
            f"{r['forward_backward_ms']:.1f} | {r['forward_points_per_s'] / 1e6:.3f} | "
            f"{r['forward_backward_points_per_s'] / 1e6:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    backends = list(args.backends)
    if "tcnn" in backends and not (device.type == "cuda" and tcnn_available()):
        print("(skipping tcnn: needs --device cuda and an importable tinycudann)")
        backends.remove("tcnn")
    if "triton" in backends and not (device.type == "cuda" and triton_available()):
        print("(skipping triton: needs --device cuda and an importable triton)")
        backends.remove("triton")
    rows = [bench_one(b, device, n, args) for b in backends for n in args.batch_sizes]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(
        f"HashGridEncoding n_levels={args.n_levels} F=2 log2_T={args.log2_hashmap_size} base=16 "
        f"scale=1.447 | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"{gpu or platform.processor() or platform.machine()} | median of {args.repeats}"
    )
    print(markdown(rows))
    if args.json is not None:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": gpu,
            "n_levels": args.n_levels,
            "log2_hashmap_size": args.log2_hashmap_size,
            "repeats": args.repeats,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
