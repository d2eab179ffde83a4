"""Benchmark: a cold ``ra3d retrieve`` over an 800k-asset catalog beside one over the starter
library, in one run (issue 17 item 4: ≤ 4 GB max RSS, ≤ 1.5× the starter's wall time).

"Cold" is a fresh process (``/usr/bin/time -v``: wall time and maximum resident set size) with
the caches built, as every ``ra3d retrieve`` after the first one is; the OS file cache is warm
(it is not dropped: other work shares this machine). The runs alternate (starter, 800k, starter,
...) so that load on the machine hits both alike, and the medians are compared.

What is prepared first (``--work DIR`` keeps it for reruns):

1. a synthetic Cap3D-format CSV of ``--rows`` rows (``bench/make_cap3d_csv.py``) imported with
   ``ra3d db import objaverse --cap3d CSV --db DIR`` — no network, no meshes;
2. the caption store of that catalog **filled with synthetic vectors** (clustered random unit
   vectors, float16) under the real MiniLM embedder id, so the 800k captions need not be
   embedded here (≈ 47 min); the retriever then builds and caches its ScaNN index from the store
   by its own code path (``TwoStageRetriever.caption_index``);
3. a mirror folder (``glbs/000-000/<uid>.glb``, small valid GLB boxes) holding the meshes of the
   prompt's first caption matches, so that the retrieve fetches its results from a "local copy of
   Objaverse" as ``--mirror`` does.

Both retrieves run ``--embedder minilm --no-rerank --no-align`` (MiniLM is text-only: the image
stages are skipped either way) and return ``-k 3``.

    python bench/retrieve_cold.py --work /tmp/cold800k            # 800k rows, 5 runs each
    python bench/retrieve_cold.py --rows 100000 --repeats 3       # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PROMPT = "a wooden chair"
RA3D = [sys.executable, "-m", "ra3d.cli"]


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def prepare(work: Path, rows: int, env: dict) -> tuple[Path, Path]:
    from retrieval import clustered_sphere, sphere_centres

    from ra3d.retrieval.database import AssetDatabase
    from ra3d.retrieval.embed import MiniLMTextEmbedder
    from ra3d.retrieval.embedding_store import caption_store
    from ra3d.retrieval.search import CAPTION_CHUNK, TwoStageRetriever

    csv, db_dir, mirror = work / "cap3d.csv", work / "db", work / "mirror"
    if not csv.is_file():
        t0 = time.perf_counter()
        sh(
            [
                sys.executable,
                str(ROOT / "bench" / "make_cap3d_csv.py"),
                str(csv),
                "--rows",
                str(rows),
            ]
        )
        print(f"CSV of {rows} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    if not (db_dir / "catalog.sqlite").is_file():
        t0 = time.perf_counter()
        out = sh(
            [*RA3D, "db", "import", "objaverse", "--cap3d", str(csv), "--db", str(db_dir)], env=env
        )
        print(
            out.stdout.strip().splitlines()[-1], f"({time.perf_counter() - t0:.1f} s)", flush=True
        )
    db = AssetDatabase.open(db_dir)
    emb = MiniLMTextEmbedder()
    retriever = TwoStageRetriever(db, embedder=emb, rerank=False, align=False)
    store = caption_store(db, emb, root=retriever.cache_root, chunk=CAPTION_CHUNK)
    missing = store.missing_chunks()
    if missing:
        t0 = time.perf_counter()
        centres = sphere_centres(2000, emb.dim, seed=0)
        for chunk in missing:
            a, b = store.chunk_range(chunk)
            store.write_chunk(chunk, clustered_sphere(centres, b - a, 1.0, seed=10_000 + chunk))
        print(f"synthetic store of {len(db)} x {emb.dim} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    index = retriever.caption_index()
    print(f"caption index ({index.kind}, {len(index)}) ready in {time.perf_counter() - t0:.1f} s")
    if not mirror.is_dir():
        import trimesh

        _, found = index.search(emb.embed_text([PROMPT]).numpy(), 64)
        box = trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(file_type="glb")
        group = mirror / "glbs" / "000-000"
        group.mkdir(parents=True)
        for rec in db.records_at([int(r) for r in found[0] if r >= 0]):
            (group / f"{rec.uid}.glb").write_bytes(box)
    return db_dir, mirror


def timed(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], text=True, capture_output=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    err = proc.stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err).group(1)
    parts = [float(x) for x in wall.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    uids = [r["uid"] for r in json.loads(proc.stdout)] if proc.stdout.strip() else []
    return {"wall_s": seconds, "max_rss_bytes": rss, "uids": uids}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=800_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="retrieve-cold-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RA3D_CACHE_DIR": str(work / "user-cache")}
    env.pop("RA3D_DATABASE", None)
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "RA3D_CACHE_DIR")})
    db_dir, mirror = prepare(work, args.rows, env)
    common = [PROMPT, "-k", "3", "--embedder", "minilm", "--no-rerank", "--no-align", "--json"]
    cmds = {
        "starter": [*RA3D, "retrieve", *common],
        f"{args.rows // 1000}k": [
            *RA3D,
            "retrieve",
            *common,
            "--db",
            str(db_dir),
            "--mirror",
            str(mirror),
        ],  # fmt: skip
    }
    for cmd in cmds.values():  # build the starter's caches; check both work
        timed(cmd, env)
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            runs[name].append(timed(cmd, env))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "wall_s": [r["wall_s"] for r in rs],
            "max_rss_mib_median": statistics.median(r["max_rss_bytes"] for r in rs) / 2**20,
            "max_rss_mib_max": max(r["max_rss_bytes"] for r in rs) / 2**20,
            "results": rs[-1]["uids"],
        }
        s = summary[name]
        print(f"{name:>8}: wall median {s['wall_s_median']:.2f} s {s['wall_s']}, max RSS median "
              f"{s['max_rss_mib_median']:.0f} MiB (max {s['max_rss_mib_max']:.0f})")  # fmt: skip
    names = list(cmds)
    ratio = summary[names[1]]["wall_s_median"] / summary[names[0]]["wall_s_median"]
    print(f"ratio {names[1]} / starter wall time: {ratio:.2f} (goal <= 1.5)")
    summary["ratio"] = ratio
    summary["commands"] = {n: " ".join(c) for n, c in cmds.items()}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
