"""The demo's asset fidelity for several prompts, with and without the asset term (Eq. 10–11).

For each prompt, runs ``ra3d fit --config configs/demo.yaml --prompt P`` twice — as configured,
and with ``--model.loss_weights.asset 0`` — and prints the last ``val/asset_iou`` and
``val/asset_psnr`` of each from its metrics.csv (silhouette IoU / foreground PSNR of the
particles against their assigned assets at the orbit views), plus the wall time.

    python bench/demo_prompts.py
    python bench/demo_prompts.py --prompts "a teddy bear" "a grand piano" --jobs 1
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RA3D = [sys.executable, "-c", "import sys; from ra3d.cli import main; sys.exit(main())"]
DEFAULT_PROMPTS = ("a teddy bear", "a grand piano", "a wooden chair")


def last_metrics(run_root: Path) -> tuple[float | None, float | None]:
    files = sorted(run_root.glob("*/*/metrics.csv"))
    if not files:
        return None, None
    rows = [r for r in csv.DictReader(files[-1].open()) if r.get("val/asset_iou")]
    if not rows:
        return None, None
    return float(rows[-1]["val/asset_iou"]), float(rows[-1]["val/asset_psnr"])


def run(prompt: str, asset: bool, out: Path, extra: list[str]) -> dict:
    tag = prompt.replace(" ", "_") + ("" if asset else "-no_asset")
    root = out / tag
    cmd = [*RA3D, "fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--prompt", prompt,
           "--trainer.logger.init_args.save_dir", str(root),
           "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    if not asset:
        cmd += ["--model.loss_weights.asset", "0"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    iou, psnr = last_metrics(root)
    return {"prompt": prompt, "asset": asset, "iou": iou, "psnr": psnr, "seconds": time.time() - t0,
            "code": proc.returncode}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    p.add_argument("--out", type=Path, default=Path("outputs") / "demo_prompts")
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args()
    jobs = [(prompt, asset) for prompt in args.prompts for asset in (True, False)]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda j: run(j[0], j[1], args.out, args.fit_args), jobs))
    print("| prompt | asset term | val/asset_iou | val/asset_psnr (dB) | wall s |")
    print("|---|---|---|---|---|")
    for r in results:
        iou = "failed" if r["iou"] is None else f"{r['iou']:.3f}"
        psnr = "—" if r["psnr"] is None else f"{r['psnr']:.1f}"
        print(
            f"| {r['prompt']} | {'on' if r['asset'] else 'off'} | {iou} | {psnr} | {r['seconds']:.0f} |"
        )
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
