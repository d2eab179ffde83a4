"""``ra3d evaluate``: relative CLIP view similarity (Fig. 9), CLIP score, asset fidelity, files.

Every number is checked against an independent computation:

* a toy particle whose render *encodes its camera azimuth* in its colour and a fake CLIP that
  decodes it into a known "view vector", so every relative similarity, matching-view score and
  summary has a hand-computed value (a Janus particle shows its front from behind);
* a tiny random open_clip model built locally, against open_clip's own ``encode_image`` /
  ``encode_text`` on the same images;
* two spheres of known radii and offset: Chamfer distance by the closed-form mean distance between
  sphere surfaces, silhouette IoU and foreground PSNR by counting pixel centres inside the exact
  projected discs;
* the saved CSV / JSON against the plotted lines.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.cameras import Cameras
from ra3d.cli.evaluate import main_evaluate
from ra3d.evaluation.geometry import chamfer_distance, sample_surface
from ra3d.evaluation.report import (
    CSV_COLUMNS,
    relative_similarity_figure,
    write_comparison,
    write_run_report,
)
from ra3d.evaluation.run import EvalSettings, evaluate_run
from ra3d.representations.base import RenderOutput, Representation, TriangleMesh
from ra3d.representations.mesh import MeshAsset, MeshData
from ra3d.retrieval.embed import Embedder
from ra3d.retrieval.view_scores import (
    matching_view_index,
    relative_similarity,
    shifted_relative_similarity,
)
from ra3d.training.checkpoint import LoadedRun, RunRecord

# The 12-azimuth orbit (sorted), the prompt matching each azimuth (front within ±45° of 0, back
# within ±45° of 180), and what a Janus particle shows there (a' = 180 - a behind it).
AZ12 = [-180, -150, -120, -90, -60, -30, 0, 30, 60, 90, 120, 150]
MATCH12 = [2, 2, 1, 1, 1, 0, 0, 0, 1, 1, 1, 2]  # 0 front, 1 side, 2 back
JANUS12 = [0, -30, -60, -90, -60, -30, 0, 30, 60, 90, 60, 30]
PROMPT = "a toy robot"


# --------------------------------------------------------------------------- toys
class AzimuthCodedField(Representation):
    """A particle that renders one flat colour per camera encoding the azimuth it shows:
    ``rgb = (0.5 + 0.5 cos a', 0.5 + 0.5 sin a', 0)``, with ``a' = a`` or, for a Janus particle
    (``janus`` buffer = 1), ``a' = 180° - a`` for views behind it (|a| > 90°)."""

    def __init__(self, janus: bool = False) -> None:
        super().__init__()
        self.register_buffer("janus", torch.tensor(float(janus)))

    def render(self, cameras: Cameras) -> RenderOutput:
        a = cameras.azimuth.double()
        if float(self.janus) > 0.5:
            a = torch.where(a.abs() > 90.0, 180.0 - a, a)
        a = torch.deg2rad(a)
        colour = torch.stack([0.5 + 0.5 * a.cos(), 0.5 + 0.5 * a.sin(), torch.zeros_like(a)], -1)
        b, h, w = len(cameras), cameras.height, cameras.width
        rgb = colour.float()[:, None, None, :].expand(b, h, w, 3).contiguous()
        ones = torch.ones(b, h, w, 1)
        return RenderOutput(rgb=rgb, opacity=ones, depth=ones)


def view_vector(shown_deg: float) -> np.ndarray:
    """The fake CLIP's image embedding (before normalisation) of a view showing ``shown_deg``:
    (front, side, back, other) = (0.1 + max(cos, 0), 0.1 + |sin|, 0.1 + max(-cos, 0), 0.5)."""
    a = math.radians(shown_deg)
    return np.array(
        [0.1 + max(math.cos(a), 0.0), 0.1 + abs(math.sin(a)), 0.1 + max(-math.cos(a), 0.0), 0.5]
    )


