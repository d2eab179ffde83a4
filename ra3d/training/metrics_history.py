"""``metrics.csv`` across resumes.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts. A resume sets the old
file aside as ``metrics.history.csv`` (:func:`set_aside_metrics`) and, when the run ends (or at
the start of the next one, after a ``kill -9``), merges it back (:func:`merge_metrics`): the old
rows before the resumed step, then the new rows.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ra3d.io import write_csv_atomic

METRICS = "metrics.csv"
HISTORY = "metrics.history.csv"


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def merge_metrics(run_dir: str | Path, keep_below: int | None = None) -> None:
    """Put ``metrics.history.csv`` back in front of ``metrics.csv``: history rows with a step
    below ``keep_below`` (default: the first step of the new rows — the resumed run repeats the
    steps after its checkpoint), then the new rows; written atomically (:mod:`ra3d.io`)."""
    run_dir = Path(run_dir)
    history, current = run_dir / HISTORY, run_dir / METRICS
    if not history.is_file():
        return
    old_keys, old_rows = _read_rows(history)
    new_keys, new_rows = _read_rows(current) if current.is_file() else ([], [])
    if keep_below is None:
        steps = [s for s in map(_step, new_rows) if s == s]
        keep_below = int(min(steps)) if steps else None
    if keep_below is not None:
        old_rows = [r for r in old_rows if _step(r) < keep_below]
    keys = sorted(set(old_keys) | set(new_keys))
    write_csv_atomic(current, keys, old_rows + new_rows)
    history.unlink()  # only after the merged file is safely in place


def set_aside_metrics(run_dir: str | Path, resume_step: int) -> None:
    """Before a resume: keep the rows of steps before ``resume_step`` out of the CSV logger's
    reach (it deletes ``metrics.csv`` on start); :func:`merge_metrics` puts them back."""
    run_dir = Path(run_dir)
    current, history = run_dir / METRICS, run_dir / HISTORY
    if history.is_file():  # a resume killed with -9 before it could merge
        merge_metrics(run_dir)
    if current.is_file():
        fields, rows = _read_rows(current)
        rows = [r for r in rows if _step(r) < resume_step]
        write_csv_atomic(history, fields, rows)
        current.unlink()
