"""Benchmark: the Objaverse catalog at its real size (≈ 800k Cap3D rows) in SQLite.

Measures, each in a fresh process (so "cold" means a new interpreter; the OS page cache is warm
unless you drop it):

* ``ra3d db import objaverse --cap3d CSV --db DIR`` — wall time, peak RSS, catalog size and the
  import's one summary line (nothing is downloaded);
* opening the database and reading 16 random rows by row number (what a retrieve does after the
  vector search) — wall time and peak RSS;
* reading every caption in row order in 4096-row chunks (``caption_rows``, what an embedding
  job does);
* ``ra3d db info``.

The CSV comes from ``bench/make_cap3d_csv.py`` (synthetic captions in Cap3D's format with a few %
bad rows); it is written first when missing.

    python bench/catalog_import.py --rows 800000 --work /tmp/catalog-bench
    python bench/catalog_import.py --rows 20000 --work /tmp/catalog-quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

IMPORT = """
import resource, sys, time, warnings
from ra3d.cli.db import main_db
t0 = time.perf_counter()
code = main_db(["import", "objaverse", "--cap3d", sys.argv[1], "--db", sys.argv[2]])
print("SECONDS", time.perf_counter() - t0)
print("RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""
LOOKUP = """
import random, resource, sys, time
t0 = time.perf_counter()
from ra3d.retrieval.database import AssetDatabase
t1 = time.perf_counter()
db = AssetDatabase.open(sys.argv[1])
rows = random.Random(0).sample(range(len(db)), 16)
records = db.records_at(rows)
t2 = time.perf_counter()
assert [db.row_of(r.uid) for r in records] == rows
print("IMPORT_S", t1 - t0)
print("OPEN_AND_16_ROWS_S", t2 - t1)
print("RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
SCAN = """
import resource, sys, time
from ra3d.retrieval.database import AssetDatabase
db = AssetDatabase.open(sys.argv[1])
t0 = time.perf_counter()
n = 0
for start in range(0, len(db), 4096):
    n += len(db.caption_rows(start, start + 4096))
assert n == len(db)
print("SCAN_S", time.perf_counter() - t0)
print("RSS_MIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
INFO = """
import sys, time
from ra3d.cli.db import main_db
t0 = time.perf_counter()
main_db(["info", "--db", sys.argv[1]])
print("SECONDS", time.perf_counter() - t0)
"""


def run(code: str, *args: str) -> tuple[dict[str, float], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    values = {"wall_s": wall}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key.isupper() and value:
            try:
                values[key.lower()] = float(value)
            except ValueError:
                pass
    return values, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=800_000)
    ap.add_argument("--bad", type=float, default=0.03)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ra3d-catalog-bench"))
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    csv_path = args.work / f"cap3d-{args.rows}.csv"
    if not csv_path.is_file():
        subprocess.run(
            [PY, str(REPO / "bench" / "make_cap3d_csv.py"), str(csv_path), "--rows",
             str(args.rows), "--bad", str(args.bad), "--counts", str(csv_path) + ".json"],
            check=True,
        )  # fmt: skip
    db = args.work / "db"
    shutil.rmtree(db, ignore_errors=True)
    imported, log = run(IMPORT, str(csv_path), str(db))
    summary = next((ln for ln in log.splitlines() if "Cap3D import of" in ln), "")
    catalog = db / "catalog.sqlite"
    lookup, _ = run(LOOKUP, str(db))
    scan, _ = run(SCAN, str(db))
    info, info_out = run(INFO, str(db))
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": args.rows,
        "csv_mib": csv_path.stat().st_size / 2**20,
        "import_s": imported["seconds"],
        "import_wall_s": imported["wall_s"],
        "import_rss_mib": imported["rss_mib"],
        "catalog_mib": catalog.stat().st_size / 2**20,
        "summary": summary.removeprefix("ra3d db: warning: "),
        "open_and_16_rows_s": lookup["open_and_16_rows_s"],
        "lookup_process_rss_mib": lookup["rss_mib"],
        "caption_scan_s": scan["scan_s"],
        "caption_scan_rss_mib": scan["rss_mib"],
        "info_s": info["seconds"],
    }
    for key, value in figures.items():
        print(f"{key:24} {value:.2f}" if isinstance(value, float) else f"{key:24} {value}")
    print(info_out.strip())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
