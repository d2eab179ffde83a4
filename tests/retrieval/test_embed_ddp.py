"""Caption embedding through Lightning's ``Trainer.predict``: two CPU ranks (DDP, gloo) give the
same float16 store as one process, each chunk embedded by exactly one rank; a resumed predict
embeds only the missing chunks; ``ra3d db embed`` fills the store that retrieval reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ra3d.cli.db import main_db
from ra3d.retrieval.embed_predict import embed_with_trainer
from ra3d.retrieval.embedding_store import caption_store, fill_store
from ra3d.retrieval.search import CACHE_SUBDIR, TwoStageRetriever
from tests.paths import REPO
from tests.retrieval.test_embedding_store import CountingHashEmbedder, expected, make_catalog

N, CHUNK = 45, 4  # 12 chunks, the last of 1 row

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from ra3d.retrieval.database import AssetDatabase
    from ra3d.retrieval.embed_predict import embed_with_trainer
    from tests.retrieval.test_embedding_store import CountingHashEmbedder

    db = AssetDatabase.open(sys.argv[1])
    root, devices, chunk = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    emb = CountingHashEmbedder()
    store, trainer, writer = embed_with_trainer(
        db, emb, root=root, chunk=chunk, devices=devices, accelerator="cpu", progress=False
    )
    out = root / f"rank{trainer.global_rank}.json"
    out.write_text(json.dumps({"world": trainer.world_size, "written": writer.written,
                               "calls": emb.calls}))
    """
)


def test_two_cpu_ranks_give_the_one_process_embeddings(tmp_path: Path) -> None:
    db = make_catalog(tmp_path / "db", N)
    script = tmp_path / "embed_ddp.py"
    script.write_text(SCRIPT)
    root = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(db.root), str(root), "2", str(CHUNK)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    written = [c for r in ranks for c in r["written"]]
    # Every chunk by exactly one rank, and both ranks worked (12 chunks: 6 each).
    assert sorted(written) == list(range(12)) and all(len(r["written"]) == 6 for r in ranks)
    assert sum(len(r["calls"]) for r in ranks) == 12
    ddp = caption_store(db, CountingHashEmbedder(), root=root, chunk=CHUNK).vectors()

    one, trainer, _ = embed_with_trainer(
        db, CountingHashEmbedder(), root=tmp_path / "one", chunk=CHUNK, devices=1, progress=False
    )
    assert trainer.world_size == 1
    np.testing.assert_array_equal(ddp, one.vectors())  # float16, bit for bit
    np.testing.assert_array_equal(ddp, expected(N, CountingHashEmbedder()))


def test_trainer_predict_resumes_only_missing_chunks(tmp_path: Path) -> None:
    db = make_catalog(tmp_path / "db", N)
    root = tmp_path / "stores"
    first = CountingHashEmbedder()
    store = caption_store(db, first, root=root, chunk=CHUNK)

    def rows(a: int, b: int) -> list[str]:
        return [c for _, c in db.caption_rows(a, b)]

    fill_store(store, rows, lambda t: first.embed_text(t).numpy(), chunks=[0, 3, 11],
               progress=False)  # fmt: skip
    emb = CountingHashEmbedder()
    store, _, writer = embed_with_trainer(db, emb, root=root, chunk=CHUNK, progress=False)
    assert writer.written == [1, 2, 4, 5, 6, 7, 8, 9, 10] and len(emb.calls) == 9
    np.testing.assert_array_equal(store.vectors(), expected(N, CountingHashEmbedder()))


def test_cli_db_embed_fills_the_store_retrieval_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ra3d.retrieval.embed import MiniLMTextEmbedder

    db = make_catalog(tmp_path / "db", 20)
    assert main_db(["embed", "--db", str(db.root), "--chunk", "8", "--no-progress"]) == 0
    assert "3 of 3 chunk(s) done" in capsys.readouterr().out
    minilm = MiniLMTextEmbedder()
    store = caption_store(db, minilm, root=db.cache_dir / CACHE_SUBDIR, chunk=8)
    assert store.complete
    captions = [c for _, c in db.caption_rows(0, 20)]
    want = np.concatenate(
        [minilm.embed_text(captions[s : s + 8]).numpy() for s in range(0, 20, 8)]
    ).astype(np.float16)
    np.testing.assert_array_equal(store.vectors(), want)
    assert main_db(["embed", "--db", str(db.root), "--chunk", "0"]) == 2
    # The retriever (default 4096-row chunks) reads this store as it is: nothing is embedded.
    r = TwoStageRetriever(db, embedder=minilm, rerank=False, align=False)
    assert r.caption_store().folder == store.folder and r.caption_store().meta.chunk == 8
    np.testing.assert_array_equal(r.caption_store().vectors(), want)
