"""The caption embedding store: a killed run resumes to exactly the one-pass result without
embedding a done chunk again, a store of another embedder or database is never used, and the
retriever builds its index from the store. The expected vectors are the test embedder's own
output rounded to float16, computed independently of the store."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import ra3d.retrieval.embedding_store as store_mod
from ra3d.retrieval.database import AssetDatabase, AssetRecord, ImportTransaction
from ra3d.retrieval.embed import Embedder
from ra3d.retrieval.embedding_store import (
    EmbeddingStore,
    EmbeddingStoreError,
    caption_store,
    embed_database_captions,
    fill_store,
)
from ra3d.retrieval.search import TwoStageRetriever


class CountingHashEmbedder(Embedder):
    """Deterministic text embedder (a seeded random vector per word, summed, normalised) that
    records every text it embeds and can be made to fail after ``fail_after`` calls — a kill."""

    def __init__(self, fail_after: int | None = None, dim: int = 24) -> None:
        self.id = f"test:counting-hash:{dim}:v1"
        self.dim = dim
        self.fail_after = fail_after
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        words = text.lower().split() or [""]
        return sum(
            np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim) for w in words
        )

    def embed_text(self, texts: list[str]) -> Tensor:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(list(texts))
        out = np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim))
        return F.normalize(torch.from_numpy(out).float(), dim=-1)


WORDS = "chair table lamp red blue wooden metal tall small round old box car tree robot".split()


def caption_of(i: int) -> str:
    return f"{WORDS[i % 15]} {WORDS[(i * 7) % 15]} {WORDS[(i * 11 + 3) % 15]} item{i}"


def make_catalog(root: Path, n: int) -> AssetDatabase:
    with ImportTransaction(root) as tx:
        tx.add_catalog_records(
            AssetRecord(
                uid=f"{i:032x}",
                caption=caption_of(i),
                mesh_path="",
                source="objaverse",
                license="",
                attribution="",
                mesh_store="objaverse",
            )  # fmt: skip
            for i in range(n)
        )
    assert tx.database is not None
    return tx.database


def expected(n: int, emb: CountingHashEmbedder) -> np.ndarray:
    """Independent result: every caption embedded alone, rounded to float16."""
    return np.stack([emb.embed_text([caption_of(i)])[0].numpy() for i in range(n)]).astype(
        np.float16
    )


def test_one_pass_matches_independent_embeddings(tmp_path: Path) -> None:
    db = make_catalog(tmp_path / "db", 45)
    emb = CountingHashEmbedder()
    store = embed_database_captions(db, emb, root=tmp_path / "stores", chunk=8, progress=False)
    vectors = store.vectors()
    assert isinstance(vectors, np.memmap) and vectors.dtype == np.float16
    assert not vectors.flags.writeable
    assert vectors.shape == (45, emb.dim) and store.n_chunks == 6  # 5 x 8 + 5
    np.testing.assert_array_equal(vectors, expected(45, CountingHashEmbedder()))
    assert [len(c) for c in emb.calls] == [8, 8, 8, 8, 8, 5]


@pytest.mark.parametrize("killed_after", [0, 2, 5])
def test_killed_run_resumes_to_the_one_pass_result(tmp_path: Path, killed_after: int) -> None:
    db = make_catalog(tmp_path / "db", 45)
    root = tmp_path / "stores"
    dying = CountingHashEmbedder(fail_after=killed_after)
    with pytest.raises(KeyboardInterrupt):
        embed_database_captions(db, dying, root=root, chunk=8, progress=False)
    store = caption_store(db, dying, root=root, chunk=8)
    assert store.done_chunks() == set(range(killed_after))
    done_texts = {t for call in dying.calls for t in call}
    resumed = CountingHashEmbedder()
    store = embed_database_captions(db, resumed, root=root, chunk=8, progress=False)
    # Only the chunks not done were embedded, each once.
    assert len(resumed.calls) == 6 - killed_after
    again = [t for call in resumed.calls for t in call]
    assert len(again) == len(set(again)) and not done_texts & set(again)
    assert len(again) + len(done_texts) == 45
    np.testing.assert_array_equal(store.vectors(), expected(45, CountingHashEmbedder()))
    # A complete store embeds nothing more.
    idle = CountingHashEmbedder()
    embed_database_captions(db, idle, root=root, chunk=8, progress=False)
    assert idle.calls == []


def test_kill_between_rows_and_marker_recomputes_that_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written, marker not: the chunk counts as missing (never as done with bad rows)."""
    db = make_catalog(tmp_path / "db", 20)
    root = tmp_path / "stores"
    real = store_mod.write_bytes_atomic
    marks = []

    def marker(path: Path, data: bytes, mode: int = 0o644) -> Path:
        if len(marks) == 1:
            raise KeyboardInterrupt("killed before the second marker")
        marks.append(path)
        return real(path, data, mode=mode)

    monkeypatch.setattr(store_mod, "write_bytes_atomic", marker)
    emb = CountingHashEmbedder()
    with pytest.raises(KeyboardInterrupt):
        embed_database_captions(db, emb, root=root, chunk=8, progress=False)
    assert len(emb.calls) == 2
    monkeypatch.setattr(store_mod, "write_bytes_atomic", real)
    store = caption_store(db, emb, root=root, chunk=8)
    assert store.missing_chunks() == [1, 2]
    resumed = CountingHashEmbedder()
    store = embed_database_captions(db, resumed, root=root, chunk=8, progress=False)
    assert [len(c) for c in resumed.calls] == [8, 4]
    np.testing.assert_array_equal(store.vectors(), expected(20, CountingHashEmbedder()))


