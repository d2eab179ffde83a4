"""Files of ``ra3d evaluate``: ``metrics.json``, per-particle CSVs, Fig. 9-style plots, tables.

One run (``<run>/eval/``):

* ``metrics.json`` — settings, CLIP model (or why CLIP metrics are missing), the run summary, and
  per particle its summary and per-azimuth values (:meth:`RunEvaluation.to_json`);
* ``particle_<i>.csv`` — one row per azimuth, the data behind the plots (:data:`CSV_COLUMNS`);
* ``relative_similarity.png`` — relative CLIP similarity to "front view" (left) and "back view"
  (right) against azimuth, with the ±45° front / back regions shaded red as in the paper's Fig. 9,
  one curve per particle (only with CLIP);
* ``asset_fidelity.png`` — silhouette IoU and foreground PSNR to the assigned asset against
  azimuth (only with retrieved assets);
* ``summary.md`` — the summary table.

Several runs (``--out``, default ``./eval_compare/``): the same two plots with every run overlaid
(one colour per run, one line style per particle) and ``summary.md`` / ``summary.csv`` with the
runs side by side (a row per run, then a row per particle).

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state), and
the functions building them return the figure, so the plotted data can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ra3d.evaluation.run import SUMMARY_KEYS, RunEvaluation
from ra3d.io import atomic_write, write_csv_atomic, write_json_atomic, write_text_atomic

CSV_COLUMNS: tuple[str, ...] = (
    "azimuth_deg",
    "matching_view",
    "best_view",
    "rel_front",
    "rel_side",
    "rel_back",
    "cos_front",
    "cos_side",
    "cos_back",
    "clip_score",
    "asset_iou",
    "asset_psnr",
)
#: Column titles of the summary tables.
SUMMARY_TITLES: dict[str, str] = {
    "view_consistency": "view consistency",
    "best_prompt_accuracy": "best-prompt acc.",
    "front_in_front": "front in front",
    "back_in_back": "back in back",
    "clip_score": "CLIP score",
    "asset_iou": "asset IoU",
    "asset_psnr": "asset PSNR (dB)",
    "chamfer": "Chamfer",
}
REGION_COLOUR = "tab:red"
LINE_STYLES = ("-", "--", ":", "-.")
PANELS = (("front view", "rel_front", ((-45.0, 45.0),)),
          ("back view", "rel_back", ((-180.0, -135.0), (135.0, 180.0))))  # fmt: skip


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _style(i: int) -> str:
    return LINE_STYLES[i % len(LINE_STYLES)]


def _curve_label(result: RunEvaluation, particle: int, overlay: bool) -> str:
    p = result.particles[particle]
    name = f"particle {particle}" + (f" ({p.asset_uid})" if p.asset_uid and not overlay else "")
    return f"{result.label} · {name}" if overlay else name


def plotted_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CSV rows as plotted: the azimuth -180° row repeated at +180°, so that the curves span
    the whole axis and the back region is drawn on both sides."""
    if rows and rows[0]["azimuth_deg"] == -180.0:
        return [*rows, {**rows[0], "azimuth_deg": 180.0}]
    return rows


def _series(results: Sequence[RunEvaluation]) -> list[tuple[str, str, str, list[dict[str, Any]]]]:
    """``(label, colour, linestyle, rows)`` of every (run, particle); colours per run when
    overlaying several runs, per particle otherwise."""
    overlay = len(results) > 1
    out = []
    for r, result in enumerate(results):
        for i, particle in enumerate(result.particles):
            colour, style = (_colour(r), _style(i)) if overlay else (_colour(i), "-")
            rows = plotted_rows(particle.rows())
            out.append((_curve_label(result, i, overlay), colour, style, rows))
    return out


