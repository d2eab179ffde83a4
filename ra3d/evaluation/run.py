"""Evaluation of a run: the paper's relative CLIP view metric (Fig. 9), CLIP score, asset fidelity.

Every particle of a run is rendered on an orbit at one elevation (the paper: "rendered at various
azimuths, same elevation", Sec. 5.2) and measured three ways:

* **3D consistency** (Sec. 5.2, Fig. 9). Each render ``x(a)`` at azimuth ``a`` is scored with CLIP
  against "front view", "side view" and "back view"; the *relative similarity* of a prompt is its
  cosine divided by the sum over the three prompts (the paper's ratio, see
  :mod:`ra3d.retrieval.view_scores`). A 3D-consistent object is "front view" around ``a = 0`` and
  "back view" around ``a = 180°``; a Janus object is "front view" everywhere. Summaries:
  ``view_consistency`` (mean relative similarity of the prompt matching each azimuth),
  ``best_prompt_accuracy`` (fraction of azimuths whose best prompt is the matching one) and
  ``front_in_front`` / ``back_in_back`` (the curves of Fig. 9 averaged over their shaded regions).
* **CLIP score** of the renders against the run's prompt c: ``max(100 · cos, 0)`` per render, the
  definition of Hessel et al. (2021) that torchmetrics' ``CLIPScore`` uses.
* **Asset fidelity** of particle ``i`` to its assigned asset ``θ_ret^(π(i))`` (Eq. 10–11): at the
  same cameras, silhouette IoU and foreground PSNR (:mod:`ra3d.representations.metrics`) — what the asset term
  pulls together — and the symmetric Chamfer distance between the particle's extracted surface and
  the asset mesh (:mod:`ra3d.evaluation.geometry`) when the particle has a surface at the threshold.

CLIP metrics need CLIP weights; offline without them only the asset fidelity is computed and the
result says so (``clip.available = false`` with the reason). The files (``metrics.json``, one CSV
per particle, the Fig. 9-style plots, comparison tables) are written by
:mod:`ra3d.evaluation.report`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ra3d.cameras import Cameras, orbit_cameras
from ra3d.errors import CheckpointError, ConfigError
from ra3d.evaluation.geometry import surface_chamfer
from ra3d.representations.base import RenderOutput, Representation, TriangleMesh
from ra3d.representations.metrics import foreground_psnr, foreground_rgb, silhouette_iou
from ra3d.retrieval.embed import Embedder
from ra3d.retrieval.view_scores import VIEW_PROMPTS, ViewPromptScores, view_prompt_scores
from ra3d.training.checkpoint import LoadedRun

logger = logging.getLogger(__name__)

#: Camera distance and vertical field of view used when neither the options nor the run's
#: ``config.yaml`` (``data.eval_camera_distance`` / ``data.eval_fovy_deg``) give them: the
#: defaults of :class:`ra3d.training.data.RandomCameraDataModule`, i.e. what such a run evaluated with.
DEFAULT_DISTANCE = 1.5
DEFAULT_FOVY_DEG = 70.0
BACKGROUNDS = ("render", "white")


@dataclass
class EvalSettings:
    """How a run is rendered and measured (the ``ra3d evaluate`` options).

    Attributes:
        elevation_deg: elevation of the orbit (the paper: one elevation for all azimuths).
        n_azimuths: number of evenly spaced azimuths, starting at 0 (36: every 10°).
        size: render size in pixels (CLIP resizes to its input size; 224 is ViT-L/14's).
        distance, fovy_deg: orbit radius and vertical field of view; ``None`` takes the run's
            evaluation cameras from its ``config.yaml``, else 1.5 and 70°.
        background: ``"render"`` scores the images as the particle renders them (its learned
            background included); ``"white"`` composites the foreground on white first.
        batch_size: views rendered per call.
        mesh_resolution, mesh_threshold: ``extract_mesh`` arguments for the Chamfer distance
            (``None`` threshold: the representation's default, 25 for the NeRF); see
            :mod:`ra3d.evaluation.geometry`.
        chamfer_points: surface samples per mesh for the Chamfer distance.
        seed: seed of the surface sampling.
    """

    elevation_deg: float = 0.0
    n_azimuths: int = 36
    size: int = 224
    distance: float | None = None
    fovy_deg: float | None = None
    background: str = "render"
    batch_size: int = 4
    mesh_resolution: int = 128
    mesh_threshold: float | None = None
    chamfer_points: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        if not -90.0 <= float(self.elevation_deg) <= 90.0:
            raise ConfigError(
                f"--elevation must lie in [-90, 90] degrees, got {self.elevation_deg}"
            )
        if int(self.n_azimuths) < 1:
            raise ConfigError(f"--n-azimuths must be >= 1, got {self.n_azimuths}")
        if int(self.size) < 8:
            raise ConfigError(f"--size must be >= 8 pixels, got {self.size}")
        if self.distance is not None and float(self.distance) <= 0:
            raise ConfigError(f"--distance must be positive, got {self.distance}")
        if self.fovy_deg is not None and not 0.0 < float(self.fovy_deg) < 180.0:
            raise ConfigError(f"--fovy must lie in (0, 180) degrees, got {self.fovy_deg}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"--background must be one of {BACKGROUNDS}, got {self.background!r}")
        if int(self.batch_size) < 1 or int(self.chamfer_points) < 1:
            raise ConfigError("batch_size and chamfer_points must be >= 1")
        if int(self.mesh_resolution) < 2:
            raise ConfigError(f"--mesh-resolution must be >= 2, got {self.mesh_resolution}")

    def resolved_for(self, run: LoadedRun) -> EvalSettings:
        """These settings with ``distance``/``fovy_deg`` filled from the run's config if unset."""
        config = _run_eval_cameras(run.run_dir / "config.yaml")
        distance = self.distance if self.distance is not None else config.get("distance")
        fovy = self.fovy_deg if self.fovy_deg is not None else config.get("fovy_deg")
        return EvalSettings(
            **{
                **asdict(self),
                "distance": float(distance if distance is not None else DEFAULT_DISTANCE),
                "fovy_deg": float(fovy if fovy is not None else DEFAULT_FOVY_DEG),
            }
        )

    def cameras(self) -> Cameras:
        """The orbit, sorted by azimuth in [-180, 180) (0 is always one of them)."""
        if self.distance is None or self.fovy_deg is None:
            raise ConfigError("resolve the camera distance and fovy first (resolved_for(run))")
        cams = orbit_cameras(
            int(self.n_azimuths),
            int(self.size),
            int(self.size),
            float(self.elevation_deg),
            float(self.distance),
            float(self.fovy_deg),
        )
        return cams[torch.argsort(cams.azimuth)]


def _run_eval_cameras(config: Path) -> dict[str, float]:
    """``{"distance", "fovy_deg"}`` of the run's evaluation cameras from its ``config.yaml``."""
    if not config.is_file():
        return {}
    import yaml

    try:
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError):
        return {}
    out = {}
    for key, name in (("eval_camera_distance", "distance"), ("eval_fovy_deg", "fovy_deg")):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


# --------------------------------------------------------------------------- results
@dataclass
class ParticleEvaluation:
    """Per-azimuth and summary measurements of one particle.

    Attributes:
        index: particle index i.
        azimuths_deg: ``[K]`` azimuths of the orbit (sorted).
        view_scores: CLIP view-prompt scores, None without CLIP.
        clip_score: ``[K]`` CLIP score ``max(100 cos, 0)`` against the prompt, None without CLIP.
        asset_index, asset_uid: π(i) and its asset, None without retrieval.
        asset_iou, asset_psnr: ``[K]`` silhouette IoU and foreground PSNR (dB) to the asset.
        chamfer: Chamfer distance to the asset mesh, None when not computed (``notes`` says why).
    """

    index: int
    azimuths_deg: Tensor
    view_scores: ViewPromptScores | None = None
    clip_score: Tensor | None = None
    asset_index: int | None = None
    asset_uid: str | None = None
    asset_iou: Tensor | None = None
    asset_psnr: Tensor | None = None
    chamfer: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        """The particle's summary numbers (None where not computed)."""
        out: dict[str, float | None] = {k: None for k in SUMMARY_KEYS}
        if self.view_scores is not None:
            s = self.view_scores.summary()
            for key in (
                "view_consistency",
                "best_prompt_accuracy",
                "front_in_front",
                "back_in_back",
            ):
                out[key] = _finite_or_none(s[key])
        if self.clip_score is not None:
            out["clip_score"] = float(self.clip_score.mean())
        if self.asset_iou is not None:
            out["asset_iou"] = float(self.asset_iou.mean())
        if self.asset_psnr is not None:
            out["asset_psnr"] = float(self.asset_psnr.mean())
        out["chamfer"] = self.chamfer
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per azimuth (the CSV and the plots' data); None where not computed."""
        rows = []
        vs = self.view_scores
        for k, az in enumerate(self.azimuths_deg.tolist()):
            row: dict[str, Any] = {"azimuth_deg": round(float(az), 6)}
            if vs is not None:
                best = int(vs.best[k])
                row["matching_view"] = VIEW_PROMPTS[int(vs.matching[k])]
                row["best_view"] = VIEW_PROMPTS[best] if best >= 0 else None
                for p, word in enumerate(("front", "side", "back")):
                    row[f"rel_{word}"] = _finite_or_none(float(vs.relative[k, p]))
                for p, word in enumerate(("front", "side", "back")):
                    row[f"cos_{word}"] = float(vs.cosine[k, p])
            if self.clip_score is not None:
                row["clip_score"] = float(self.clip_score[k])
            if self.asset_iou is not None:
                row["asset_iou"] = float(self.asset_iou[k])
            if self.asset_psnr is not None:
                row["asset_psnr"] = float(self.asset_psnr[k])
            rows.append(row)
        return rows


SUMMARY_KEYS: tuple[str, ...] = (
    "view_consistency",
    "best_prompt_accuracy",
    "front_in_front",
    "back_in_back",
    "clip_score",
    "asset_iou",
    "asset_psnr",
    "chamfer",
)


@dataclass
class RunEvaluation:
    """Everything ``ra3d evaluate`` measured on one run (see :func:`evaluate_run`)."""

    label: str
    checkpoint: Path
    run_dir: Path
    prompt: str
    settings: EvalSettings
    clip: dict[str, Any]
    particles: list[ParticleEvaluation]
    notes: list[str] = field(default_factory=list)

    @property
    def eval_dir(self) -> Path:
        """``<run>/eval`` (``<run>/eval/<ckpt stem>`` for a checkpoint other than last.ckpt)."""
        base = self.run_dir / "eval"
        return base if self.checkpoint.name == "last.ckpt" else base / self.checkpoint.stem

    @property
    def has_clip(self) -> bool:
        return bool(self.clip.get("available"))

    @property
    def has_assets(self) -> bool:
        return any(p.asset_iou is not None for p in self.particles)

    def summary(self) -> dict[str, float | None]:
        """Run summary: the mean of each particle summary over the particles that have it."""
        per = [p.summary() for p in self.particles]
        out: dict[str, float | None] = {}
        for key in SUMMARY_KEYS:
            values = [s[key] for s in per if s[key] is not None]
            out[key] = float(np.mean(values)) if values else None
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` document (NaN and missing values as null)."""
        return _json_safe(
            {
                "label": self.label,
                "checkpoint": str(self.checkpoint),
                "run_dir": str(self.run_dir),
                "prompt": self.prompt,
                "settings": asdict(self.settings),
                "view_prompts": list(VIEW_PROMPTS),
                "clip": self.clip,
                "summary": self.summary(),
                "notes": self.notes,
                "particles": [
                    {
                        "index": p.index,
                        "asset_index": p.asset_index,
                        "asset_uid": p.asset_uid,
                        "summary": p.summary(),
                        "n_undefined_relative": (
                            p.view_scores.n_undefined if p.view_scores is not None else None
                        ),
                        "notes": p.notes,
                        "views": p.rows(),
                    }
                    for p in self.particles
                ],
            }
        )


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- evaluation
def run_label(run: LoadedRun) -> str:
    """A short name of the run for tables and legends: ``<name>/<version>`` of a run folder."""
    ckpt = run.checkpoint_path
    if ckpt.parent.name == "checkpoints":
        label = "/".join(ckpt.parent.parent.parts[-2:])
        return label if ckpt.name == "last.ckpt" else f"{label}:{ckpt.stem}"
    return ckpt.stem


@torch.no_grad()
def _render_views(rep: Representation, cameras: Cameras, batch_size: int) -> list[RenderOutput]:
    return [rep.render(cameras[s : s + batch_size]) for s in range(0, len(cameras), batch_size)]


def _images_for_clip(outputs: list[RenderOutput], background: str) -> Tensor:
    """``[K, H, W, 3]`` CPU images in [0, 1] as CLIP sees them."""
    images = []
    for out in outputs:
        rgb = out.rgb if background == "render" else foreground_rgb(out) + (1.0 - out.opacity)
        images.append(rgb.detach().float().cpu().clamp(0, 1))
    return torch.cat(images)


def _assets_for(run: LoadedRun, device: torch.device | str) -> tuple[list[Any], list[str]]:
    """The run's asset meshes (one per retrieved asset) or ``([], [why not])``."""
    if not run.assets:
        return [], ["no retrieved assets recorded in the checkpoint: asset fidelity not computed"]
    assignment = run.assignment
    n, m = len(run.particles), len(run.assets)
    if len(assignment) != n or any(not 0 <= a < m for a in assignment):
        return [], [
            f"the checkpoint's assignment {assignment} does not map {n} particle(s) to its {m} "
            "asset(s): asset fidelity not computed"
        ]
    try:
        meshes = run.asset_meshes()
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        return [], [f"asset fidelity not computed: {err}"]
    return [mesh.to(device).eval() for mesh in meshes], []


def evaluate_run(
    run: LoadedRun,
    settings: EvalSettings | None = None,
    embedder: Embedder | None = None,
    clip_unavailable: str | None = None,
) -> RunEvaluation:
    """Measure every particle of ``run`` (see the module docstring).

    Args:
        run: a loaded run (:func:`ra3d.training.checkpoint.load_run`).
        settings: orbit and metric settings; distance/fovy are resolved from the run if unset.
        embedder: an image-capable CLIP embedder, or None to skip the CLIP metrics.
        clip_unavailable: why there is no embedder (recorded in the result and the log).
    """
    if not run.particles:
        raise CheckpointError(
            f"{run.checkpoint_path} holds no particles (n_particles = {run.record.n_particles}); "
            "evaluate a checkpoint written by ra3d fit"
        )
    settings = (settings or EvalSettings()).resolved_for(run)
    device = next(
        (t.device for p in run.particles for t in list(p.parameters()) + list(p.buffers())),
        torch.device("cpu"),
    )
    cameras = settings.cameras().to(device)
    clip: dict[str, Any] = {"available": embedder is not None}
    prompt_emb = text_emb = None
    if embedder is not None:
        if not embedder.supports_images:
            raise ConfigError(
                f"embedder {embedder.id!r} cannot embed images; the view metric needs CLIP"
            )
        clip["model"] = embedder.id
        prompt_emb = embedder.embed_text(list(VIEW_PROMPTS))  # [3, D]
        text_emb = embedder.embed_text([run.prompt])  # [1, D]
    else:
        clip["reason"] = clip_unavailable or "no CLIP embedder given"
    assets, notes = _assets_for(run, device)
    asset_meshes: dict[int, TriangleMesh] = {}
    results = []
    for i, particle in enumerate(run.particles):
        particle.eval()
        logger.info(
            "rendering particle %d/%d of %s: %d views at %d px",
            i + 1, len(run.particles), run_label(run), len(cameras), settings.size,
        )  # fmt: skip
        outputs = _render_views(particle, cameras, int(settings.batch_size))
        result = ParticleEvaluation(index=i, azimuths_deg=cameras.azimuth.detach().double().cpu())
        if embedder is not None:
            image_emb = embedder.embed_images(_images_for_clip(outputs, settings.background))
            result.view_scores = view_prompt_scores(result.azimuths_deg, image_emb, prompt_emb)
            cos = (torch.nn.functional.normalize(image_emb.double(), dim=-1)
                   @ torch.nn.functional.normalize(text_emb.double(), dim=-1).T)[:, 0]  # fmt: skip
            result.clip_score = (100.0 * cos).clamp_min(0.0)
            if result.view_scores.n_undefined:
                result.notes.append(
                    f"{result.view_scores.n_undefined} render(s) have a non-positive sum of "
                    "view-prompt cosines: their relative similarity is undefined (null)"
                )
        a_used = run.particle_assets[i] if assets else None
        if assets and a_used is None:
            result.notes.append(
                f"particle {i}'s asset {run.assets[run.assignment[i]].uid} was skipped by the "
                "relevance floor (it ran without the asset term): asset fidelity not computed"
            )
        if assets and a_used is not None:
            a = a_used
            asset = assets[a]
            result.asset_index, result.asset_uid = a, run.assets[a].uid
            refs = _render_views(asset, cameras, int(settings.batch_size))
            result.asset_iou = torch.cat(
                [silhouette_iou(o.opacity, r.opacity) for o, r in zip(outputs, refs, strict=True)]
            ).double()
            result.asset_psnr = torch.cat(
                [foreground_psnr(o, r) for o, r in zip(outputs, refs, strict=True)]
            ).double()
            if a not in asset_meshes:
                asset_meshes[a] = asset.extract_mesh()
            result.chamfer, why = surface_chamfer(
                particle,
                asset_meshes[a],
                settings.mesh_resolution,
                settings.mesh_threshold,
                settings.chamfer_points,
                settings.seed,
            )
            if why is not None:
                result.notes.append(f"Chamfer distance not computed ({why})")
        results.append(result)
        logger.info("evaluated particle %d of %s: %s", i, run_label(run), _brief(result.summary()))
    return RunEvaluation(
        label=run_label(run),
        checkpoint=run.checkpoint_path,
        run_dir=run.run_dir,
        prompt=run.prompt,
        settings=settings,
        clip=clip,
        particles=results,
        notes=notes,
    )


def _brief(summary: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if v is not None) or "nothing"


__all__ = [
    "BACKGROUNDS",
    "SUMMARY_KEYS",
    "EvalSettings",
    "ParticleEvaluation",
    "RunEvaluation",
    "evaluate_run",
    "run_label",
    "surface_chamfer",
]