class AzimuthEmbedder(Embedder):
    """Fake CLIP: texts "front/side/back view" are the unit vectors e0/e1/e2 (anything else e3);
    an image is decoded back to its azimuth and embedded as ``view_vector``."""

    supports_images = True

    def __init__(self) -> None:
        self.id = "test:azimuth-embedder"
        self.dim = 4

    def embed_text(self, texts: list[str]) -> Tensor:
        index = {"front view": 0, "side view": 1, "back view": 2}
        return torch.stack([F.one_hot(torch.tensor(index.get(t, 3)), 4).float() for t in texts])

    def embed_images(self, rgb: Tensor) -> Tensor:
        mean = rgb.double().mean(dim=(1, 2))  # [N, 3]
        shown = torch.rad2deg(torch.atan2(2 * mean[:, 1] - 1, 2 * mean[:, 0] - 1))
        vectors = torch.tensor(np.stack([view_vector(float(a)) for a in shown]))
        return F.normalize(vectors, dim=-1).float()


def toy_run(root: Path, janus: list[bool], particles: list[Representation] | None = None,
            retrieval: dict | None = None) -> LoadedRun:  # fmt: skip
    record = RunRecord(prompt=PROMPT, n_particles=len(janus), retrieval=retrieval)
    reps = particles if particles is not None else [AzimuthCodedField(j) for j in janus]
    return LoadedRun(root / "checkpoints" / "last.ckpt", record, reps)


def save_toy_checkpoint(root: Path, janus: list[bool], n_particles: int | None = None) -> Path:
    """A real checkpoint file of AzimuthCodedField particles (loadable by ``load_run``)."""
    record = RunRecord(
        prompt=PROMPT,
        n_particles=len(janus) if n_particles is None else n_particles,
        representation={"class_path": f"{__name__}.AzimuthCodedField", "init_args": {}},
    )
    state = {f"particles.{i}.janus": torch.tensor(float(j)) for i, j in enumerate(janus)}
    path = root / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "ra3d": record.to_dict()}, path)
    return path


