"""Two-stage retrieval ξ_N(c, D) of the paper's Sec. 4.4: captions first, then renders.

The paper observes that caption embeddings find the right *category* robustly while render
embeddings capture texture but fail more often, so it retrieves ``N'`` candidates by caption and
keeps the top ``N < N'`` by the similarity of the query to the candidates' rendered images. The
kept assets are then frontally aligned (:mod:`ra3d.retrieval.align`).

Everything derived from the database is cached in ``database.cache_dir/retrieval``:

* ``embeddings-captions-<embedder>-<manifest>/`` — the caption embeddings (float16, filled in
  chunks that survive a killed run, :mod:`ra3d.retrieval.embedding_store`; ``ra3d db embed``
  fills it on several devices);
* ``captions-<embedder>-<manifest>/`` — the caption vector index (exact or ScaNN) built from
  them, keyed by the embedder id and the manifest hash, so a new embedder or an edited database
  builds a new one;
* ``views-<embedder>-<render settings>/<uid>-<mesh key>.npy`` — ``[K, D]`` embeddings of each
  asset's ``K`` orbit renders, computed on first use. Their mean is the asset's image embedding
  for the rerank, and the same ``K`` views score the frontal alignment, so one render pass serves
  both.

Meshes on demand: a candidate's mesh that is not stored in the database (an Objaverse object) is
fetched only when the candidate is reached (:mod:`ra3d.retrieval.fetch`), so a retrieve brings
the N' candidates' meshes (for the rerank and alignment) and the N it returns, nothing else. A
fetch that fails, or a mesh that fails to load, is skipped with a warning and the next caption
match is taken. A licence filter is applied before anything is fetched: the caption search
oversamples (:data:`LICENSE_OVERSAMPLE` matches per candidate wanted, doubling while too few
pass, up to :data:`MAX_EXAMINED`), and the licences of Objaverse objects not yet annotated are
fetched (and cached in the catalog) for the matches examined.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.errors import ConfigError, Ra3dError
from ra3d.io import atomic_write
from ra3d.retrieval.align import (
    VIEW_PROMPTS,
    FrontalAligner,
    alignment_cameras,
    render_view_embeddings,
)
from ra3d.retrieval.base import RetrievedAsset, Retriever
from ra3d.retrieval.database import AssetDatabase, AssetRecord, default_database
from ra3d.retrieval.embed import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    Embedder,
    make_embedder,
)
from ra3d.retrieval.embedding_store import (
    DEFAULT_CHUNK,
    EmbeddingStore,
    caption_store,
    embed_database_captions,
    store_dirname,
)
from ra3d.retrieval.fetch import MeshFetcher, default_fetcher
from ra3d.retrieval.index import (
    IndexCorruptError,
    IndexNotFoundError,
    VectorIndex,
    build_index,
    load_index,
)
from ra3d.retrieval.licenses import (
    LicenseFilter,
    objaverse_provenance,
    unknown_objaverse_provenance,
)

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "retrieval"
#: With a licence filter, the first caption search looks at this many matches per candidate
#: wanted (then twice as many, and so on, while too few pass).
LICENSE_OVERSAMPLE = 8
#: Most caption matches one retrieve examines (a licence filter few assets pass, or many failed
#: fetches); beyond it the retrieve returns what it found, or fails with the reasons.
MAX_EXAMINED = 100_000
#: Rows per chunk of the caption store (each chunk is written as it finishes, see
#: :mod:`ra3d.retrieval.embedding_store`).
CAPTION_CHUNK = DEFAULT_CHUNK


class NoUsableAssetError(Ra3dError, RuntimeError):
    """No caption match could be used (licences refused, meshes not fetched or unreadable)."""


def _slug(text: str, keep: int = 48) -> str:
    """Readable, filesystem-safe, collision-free key of ``text``."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:keep]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _mesh_key(record: AssetRecord) -> str:
    """What identifies an asset's mesh (not its caption or licence, which annotations fill in
    later): a re-imported asset gets a new folder, hence a new key; an Objaverse uid is one
    immutable object."""
    ident = [record.uid, record.mesh_store]
    if record.mesh_store == "database":
        ident.append(record.mesh_path)
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]


