"""Benchmark: the caption index at Objaverse's size (issue 17 item 4, paper Sec. 4.4).

For each dimension (768 = CLIP ViT-L/14, 384 = MiniLM) this builds ra3d's ScaNN index
(:func:`ra3d.retrieval.index.build_index`, ``ScannParams.for_size``) over ``--n`` vectors, saves
it as a retrieve finds it, and then — in a *fresh process*, as a cold ``ra3d retrieve`` would —
loads it with :func:`load_index` (checksums verified) and measures:

* build seconds, index folder size, load seconds;
* resident memory of the loading process (VmRSS after loading and querying, minus the RSS
  before loading; VmHWM too);
* single-query latency (p50 / p95 over ``--queries`` one-query searches, ms);
* recall@10 of those searches against exact search (:class:`ExactIndex`, brute force).

The vectors are **synthetic**: unit vectors drawn from a mixture of Gaussians on the sphere
(``bench/retrieval.py``'s generator; 2000 clusters, spread 1.0), not real CLIP or MiniLM
embeddings of 800k captions, which would take ≈ 47 min (MiniLM) to hours (CLIP) here. The queries
come from the same mixture but are not in the database. The embedding *rate* is measured on real
MiniLM over ``--minilm-rows`` synthetic Cap3D-format captions (bench/make_cap3d_csv.py's
templates) through the caption store (chunked, float16, written as each chunk finishes).

    python bench/scann_scale.py                            # 800k x 768 and 384, 1000 queries
    python bench/scann_scale.py --n 100000 --dims 384      # quicker
    python bench/scann_scale.py --variants float32,int8    # reorder copy precision
    python bench/scann_scale.py --sweep 40:447,33:800      # more leaves / re-scored rows
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from retrieval import clustered_sphere, recall_at_k, sphere_centres  # noqa: E402

from ra3d.retrieval.index import (  # noqa: E402
    ExactIndex,
    IndexMetadata,
    ScannParams,
    build_index,
    load_index,
)


def _status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(
    index_dir: Path, queries_file: Path, truth_file: Path, k: int, sweep: list[tuple[int, int]]
) -> None:
    """The cold side: load the saved index and query it one query at a time."""
    queries = np.load(queries_file)
    truth = np.load(truth_file)
    base = _status("VmRSS")
    t0 = time.perf_counter()
    index = load_index(index_dir, embedder_id="synthetic")
    load_s = time.perf_counter() - t0
    loaded = _status("VmRSS")
    for q in queries[:5]:
        index.search(q[None], k)
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, idx = index.search(q[None], k)
        times.append(time.perf_counter() - t0)
        found.append(idx[0])
    times_ms = sorted(1e3 * t for t in times)
    tuned = []
    for leaves, reorder in sweep:  # the same index searched with other knobs
        lat, hits = [], []
        for q in queries:
            t0 = time.perf_counter()
            _, idx = index.search_with(q[None], k, leaves_to_search=leaves, reorder=reorder)
            lat.append(time.perf_counter() - t0)
            hits.append(idx[0])
        tuned.append({"leaves_to_search": leaves, "reorder": reorder,
                      "p50_ms": 1e3 * statistics.median(lat),
                      "recall": recall_at_k(np.stack(hits), truth)})  # fmt: skip
    print(json.dumps({
        "sweep": tuned,
        "load_s": load_s,
        "rss_index_bytes": loaded - base,
        "rss_after_queries_bytes": _status("VmRSS") - base,
        "hwm_bytes": _status("VmHWM"),
        "p50_ms": statistics.median(times_ms),
        "p95_ms": times_ms[int(0.95 * (len(times_ms) - 1))],
        "recall": recall_at_k(np.stack(found), truth),
    }))  # fmt: skip


def run_dim(args: argparse.Namespace, dim: int, work: Path) -> list[dict]:
    n, k = args.n, args.k
    t0 = time.perf_counter()
    centres = sphere_centres(args.clusters, dim, seed=0)
    db = clustered_sphere(centres, n, args.spread, seed=1)
    queries = clustered_sphere(centres, args.queries, args.spread, seed=2)
    print(f"[{n}x{dim}] synthetic data in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    _, truth = ExactIndex(db, IndexMetadata("synthetic", dim, n)).search(queries, k)
    print(f"[{n}x{dim}] exact top-{k} of {args.queries} queries in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", truth)
    rows = []
    for variant in args.variants.split(","):
        params = ScannParams.for_size(n)
        params.reorder_dtype = variant
        gc.collect()
        t0 = time.perf_counter()
        index = build_index(db, "synthetic", kind="scann", params=params)
        build_s = time.perf_counter() - t0
        out = work / f"index-{dim}-{variant}"
        t0 = time.perf_counter()
        index.save(out)
        save_s = time.perf_counter() - t0
        del index
        gc.collect()
        cold = subprocess.run(
            [sys.executable, __file__, "--child", str(out), str(work / "queries.npy"),
             str(work / "truth.npy"), "--k", str(k), "--sweep", args.sweep],
            capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        result = json.loads(cold.stdout.strip().splitlines()[-1])
        row = dict(n=n, dim=dim, reorder_dtype=variant, params=str(params), build_s=build_s,
                   save_s=save_s, file_bytes=folder_bytes(out), **result)  # fmt: skip
        rows.append(row)
        print(
            f"[{n}x{dim} {variant}] build {build_s:.1f} s, {row['file_bytes'] / 2**20:.0f} MiB, "
            f"load {row['load_s']:.2f} s, RSS +{row['rss_after_queries_bytes'] / 2**20:.0f} MiB, "
            f"p50 {row['p50_ms']:.3f} ms, p95 {row['p95_ms']:.3f} ms, "
            f"recall@{k} {row['recall']:.4f}",
            flush=True,
        )
        for t in row["sweep"]:
            print(f"    leaves {t['leaves_to_search']}, reorder {t['reorder']}: recall@{k} "
                  f"{t['recall']:.4f}, p50 {t['p50_ms']:.3f} ms", flush=True)  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
    del db
    gc.collect()
    return rows


def embedding_rate(rows: int, chunk: int) -> dict:
    """Real MiniLM over synthetic Cap3D-format captions, through the caption store."""
    from make_cap3d_csv import caption

    from ra3d.retrieval.embed import MiniLMTextEmbedder
    from ra3d.retrieval.embedding_store import EmbeddingStore, fill_store

    rng = random.Random(0)
    texts = [caption(rng) for _ in range(rows)]
    emb = MiniLMTextEmbedder()
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore.open_or_create(Path(tmp) / "s", embedder_id=emb.id,
                                              fingerprint="bench", count=rows, dim=emb.dim,
                                              chunk=chunk)  # fmt: skip
        t0 = time.perf_counter()
        fill_store(store, lambda a, b: texts[a:b], lambda t: emb.embed_text(t).numpy(),
                   progress=False)  # fmt: skip
        dt = time.perf_counter() - t0
    rate = rows / dt
    print(f"MiniLM: {rows} captions in {dt:.1f} s = {rate:.0f} captions/s "
          f"({800_000 / rate / 60:.0f} min for 800k)", flush=True)  # fmt: skip
    return {"rows": rows, "seconds": dt, "captions_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--child", nargs=3, metavar=("INDEX", "QUERIES", "TRUTH"), help=argparse.SUPPRESS
    )
    p.add_argument("--n", type=int, default=800_000)
    p.add_argument("--dims", default="768,384")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--variants", default="float16", help="reorder_dtype values, comma-separated")
    p.add_argument("--minilm-rows", type=int, default=8192, help="0: skip the embedding rate")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp one)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--sweep", default="", help="extra LEAVES:REORDER searches, comma-separated")
    args = p.parse_args(argv)
    if args.child:
        pairs = [tuple(map(int, x.split(":"))) for x in args.sweep.split(",") if x]
        child(*map(Path, args.child), k=args.k, sweep=pairs)  # type: ignore[arg-type]
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="scann-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{os.cpu_count()} CPUs", "rows": []}
    try:
        for dim in (int(d) for d in args.dims.split(",")):
            results["rows"] += run_dim(args, dim, work)
        if args.minilm_rows:
            results["minilm"] = embedding_rate(args.minilm_rows, chunk=4096)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