def test_stale_store_is_never_used(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    a = EmbeddingStore.open_or_create(folder, embedder_id="e1", fingerprint="f" * 64, count=10,
                                      dim=4, chunk=4)  # fmt: skip
    fill_store(a, lambda s, t: ["x"] * (t - s), lambda x: np.ones((len(x), 4)) / 2, progress=False)
    with pytest.raises(EmbeddingStoreError, match="made by embedder 'e1'"):
        EmbeddingStore.open(folder, embedder_id="e2", fingerprint="f" * 64)
    with pytest.raises(EmbeddingStoreError, match="from database"):
        EmbeddingStore.open(folder, embedder_id="e1", fingerprint="0" * 64)
    # The same settings keep the done chunks; other settings replace the store by an empty one.
    assert EmbeddingStore.open_or_create(folder, embedder_id="e1", fingerprint="f" * 64,
                                         count=10, dim=4, chunk=4).complete  # fmt: skip
    b = EmbeddingStore.open_or_create(folder, embedder_id="e1", fingerprint="0" * 64, count=10,
                                      dim=4, chunk=4)  # fmt: skip
    assert b.missing_chunks() == [0, 1, 2]
    with pytest.raises(EmbeddingStoreError, match="incomplete"):
        b.vectors()


def test_retriever_builds_its_index_from_the_store(tmp_path: Path) -> None:
    """A store filled beforehand (as `ra3d db embed` does) is what the retriever indexes: no
    caption is embedded again, and the ranking is the brute-force one over the store."""
    db = make_catalog(tmp_path / "db", 30)
    pre = CountingHashEmbedder()
    retriever = TwoStageRetriever(db, embedder=pre, rerank=False, align=False)
    embed_database_captions(db, pre, root=retriever.cache_root, chunk=4096, progress=False)
    emb = CountingHashEmbedder()
    retriever = TwoStageRetriever(db, embedder=emb, rerank=False, align=False)
    index = retriever.caption_index()
    assert emb.calls == [] and len(index) == 30
    query = emb.embed_text(["red wooden chair"]).numpy()
    scores, rows = index.search(query, 5)
    brute = expected(30, CountingHashEmbedder()).astype(np.float64) @ query[0].astype(np.float64)
    np.testing.assert_array_equal(rows[0], np.argsort(-brute, kind="stable")[:5])
    np.testing.assert_allclose(scores[0], np.sort(brute)[::-1][:5], rtol=0, atol=1e-6)
    # An edited database has a new fingerprint, hence a new store (embedded afresh).
    with ImportTransaction(db.root) as tx:
        tx.add_catalog_records([AssetRecord(uid="f" * 32, caption="a blue lamp", mesh_path="",
                                            source="objaverse", license="", attribution="",
                                            mesh_store="objaverse")])  # fmt: skip
    fresh = CountingHashEmbedder()
    TwoStageRetriever(AssetDatabase.open(db.root), embedder=fresh).caption_index()
    assert sum(len(c) for c in fresh.calls) == 31
