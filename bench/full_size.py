"""The full-size chain with a prior of the real size: seconds per step and peak memory per stage.

    python bench/full_size.py                       # ra3d/sd21-base-random, 2 steps per phase
    python bench/full_size.py --steps 3 --accelerator cuda --json full_size.json

Runs ``configs/coarse_nerf.yaml`` → ``fine_dmtet.yaml`` → ``fine_texture.yaml`` (with its export
at the end) unchanged but for the prior (``--prior``, default ``ra3d/sd21-base-random``: SD 2.1-base's
architectures with random weights, built locally), the step counts, the retrieval embedder
(``minilm``: CLIP weights cannot be had offline; retrieval is not what is timed), the NeRF → DMTet
level (``auto``: a NeRF of a few steps has no density above threestudio's 25) and a shortened
adaptation (``--adapt-steps``, default 0 = off: at 512 px on a CPU its renders and VAE encodings
alone take minutes; the full 500 steps of Eq. 12 are timed by bench/adaptation.py). The coarse
stage's two phases run as two processes: ``--steps`` steps at 64 px (whose checkpoint the
geometry stage starts from), then ``--steps`` at 512 px alone (``data.height: [512]``), so that a
512 px phase that cannot fit does not stop the rest of the chain. Validation is off. Each stage
runs in its own process, so the peak memory of one does not hide another's, under a watchdog
(``--max-rss-gib``, default 85 % of RAM) that kills a process whose resident memory (with its
children) passes the limit and records the RSS it reached: a phase that does not fit is reported
as killed, never left to take the machine down.

Reports per phase (coarse 64 px, coarse 512 px, geometry, texture): the median seconds per step
(after the first step of the phase, which pays for lazy initialisation), the peak resident memory
of the stage's process (CPU) or the peak CUDA memory allocated in the phase (GPU), and the
preflight's estimate of one step's activation memory for that stage
(:func:`ra3d.training.preflight.estimate_train_bytes`), so the two can be compared.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = ("coarse", "coarse512", "geometry", "texture")
CONFIGS = {
    "coarse": REPO / "configs" / "coarse_nerf.yaml",
    "coarse512": REPO / "configs" / "coarse_nerf.yaml",
    "geometry": REPO / "configs" / "fine_dmtet.yaml",
    "texture": REPO / "configs" / "fine_texture.yaml",
}


class PhaseTimer(pl.Callback):
    """Seconds per step and peak CUDA memory, per render size (a phase of the resolution
    schedule), written as JSON to ``path`` when training ends."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.steps: list[dict] = []
        self._start = 0.0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._sync()
        size = int(batch.height)
        if self.steps and self.steps[-1]["size"] != size and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # a new phase starts
        self._size = size
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # noqa: ANN001
        self._sync()
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        self.steps.append(
            {"size": self._size, "seconds": time.perf_counter() - self._start, "cuda_peak": peak}
        )

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        Path(self.path).write_text(json.dumps(self.steps))