@dataclass
class _Candidate:
    """One caption match on its way through the two stages."""

    row: int
    text_score: float
    text_rank: int
    record: AssetRecord
    mesh: Path | None = None
    mesh_from: str = ""
    views: Tensor | None = None


class _CandidateStream:
    """Caption matches in rank order, read from the index in growing batches (a licence filter
    refuses some; a failed fetch asks for the next); each batch reads only its own rows."""

    def __init__(self, retriever: TwoStageRetriever, query: np.ndarray, first: int) -> None:
        self.retriever = retriever
        self.query = query
        self.k = max(1, int(first))
        self.cap = min(len(retriever.caption_index()), MAX_EXAMINED)
        self.seen: set[int] = set()
        self.buffer: deque[_Candidate] = deque()
        self.exhausted = False
        self.examined = 0
        self.refused: Counter[str] = Counter()

    def take(self, n: int) -> list[_Candidate]:
        out: list[_Candidate] = []
        while len(out) < n:
            if not self.buffer and not self._grow():
                break
            if self.buffer:
                out.append(self.buffer.popleft())
        return out

    def _grow(self) -> bool:
        while not self.buffer:
            if self.exhausted:
                return False
            k = min(self.k, self.cap)
            scores, rows = self.retriever.caption_index().search(self.query, k)
            found = [
                (int(r), float(s), rank)
                for rank, (r, s) in enumerate(zip(rows[0], scores[0], strict=True))
                if r >= 0
            ]
            self.exhausted = k >= self.cap or len(found) < k
            self.k = k * 2
            new = [f for f in found if f[0] not in self.seen]
            if not new:
                continue
            self.seen.update(r for r, _, _ in new)
            self.examined += len(new)
            records = self.retriever.database.records_at([r for r, _, _ in new])
            candidates = [
                _Candidate(row, score, rank, rec)
                for (row, score, rank), rec in zip(new, records, strict=True)
            ]
            self.buffer.extend(self.retriever._licensed(candidates, self.refused))
        return True


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """A cached ``.npy``, written by ra3d's one atomic-write rule (never a half-written cache)."""
    atomic_write(path, lambda handle: np.save(handle, array), size_hint=array.nbytes + 128)


