"""Benchmark: ScaNN vs exact search on clustered synthetic CLIP-like embeddings (paper Sec. 4.4).

The paper retrieves from Objaverse's ~800K assets with ScaNN over 768-d CLIP ViT-L/14 embeddings.
This script builds both ra3d indexes (:class:`ra3d.retrieval.index.ScannIndex`, the real code path,
and :class:`ExactIndex`) on unit vectors drawn from a mixture of Gaussians on the sphere, and
reports build seconds, single-query p50 latency, batched QPS and recall@10 against exact search.

Goal (issue): recall@10 >= 0.98 at <= 1 ms per query at 800k x 768.

    python bench/retrieval.py                         # 100k and 800k x 768
    python bench/retrieval.py --quick                 # 20k x 768, seconds
    python bench/retrieval.py --sizes 100000 --sweep 16,24,32,48 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ra3d.retrieval.index import ExactIndex, IndexMetadata, ScannIndex, ScannParams  # noqa: E402


def sphere_centres(n_clusters: int, dim: int, seed: int) -> np.ndarray:
    """``[C, dim]`` cluster centres uniform on the unit sphere."""
    c = np.random.default_rng(seed).standard_normal((n_clusters, dim), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def clustered_sphere(
    centres: np.ndarray, n: int, spread: float, seed: int, chunk: int = 50_000
) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors: normalise(centre_c + spread/√dim · ε), c uniform.

    ``spread`` is the noise norm relative to the unit centre; 1.0 puts a point at cosine ≈ 0.7
    from its centre and ≈ 0.5 from its cluster mates, roughly how CLIP embeddings of one object
    category sit. Generated in chunks to keep peak memory near the output size.
    """
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        x += centres[rng.integers(0, len(centres), m)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + m] = x
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found (``found, truth: [Q, k]`` row ids)."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def single_latency_ms(index, queries: np.ndarray, k: int, **kw) -> float:  # noqa: ANN001
    """p50 wall time of one-query searches (after 5 warm-up queries)."""
    search = index.search_with if kw else index.search
    for q in queries[:5]:
        search(q[None], k, **kw)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None], k, **kw)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def batch_qps(index, queries: np.ndarray, k: int, **kw) -> tuple[float, np.ndarray]:  # noqa: ANN001
    search = index.search_with if kw else index.search
    t0 = time.perf_counter()
    _, idx = search(queries, k, **kw)
    return queries.shape[0] / (time.perf_counter() - t0), idx


def run_size(args: argparse.Namespace, n: int) -> list[dict]:
    k, dim = args.k, args.dim
    t0 = time.perf_counter()
    centres = sphere_centres(args.clusters, dim, seed=0)
    db = clustered_sphere(centres, n, args.spread, seed=1)
    queries = clustered_sphere(centres, args.queries, args.spread, seed=2)  # not in the db
    print(f"[{n}] data generated in {time.perf_counter() - t0:.1f} s", flush=True)

    rows: list[dict] = []
    t0 = time.perf_counter()
    exact = ExactIndex(db, IndexMetadata("synthetic", dim, n))
    exact_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = exact.search(queries, k)
    exact_batch_s = time.perf_counter() - t0
    exact_lat = single_latency_ms(exact, queries[: args.exact_single], k)
    rows.append(
        dict(n=n, dim=dim, method="exact", settings="brute force (torch matmul)",
             build_s=exact_build, p50_ms=exact_lat, qps=args.queries / exact_batch_s, recall=1.0)
    )  # fmt: skip
    print(f"[{n}] exact: batch {exact_batch_s:.1f} s, p50 {exact_lat:.2f} ms", flush=True)

    params = ScannParams.for_size(n)
    if args.leaves:
        params.num_leaves = args.leaves
    if args.leaves_to_search:
        params.leaves_to_search = args.leaves_to_search
    if args.reorder:
        params.reorder = args.reorder
    params.dims_per_block = args.dims_per_block
    params.soar_lambda = args.soar
    t0 = time.perf_counter()
    scann = ScannIndex(
        db, IndexMetadata("synthetic", dim, n), params=params, num_threads=args.threads
    )
    build_s = time.perf_counter() - t0
    print(f"[{n}] ScaNN built in {build_s:.1f} s: {params}", flush=True)
    sweep = sorted({params.leaves_to_search, *args.sweep})
    for leaves in sweep:
        for reorder in sorted({params.reorder, *args.sweep_reorder}):
            kw = dict(leaves_to_search=leaves, reorder=reorder)
            qps, idx = batch_qps(scann, queries, k, **kw)
            lat = single_latency_ms(scann, queries[: args.single], k, **kw)
            rec = recall_at_k(idx, truth)
            settings = (
                f"leaves {params.num_leaves}, search {leaves}, AH {params.dims_per_block}d/blk, "
                f"reorder {reorder}"
                + (f", SOAR {params.soar_lambda}" if params.soar_lambda else "")
            )
            rows.append(dict(n=n, dim=dim, method="scann", settings=settings, build_s=build_s,
                             p50_ms=lat, qps=qps, recall=rec))  # fmt: skip
            print(
                f"[{n}] {settings}: recall@{k} {rec:.4f}, p50 {lat:.3f} ms, {qps:.0f} QPS",
                flush=True,
            )
    del db, exact, scann
    return rows


def markdown(rows: list[dict], k: int) -> str:
    lines = [
        f"| N × D | method | settings | build s | p50 ms/query | batch QPS | recall@{k} |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} × {r['dim']} | {r['method']} | {r['settings']} | {r['build_s']:.1f} | "
            f"{r['p50_ms']:.3f} | {r['qps']:,.0f} | {r['recall']:.4f} |"
        )
    return "\n".join(lines)


def parse_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=parse_ints, default=[100_000, 800_000], help="comma list of N")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--quick", action="store_true", help="N=20k, 200 queries (smoke run)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--single", type=int, default=300, help="queries timed one by one (ScaNN)")
    p.add_argument("--exact-single", type=int, default=20, help="queries timed one by one (exact)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--leaves", type=int, default=0, help="override num_leaves (default √N)")
    p.add_argument("--leaves-to-search", type=int, default=0)
    p.add_argument("--reorder", type=int, default=0, help="override reorder (default by N)")
    p.add_argument("--dims-per-block", type=int, default=2)
    p.add_argument("--soar", type=float, default=None, help="SOAR spilling lambda (e.g. 1.5)")
    p.add_argument("--sweep", type=parse_ints, default=[], help="extra leaves_to_search values")
    p.add_argument("--sweep-reorder", type=parse_ints, default=[], help="extra reorder values")
    p.add_argument("--threads", type=int, default=0, help="ScaNN threads (0 = all cores)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.single = [20_000], 200, 100
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"cores: {os.cpu_count()}, load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{platform.processor() or platform.machine()}", flush=True)  # fmt: skip
    rows: list[dict] = []
    for n in args.sizes:
        rows.extend(run_size(args, n))
    table = markdown(rows, args.k)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "args": {k: v for k, v in vars(args).items() if k != "json"},
                                         "load_average": load, "cpu_count": os.cpu_count()}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