def expected_scores(shown: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hand computation: ``(relative [K, 3], cosine [K, 3], clip score [K])``."""
    v = np.stack([view_vector(a) for a in shown])  # [K, 4]
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    relative = v[:, :3] / v[:, :3].sum(1, keepdims=True)  # the 1/‖v‖ of the cosines cancels
    return relative, v[:, :3] / norm, 100.0 * 0.5 / norm[:, 0]


# --------------------------------------------------------------------------- view scores
def test_score_forms_and_matching_view() -> None:
    cos = torch.tensor(
        [[0.3, 0.2, 0.1], [0.2, -0.1, -0.3], [0.05, -0.05, 0.0]], dtype=torch.float64
    )
    rel = relative_similarity(cos)
    torch.testing.assert_close(rel[0], torch.tensor([0.5, 1 / 3, 1 / 6], dtype=torch.float64))
    assert torch.isnan(rel[1]).all() and torch.isnan(rel[2]).all()  # sums -0.2 and 0: undefined
    shifted = shifted_relative_similarity(cos)
    s = (1 + cos[1]) / 2
    torch.testing.assert_close(shifted[1], s / s.sum())
    az = torch.tensor([0.0, 45.0, 45.5, -45.0, 90.0, 134.5, 135.0, -135.0, 180.0, -180.0])
    assert matching_view_index(az).tolist() == [0, 0, 1, 0, 1, 1, 2, 2, 2, 2]


def test_relative_similarity_matches_hand_computation(tmp_path: Path) -> None:
    run = toy_run(tmp_path / "toy", janus=[False, True])
    result = evaluate_run(run, EvalSettings(n_azimuths=12, size=8), AzimuthEmbedder())
    for particle, shown, accuracy in zip(
        result.particles, (AZ12, JANUS12), (1.0, 0.75), strict=True
    ):
        np.testing.assert_allclose(particle.azimuths_deg.numpy(), AZ12, atol=1e-4)
        relative, cosine, clip = expected_scores(shown)
        vs = particle.view_scores
        np.testing.assert_allclose(vs.relative.numpy(), relative, atol=1e-6)
        np.testing.assert_allclose(vs.cosine.numpy(), cosine, atol=1e-6)
        np.testing.assert_allclose(particle.clip_score.numpy(), clip, atol=1e-4)
        assert vs.matching.tolist() == MATCH12
        matched = relative[np.arange(12), MATCH12]
        np.testing.assert_allclose(vs.matching_relative.numpy(), matched, atol=1e-6)
        summary = particle.summary()
        assert summary["view_consistency"] == pytest.approx(matched.mean(), abs=1e-6)
        # Faithful: every view's best prompt is right. Janus: its back views (-180, -150, 150)
        # look like fronts, so 9 of 12 are right.
        assert summary["best_prompt_accuracy"] == accuracy
        front = [k for k in range(12) if MATCH12[k] == 0]
        back = [k for k in range(12) if MATCH12[k] == 2]
        assert summary["front_in_front"] == pytest.approx(relative[front, 0].mean(), abs=1e-6)
        assert summary["back_in_back"] == pytest.approx(relative[back, 2].mean(), abs=1e-6)
        assert summary["asset_iou"] is None and summary["chamfer"] is None
    # The Janus particle is less view-consistent, as Fig. 9's baseline.
    s0, s1 = (p.summary()["view_consistency"] for p in result.particles)
    assert s1 < s0
    assert result.summary()["view_consistency"] == pytest.approx((s0 + s1) / 2, abs=1e-12)


# --------------------------------------------------------------------------- tiny open_clip
def test_cli_with_open_clip_matches_open_clip_encoders(
    tiny_clip: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import open_clip

    name, weights, folder = tiny_clip
    run, other = tmp_path / "toy_run", tmp_path / "janus_run"
    save_toy_checkpoint(run, [False, True])
    save_toy_checkpoint(other, [True])
    argv = [str(run), str(other), "--size", "32", "--n-azimuths", "12",
            "--clip-model", f"local-dir:{folder}", "--out", str(tmp_path / "cmp")]  # fmt: skip
    assert main_evaluate(argv) == 0
    printed = capsys.readouterr().out
    assert f"| {tmp_path.name}/toy_run | all |" in printed  # the summary table, labelled
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["clip"]["available"] and metrics["clip"]["model"].startswith("open_clip:local:")
    # The comparison table holds each run's own summary; its Janus particle equals particle 1.
    rows = read_csv(tmp_path / "cmp" / "summary.csv")
    assert [(r["run"].split("/")[-1], r["particle"]) for r in rows] == [
        ("toy_run", "all"), ("toy_run", "0"), ("toy_run", "1"),
        ("janus_run", "all"), ("janus_run", "0"),
    ]  # fmt: skip
    other_metrics = json.loads((other / "eval" / "metrics.json").read_text())
    for key in ("view_consistency", "best_prompt_accuracy", "clip_score"):
        assert float(rows[0][key]) == pytest.approx(metrics["summary"][key], rel=1e-12)
        assert float(rows[3][key]) == pytest.approx(other_metrics["summary"][key], rel=1e-12)
        assert other_metrics["summary"][key] == pytest.approx(
            metrics["particles"][1]["summary"][key], rel=1e-9
        )
    assert (tmp_path / "cmp" / "relative_similarity.png").is_file()

    # Independent: open_clip's own model and encoders on the toy's images (32 px = model size,
    # so the only preprocessing is open_clip's mean/std normalisation).
    model = open_clip.create_model(name, pretrained=str(weights)).eval()
    tokenizer = open_clip.get_tokenizer(name)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        views = model.encode_text(
            tokenizer(["front view", "side view", "back view"]), normalize=True
        )
        prompt = model.encode_text(tokenizer([PROMPT]), normalize=True)
    for p, shown in enumerate((AZ12, JANUS12)):
        a = torch.deg2rad(torch.tensor(shown, dtype=torch.float64))
        colour = torch.stack([0.5 + 0.5 * a.cos(), 0.5 + 0.5 * a.sin(), torch.zeros_like(a)], -1)
        images = colour.float()[:, :, None, None].expand(12, 3, 32, 32)
        with torch.no_grad():
            emb = model.encode_image((images - mean) / std, normalize=True)
        cos = (emb @ views.T).double().numpy()  # [12, 3]
        assert (cos.sum(1) > 0.5).all()  # the ratio is well conditioned for this model
        ref_relative = cos / cos.sum(1, keepdims=True)
        ref_clip = np.maximum(100.0 * (emb @ prompt.T)[:, 0].double().numpy(), 0.0)
        rows = metrics["particles"][p]["views"]
        ours = np.array([[r["rel_front"], r["rel_side"], r["rel_back"]] for r in rows])
        np.testing.assert_allclose(ours, ref_relative, atol=2e-5)
        np.testing.assert_allclose([r["clip_score"] for r in rows], ref_clip, atol=2e-3)
        np.testing.assert_allclose(
            [[r["cos_front"], r["cos_side"], r["cos_back"]] for r in rows], cos, atol=1e-5
        )
        matched = ref_relative[np.arange(12), MATCH12]
        summary = metrics["particles"][p]["summary"]
        assert summary["view_consistency"] == pytest.approx(matched.mean(), abs=2e-5)
        best_ok = np.argmax(ref_relative, axis=1) == np.array(MATCH12)
        assert summary["best_prompt_accuracy"] == pytest.approx(best_ok.mean())


# --------------------------------------------------------------------------- spheres
def mean_distance_to_sphere(r_a: float, r_b: float, d: float) -> float:
    """E‖ρ − r_b‖ for ρ = distance from a uniform point on a sphere of radius ``r_a`` to the centre
    of a sphere of radius ``r_b`` at distance ``d`` from it (the point's distance to that sphere's
    surface). ρ has density ρ / (2 r_a d) on [|r_a − d|, r_a + d] (Archimedes' hat-box theorem)."""
    lo, hi = abs(r_a - d), r_a + d

    def primitive(x: float) -> float:  # ∫ (ρ - r_b) ρ dρ
        return x**3 / 3 - r_b * x**2 / 2

    def integral(a: float, b: float, sign: float) -> float:
        return sign * (primitive(b) - primitive(a)) if b > a else 0.0

    split = min(max(r_b, lo), hi)
    return (integral(lo, split, -1.0) + integral(split, hi, 1.0)) / (2 * r_a * d)


def icosphere(radius: float, centre: tuple[float, float, float]) -> tuple[Tensor, Tensor]:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    vertices = torch.tensor(np.asarray(sphere.vertices) + np.asarray(centre), dtype=torch.float32)
    return vertices, torch.tensor(np.asarray(sphere.faces), dtype=torch.long)


def test_chamfer_distance_closed_form() -> None:
    # Sphere A (r 0.45) centred 0.1 from sphere B (r 0.5): A's points lie on both sides of B.
    a = sample_surface(TriangleMesh(*icosphere(0.45, (0.1, 0.0, 0.0))), 20000, seed=0)
    b = sample_surface(TriangleMesh(*icosphere(0.5, (0.0, 0.0, 0.0))), 20000, seed=1)
    expected = 0.5 * (
        mean_distance_to_sphere(0.45, 0.5, 0.1) + mean_distance_to_sphere(0.5, 0.45, 0.1)
    )
    # Tolerance: Monte-Carlo error of the means (std ≈ 0.03 / √20000 ≈ 2e-4) plus the nearest
    # sample's lateral offset (spacing ≈ √(π / 20000) ≈ 0.0125) for points close to the other
    # surface; icosphere faceting (≈ 1e-4 r) is negligible.
    assert chamfer_distance(a, b) == pytest.approx(expected, abs=1.5e-3)
    # Concentric spheres: every point is exactly |r_a - r_b| from the other surface.
    c = sample_surface(TriangleMesh(*icosphere(0.3, (0.0, 0.0, 0.0))), 20000, seed=2)
    assert chamfer_distance(c, b) == pytest.approx(0.2, abs=2e-3)
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_distance(np.zeros((0, 3)), b)


def disc_pixels(size: int, fovy_deg: float, radius: float, centre_distance: float) -> np.ndarray:
    """Mask of pixel centres inside the exact perspective silhouette of a sphere centred on the
    optical axis: a disc of radius ``f tan(asin(r / d))`` around the image centre."""
    f = 0.5 * size / math.tan(math.radians(fovy_deg) / 2)
    r_px = f * math.tan(math.asin(radius / centre_distance))
    c = np.arange(size) + 0.5 - size / 2
    return (c[None, :] ** 2 + c[:, None] ** 2) < r_px**2


def test_asset_fidelity_of_offset_spheres(tmp_path: Path) -> None:
    import trimesh

    # The asset: a blue unit sphere on disk, fitted by the run into radius 0.5 at the origin.
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    sphere.visual.vertex_colors = np.tile([0, 0, 255, 255], (len(sphere.vertices), 1))
    sphere.export(tmp_path / "sphere.ply")
    asset = {"uid": "sphere", "caption": "a ball", "score": 1.0,
             "mesh_path": str(tmp_path / "sphere.ply"), "front_azimuth_deg": 0.0}  # fmt: skip
    # The particle: a red sphere of radius 0.45 centred at (0.1, 0, 0).
    vertices, faces = icosphere(0.45, (0.1, 0.0, 0.0))
    red = torch.tensor([1.0, 0.0, 0.0]).expand(len(vertices), 3).contiguous()
    particle = MeshAsset(MeshData(vertices, faces, vertex_colors=red), backend="torch")
    run = toy_run(
        tmp_path / "run", [False], particles=[particle],
        retrieval={"assets": [asset], "assignment": [0], "asset_radius": 0.5},
    )  # fmt: skip
    size, fovy, dist = 96, 40.0, 3.0
    settings = EvalSettings(n_azimuths=4, size=size, distance=dist, fovy_deg=fovy,
                            chamfer_points=20000)  # fmt: skip
    result = evaluate_run(run, settings, embedder=None, clip_unavailable="test: no CLIP")
    p = result.particles[0]
    assert p.view_scores is None and result.clip == {"available": False, "reason": "test: no CLIP"}
    assert p.azimuths_deg.tolist() == [-180.0, -90.0, 0.0, 90.0] and p.asset_uid == "sphere"
    # At azimuths 0 and 180 both centres lie on the optical axis: concentric discs.
    for k, particle_distance in ((2, dist - 0.1), (0, dist + 0.1)):
        inner = disc_pixels(size, fovy, 0.45, particle_distance)
        outer = disc_pixels(size, fovy, 0.5, dist)
        assert (inner <= outer).all()
        n_in, n_out = int(inner.sum()), int(outer.sum())
        # Faceting moves the silhouette by < 2e-4 r ≈ 0.01 px: at most one boundary pixel flips.
        assert float(p.asset_iou[k]) == pytest.approx(n_in / n_out, abs=1.0 / n_out)
        # Foreground PSNR over the union: red vs blue inside the particle's disc (squared error
        # 2 per pixel over 3 channels), blue vs nothing in the ring (1 per pixel).
        mse = (2.0 * n_in + 1.0 * (n_out - n_in)) / (3.0 * n_out)
        assert float(p.asset_psnr[k]) == pytest.approx(-10 * math.log10(mse), abs=0.01)
    expected = 0.5 * (
        mean_distance_to_sphere(0.45, 0.5, 0.1) + mean_distance_to_sphere(0.5, 0.45, 0.1)
    )
    assert p.chamfer == pytest.approx(expected, abs=1.5e-3)
    # The asset-fidelity files are written without CLIP; no relative-similarity plot.
    files = write_run_report(result)
    assert files["metrics"] == tmp_path / "run" / "eval" / "metrics.json"
    assert "relative_plot" not in files and files["asset_plot"].is_file()
    saved = json.loads(files["metrics"].read_text())
    assert saved["summary"]["chamfer"] == pytest.approx(p.chamfer)
    assert saved["summary"]["view_consistency"] is None
    assert saved["clip"]["reason"] == "test: no CLIP"


# --------------------------------------------------------------------------- files and plots
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_plots_show_the_saved_data(tmp_path: Path) -> None:
    from PIL import Image

    run = toy_run(tmp_path / "toy", janus=[False, True])
    result = evaluate_run(run, EvalSettings(n_azimuths=12, size=8), AzimuthEmbedder())
    files = write_run_report(result)
    png = Image.open(files["relative_plot"])
    assert png.format == "PNG" and png.size[0] > 400
    metrics = json.loads(files["metrics"].read_text())
    fig = relative_similarity_figure([result])
    front_ax, back_ax = fig.axes[:2]
    for i in range(2):
        rows = read_csv(files[f"particle_{i}"])
        assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 12
        az = [float(r["azimuth_deg"]) for r in rows]
        for ax, column in ((front_ax, "rel_front"), (back_ax, "rel_back")):
            x, y = ax.lines[i].get_data()
            # The plotted line is the CSV, with the -180° point repeated at +180°.
            np.testing.assert_allclose(x, [*az, 180.0])
            values = [float(r[column]) for r in rows]
            np.testing.assert_allclose(y, [*values, values[0]], rtol=1e-12)
            json_values = [v[column] for v in metrics["particles"][i]["views"]]
            np.testing.assert_allclose(values, json_values, rtol=1e-12)
        relative, _, _ = expected_scores((AZ12, JANUS12)[i])
        np.testing.assert_allclose([float(r["rel_back"]) for r in rows], relative[:, 2], atol=1e-6)
        assert [r["matching_view"] for r in rows] == [
            ("front view", "side view", "back view")[m] for m in MATCH12
        ]

    # The shaded regions are the ±45° front (left) and back (right) regions of Fig. 9.
    def spans(ax) -> list[tuple[float, float]]:  # noqa: ANN001
        return sorted(
            (round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6)) for p in ax.patches
        )

    assert spans(front_ax) == [(-45.0, 45.0)]
    assert spans(back_ax) == [(-180.0, -135.0), (135.0, 180.0)]


def test_comparison_overlays_runs_and_tabulates(tmp_path: Path) -> None:
    good = toy_run(tmp_path / "ours" / "version_0", janus=[False])
    janus = toy_run(tmp_path / "baseline" / "version_0", janus=[True])
    settings = EvalSettings(n_azimuths=12, size=8)
    results = [evaluate_run(r, settings, AzimuthEmbedder()) for r in (good, janus)]
    files = write_comparison(results, tmp_path / "compare")
    rows = read_csv(files["summary_csv"])
    assert [(r["run"], r["particle"]) for r in rows] == [
        ("ours/version_0", "all"), ("ours/version_0", "0"),
        ("baseline/version_0", "all"), ("baseline/version_0", "0"),
    ]  # fmt: skip
    for row, shown in ((rows[0], AZ12), (rows[2], JANUS12)):
        relative, _, clip = expected_scores(shown)
        matched = relative[np.arange(12), MATCH12]
        assert float(row["view_consistency"]) == pytest.approx(matched.mean(), abs=1e-6)
        assert float(row["clip_score"]) == pytest.approx(clip.mean(), abs=1e-4)
        assert row["asset_iou"] == ""  # no assets: empty, not zero
    assert float(rows[0]["best_prompt_accuracy"]) == 1.0
    assert float(rows[2]["best_prompt_accuracy"]) == 0.75
    table = files["summary"].read_text()
    assert "| ours/version_0 | all |" in table and "| baseline/version_0 | all |" in table
    fig = relative_similarity_figure(results)
    assert [line.get_label() for line in fig.axes[0].lines] == [
        "ours/version_0 · particle 0", "baseline/version_0 · particle 0",
    ]  # fmt: skip
    _, y = fig.axes[0].lines[1].get_data()
    np.testing.assert_allclose(y[:12], expected_scores(JANUS12)[0][:, 0], atol=1e-6)
    assert files["relative_plot"].is_file()


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_give_one_clear_message(
    tiny_clip: tuple[str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def run(argv: list[str]) -> str:
        assert main_evaluate(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    (tmp_path / "empty").mkdir()
    assert "is a folder without checkpoints/last.ckpt" in run([str(tmp_path / "empty")])
    assert "checkpoint not found" in run([str(tmp_path / "missing")])
    save_toy_checkpoint(tmp_path / "none", [], n_particles=0)
    assert "holds no particles" in run([str(tmp_path / "none"), "--no-clip"])
    good = tmp_path / "good"
    save_toy_checkpoint(good, [False])
    err = run([str(good), "--clip-model", "no-such-clip"])
    assert "unknown open_clip model 'no-such-clip'" in err
    err = run([str(good), "--clip-model", "ViT-B-32", "--clip-pretrained", str(tmp_path / "x.pt")])
    assert "not found" in err
    # Known model, weights not on this machine: CLIP metrics are unavailable; without assets
    # there is nothing else to compute, and the message says what and why.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    err = run([str(good)])
    assert "nothing to evaluate" in err and "--clip-pretrained" in err
    assert "ra3d evaluate: error: --n-azimuths must be >= 1" in run(
        [str(good), "--n-azimuths", "0"]
    )
