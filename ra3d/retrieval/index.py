"""Vector indexes for maximum-inner-product search over unit embeddings (Sec. 4.4).

The paper searches Objaverse's 800K CLIP embeddings with ScaNN (Guo et al., 2020): a k-means
tree partitions the database, anisotropic vector quantisation (asymmetric hashing, AH) scores the
points of the few leaves nearest the query, and the best candidates are re-scored exactly
("reorder"). :class:`ScannIndex` wraps that pipeline with parameters scaled to the database size;
:class:`ExactIndex` is brute force, used for small databases (k-means and AH training need a few
thousand points) and as the ground truth the ScaNN results are checked against.

Both save to a folder with an ``index.json`` that records the embedder that produced the vectors,
their dimension and count, the database manifest hash, and a sha256 of every file; :func:`load_index`
verifies all of them so that a truncated or edited file is reported instead of silently giving
wrong neighbours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ra3d.errors import ConfigError, Ra3dError

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
META_FILE = "index.json"
#: The float16 rows a ``reorder_dtype="float16"`` ScaNN index re-scores (read memory-mapped).
RESCORE_FILE = "vectors-f16.npy"
#: Written by :func:`load_index` after a full checksum pass: the size, mtime and ctime of every
#: file then, so that later loads of unchanged files skip re-hashing (GBs at 800k assets).
VERIFIED_FILE = ".verified.json"
# Below this many vectors ScaNN's k-means tree and AH codebooks have too little data to train
# (and brute force is already sub-millisecond), so ``build_index(kind="auto")`` is exact.
EXACT_THRESHOLD = 2000
#: From this many vectors ScaNN indexes keep their re-scoring rows as a memory-mapped float16
#: file (see ``ScannParams.reorder_dtype``); below it the float32 copy is < 150 MB at 384-d.
FLOAT16_REORDER_FROM = 100_000


class IndexCorruptError(Ra3dError, RuntimeError):
    """A saved index failed verification (missing file, checksum mismatch, unreadable)."""


class IndexNotFoundError(Ra3dError, FileNotFoundError):
    """There is no saved index at the given path."""


class EmbedderMismatchError(Ra3dError, ValueError):
    """An index is queried with (or opened for) a different embedder or database."""


@dataclass
class IndexMetadata:
    """What a saved index was built from; stored in ``index.json``.

    Attributes:
        embedder_id: :attr:`ra3d.retrieval.embed.Embedder.id` of the embedder of the vectors.
        dim: vector dimension ``D``.
        count: number of vectors ``N``.
        manifest_hash: hash of the asset database manifest the vectors were computed from.
        kind: ``"exact"`` or ``"scann"``.
        params: build parameters (ScaNN tree / AH / reorder settings).
        extra: free-form caller data (e.g. the uid order of the rows).
    """

    embedder_id: str
    dim: int
    count: int
    manifest_hash: str = ""
    kind: str = ""
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    format_version: int = INDEX_FORMAT_VERSION


def _as_matrix(x: np.ndarray | Tensor, what: str) -> np.ndarray:
    """``[N, D]`` C-contiguous float32 numpy view of ``x`` (1-D input becomes ``[1, D]``)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ConfigError(f"{what} must be [N, D] (or [D] for one vector), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ConfigError(f"{what} must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{what} contains NaN or infinite values")
    return x


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _meta_digest(meta: dict, files: dict[str, str]) -> str:
    blob = json.dumps({"metadata": meta, "files": files}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


class VectorIndex(ABC):
    """Top-k inner-product search over ``N`` vectors of size ``D``.

    With unit vectors (all ra3d embedders L2-normalise) the inner product is the cosine
    similarity, so the scores are CLIP / sentence similarities.
    """

    kind: ClassVar[str]

    def __init__(self, metadata: IndexMetadata) -> None:
        self.metadata = metadata

    @property
    def dim(self) -> int:
        return self.metadata.dim

    def __len__(self) -> int:
        return self.metadata.count

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray | Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` rows for each query, best first.

        Args:
            queries: ``[Q, D]`` (or ``[D]``) float vectors.
            k: neighbours per query; more than ``len(self)`` gives ``len(self)``.

        Returns:
            ``scores [Q, k]`` float32 inner products and ``indices [Q, k]`` int64 row numbers
            (``-1`` / ``-inf`` pad a query for which fewer than ``k`` were found).
        """
        q, k = self._check_query(queries, k)
        if len(self) == 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        return self._search(q, k)

    def _check_query(self, queries: np.ndarray | Tensor, k: int) -> tuple[np.ndarray, int]:
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ConfigError(
                f"query dimension {q.shape[1]} does not match the index dimension {self.dim} "
                f"(built by embedder {self.metadata.embedder_id!r}); embed queries with that "
                "embedder or rebuild the index."
            )
        if int(k) < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        return q, min(int(k), len(self))

    @abstractmethod
    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``q: [Q, D]`` float32, ``1 <= k <= N``."""

    # ------------------------------------------------------------------ compatibility
    def check_compatible(
        self, embedder_id: str | None = None, manifest_hash: str | None = None
    ) -> None:
        """Raise :class:`EmbedderMismatchError` unless this index was built by ``embedder_id``
        from the database with ``manifest_hash`` (``None`` skips a check)."""
        meta = self.metadata
        if embedder_id is not None and embedder_id != meta.embedder_id:
            raise EmbedderMismatchError(
                f"this index was built with embedder {meta.embedder_id!r} but is queried with "
                f"{embedder_id!r}; vectors of different embedders are not comparable. Query "
                "with the embedder that built it, or rebuild the index with this one."
            )
        if manifest_hash is not None and meta.manifest_hash and manifest_hash != meta.manifest_hash:
            raise EmbedderMismatchError(
                f"this index was built from database manifest {meta.manifest_hash[:12]} but the "
                f"database now has manifest {manifest_hash[:12]}; rebuild the index."
            )

    # ------------------------------------------------------------------ persistence
    @abstractmethod
    def _save_files(self, folder: Path) -> None:
        """Write the index's data files into the (empty) ``folder``."""

    @classmethod
    @abstractmethod
    def _load_files(cls, folder: Path, metadata: IndexMetadata) -> VectorIndex:
        """Rebuild the index from the verified files in ``folder``."""

    def save(self, path: str | Path) -> Path:
        """Write the index to folder ``path`` atomically (temp folder + rename).

        A reader never sees a half-written index: either the old folder or the complete new one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
            self._save_files(tmp)
            files = {
                p.relative_to(tmp).as_posix(): sha256_file(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            meta = asdict(self.metadata)
            meta["kind"] = self.kind
            doc = {"metadata": meta, "files": files, "digest": _meta_digest(meta, files)}
            (tmp / META_FILE).write_text(json.dumps(doc, indent=1, sort_keys=True))
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def _corrupt(path: Path, what: str) -> IndexCorruptError:
    return IndexCorruptError(
        f"vector index at {path} is corrupt: {what}. Delete the folder {path} and rebuild it "
        "(ra3d rebuilds its own caches automatically on the next run)."
    )


def _stamp(path: Path) -> list[int]:
    """What changes whenever a file is written, replaced or touched (ctime cannot be set)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _verified(path: Path, digest: str) -> dict | None:
    try:
        doc = json.loads((path / VERIFIED_FILE).read_text())
        return doc["files"] if doc.get("digest") == digest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record_verified(path: Path, digest: str, stamps: dict) -> None:
    """Remember a passed checksum pass (a read-only index folder just re-hashes next time)."""
    try:
        tmp = path / f"{VERIFIED_FILE}.{uuid.uuid4().hex[:8]}.partial"
        tmp.write_text(json.dumps({"digest": digest, "files": stamps}))
        os.replace(tmp, path / VERIFIED_FILE)
    except OSError:  # a read-only cache: the next load hashes the files again (speed only)
        pass


def load_index(
    path: str | Path,
    *,
    embedder_id: str | None = None,
    manifest_hash: str | None = None,
    verify: bool = True,
) -> VectorIndex:
    """Load an index saved by :meth:`VectorIndex.save`.

    Args:
        path: the index folder.
        embedder_id, manifest_hash: if given, must match what the index was built with
            (:class:`EmbedderMismatchError` otherwise).
        verify: check the sha256 of every file (a few seconds per GB) — once: the pass is
            recorded in ``.verified.json`` with each file's size, mtime, ctime and inode, and a
            later load re-hashes only when one of them changed (any write, replace or touch).

    Raises:
        IndexNotFoundError: no index at ``path`` (a ``FileNotFoundError``).
        IndexCorruptError: a file is missing, altered or unreadable.
        EmbedderMismatchError: built by another embedder / from another database.
    """
    path = Path(path)
    if not path.is_dir():
        raise IndexNotFoundError(f"no vector index at {path} (expected a folder with {META_FILE})")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise _corrupt(path, f"{META_FILE} is missing")
    try:
        doc = json.loads(meta_path.read_text())
        meta, files = doc["metadata"], doc["files"]
        if doc.get("digest") != _meta_digest(meta, files):
            raise _corrupt(path, f"{META_FILE} was modified (its digest does not match)")
        metadata = IndexMetadata(**meta)
    except IndexCorruptError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise _corrupt(path, f"{META_FILE} is unreadable ({e})") from e
    if metadata.format_version != INDEX_FORMAT_VERSION:
        raise _corrupt(
            path,
            f"format version {metadata.format_version}, this ra3d reads {INDEX_FORMAT_VERSION}",
        )
    for name in files:
        if not (path / name).is_file():
            raise _corrupt(path, f"file {name} is missing")
    stamps = {name: _stamp(path / name) for name in files}
    if verify and _verified(path, doc["digest"]) != stamps:
        for name, digest in files.items():
            if sha256_file(path / name) != digest:
                raise _corrupt(path, f"file {name} fails its sha256 checksum")
        _record_verified(path, doc["digest"], stamps)
    cls = {"exact": ExactIndex, "scann": ScannIndex}.get(metadata.kind)
    if cls is None:
        raise _corrupt(path, f"unknown index kind {metadata.kind!r}")
    try:
        index = cls._load_files(path, metadata)
    except (OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, f"its data could not be read ({e})") from e
    index.check_compatible(embedder_id, manifest_hash)
    return index


# --------------------------------------------------------------------------- exact
class ExactIndex(VectorIndex):
    """Brute-force inner-product search: ``scores = Q @ Xᵀ`` then top-k (exact).

    Args:
        vectors: ``[N, D]`` database.
        metadata: what the vectors are (``dim``/``count`` are filled in from ``vectors``).
        chunk_elements: bound on the ``[Q, N]`` score block held in memory at once.
    """

    kind = "exact"

    def __init__(
        self, vectors: np.ndarray | Tensor, metadata: IndexMetadata, chunk_elements: int = 1 << 25
    ) -> None:
        x = _as_matrix(vectors, "vectors")
        metadata.dim, metadata.count, metadata.kind = int(x.shape[1]), int(x.shape[0]), self.kind
        super().__init__(metadata)
        self.vectors = x
        self.chunk_elements = int(chunk_elements)

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        db = torch.from_numpy(self.vectors)  # [N, D]
        qt = torch.from_numpy(q)  # [Q, D]
        rows = max(1, self.chunk_elements // max(1, len(self)))
        scores, idx = [], []
        for s in range(0, qt.shape[0], rows):
            sim = qt[s : s + rows] @ db.T  # [q, N]
            top = torch.topk(sim, k, dim=1)
            scores.append(top.values)
            idx.append(top.indices)
        return torch.cat(scores).numpy(), torch.cat(idx).numpy().astype(np.int64)

    def _save_files(self, folder: Path) -> None:
        np.save(folder / "vectors.npy", self.vectors)

    @classmethod
    def _load_files(cls, folder: Path, metadata: IndexMetadata) -> ExactIndex:
        x = np.load(folder / "vectors.npy", allow_pickle=False)
        if x.shape != (metadata.count, metadata.dim):
            raise ConfigError(
                f"vectors.npy has shape {x.shape}, index.json says {(metadata.count, metadata.dim)}"
            )
        return cls(x, metadata)


# --------------------------------------------------------------------------- ScaNN
@dataclass
class ScannParams:
    """ScaNN tree-AH-reorder settings (see :func:`ScannParams.for_size` for the defaults).

    Attributes:
        num_leaves: k-means partitions of the database (≈ √N).
        leaves_to_search: partitions scored per query (the recall / speed knob).
        training_sample_size: points used to train the tree and the AH codebooks.
        dims_per_block: dimensions per AH sub-space (2 = the ScaNN paper's setting).
        anisotropic_threshold: the anisotropic loss threshold η of Guo et al. (0.2 for
            unit-norm MIPS).
        reorder: AH candidates re-scored exactly before the final top-k.
        soar_lambda: SOAR spilling strength (ScaNN ≥ 1.3); ``None`` disables spilling.
        reorder_dtype: the copy of the database kept for the exact re-scoring, which is most of
            the index (800k × 768 is 2.4 GB in float32): ``"float32"``, ``"bfloat16"`` or
            ``"int8"`` keep it inside ScaNN's searcher (loaded whole into memory);
            ``"float16"`` keeps it as a ``.npy`` beside the searcher that is read
            memory-mapped, so a cold process touches only the rows it re-scores (ScaNN then
            returns its ``reorder`` best AH candidates and ra3d re-scores them).
    """

    num_leaves: int
    leaves_to_search: int
    training_sample_size: int
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder: int = 200
    soar_lambda: float | None = None
    reorder_dtype: str = "float32"

    @staticmethod
    def for_size(n: int) -> ScannParams:
        """Defaults scaled with the database size ``n``.

        √N leaves keeps both the tree search (∝ #leaves) and the points scored per leaf
        (∝ N / #leaves) small. The leaves searched grow like √#leaves (≈ N^¼), because a query's
        neighbourhood spans more, smaller leaves as N grows: 1.1·√#leaves is 20 of 316 leaves at
        100k and 33 of 894 at 800k, which keeps recall@10 ≥ 0.99 on the clustered CLIP-like data
        of ``bench/retrieval.py``. Small databases have coarse leaves that split
        neighbourhoods, so at least ≈ 4000 points (and 16 leaves) are searched, which costs
        microseconds. Exact re-scoring of max(200, #leaves / 2) AH candidates fixes the ranking
        errors of 4-bit AH codes among near-tied neighbours, which grow with N (at 800k, 200
        candidates gave recall 0.969 and 447 gave 0.995). The tree and codebooks are trained
        on at most 100k points, which bounds the build time. From
        :data:`FLOAT16_REORDER_FROM` vectors the re-scoring copy is float16 and memory-mapped
        (``reorder_dtype="float16"``): at 800k × 384 the float32 copy inside ScaNN made the
        index 1.3 GB, all read (and hashed) by every cold process — 21 s to load on this
        2-core machine — whereas the re-scoring reads ``reorder`` rows per query.
        """
        if n < 1:
            raise ConfigError(f"cannot build a ScaNN index over {n} vectors")
        num_leaves = int(max(8, min(round(math.sqrt(n)), n // 50)))
        search = max(16, math.ceil(1.1 * math.sqrt(num_leaves)), math.ceil(num_leaves * 4000 / n))
        return ScannParams(
            num_leaves=num_leaves,
            leaves_to_search=int(min(num_leaves, search)),
            training_sample_size=int(min(n, 100_000)),
            reorder=int(max(200, num_leaves // 2)),
            reorder_dtype="float16" if n >= FLOAT16_REORDER_FROM else "float32",
        )


def _reorder_type(name: str):  # noqa: ANN202 - a ScaNN enum member
    from scann.scann_ops.py.scann_builder import ReorderType

    types = {"float32": ReorderType.FLOAT32, "bfloat16": ReorderType.BFLOAT16,
             "int8": ReorderType.INT8}  # fmt: skip
    if name not in types:
        raise ConfigError(f"reorder_dtype must be one of {sorted(types)}, got {name!r}")
    return types[name]


def _import_scann():  # noqa: ANN202 - the module object
    try:
        import scann  # noqa: F401
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError as e:
        raise ImportError(
            "ScaNN is not importable (pip install scann; Linux x86-64 / macOS arm64 only). Use "
            "kind='exact' for an exact index instead."
        ) from e
    return scann_ops_pybind


class ScannIndex(VectorIndex):
    """ScaNN tree + asymmetric hashing + exact reorder (Guo et al., 2020), as in Sec. 4.4.

    Args:
        vectors: ``[N, D]`` database (unit vectors: ``dot_product`` MIPS = cosine).
        metadata: what the vectors are.
        params: tree / AH / reorder settings; default :meth:`ScannParams.for_size`.
        num_threads: search threads for batched queries (0 = all cores).
    """

    kind = "scann"

    def __init__(
        self,
        vectors: np.ndarray | Tensor | None,
        metadata: IndexMetadata,
        params: ScannParams | None = None,
        num_threads: int = 0,
        _searcher: object | None = None,
        _rescore: np.ndarray | None = None,
    ) -> None:
        pybind = _import_scann()
        if _searcher is None:
            x = _as_matrix(vectors, "vectors")
            n, d = x.shape
            params = params or ScannParams.for_size(n)
            if n < 2 * params.num_leaves or n < 16:
                raise ConfigError(
                    f"ScaNN needs more vectors ({n}) than 2 × num_leaves ({params.num_leaves}); "
                    f"use ExactIndex (build_index(kind='auto') does below {EXACT_THRESHOLD})."
                )
            t0 = time.perf_counter()
            builder = pybind.builder(x, 10, "dot_product").tree(
                num_leaves=params.num_leaves,
                num_leaves_to_search=params.leaves_to_search,
                training_sample_size=min(params.training_sample_size, n),
                soar_lambda=params.soar_lambda,
            )
            builder = builder.score_ah(
                params.dims_per_block,
                anisotropic_quantization_threshold=params.anisotropic_threshold,
                training_sample_size=min(params.training_sample_size, n),
            )
            if params.reorder_dtype == "float16":
                _rescore = x.astype(np.float16)
            else:
                builder = builder.reorder(
                    params.reorder, quantize=_reorder_type(params.reorder_dtype)
                )
            if num_threads:
                builder = builder.set_n_training_threads(num_threads)
            _searcher = builder.build()
            metadata.dim, metadata.count = int(d), int(n)
            logger.info(
                "ScaNN index over %d x %d built in %.1f s (%s)",
                n,
                d,
                time.perf_counter() - t0,
                params,
            )
        elif params is None:
            raise ConfigError("a loaded ScaNN searcher needs its params")
        metadata.kind = self.kind
        metadata.params = asdict(params)
        super().__init__(metadata)
        self.params = params
        self.searcher = _searcher
        #: ``[N, D]`` float16 rows for the exact re-scoring (``reorder_dtype="float16"``).
        self.rescore = _rescore
        if params.reorder_dtype == "float16" and _rescore is None:
            raise ConfigError("a float16-reorder ScaNN index needs its vectors-f16.npy")
        if num_threads:
            self.searcher.set_num_threads(num_threads)

    def _search(
        self, q: np.ndarray, k: int, leaves_to_search: int | None = None, reorder: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        leaves = leaves_to_search or self.params.leaves_to_search
        pre = max(reorder or self.params.reorder, k)
        final = pre if self.rescore is not None else k  # ra3d re-scores the AH candidates
        if q.shape[0] == 1:
            idx, dist = self.searcher.search(q[0], final, pre, leaves)
            idx, dist = np.asarray(idx)[None], np.asarray(dist)[None]
        else:
            idx, dist = self.searcher.search_batched_parallel(q, final, pre, leaves)
        if self.rescore is not None:
            idx, dist = self._rescored(q, np.asarray(idx, dtype=np.int64), k)
        idx, dist = np.asarray(idx, dtype=np.int64), np.asarray(dist, dtype=np.float32)
        if idx.shape[1] < k:  # fewer candidates than k in the searched leaves
            pad = k - idx.shape[1]
            idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=-np.inf)
        return dist, idx

    def _rescored(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the ``[Q, pre]`` AH candidates with the float16 rows (read
        from the memory map: only these rows are touched), best ``k`` kept."""
        assert self.rescore is not None
        out_idx = np.full((q.shape[0], k), -1, np.int64)
        out_dist = np.full((q.shape[0], k), -np.inf, np.float32)
        for i, rows in enumerate(cand):
            rows = rows[rows >= 0]
            if rows.size == 0:
                continue
            order = np.sort(rows)  # ascending rows: sequential reads of the map
            scores = np.asarray(self.rescore[order], dtype=np.float32) @ q[i]
            top = np.argsort(-scores, kind="stable")[:k]
            out_idx[i, : top.size], out_dist[i, : top.size] = order[top], scores[top]
        return out_idx, out_dist

    def search_with(
        self,
        queries: np.ndarray | Tensor,
        k: int,
        leaves_to_search: int | None = None,
        reorder: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with per-call overrides of the recall / speed knobs."""
        q, k = self._check_query(queries, k)
        return self._search(q, k, leaves_to_search, reorder)

    def _save_files(self, folder: Path) -> None:
        sub = folder / "scann"
        sub.mkdir()
        self.searcher.serialize(str(sub), relative_path=True)
        if self.rescore is not None:
            np.save(folder / RESCORE_FILE, np.ascontiguousarray(self.rescore, dtype=np.float16))

    @classmethod
    def _load_files(cls, folder: Path, metadata: IndexMetadata) -> ScannIndex:
        pybind = _import_scann()
        searcher = pybind.load_searcher(str(folder / "scann"), assets_backcompat_shim=False)
        params = ScannParams(**metadata.params)
        rescore = None
        if params.reorder_dtype == "float16":
            rescore = np.load(folder / RESCORE_FILE, mmap_mode="r", allow_pickle=False)
            if rescore.shape != (metadata.count, metadata.dim) or rescore.dtype != np.float16:
                raise ValueError(f"{RESCORE_FILE} has shape {rescore.shape} {rescore.dtype}")
        return cls(None, metadata, params=params, _searcher=searcher, _rescore=rescore)


def build_index(
    vectors: np.ndarray | Tensor,
    embedder_id: str,
    *,
    manifest_hash: str = "",
    kind: str = "auto",
    exact_threshold: int = EXACT_THRESHOLD,
    params: ScannParams | None = None,
    extra: dict | None = None,
) -> VectorIndex:
    """Index ``vectors [N, D]``: ``kind="auto"`` → exact below ``exact_threshold`` vectors, else
    ScaNN; or force ``"exact"`` / ``"scann"``."""
    x = _as_matrix(vectors, "vectors")
    meta = IndexMetadata(
        embedder_id=embedder_id,
        dim=int(x.shape[1]),
        count=int(x.shape[0]),
        manifest_hash=manifest_hash,
        extra=dict(extra or {}),
    )
    if kind not in ("auto", "exact", "scann"):
        raise ConfigError(f"index kind must be 'auto', 'exact' or 'scann', got {kind!r}")
    if kind == "auto":
        kind = "exact" if x.shape[0] < exact_threshold else "scann"
    if kind == "exact":
        return ExactIndex(x, meta)
    return ScannIndex(x, meta, params=params)
