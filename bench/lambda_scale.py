"""λ of the asset term against the guidance's gradient at step 0, per stage (issue 16 item 5).

    python bench/lambda_scale.py                      # ra3d/sd21-base-random, 3 draws of t, ε
    python bench/lambda_scale.py --samples 8 --json lambda.json

Runs the shipped full-size chain — ``configs/coarse_nerf.yaml`` (64 px phase) →
``fine_dmtet.yaml`` (geometry, SDS on normals) → ``fine_texture.yaml`` (texture, VSD on colour) —
one step per stage (each stage starts from the one before, as a user's chain does), with the
prior replaced by ``--prior`` (default: SD 2.1-base's architectures with random weights), the
embedder by MiniLM (no CLIP weights offline) and the adaptation (Eq. 12) off (it changes the
prior by a LoRA that starts at zero, so not the step-0 gradient). Before each stage's first
step a probe takes the system's own batch and computes, separately, the gradient of

* the guidance term (``loss_vsd`` or ``loss_sds`` times its weight, with the delta-distillation
  reference of Eq. 13 exactly as the training step passes it), ``--samples`` times (t and ε are
  drawn anew each time: the size of the score-distillation gradient depends strongly on t),
* the asset term of Eq. 10–11 with λ = 1 (``loss_weights.asset`` is the λ to choose),
* each weighted regularizer of the representation (NeRF: ``sparsity``, ``opacity``; DMTet:
  ``normal_consistency``, ``laplacian_smoothness``),

with respect to the guided render (``rgb`` or the normal image), the opacity, and the particle's
parameters (all of them, and per learning-rate group). It prints the norms and, for the asset
term, λ* = ‖∇ guidance‖ / ‖∇ asset(λ = 1)‖ on the parameters — the λ at which the asset force and
the distillation force have the same size at step 0 — beside the config's λ.

With random prior weights the score is that of an untrained network: the *direction* of the
guidance gradient means nothing, but its size is what ε̂_φ − ε̂_ψ (or ε̂ − ε) of a network of this
architecture gives; see /work/notes/S.md for how the numbers were read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parents[1]
STAGES = {
    "coarse": ("coarse_nerf", REPO / "configs" / "coarse_nerf.yaml"),
    "geometry": ("fine_dmtet", REPO / "configs" / "fine_dmtet.yaml"),
    "texture": ("fine_texture", REPO / "configs" / "fine_texture.yaml"),
}


def _norm(grad: torch.Tensor | None) -> float:
    return 0.0 if grad is None else float(grad.detach().double().norm())


class LambdaProbe(pl.Callback):
    """Per-term gradient norms on the first batch, written as JSON to ``path``."""

    def __init__(self, path: str, samples: int = 3) -> None:
        super().__init__()
        self.path = path
        self.samples = samples

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step != 0:
            return
        with torch.enable_grad():
            result = probe(pl_module, batch, self.samples)
        Path(self.path).write_text(json.dumps(result, indent=2))


def probe(system, cameras, samples: int) -> dict:  # noqa: ANN001 - a Ra3dSystem and its batch
    """The training step's terms, one at a time (see the module docstring)."""
    from ra3d.cameras import Cameras
    from ra3d.training.stages import guidance_image

    step = 0
    for particle in system.particles:
        particle.update_step(0, step)
    system.guidance.update_step(0, step, max(system.trainer.max_steps, 1))
    outputs = [p.render(cameras) for p in system.particles]
    rgb = torch.cat([guidance_image(o, system.guide_on) for o in outputs])
    all_cameras = Cameras.cat([cameras] * system.n_particles)
    aug = system.augmentation if system.augmentation is not None else None
    aug = aug if aug is not None and aug.active else None
    asset_outs = aug.render_used(cameras) if aug is not None else []
    reference = None
    if aug is not None and system.delta_distillation and all(a is not None for a in asset_outs):
        refs = [
            aug.reference_rgb(a, o) if system.guide_on == "rgb"
            else guidance_image(a, system.guide_on).detach()
            for a, o in zip(asset_outs, outputs, strict=True)
        ]  # fmt: skip
        reference = torch.cat(refs)

    named = [(n, p) for n, p in system.particles.named_parameters() if p.requires_grad]
    groups: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(named):
        key = next((k for k in system.learning_rates if k != "default" and k in name), "default")
        groups.setdefault(key, []).append(i)
    image_inputs = {"guided_image": rgb, "opacity": outputs[0].opacity}
    if outputs[0].normal is not None and system.guide_on != "normal":
        image_inputs["normal"] = outputs[0].normal
    # The texture phase freezes the geometry: its opacity and normals carry no gradient.
    image_inputs = {k: v for k, v in image_inputs.items() if v.requires_grad}

    def grads(term: torch.Tensor) -> dict:
        inputs = list(image_inputs.values()) + [p for _, p in named]
        got = torch.autograd.grad(term, inputs, retain_graph=True, allow_unused=True)
        n_img = len(image_inputs)
        row = {f"d_{k}": _norm(g) for k, g in zip(image_inputs, got[:n_img], strict=True)}
        params = got[n_img:]
        row["d_params"] = float(
            torch.sqrt(sum((g.double().norm() ** 2 for g in params if g is not None),
                           torch.zeros((), dtype=torch.float64)))
        )  # fmt: skip
        for key, idx in groups.items():
            row[f"d_params[{key}]"] = float(
                torch.sqrt(sum((params[i].double().norm() ** 2 for i in idx
                                if params[i] is not None), torch.zeros((), dtype=torch.float64)))
            )  # fmt: skip
        return row

    result: dict = {"height": int(rgb.shape[1]), "guide_on": system.guide_on,
                    "delta_distillation": reference is not None, "guidance": [],
                    "loss_weights": {k: v for k, v in system.loss_weights.items()
                                     if isinstance(v, int | float)}}  # fmt: skip
    name = "sds"
    for _ in range(samples):
        out = system.guidance(rgb, all_cameras, system.prompt, reference_rgb=reference)
        name = "vsd" if "loss_vsd" in out.terms else "sds"
        weight = system._weight(name, 1.0) * system._weight("guidance", 1.0)
        row = grads(weight * out.terms[f"loss_{name}"])
        row.update(t=out.diagnostics["t"], latent_grad_norm=out.diagnostics["grad_norm"])
        result["guidance"].append(row)
    result["guidance_name"] = name
    if aug is not None and any(a is not None for a in asset_outs):
        result["asset_lambda1"] = grads(system.asset_loss(outputs, asset_outs))
        result["asset_terms"] = dict(system.asset_term.terms)
    result["regularizers"] = {}
    for reg, value in system.particles[0].regularizers(outputs[0]).items():
        w = system._weight(reg)
        if w != 0.0:
            result["regularizers"][reg] = {"weight": w, **grads(w * value / system.n_particles)}
    return result


