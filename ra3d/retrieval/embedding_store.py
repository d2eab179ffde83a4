"""Caption embeddings of a whole database, computed in chunks that survive a killed run (Sec. 4.4).

The paper searches the CLIP embeddings of Objaverse's ≈ 800k Cap3D captions. Embedding them
takes ≈ 47 min with the offline MiniLM on a 2-core machine (hours with CLIP ViT-L/14), so the
embeddings are not a by-product of building the index but a store of their own:

* one preallocated ``[N, D]`` float16 ``.npy`` file (``vectors.npy``), written through a memory
  map and read memory-mapped, so a reader never loads what it does not touch (800k × 768 is
  1.2 GB in float16, half of float32; unit vectors lose < 1e-3 of a cosine to the rounding);
* rows are embedded in fixed chunks of ``chunk`` rows (row ``i`` is ``db.caption_rows(i, i+1)``);
  a chunk's rows are written, flushed to the disk (``msync``), and only then is the chunk's
  *done marker* ``done/<chunk>`` created atomically. A run killed at any point leaves every
  chunk either marked (its rows are on the disk) or unmarked (recomputed by the next run): no
  chunk is lost, none is embedded twice once done, and several processes (the Lightning DDP
  ranks of :mod:`ra3d.retrieval.embed_predict`) can fill disjoint chunks of one store;
* ``store.json`` names the embedder id, the database's fingerprint (``manifest_hash``), the
  shape and the chunk size. The folder name carries the embedder and fingerprint too, and
  :meth:`EmbeddingStore.open` refuses a store whose ``store.json`` disagrees, so a store of
  another embedder or of an edited database is never used.

Where renders exist (the per-asset view embeddings that the image rerank caches), they are kept
per asset by :mod:`ra3d.retrieval.search`; this store holds the caption side, which every
retrieve searches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ra3d.errors import ConfigError, Ra3dError
from ra3d.io import PUBLIC_MODE, fsync_dir, write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
META_FILE = "store.json"
VECTORS_FILE = "vectors.npy"
DONE_DIR = "done"
#: Rows per chunk: small enough that a killed run loses seconds of work (4096 MiniLM captions
#: ≈ 15 s on 2 cores), large enough that a done marker per chunk stays a few hundred files at
#: 800k rows.
DEFAULT_CHUNK = 4096
STORE_DTYPE = np.float16


class EmbeddingStoreError(Ra3dError, RuntimeError):
    """A store is unusable: written by another embedder or database, incomplete, or corrupt."""


def _slug(text: str, keep: int = 40) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:keep]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def store_dirname(embedder_id: str, fingerprint: str, kind: str = "captions") -> str:
    """The folder name of the store of ``embedder_id`` over the database ``fingerprint``."""
    return f"embeddings-{kind}-{_slug(embedder_id)}-{fingerprint[:16]}"


@dataclass(frozen=True)
class StoreMeta:
    """What ``store.json`` records (all must match for a store to be used)."""

    embedder_id: str
    fingerprint: str
    count: int
    dim: int
    chunk: int
    kind: str = "captions"
    dtype: str = "float16"
    format: int = STORE_FORMAT

    @property
    def n_chunks(self) -> int:
        return -(-self.count // self.chunk)


class EmbeddingStore:
    """A ``[count, dim]`` float16 embedding file filled chunk by chunk (see the module doc).

    Use :meth:`open_or_create` (to fill) or :meth:`open` (to read a complete one).
    """

    def __init__(self, folder: Path, meta: StoreMeta) -> None:
        self.folder = Path(folder)
        self.meta = meta
        self._writer: np.memmap | None = None
        self._writer_pid = -1

    # ------------------------------------------------------------------ construction
    @classmethod
    def open_or_create(
        cls,
        folder: str | Path,
        *,
        embedder_id: str,
        fingerprint: str,
        count: int,
        dim: int,
        chunk: int = DEFAULT_CHUNK,
        kind: str = "captions",
    ) -> EmbeddingStore:
        """The store in ``folder`` if it was made for these settings (its done chunks are kept:
        a resume; ``chunk`` only applies to a new store, an existing one keeps its chunking),
        else a new empty one (a stale store there is replaced).

        Creation is atomic (a complete folder is renamed into place), so processes that race to
        create the same store end up sharing one.
        """
        if int(count) < 0 or int(dim) < 1 or int(chunk) < 1:
            raise ConfigError(f"bad store shape: count={count}, dim={dim}, chunk={chunk}")
        want = StoreMeta(str(embedder_id), str(fingerprint), int(count), int(dim), int(chunk), kind)
        folder = Path(folder)
        existing = cls._read_meta(folder)
        if existing is not None and (folder / VECTORS_FILE).is_file():
            if existing == want:
                return cls(folder, want)
            if existing == StoreMeta(**{**asdict(want), "chunk": existing.chunk}):
                # Same vectors, other chunking (e.g. `ra3d db embed --chunk N`, then a retrieve):
                # the store keeps the chunks it was started with.
                logger.debug("using %s with its own chunk size %d", folder, existing.chunk)
                return cls(folder, existing)
        if existing is not None or folder.exists():
            logger.info("replacing the embedding store %s (made for other settings)", folder)
            cls._remove(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            tmp.chmod(0o755)
            arr = np.lib.format.open_memmap(
                tmp / VECTORS_FILE, mode="w+", dtype=STORE_DTYPE, shape=(want.count, want.dim)
            )
            arr.flush()
            del arr
            (tmp / DONE_DIR).mkdir()
            write_json_atomic(tmp / META_FILE, asdict(want), sort_keys=True)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process created it first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
                if cls._read_meta(folder) != want:
                    raise
            fsync_dir(folder.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(folder, want)

    @classmethod
    def open(
        cls, folder: str | Path, *, embedder_id: str, fingerprint: str, count: int | None = None
    ) -> EmbeddingStore:
        """An existing store, checked to be of ``embedder_id`` over database ``fingerprint``."""
        folder = Path(folder)
        meta = cls._read_meta(folder)
        if meta is None or not (folder / VECTORS_FILE).is_file():
            raise EmbeddingStoreError(
                f"no embedding store at {folder}; compute one with `ra3d db embed --db DB`"
            )
        if meta.embedder_id != embedder_id or meta.fingerprint != fingerprint:
            raise EmbeddingStoreError(
                f"the embedding store {folder} was made by embedder {meta.embedder_id!r} from "
                f"database {meta.fingerprint[:12]}, not by {embedder_id!r} from "
                f"{fingerprint[:12]}; recompute it with `ra3d db embed`"
            )
        if count is not None and meta.count != int(count):
            raise EmbeddingStoreError(
                f"the embedding store {folder} holds {meta.count} rows, the database {count}; "
                "recompute it with `ra3d db embed`"
            )
        return cls(folder, meta)

    @staticmethod
    def _read_meta(folder: Path) -> StoreMeta | None:
        try:
            return StoreMeta(**json.loads((folder / META_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def _remove(folder: Path) -> None:
        """Move aside, then delete (a reader never sees a half-deleted store)."""
        if not folder.exists():
            return
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(folder, old)
        shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ chunks
    def __len__(self) -> int:
        return self.meta.count

    @property
    def n_chunks(self) -> int:
        return self.meta.n_chunks

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of chunk ``chunk``."""
        if not 0 <= int(chunk) < self.n_chunks:
            raise IndexError(f"chunk {chunk} outside 0..{self.n_chunks - 1}")
        start = int(chunk) * self.meta.chunk
        return start, min(start + self.meta.chunk, self.meta.count)

    def done_chunks(self) -> set[int]:
        """The chunks whose rows are on the disk (their markers exist)."""
        try:
            names = os.listdir(self.folder / DONE_DIR)
        except FileNotFoundError:
            return set()
        return {int(n) for n in names if n.isdigit() and int(n) < self.n_chunks}

    def missing_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [c for c in range(self.n_chunks) if c not in done]

    @property
    def complete(self) -> bool:
        return len(self.done_chunks()) == self.n_chunks

    def write_chunk(self, chunk: int, vectors: np.ndarray) -> None:
        """Store the ``[rows, dim]`` embeddings of chunk ``chunk``, then mark it done.

        Order is what makes a kill safe: the rows are written and ``msync``-ed before the
        marker file is created (atomically), so a marker always means data on the disk.
        """
        start, stop = self.chunk_range(chunk)
        vectors = np.asarray(vectors)
        if vectors.shape != (stop - start, self.meta.dim):
            raise ConfigError(
                f"chunk {chunk} needs [{stop - start}, {self.meta.dim}] vectors, got "
                f"{list(vectors.shape)}"
            )
        if not np.isfinite(vectors).all():
            raise EmbeddingStoreError(f"the embedder returned NaN/inf for chunk {chunk}")
        arr = self._writable()
        arr[start:stop] = vectors.astype(STORE_DTYPE)
        arr.flush()
        write_bytes_atomic(self.folder / DONE_DIR / f"{int(chunk):07d}", b"", mode=PUBLIC_MODE)

    def _writable(self) -> np.memmap:
        if self._writer is None or self._writer_pid != os.getpid():
            self._writer = np.load(self.folder / VECTORS_FILE, mmap_mode="r+")
            self._writer_pid = os.getpid()
        return self._writer

    def vectors(self) -> np.ndarray:
        """The ``[count, dim]`` float16 embeddings, memory-mapped read-only (complete stores
        only: a partial one would hand out zero rows)."""
        missing = self.missing_chunks()
        if missing:
            raise EmbeddingStoreError(
                f"the embedding store {self.folder} is incomplete ({len(missing)} of "
                f"{self.n_chunks} chunks missing); finish it with `ra3d db embed`"
            )
        arr = np.load(self.folder / VECTORS_FILE, mmap_mode="r")
        if arr.shape != (self.meta.count, self.meta.dim) or arr.dtype != STORE_DTYPE:
            raise EmbeddingStoreError(
                f"{self.folder / VECTORS_FILE} has shape {arr.shape} {arr.dtype}, store.json says "
                f"{(self.meta.count, self.meta.dim)} float16; delete {self.folder} and recompute"
            )
        return arr

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["meta"])  # type: ignore[misc]


