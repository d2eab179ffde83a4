"""The caption index at Objaverse's size: ScaNN re-scoring from a memory-mapped float16 copy
(checked against brute force over the same float16 rows), the size-scaled parameters, and a
checksum pass that is done once per unchanged file but still catches any later edit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ra3d.retrieval.index as index_mod
from ra3d.retrieval.index import (
    FLOAT16_REORDER_FROM,
    RESCORE_FILE,
    VERIFIED_FILE,
    IndexCorruptError,
    ScannIndex,
    ScannParams,
    build_index,
    load_index,
)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute16(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent truth: float64 inner products with the float16-rounded rows."""
    s = q.astype(np.float64) @ db.astype(np.float16).astype(np.float64).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def test_for_size_picks_float16_reorder_at_scale() -> None:
    small, big = ScannParams.for_size(50_000), ScannParams.for_size(800_000)
    assert small.reorder_dtype == "float32" and big.reorder_dtype == "float16"
    assert ScannParams.for_size(FLOAT16_REORDER_FROM).reorder_dtype == "float16"
    # √N leaves, ≈ 1.1·√leaves searched, reorder max(200, leaves / 2) at 800k.
    assert (big.num_leaves, big.leaves_to_search, big.reorder) == (894, 33, 447)


def test_float16_reorder_scores_are_exact_float16_products(tmp_path: Path) -> None:
    db = clustered(4000, 32, 40, seed=1)
    q = clustered(30, 32, 40, seed=2)
    params = ScannParams.for_size(4000)
    params.reorder_dtype = "float16"
    index = build_index(db, "e", kind="scann", params=params)
    assert isinstance(index, ScannIndex) and index.rescore is not None
    scores, idx = index.search(q, 10)
    rows16 = db.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, rows16[idx]), atol=1e-5)
    truth_s, truth = brute16(db, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, truth, strict=True)])
    assert recall >= 0.95
    # Every leaf and every point re-scored: exactly the float16 brute force.
    s_all, i_all = index.search_with(q, 10, leaves_to_search=params.num_leaves, reorder=4000)
    np.testing.assert_array_equal(i_all, truth)
    np.testing.assert_allclose(s_all, truth_s, atol=1e-5)
    # Saved and loaded: the rows are memory-mapped, the answers identical.
    loaded = load_index(index.save(tmp_path / "idx"), embedder_id="e")
    assert isinstance(loaded.rescore, np.memmap) and (tmp_path / "idx" / RESCORE_FILE).is_file()
    again_s, again_i = loaded.search(q, 10)
    np.testing.assert_array_equal(again_i, idx)
    np.testing.assert_array_equal(again_s, scores)


def test_checksums_are_verified_once_and_edits_still_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = build_index(clustered(300, 8, 5, seed=3), "e").save(tmp_path / "idx")
    hashed: list[str] = []
    real = index_mod.sha256_file
    monkeypatch.setattr(index_mod, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    load_index(path)
    assert hashed == ["vectors.npy"] and (path / VERIFIED_FILE).is_file()
    load_index(path)
    assert hashed == ["vectors.npy"]  # unchanged: not hashed again
    data = path / "vectors.npy"
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0x01
    data.write_bytes(bytes(raw))  # same size, new content
    with pytest.raises(IndexCorruptError, match="vectors.npy fails its sha256"):
        load_index(path)