def _axis_setup(ax: Any, ylabel: str) -> None:
    ax.set_xlim(-180.0, 180.0)
    ax.set_xticks(range(-180, 181, 45))
    ax.set_xlabel("azimuth (degrees; 0 = front)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def relative_similarity_figure(results: Sequence[RunEvaluation]) -> Figure:
    """Fig. 9: relative similarity to "front view" / "back view" vs azimuth, regions shaded.

    One line per (run, particle) with CLIP scores, in the order of ``results`` and particles; the
    line data are the CSV columns ``azimuth_deg`` and ``rel_front`` / ``rel_back`` (undefined
    values are NaN gaps) as :func:`plotted_rows` gives them.
    """
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    series = [s for s, res in zip(_series(results), _particle_runs(results), strict=True)
              if res.has_clip]  # fmt: skip
    for ax, (prompt, column, regions) in zip(axes, PANELS, strict=True):
        for lo, hi in regions:
            ax.axvspan(lo, hi, color=REGION_COLOUR, alpha=0.15, lw=0)
        for label, colour, style, rows in series:
            x = [row["azimuth_deg"] for row in rows]
            y = [math.nan if row.get(column) is None else row[column] for row in rows]
            ax.plot(x, y, color=colour, linestyle=style, marker=".", label=label)
        _axis_setup(ax, f'relative CLIP similarity to "{prompt}"')
        ax.set_title(f'"{prompt}" (shaded: ±45° {prompt.split()[0]})')
    if series:
        axes[1].legend(fontsize="small", loc="best")
    return fig


def asset_fidelity_figure(results: Sequence[RunEvaluation]) -> Figure:
    """Silhouette IoU (left) and foreground PSNR (right) to the assigned asset vs azimuth."""
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    series = [s for s, res in zip(_series(results), _particle_runs(results), strict=True)
              if res.has_assets]  # fmt: skip
    for ax, (column, ylabel) in zip(
        axes,
        (("asset_iou", "silhouette IoU to the asset"), ("asset_psnr", "foreground PSNR (dB)")),
        strict=True,
    ):
        for label, colour, style, rows in series:
            if not rows or column not in rows[0]:
                continue
            x = [row["azimuth_deg"] for row in rows]
            ax.plot(x, [row[column] for row in rows], color=colour, linestyle=style, marker=".",
                    label=label)  # fmt: skip
        _axis_setup(ax, ylabel)
    axes[0].set_ylim(0.0, 1.02)
    if series:
        axes[1].legend(fontsize="small", loc="best")
    return fig


def _particle_runs(results: Sequence[RunEvaluation]) -> list[RunEvaluation]:
    return [res for res in results for _ in res.particles]


# --------------------------------------------------------------------------- tables
def summary_rows(results: Sequence[RunEvaluation]) -> list[dict[str, Any]]:
    """A row per run (``particle = "all"``: mean over particles) followed by its particles."""
    rows = []
    for result in results:
        rows.append({"run": result.label, "particle": "all", **result.summary()})
        for p in result.particles:
            rows.append({"run": result.label, "particle": str(p.index), **p.summary()})
    return rows


def summary_markdown(results: Sequence[RunEvaluation]) -> str:
    """The summary as a markdown table, with a line per missing metric group."""
    header = ["run", "particle", *(SUMMARY_TITLES[k] for k in SUMMARY_KEYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for row in summary_rows(results):
        cells = [row["run"], row["particle"], *(_fmt(row[k]) for k in SUMMARY_KEYS)]
        lines.append("| " + " | ".join(cells) + " |")
    for result in results:
        if not result.has_clip:
            lines.append(f"\n{result.label}: CLIP metrics not computed — {result.clip['reason']}")
        for note in result.notes:
            lines.append(f"\n{result.label}: {note}")
    return "\n".join(lines) + "\n"


def write_summary_csv(results: Sequence[RunEvaluation], path: Path) -> Path:
    """The summary table as CSV: a row per run and per particle (empty cells where missing)."""
    rows = [{k: ("" if v is None else v) for k, v in row.items()} for row in summary_rows(results)]
    return write_csv_atomic(path, ["run", "particle", *SUMMARY_KEYS], rows)


def write_particle_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """One row per azimuth with :data:`CSV_COLUMNS` (empty cells where not computed)."""
    cells = [{k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS} for row in rows]
    return write_csv_atomic(path, CSV_COLUMNS, cells)


# --------------------------------------------------------------------------- writers
def _save(fig: Figure, path: Path) -> Path:
    """The figure as a PNG, written atomically (matplotlib writes to the temporary handle)."""
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))


def write_run_report(result: RunEvaluation, out: Path | None = None) -> dict[str, Path]:
    """Write one run's files into ``out`` (default ``<run>/eval``); returns them by name."""
    out = Path(out) if out is not None else result.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.json"}
    write_json_atomic(files["metrics"], result.to_json(), allow_nan=False)
    for p in result.particles:
        files[f"particle_{p.index}"] = write_particle_csv(p.rows(), out / f"particle_{p.index}.csv")
    if result.has_clip:
        files["relative_plot"] = _save(
            relative_similarity_figure([result]), out / "relative_similarity.png"
        )
    if result.has_assets:
        files["asset_plot"] = _save(asset_fidelity_figure([result]), out / "asset_fidelity.png")
    files["summary"] = write_text_atomic(out / "summary.md", summary_markdown([result]))
    return files


def write_comparison(results: Sequence[RunEvaluation], out: Path) -> dict[str, Path]:
    """Overlay plots and side-by-side summary tables of several runs in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary": out / "summary.md", "summary_csv": out / "summary.csv"}
    write_text_atomic(files["summary"], summary_markdown(results))
    write_summary_csv(results, files["summary_csv"])
    if any(r.has_clip for r in results):
        files["relative_plot"] = _save(
            relative_similarity_figure(results), out / "relative_similarity.png"
        )
    if any(r.has_assets for r in results):
        files["asset_plot"] = _save(asset_fidelity_figure(results), out / "asset_fidelity.png")
    return files


__all__ = [
    "CSV_COLUMNS",
    "asset_fidelity_figure",
    "plotted_rows",
    "relative_similarity_figure",
    "summary_markdown",
    "summary_rows",
    "write_comparison",
    "write_particle_csv",
    "write_run_report",
    "write_summary_csv",
]