def fill_store(
    store: EmbeddingStore,
    rows: Callable[[int, int], list[str]],
    embed: Callable[[list[str]], np.ndarray],
    *,
    chunks: Iterable[int] | None = None,
    progress: bool = True,
    desc: str = "embedding captions",
) -> int:
    """Embed the missing chunks of ``store`` (or ``chunks``) one after the other, writing each
    as it finishes; returns how many chunks were embedded.

    Args:
        rows: ``rows(start, stop)`` → the texts of rows ``[start, stop)``.
        embed: texts → ``[n, dim]`` unit vectors.
        progress: a tqdm bar counting captions, with rate and ETA (resumed runs start at the
            rows already done).
    """
    from tqdm.auto import tqdm

    todo = store.missing_chunks() if chunks is None else sorted(set(chunks) - store.done_chunks())
    done_rows = len(store) - sum(b - a for a, b in map(store.chunk_range, store.missing_chunks()))
    t0 = time.perf_counter()
    with tqdm(
        total=len(store), initial=done_rows, unit="caption", unit_scale=True, desc=desc,
        disable=not progress or not todo, dynamic_ncols=True, smoothing=0.1,
    ) as bar:  # fmt: skip
        for chunk in todo:
            start, stop = store.chunk_range(chunk)
            texts = rows(start, stop)
            if len(texts) != stop - start:
                raise EmbeddingStoreError(
                    f"rows {start}..{stop} gave {len(texts)} captions (the database changed "
                    "while embedding?); run it again"
                )
            vectors = embed(texts)
            store.write_chunk(chunk, np.asarray(vectors))
            bar.update(stop - start)
    if todo:
        n = sum(b - a for a, b in map(store.chunk_range, todo))
        dt = time.perf_counter() - t0
        logger.info(
            "embedded %d captions in %d chunk(s) in %.1f s (%.0f captions/s) into %s",
            n, len(todo), dt, n / max(dt, 1e-9), store.folder,
        )  # fmt: skip
    return len(todo)