class TwoStageRetriever(Retriever):
    """Caption search (top ``n_candidates`` = N') → image rerank (top ``k`` = N) → alignment.

    Args:
        database: an :class:`AssetDatabase`, a database folder, or ``None`` for
            :func:`default_database` (``$RA3D_DATABASE`` or the shipped starter library).
        embedder: an :class:`Embedder`, or ``"auto"`` / ``"clip"`` / ``"minilm"`` (see
            :func:`ra3d.retrieval.embed.make_embedder`).
        n_candidates: N', caption matches passed to the image rerank (raised to ``k`` if smaller).
        rerank: rerank candidates by their render embeddings (needs an image embedder; skipped
            with a log line for text-only ones).
        align: frontally align the returned assets (needs an image embedder, likewise).
        index_kind: ``"auto"`` (exact below 2000 assets, else ScaNN), ``"exact"`` or ``"scann"``.
        index_path: a prebuilt caption index to use instead of the cache (e.g. Objaverse's, built
            once); it must have been built by this embedder from this database.
        n_views, render_size, elevation_deg, camera_distance, fovy_deg: the orbit of ``K`` renders
            used for the image embeddings and the alignment.
        shading: asset render shading (``"lambertian"`` gives untextured assets visible shape).
        mesh_backend: rasterizer backend of the renders (``"auto"``, ``"torch"``, ``"nvdiffrast"``).
        clip_model, clip_pretrained: the CLIP used when ``embedder`` is ``"clip"`` or ``"auto"``.
        device: torch device for the embedder and the renders.
        view_prompts: the alignment prompts, front first.
        fetcher: how meshes not stored in the database (Objaverse objects) are brought here;
            ``None``: :func:`ra3d.retrieval.fetch.default_fetcher` (the database's mirror, else
            Objaverse downloads into its mesh cache).
        licenses: accept only assets under these licences (SPDX ids such as ``CC0-1.0``; a family
            such as ``CC-BY`` accepts every version, see :class:`LicenseFilter`); ``None``: all.
            Applied before any mesh is fetched.
    """

    def __init__(
        self,
        database: AssetDatabase | str | Path | None = None,
        embedder: Embedder | str = "auto",
        n_candidates: int = 16,
        rerank: bool = True,
        align: bool = True,
        index_kind: str = "auto",
        index_path: str | Path | None = None,
        n_views: int = 8,
        render_size: int = 224,
        elevation_deg: float = 15.0,
        camera_distance: float = 2.0,
        fovy_deg: float = 40.0,
        shading: str = "lambertian",
        mesh_backend: str = "auto",
        clip_model: str = DEFAULT_CLIP_MODEL,
        clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        device: str = "cpu",
        view_prompts: tuple[str, ...] = VIEW_PROMPTS,
        fetcher: MeshFetcher | None = None,
        licenses: Sequence[str] | None = None,
    ) -> None:
        if int(n_candidates) < 1:
            raise ConfigError(f"n_candidates (N') must be >= 1, got {n_candidates}")
        if index_kind not in ("auto", "exact", "scann"):
            raise ConfigError(f"index_kind must be 'auto', 'exact' or 'scann', got {index_kind!r}")
        if int(n_views) < 2 or int(render_size) < 8:
            raise ConfigError(
                f"need n_views >= 2 and render_size >= 8, got {n_views}, {render_size}"
            )
        if fetcher is not None and not isinstance(fetcher, MeshFetcher):
            raise ConfigError(
                f"fetcher must be a ra3d.retrieval.fetch.MeshFetcher, got {fetcher!r}"
            )
        self._database_arg = database
        self._embedder_arg = embedder
        self.n_candidates = int(n_candidates)
        self.rerank = bool(rerank)
        self.align = bool(align)
        self.index_kind = index_kind
        self.index_path = None if index_path is None else Path(index_path)
        self.render = dict(
            n_views=int(n_views),
            image_size=int(render_size),
            elevation_deg=float(elevation_deg),
            distance=float(camera_distance),
            fovy_deg=float(fovy_deg),
        )
        self.shading = shading
        self.mesh_backend = mesh_backend
        self.clip_model, self.clip_pretrained = clip_model, clip_pretrained
        self.device = device
        self.view_prompts = tuple(view_prompts)
        self.license_filter = LicenseFilter.parse(licenses)
        self.licenses = None if self.license_filter is None else list(self.license_filter.allowed)
        self._fetcher = fetcher
        self._database: AssetDatabase | None = None
        self._embedder: Embedder | None = None
        self._index: VectorIndex | None = None
        self._aligner: FrontalAligner | None = None
        self._said: set[str] = set()

    # ------------------------------------------------------------------ lazy parts
    @property
    def database(self) -> AssetDatabase:
        if self._database is None:
            arg = self._database_arg
            if arg is None:
                self._database = default_database()
            elif isinstance(arg, AssetDatabase):
                self._database = arg
            else:
                self._database = AssetDatabase.open(arg)
        return self._database

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            arg = self._embedder_arg
            if isinstance(arg, Embedder):
                self._embedder = arg
            else:
                self._embedder = make_embedder(
                    str(arg),
                    clip_model=self.clip_model,
                    clip_pretrained=self.clip_pretrained,
                    device=self.device,
                )
        return self._embedder

    @property
    def fetcher(self) -> MeshFetcher:
        """The fetcher of meshes not stored in the database (made on first use)."""
        if self._fetcher is None:
            self._fetcher = default_fetcher(self.database)
        return self._fetcher

    @property
    def cache_root(self) -> Path:
        return self.database.cache_dir / CACHE_SUBDIR

    def _caption_index_dir(self) -> Path:
        db_key = self.database.manifest_hash[:16]
        return self.cache_root / f"captions-{_slug(self.embedder.id)}-{db_key}-{self.index_kind}"

    def _views_dir(self) -> Path:
        settings = json.dumps(
            {**self.render, "shading": self.shading, "version": 1}, sort_keys=True
        )
        return (
            self.cache_root
            / f"views-{_slug(self.embedder.id)}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"
        )

    def _say_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.info(message, *args)

    # ------------------------------------------------------------------ stage 1: captions
    def caption_store(self, progress: bool | None = None) -> EmbeddingStore:
        """The database's caption embeddings for this embedder (float16, memory-mapped; row
        ``i`` is ``database.caption_rows(i, i + 1)``; see :mod:`ra3d.retrieval.embedding_store`).

        Chunks a previous (killed) run or ``ra3d db embed`` (several devices) already wrote are
        kept; the missing ones are embedded here, with a progress bar when there are many.
        """
        db, emb = self.database, self.embedder
        store = caption_store(db, emb, root=self.cache_root, chunk=CAPTION_CHUNK)
        if not store.complete:
            missing = len(store.missing_chunks())
            show = progress if progress is not None else missing > 1
            embed_database_captions(db, emb, root=self.cache_root, chunk=CAPTION_CHUNK,
                                    progress=show)  # fmt: skip
        return store

    def _caption_embeddings(self) -> np.ndarray:
        """``[N, D]`` float32 unit caption embeddings in the database's row order, read from the
        caption store (filled first where needed)."""
        return np.asarray(self.caption_store().vectors(), dtype=np.float32)

    def caption_index(self) -> VectorIndex:
        """The caption index of the database (loaded from the cache, or built and cached)."""
        if self._index is not None:
            return self._index
        db, emb = self.database, self.embedder
        if len(db) == 0:
            raise ConfigError(f"the asset database at {db.root} is empty; import assets first")
        if self.index_path is not None:
            index = load_index(self.index_path, embedder_id=emb.id, manifest_hash=db.manifest_hash)
            if len(index) != len(db):
                raise ConfigError(
                    f"index {self.index_path} has {len(index)} vectors but the database has "
                    f"{len(db)} assets; rebuild the index for this database."
                )
            self._index = index
            return index
        path = self._caption_index_dir()
        try:
            self._index = load_index(path, embedder_id=emb.id, manifest_hash=db.manifest_hash)
            logger.debug("caption index loaded from %s", path)
            return self._index
        except IndexNotFoundError:
            pass
        except IndexCorruptError as err:
            logger.warning("%s Rebuilding it.", err)
            shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        vectors = self._caption_embeddings()  # [N, D]
        index = build_index(
            vectors, emb.id, manifest_hash=db.manifest_hash, kind=self.index_kind,
            extra={"source": "captions", "database": str(db.root)},
        )  # fmt: skip
        try:
            index.save(path)
        except OSError as err:  # a read-only cache only costs speed
            logger.warning("could not cache the caption index at %s (%s)", path, err)
        logger.info(
            "built %s caption index of %d assets with %s in %.1f s (cached in %s)",
            index.kind, len(index), emb.id, time.perf_counter() - t0, path,
        )  # fmt: skip
        self._index = index
        return index

    def clear_cache(self) -> None:
        """Delete this embedder's cached caption embeddings, caption index and view embeddings."""
        store = self.cache_root / store_dirname(self.embedder.id, self.database.manifest_hash)
        for path in (store, self._caption_index_dir(), self._views_dir()):
            shutil.rmtree(path, ignore_errors=True)
        self._index = None

    # ------------------------------------------------------------------ meshes and licences
    def _licensed(self, candidates: list[_Candidate], refused: Counter[str]) -> list[_Candidate]:
        """The candidates whose licence passes the filter, after fetching the annotations of
        those whose licence is not known yet (Objaverse objects), before any mesh is fetched."""
        if self.license_filter is None:
            return candidates
        self._annotate([c.record for c in candidates])
        kept = []
        for c in candidates:
            c.record = self.database.get(c.record.uid) if not c.record.license else c.record
            if self.license_filter.allows(c.record.license):
                kept.append(c)
            else:
                refused[c.record.license or "unknown"] += 1
        return kept

    def _annotate(self, records: list[AssetRecord]) -> None:
        """Fetch and cache the annotations of the records whose licence is not known yet."""
        todo = [r.uid for r in records if r.mesh_store == "objaverse" and not r.license]
        if not todo:
            return
        found = self.fetcher.annotations(todo)
        notes = {u: objaverse_provenance(u, a) for u, a in found.items() if u in set(todo)}
        self.database.cache_annotations(notes)

    def _fetch_meshes(self, batch: list[_Candidate]) -> list[tuple[_Candidate, str | None]]:
        """Give each candidate its local mesh (stored, or fetched in one batch); the reason
        where it has none."""
        db = self.database
        out: list[tuple[_Candidate, str | None]] = []
        remote = [c for c in batch if c.record.mesh_store != "database"]
        fetched = self.fetcher.fetch([c.record for c in remote]) if remote else None
        for c in batch:
            if c.record.mesh_store == "database":
                path = db.root / c.record.mesh_path
                if path.is_file():
                    c.mesh, c.mesh_from = path, "database"
                    out.append((c, None))
                else:
                    out.append((c, f"its mesh file {c.record.mesh_path} is missing"))
                continue
            assert fetched is not None
            if c.record.uid in fetched.paths:
                c.mesh, c.mesh_from = fetched.paths[c.record.uid], self.fetcher.name
                out.append((c, None))
            else:
                reason = fetched.failed.get(c.record.uid, "the fetcher did not return it")
                out.append((c, f"its mesh could not be fetched ({reason})"))
        return out

    def mesh_file(self, uid: str) -> Path:
        """The local mesh of asset ``uid``: its file in the database, else fetched."""
        record = self.database.get(uid)
        if record.mesh_store == "database":
            path = self.database.root / record.mesh_path
            if not path.is_file():
                raise FileNotFoundError(f"mesh file {path} of asset {uid} is missing")
            return path
        result = self.fetcher.fetch([record])
        if uid not in result.paths:
            raise FileNotFoundError(
                f"the mesh of asset {uid} could not be fetched: {result.failed.get(uid, '?')}"
            )
        return result.paths[uid]

    # ------------------------------------------------------------------ stage 2: renders
    def view_embeddings(self, uid: str, mesh_path: str | Path | None = None) -> Tensor:
        """``[K, D]`` embeddings of the ``K`` orbit renders of asset ``uid`` (cached per asset;
        the mesh — ``mesh_path``, else :meth:`mesh_file` — is read only on a cache miss)."""
        from ra3d.representations.mesh import MeshAsset

        record = self.database.get(uid)
        path = self._views_dir() / f"{uid}-{_mesh_key(record)}.npy"
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == (self.render["n_views"], self.embedder.dim):
                    return torch.from_numpy(cached)
            except (OSError, ValueError) as err:
                logger.warning("ignoring unreadable view cache %s (%s)", path, err)
        mesh = Path(mesh_path) if mesh_path is not None else self.mesh_file(uid)
        asset = MeshAsset(mesh, shading=self.shading, backend=self.mesh_backend).to(self.device)
        cameras = alignment_cameras(**self.render)
        emb = render_view_embeddings(asset, self.embedder, cameras)  # [K, D]
        try:
            _save_npy_atomic(path, emb.numpy().astype(np.float32))
        except OSError as err:
            logger.warning("could not cache view embeddings at %s (%s)", path, err)
        return emb

    def precompute_view_embeddings(self, uids: list[str] | None = None) -> int:
        """Fill the view-embedding cache for ``uids`` ahead of time, so that later queries only
        search; returns how many assets were embedded.

        Default: every asset whose mesh is already on this machine (stored in the database, in
        the mirror or the mesh cache) — never a download; name ``uids`` to fetch others.
        Assets whose mesh cannot be fetched or rendered are skipped with a warning.
        """
        if uids is None:
            todo: list[tuple[str, Path | None]] = []
            for record in self.database:
                if record.mesh_store == "database":
                    todo.append((record.uid, None))
                elif (local := self.fetcher.local_path(record)) is not None:
                    todo.append((record.uid, local))
        else:
            todo = [(u, None) for u in uids]
        done = 0
        for uid, local in todo:
            try:
                self.view_embeddings(uid, mesh_path=local)
                done += 1
            except (Ra3dError, ValueError, OSError) as err:
                logger.warning("skipping asset %s: its mesh cannot be rendered (%s)", uid, err)
        return done

    @property
    def aligner(self) -> FrontalAligner:
        if self._aligner is None:
            self._aligner = FrontalAligner(self.embedder, prompts=self.view_prompts, **self.render)
        return self._aligner

    # ------------------------------------------------------------------ the whole thing
    def _usable(
        self, stream: _CandidateStream, need: int, image_stage: bool
    ) -> tuple[list[_Candidate], list[tuple[str, str]]]:
        """The first ``need`` caption matches (in rank order, licence-filtered) whose mesh is
        here or could be fetched and — for the image stage — rendered; the skipped ones and why.

        Fetches go in batches of exactly the number still missing, so a retrieve with no failure
        fetches the N' candidates and nothing else.
        """
        usable: list[_Candidate] = []
        skipped: list[tuple[str, str]] = []
        while len(usable) < need and len(skipped) <= need + 16:
            batch = stream.take(need - len(usable))
            if not batch:
                break
            for cand, reason in self._fetch_meshes(batch):
                uid = cand.record.uid
                if reason is None and image_stage:
                    try:
                        cand.views = self.view_embeddings(uid, mesh_path=cand.mesh)
                    except (Ra3dError, ValueError, OSError) as err:
                        reason = f"its mesh cannot be rendered ({err})"
                elif reason is None and cand.mesh_from != "database":
                    reason = self._check_fetched_mesh(cand.mesh)
                if reason is not None:
                    logger.warning("skipping asset %s: %s", uid, reason)
                    skipped.append((uid, reason))
                    if cand.mesh is not None and cand.mesh_from != "database":
                        self.fetcher.discard(cand.record)  # never served from a cache again
                    continue
                usable.append(cand)
        return usable, skipped

    @staticmethod
    def _check_fetched_mesh(path: Path | None) -> str | None:
        """Why a fetched mesh is unusable (it fails the mesh validator), else None. The image
        stage loads every candidate anyway; text-only retrieval validates fetched meshes here
        (meshes stored in the database were validated on import).

        A plain GLB (Objaverse's format) is checked without a mesh parser
        (:func:`~ra3d.representations.components.gltf_geometry.check_glb_geometry`: the same
        file-level checks, finite coordinates, triangles, indices in range), which keeps trimesh
        out of a text-only ``ra3d retrieve``; its textures are checked by their headers here and
        decoded when the asset is loaded. Anything else goes through ``load_mesh``."""
        from ra3d.representations.components.gltf_geometry import check_glb_geometry
        from ra3d.retrieval.importers.common import _default_validate

        try:
            if not check_glb_geometry(Path(str(path))):
                _default_validate(Path(str(path)))
        except (Ra3dError, ValueError, OSError, EOFError) as err:
            return f"its mesh is invalid ({type(err).__name__}: {err})".splitlines()[0][:240]
        return None

    def retrieve(self, prompt: str, k: int = 3) -> list[RetrievedAsset]:
        """The ``k`` best assets for ``prompt``, best first (the paper uses ``k = N = 3``).

        ``score`` is the image-embedding similarity after the rerank, else the caption
        similarity; ``extras`` holds both (``text_score``, ``image_score``), the caption rank,
        the embedder id, where the mesh came from and, when aligned, the per-view relative front
        scores. Fewer than ``k`` assets are returned (with a warning) only when the database,
        the licence filter or the fetches leave fewer; none is a :class:`NoUsableAssetError`.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("the retrieval prompt is empty; give a text such as 'a teddy bear'")
        if int(k) < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = int(k)
        db, emb = self.database, self.embedder
        self.caption_index()
        query = emb.embed_text([prompt])  # [1, D]
        image_stage = emb.supports_images and (self.rerank or self.align)
        rerank = self.rerank and emb.supports_images
        if not emb.supports_images and (self.rerank or self.align):
            self._say_once(
                "text-only",
                "embedder %s is text-only: image rerank and frontal alignment skipped (results "
                "ranked by caption similarity, front azimuth 0). Use --embedder clip for both.",
                emb.id,
            )
        need = max(self.n_candidates, k) if rerank else k
        first = need * (LICENSE_OVERSAMPLE if self.license_filter is not None else 1)
        stream = _CandidateStream(self, query.numpy(), first)
        candidates, skipped = self._usable(stream, need, image_stage)
        if self.license_filter is not None:
            logger.info(
                "licence filter %s: %d caption match(es) examined, %d refused (%s)",
                self.license_filter, stream.examined, sum(stream.refused.values()),
                ", ".join(f"{n} {lic}" for lic, n in stream.refused.most_common(4)) or "none",
            )  # fmt: skip
        if not candidates:
            raise NoUsableAssetError(self._nothing_usable(prompt, stream, skipped))
        image_scores: dict[int, float] = {}
        if rerank:
            for c in candidates:
                assert c.views is not None
                image_vec = F.normalize(c.views.mean(0), dim=0)  # [D]
                image_scores[c.row] = float(query[0] @ image_vec)
            candidates.sort(key=lambda c: image_scores[c.row], reverse=True)
        chosen = candidates[:k]
        self._annotate([c.record for c in chosen])  # licence and credit of what is returned
        results = [self._result(c, image_scores, emb.id) for c in chosen]
        if len(results) < k and len(db) > len(results):
            logger.warning(
                "retrieval returned %d of the %d asset(s) asked for: %d caption match(es) were "
                "skipped (licence or mesh); see the warnings above",
                len(results), k, sum(stream.refused.values()) + len(skipped),
            )  # fmt: skip
        return results

    def _result(
        self, c: _Candidate, image_scores: dict[int, float], embedder_id: str
    ) -> RetrievedAsset:
        rec = self.database.get(c.record.uid) if not c.record.license else c.record
        if rec.mesh_store == "objaverse" and not rec.license:
            note = unknown_objaverse_provenance(rec.uid)
            license, attribution = note.license, note.attribution
            logger.warning(
                "the licence of Objaverse object %s is not known: %s", rec.uid, attribution
            )
        else:
            license, attribution = rec.license, rec.attribution
        extras: dict[str, object] = {
            "text_score": c.text_score,
            "text_rank": c.text_rank,
            "embedder": embedder_id,
            "category": rec.category,
            "mesh_from": c.mesh_from,
        }
        front = 0.0
        if c.row in image_scores:
            extras["image_score"] = image_scores[c.row]
        if self.align and c.views is not None:
            aligned = self.aligner.align_embeddings(c.views)
            front = aligned.front_azimuth_deg
            extras["relative_front"] = [round(float(x), 5) for x in aligned.relative_front]
            extras["view_azimuths_deg"] = [float(a) for a in aligned.azimuths_deg]
        assert c.mesh is not None
        return RetrievedAsset(
            uid=rec.uid,
            caption=rec.caption,
            score=image_scores.get(c.row, c.text_score),
            mesh_path=c.mesh,
            front_azimuth_deg=front,
            source=rec.source,
            license=license,
            attribution=attribution,
            extras=extras,
        )

    def _nothing_usable(
        self, prompt: str, stream: _CandidateStream, skipped: list[tuple[str, str]]
    ) -> str:
        parts = [
            f"no asset for {prompt!r} could be used: {stream.examined} caption match(es) examined"
        ]
        hints = []
        if stream.refused:
            refused = ", ".join(f"{n} {lic}" for lic, n in stream.refused.most_common(5))
            parts.append(f"the licence filter {self.license_filter} refused {refused}")
            hints.append("widen --licenses (retrieval.licenses)")
        if skipped:
            uid, reason = skipped[0]
            parts.append(f"{len(skipped)} could not be fetched or read (first: {uid}: {reason})")
            hints.append("check the network or pass --mirror DIR for a local copy of Objaverse")
        return "; ".join(parts) + (f". Fix: {'; '.join(hints)}" if hints else "")


__all__ = ["LICENSE_OVERSAMPLE", "MAX_EXAMINED", "NoUsableAssetError", "TwoStageRetriever"]