def _stage_argv(
    args: argparse.Namespace, stage: str, out: Path, previous: Path | None
) -> list[str]:
    steps = args.steps
    argv = ["fit", "--config", str(CONFIGS[stage]),
            "--model.guidance.init_args.prior", args.prior,
            "--trainer.accelerator", args.accelerator,
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.logger.init_args.version", "bench"]  # fmt: skip
    if stage in ("coarse", "coarse512", "texture"):  # the texture stage reuses the coarse ω
        if stage != "texture":
            argv += ["--prompt", args.prompt, "--trainer.max_steps", str(steps),
                     "--model.retrieval.embedder", "minilm"]  # fmt: skip
        if args.adapt_steps > 0:
            argv += ["--model.adaptation.steps", str(args.adapt_steps),
                     "--model.adaptation.n_views", str(args.adapt_views)]  # fmt: skip
        else:
            argv += ["--model.adaptation.enabled", "false"]
        if stage == "coarse512":  # the 512 px phase alone
            argv += ["--data.height", "[512]", "--data.width", "[512]",
                     "--data.batch_size", "[1]", "--data.resolution_milestones", "[]",
                     "--trainer.logger.init_args.name", "coarse_nerf_512"]  # fmt: skip
    if stage in ("geometry", "texture"):
        argv += ["--trainer.max_steps", str(steps), "--init_from", str(previous)]
    if stage == "geometry":  # a NeRF of a few steps has no density above threestudio's 25
        argv += ["--model.init_options.threshold", "auto"]
    return argv


def run_stage(argv: list[str], timer_path: str, estimate_path: str) -> int:
    """Inside the stage's process: ``ra3d fit`` with the timer, recording the preflight's
    estimate as the fit computes it."""
    from ra3d.cli import fit
    from ra3d.training import preflight

    estimate = preflight.estimate_train_bytes

    def recording(cfg):  # noqa: ANN001, ANN202 - the preflight's own call, observed
        result = estimate(cfg)
        Path(estimate_path).write_text(json.dumps(result))
        return result

    preflight.estimate_train_bytes = recording
    argv = [*argv, "--trainer.callbacks+=__main__.PhaseTimer",
            f"--trainer.callbacks.path={timer_path}"]  # fmt: skip
    t0 = time.perf_counter()
    fit.run(argv)
    wall = time.perf_counter() - t0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    Path(timer_path + ".proc").write_text(json.dumps({"wall": wall, "peak_rss": peak_rss}))
    return 0


def _phase_rows(stage: str, steps: list[dict]) -> list[dict]:
    rows = []
    for size in dict.fromkeys(s["size"] for s in steps):
        phase = [s for s in steps if s["size"] == size]
        timed = [s["seconds"] for s in phase[1:]] or [phase[0]["seconds"]]
        peaks = [s["cuda_peak"] for s in phase if s["cuda_peak"] is not None]
        name = f"coarse {size} px" if stage.startswith("coarse") else stage
        rows.append({"phase": name, "steps": len(phase), "s_per_step": statistics.median(timed),
                     "first_step_s": phase[0]["seconds"],
                     "cuda_peak_gib": max(peaks) / 2**30 if peaks else None})  # fmt: skip
    return rows


def run_watched(cmd: list[str], limit: int) -> tuple[int, int, bool]:
    """Run ``cmd``, polling the resident memory of it and its children every 0.2 s; kill it (by
    its pid, and its children) when the sum passes ``limit`` bytes. Returns (exit code, the
    largest RSS seen, whether it was killed)."""
    child = subprocess.Popen(cmd, cwd=REPO)
    proc = psutil.Process(child.pid)
    peak, killed = 0, False
    while child.poll() is None:
        try:
            family = [proc, *proc.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in family)
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        if rss > limit:
            killed = True
            for p in reversed(family):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            break
        time.sleep(0.2)
    return child.wait(), peak, killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--prior", default="ra3d/sd21-base-random")
    parser.add_argument("--prompt", default="a teddy bear")
    parser.add_argument("--steps", type=int, default=2, help="steps per phase (2)")
    parser.add_argument("--adapt-steps", type=int, default=0, help="Eq. 12 steps (0: off)")
    parser.add_argument("--adapt-views", type=int, default=4)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--no-coarse-512", action="store_true",
        help="coarse stage at 64 px only (its 512 px phase needs far more than a 24 GiB CPU has)",
    )  # fmt: skip
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (a later stage needs "
                        "the earlier ones)")  # fmt: skip
    parser.add_argument("--max-rss-gib", type=float, default=None,
                        help="kill a stage whose RSS passes this (default: 85%% of RAM)")  # fmt: skip
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--run-stage", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        timer, estimate, *argv = args.run_stage
        return run_stage(argv, timer, estimate)

    out = Path(args.out or tempfile.mkdtemp(prefix="ra3d-full-size-"))
    out.mkdir(parents=True, exist_ok=True)
    limit = int((args.max_rss_gib or 0.85 * psutil.virtual_memory().total / 2**30) * 2**30)
    rows, previous = [], None
    names = {"coarse": "coarse_nerf", "geometry": "fine_dmtet", "texture": "fine_texture"}
    for stage in STAGES:
        if stage == "coarse512" and args.no_coarse_512 or stage not in args.stages.split(","):
            continue
        timer, estimate = str(out / f"{stage}.steps.json"), str(out / f"{stage}.estimate.json")
        argv = _stage_argv(args, stage, out, previous)
        cmd = [sys.executable, __file__, "--run-stage", timer, estimate, *argv]
        print(f"== {stage}: ra3d {' '.join(argv)}", flush=True)
        code, watched_peak, killed = run_watched(cmd, limit)
        estimate_row = json.loads(Path(estimate).read_text()) if Path(estimate).is_file() else None
        lower, upper, how = estimate_row or (0, 0, "")
        if killed or code != 0:
            why = (f"killed by the watchdog at {watched_peak / 2**30:.1f} GiB RSS (limit "
                   f"{limit / 2**30:.1f} GiB)" if killed else f"exit {code}")  # fmt: skip
            print(f"{stage} stage failed: {why}", file=sys.stderr, flush=True)
            rows.append({"phase": "coarse 512 px" if stage == "coarse512" else stage,
                         "failed": why, "peak_rss_gib": watched_peak / 2**30,
                         "preflight_lower_gib": lower / 2**30,
                         "preflight_upper_gib": upper / 2**30, "preflight_how": how})  # fmt: skip
            if stage == "coarse512":
                continue  # the chain goes on from the 64 px checkpoint
            break
        proc = json.loads(Path(timer + ".proc").read_text())
        for row in _phase_rows(stage, json.loads(Path(timer).read_text())):
            row.update(stage_wall_s=proc["wall"],
                       peak_rss_gib=max(proc["peak_rss"], watched_peak) / 2**30,
                       preflight_lower_gib=lower / 2**30, preflight_upper_gib=upper / 2**30,
                       preflight_how=how)  # fmt: skip
            rows.append(row)
        if stage in names:
            previous = out / names[stage] / "bench" / "checkpoints" / "last.ckpt"
    device = torch.cuda.get_device_name() if args.accelerator != "cpu" else "CPU"
    print(f"\nprior {args.prior}, {device}, {args.steps} step(s) per phase, runs in {out}\n")
    print("| phase | s/step (median) | first step (s) | peak RSS of the stage (GiB) | "
          "peak CUDA (GiB) | preflight estimate (GiB) | stage wall (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['phase']} | {r['failed']} | – | {r['peak_rss_gib']:.1f} | – | "
                  f"{r['preflight_lower_gib']:.2f}–{r['preflight_upper_gib']:.2f} | – |")  # fmt: skip
            continue
        cuda = "–" if r["cuda_peak_gib"] is None else f"{r['cuda_peak_gib']:.1f}"
        print(f"| {r['phase']} | {r['s_per_step']:.2f} | {r['first_step_s']:.2f} | "
              f"{r['peak_rss_gib']:.1f} | {cuda} | {r['preflight_lower_gib']:.2f}–"
              f"{r['preflight_upper_gib']:.2f} | {r['stage_wall_s']:.0f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