def caption_store(
    db: object, embedder: object, *, root: Path, chunk: int = DEFAULT_CHUNK
) -> EmbeddingStore:
    """The caption store of database ``db`` for ``embedder`` under ``root`` (opened with its
    done chunks, or created empty). Duck-typed to keep this module below the database."""
    return EmbeddingStore.open_or_create(
        Path(root) / store_dirname(embedder.id, db.manifest_hash),  # type: ignore[attr-defined]
        embedder_id=embedder.id,  # type: ignore[attr-defined]
        fingerprint=db.manifest_hash,  # type: ignore[attr-defined]
        count=len(db),  # type: ignore[arg-type]
        dim=embedder.dim,  # type: ignore[attr-defined]
        chunk=chunk,
    )


def embed_database_captions(
    db: object,
    embedder: object,
    *,
    root: Path,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> EmbeddingStore:
    """Fill (or resume) the caption store of ``db`` with ``embedder`` in this process."""
    store = caption_store(db, embedder, root=root, chunk=chunk)

    def rows(start: int, stop: int) -> list[str]:
        return [c for _, c in db.caption_rows(start, stop)]  # type: ignore[attr-defined]

    def embed(texts: list[str]) -> np.ndarray:
        return embedder.embed_text(texts).numpy()  # type: ignore[attr-defined]

    fill_store(store, rows, embed, progress=progress)
    return store


__all__ = [
    "DEFAULT_CHUNK",
    "EmbeddingStore",
    "EmbeddingStoreError",
    "StoreMeta",
    "caption_store",
    "embed_database_captions",
    "fill_store",
    "store_dirname",
]