def _argv(args: argparse.Namespace, stage: str, out: Path, previous: Path | None) -> list[str]:
    argv = ["fit", "--config", str(STAGES[stage][1]),
            "--model.guidance.init_args.prior", args.prior,
            "--trainer.accelerator", args.accelerator, "--trainer.max_steps", "1",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.logger.init_args.version", "lambda"]  # fmt: skip
    if stage == "coarse":
        argv += ["--prompt", args.prompt, "--model.retrieval.embedder", "minilm",
                 "--model.adaptation.enabled", "false"]  # fmt: skip
    else:
        argv += ["--init_from", str(previous)]
    if stage == "geometry":  # a NeRF of one step has no density above threestudio's 25
        argv += ["--model.init_options.threshold", "auto"]
    if stage == "texture":  # its ω comes from the coarse run's (here: none) adaptation cache
        argv += ["--model.export_at_end", "null", "--model.adaptation.enabled", "false"]
    return argv


def _run_stage(probe_path: str, samples: int, argv: list[str]) -> int:
    from ra3d.cli import fit

    fit.run([*argv, "--trainer.callbacks+=__main__.LambdaProbe",
             f"--trainer.callbacks.path={probe_path}",
             f"--trainer.callbacks.samples={samples}"])  # fmt: skip
    return 0


def _summary(stage: str, r: dict) -> list[str]:
    g = r["guidance"]
    med = {k: statistics.median(row[k] for row in g) for k in g[0]}
    lines = [f"== {stage} ({r['height']} px, guided on {r['guide_on']}, {r['guidance_name']}, "
             f"delta distillation {'on' if r['delta_distillation'] else 'off'})",
             f"  {r['guidance_name']}: t = {[round(row['t']) for row in g]}; latent grad norm "
             f"{[format(row['latent_grad_norm'], '.3g') for row in g]}"]  # fmt: skip
    keys = [k for k in g[0] if k.startswith("d_")]
    lines.append("  term                          " + "  ".join(f"{k:>22}" for k in keys))

    def fmt(name: str, row: dict) -> str:
        return f"  {name:30}" + "  ".join(f"{row.get(k, 0.0):22.4g}" for k in keys)

    lines.append(fmt(f"{r['guidance_name']} (median of {len(g)})", med))
    for row in g:
        lines.append(fmt(f"  t={row['t']:.0f}", row))
    if "asset_lambda1" in r:
        a = r["asset_lambda1"]
        lines.append(fmt(f"asset, λ=1 {r['asset_terms']}", a))
        lam = r["loss_weights"].get("asset")
        if a["d_params"] > 0:
            star = med["d_params"] / a["d_params"]
            lines.append(f"  λ* (asset force = median guidance force on the parameters): "
                         f"{star:.4g}; config λ = {lam} → asset/guidance = "
                         f"{(lam or 0) / star:.3g}")  # fmt: skip
    for reg, row in r["regularizers"].items():
        lines.append(fmt(f"{reg} (×{row['weight']:g})", row))
        if "asset_lambda1" in r and r["asset_lambda1"]["d_params"] > 0:
            lam = r["loss_weights"].get("asset") or 0.0
            ratio = lam * r["asset_lambda1"]["d_params"] / max(row["d_params"], 1e-30)
            lines.append(f"    config asset force / {reg} force on the parameters: {ratio:.3g}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--prior", default="ra3d/sd21-base-random")
    parser.add_argument("--prompt", default="a teddy bear")
    parser.add_argument("--samples", type=int, default=3, help="draws of (t, ε) per stage (3)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--stages", default="coarse,geometry,texture")
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--run-stage", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        path, samples, *argv = args.run_stage
        return _run_stage(path, int(samples), argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="ra3d-lambda-"))
    out.mkdir(parents=True, exist_ok=True)
    results, previous = {}, None
    for stage in args.stages.split(","):
        path = out / f"{stage}.probe.json"
        argv = _argv(args, stage, out, previous)
        print(f"== {stage}: ra3d {' '.join(argv)}", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--run-stage", str(path), str(args.samples), *argv], cwd=REPO
        )
        if done.returncode != 0 or not path.is_file():
            print(f"{stage} stage failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode or 1
        results[stage] = json.loads(path.read_text())
        previous = out / STAGES[stage][0] / "lambda" / "checkpoints" / "last.ckpt"
    print(f"\nprior {args.prior}, prompt {args.prompt!r}, runs in {out}")
    for stage, r in results.items():
        print("\n".join(_summary(stage, r)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
