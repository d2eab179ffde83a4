"""Ablations at demo scale: the offline demo with each of the paper's components switched off.

Runs ``ra3d fit --config configs/demo.yaml`` once per variant — the full method (``baseline``),
then without the asset term (Eq. 10–11), without the adaptation of the prior (Eq. 12), without
delta distillation (Eq. 13), and with one particle instead of two — then ``ra3d evaluate`` on all
of them, and writes one markdown table of the summary numbers (``<out>/ablations.md``, also
printed) next to the evaluation's own comparison (``<out>/compare/``).

With the demo's tiny random-weight prior, the CLIP metrics are not meaningful (and offline they
are not computed without CLIP weights); asset fidelity (silhouette IoU, foreground PSNR, Chamfer)
is the column that shows what each component does.

    python bench/ablations.py --steps 150                       # all variants, demo length
    python bench/ablations.py --steps 4 --size 16 --variants baseline,no_asset_term
    python bench/ablations.py --eval-args="--clip-pretrained /models/open_clip_model.safetensors"

The demo config has every component on (retrieval, adaptation, asset term, delta distillation,
2 particles); each variant switches one off.

The command-line flags that switch each component off are in :data:`VARIANTS` (one place, since
the config names may change).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Variant name → the ``ra3d fit`` flags that make it (added to the demo config).
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "no_asset_term": ["--model.loss_weights.asset", "0"],
    "no_adaptation": ["--model.adaptation.enabled", "false"],
    "no_delta_distillation": ["--model.delta_distillation", "false"],
    "one_particle": ["--model.n_particles", "1"],
}
#: Summary numbers of ``ra3d evaluate`` in the table, with their titles.
COLUMNS: dict[str, str] = {
    "asset_iou": "asset IoU",
    "asset_psnr": "asset PSNR (dB)",
    "chamfer": "Chamfer",
    "view_consistency": "view consistency",
    "best_prompt_accuracy": "best-prompt acc.",
    "clip_score": "CLIP score",
}
RA3D = [sys.executable, "-c", "import sys; from ra3d.cli import main; sys.exit(main())"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    p.add_argument("--steps", type=int, default=None, help="trainer.max_steps (demo default)")
    p.add_argument("--size", type=int, default=None, help="training render size (demo default)")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    p.add_argument("--out", type=Path, default=Path("outputs") / "ablations")
    p.add_argument(
        "--fit-args", default="", help="extra flags for every ra3d fit (one shell-quoted string)"
    )
    p.add_argument(
        "--eval-args", default="--size 64 --n-azimuths 12 --mesh-resolution 64",
        help="flags for ra3d evaluate (one shell-quoted string)",
    )  # fmt: skip
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    args.variant_names = names
    return args


def latest_run(save_dir: Path, name: str, since: float) -> Path | None:
    """The newest ``<save_dir>/<name>/version_*`` with a checkpoint written after ``since``."""
    runs = [
        ckpt.parent.parent
        for ckpt in (save_dir / name).glob("version_*/checkpoints/last.ckpt")
        if ckpt.stat().st_mtime >= since
    ]
    return max(runs, key=lambda r: r.stat().st_mtime) if runs else None


def fit(variant: str, args: argparse.Namespace) -> dict:
    """Run one variant; returns ``{"variant", "flags", "run", "seconds", "error"}``."""
    flags = list(VARIANTS[variant])
    cmd = [*RA3D, "fit", "--config", str(args.config)]
    if args.steps is not None:
        cmd += ["--trainer.max_steps", str(args.steps)]
    if args.size is not None:
        cmd += ["--data.height", str(args.size), "--data.width", str(args.size)]
    cmd += ["--trainer.logger.init_args.save_dir", str(args.out)]
    # The variant's flags come last so that they win over --fit-args (e.g. enabling adaptation
    # for all variants keeps it off in no_adaptation).
    cmd += ["--trainer.logger.init_args.name", variant, *shlex.split(args.fit_args), *flags]
    print(f"[ablations] {variant}: {shlex.join(cmd[3:])}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    run = latest_run(args.out, variant, t0)
    error = None
    if proc.returncode != 0 or run is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        error = f"fit exited {proc.returncode}: " + " / ".join(tail)
        print(f"[ablations] {variant} FAILED ({error})", flush=True)
    return {"variant": variant, "flags": flags, "run": run, "seconds": seconds, "error": error}


def evaluate(runs: list[dict], args: argparse.Namespace) -> str | None:
    """``ra3d evaluate`` on every fitted run (comparison in ``<out>/compare``); None or the error."""
    paths = [str(r["run"]) for r in runs if r["error"] is None]
    if not paths:
        return "no run to evaluate"
    cmd = [*RA3D, "evaluate", *paths, "--out", str(args.out / "compare")]
    cmd += shlex.split(args.eval_args)
    print(f"[ablations] evaluate: {shlex.join(cmd[3:])}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
    if proc.returncode != 0:
        return f"evaluate exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
    return None


def _fmt(value: object) -> str:
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def table(runs: list[dict], args: argparse.Namespace) -> str:
    """Markdown table: one row per variant with its flags and the run's summary numbers."""
    head = ["variant", "flags", *COLUMNS.values(), "fit s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    notes = []
    for r in runs:
        summary, clip_note = {}, None
        metrics = r["run"] / "eval" / "metrics.json" if r["run"] is not None else None
        if r["error"] is None and metrics is not None and metrics.is_file():
            data = json.loads(metrics.read_text())
            summary = data["summary"]
            if not data["clip"].get("available"):
                clip_note = data["clip"].get("reason")
            # One note per kind (particles differ only in the numbers inside parentheses).
            kinds = {n.split(" (")[0]: n for p in reversed(data["particles"]) for n in p["notes"]}
            notes += [f"- {r['variant']}: {note}" for note in kinds.values()]
        elif r["error"] is not None:
            notes.append(f"- {r['variant']}: {r['error']}")
        cells = [r["variant"], " ".join(r["flags"]) or "(demo config)"]
        cells += [_fmt(summary.get(k)) for k in COLUMNS] + [f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
        if clip_note and not any("CLIP" in n for n in notes):
            notes.append(f"- CLIP metrics not computed: {clip_note}")
    settings = f"steps {args.steps or 'demo'}, size {args.size or 'demo'}, eval `{args.eval_args}`"
    return "\n".join([*lines, "", f"Settings: {settings}.", *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [fit(v, args) for v in args.variant_names]
    error = evaluate(runs, args)
    text = table(runs, args)
    if error:
        text += f"\nEvaluation failed: {error}\n"
    (args.out / "ablations.md").write_text(text)
    print(text, end="")
    print(f"[ablations] wrote {args.out / 'ablations.md'}")
    return 0 if error is None and all(r["error"] is None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
