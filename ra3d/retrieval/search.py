"""Two-stage retrieval ξ_N(c, D) of the paper's Sec. 4.4: captions first, then renders.

The paper observes that caption embeddings find the right *category* robustly while render
embeddings capture texture but fail more often, so it retrieves ``N'`` candidates by caption and
keeps the top ``N < N'`` by the similarity of the query to the candidates' rendered images. The
kept assets are then frontally aligned (:mod:`ra3d.retrieval.align`).

Everything derived from the database is cached in ``database.cache_dir/retrieval``:

* ``captions-<embedder>-<manifest>/`` — the caption vector index (exact or ScaNN), keyed by the
  embedder id and the manifest hash, so a new embedder or an edited database builds a new one;
* ``views-<embedder>-<render settings>/<uid>-<record hash>.npy`` — ``[K, D]`` embeddings of each
  asset's ``K`` orbit renders, computed on first use. Their mean is the asset's image embedding
  for the rerank, and the same ``K`` views score the frontal alignment, so one render pass serves
  both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.errors import ConfigError
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
from ra3d.retrieval.index import (
    IndexCorruptError,
    IndexNotFoundError,
    VectorIndex,
    build_index,
    load_index,
)

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "retrieval"


def _slug(text: str, keep: int = 48) -> str:
    """Readable, filesystem-safe, collision-free key of ``text``."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:keep]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _record_hash(record: AssetRecord) -> str:
    blob = json.dumps(record.to_json(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


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
    ) -> None:
        if int(n_candidates) < 1:
            raise ConfigError(f"n_candidates (N') must be >= 1, got {n_candidates}")
        if index_kind not in ("auto", "exact", "scann"):
            raise ConfigError(f"index_kind must be 'auto', 'exact' or 'scann', got {index_kind!r}")
        if int(n_views) < 2 or int(render_size) < 8:
            raise ConfigError(
                f"need n_views >= 2 and render_size >= 8, got {n_views}, {render_size}"
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
        captions = [r.caption for r in db]
        vectors = emb.embed_text(captions).numpy()  # [N, D]
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
        """Delete this embedder's cached caption index and view embeddings."""
        for path in (self._caption_index_dir(), self._views_dir()):
            shutil.rmtree(path, ignore_errors=True)
        self._index = None

    # ------------------------------------------------------------------ stage 2: renders
    def view_embeddings(self, uid: str) -> Tensor:
        """``[K, D]`` embeddings of the ``K`` orbit renders of asset ``uid`` (cached)."""
        from ra3d.representations.mesh import MeshAsset

        record = self.database.get(uid)
        path = self._views_dir() / f"{uid}-{_record_hash(record)}.npy"
        if path.is_file():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == (self.render["n_views"], self.embedder.dim):
                    return torch.from_numpy(cached)
            except (OSError, ValueError) as err:
                logger.warning("ignoring unreadable view cache %s (%s)", path, err)
        asset = MeshAsset(
            self.database.mesh_path(uid), shading=self.shading, backend=self.mesh_backend
        ).to(self.device)
        cameras = alignment_cameras(**self.render)
        emb = render_view_embeddings(asset, self.embedder, cameras)  # [K, D]
        try:
            _save_npy_atomic(path, emb.numpy().astype(np.float32))
        except OSError as err:
            logger.warning("could not cache view embeddings at %s (%s)", path, err)
        return emb

    def precompute_view_embeddings(self, uids: list[str] | None = None) -> int:
        """Fill the view-embedding cache for ``uids`` (default: the whole database) ahead of
        time, so that later queries only search; returns how many assets were embedded.

        Assets whose mesh cannot be rendered are skipped with a warning.
        """
        uids = self.database.uids if uids is None else list(uids)
        done = 0
        for uid in uids:
            try:
                self.view_embeddings(uid)
                done += 1
            except (FileNotFoundError, ValueError) as err:
                logger.warning("skipping asset %s: its mesh cannot be rendered (%s)", uid, err)
        return done

    @property
    def aligner(self) -> FrontalAligner:
        if self._aligner is None:
            self._aligner = FrontalAligner(self.embedder, prompts=self.view_prompts, **self.render)
        return self._aligner

    # ------------------------------------------------------------------ the whole thing
    def retrieve(self, prompt: str, k: int = 3) -> list[RetrievedAsset]:
        """The ``k`` best assets for ``prompt``, best first (the paper uses ``k = N = 3``).

        ``score`` is the image-embedding similarity after the rerank, else the caption
        similarity; ``extras`` holds both (``text_score``, ``image_score``), the caption rank,
        the embedder id and, when aligned, the per-view relative front scores.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("the retrieval prompt is empty; give a text such as 'a teddy bear'")
        if int(k) < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        k = int(k)
        db, emb = self.database, self.embedder
        index = self.caption_index()
        query = emb.embed_text([prompt])  # [1, D]
        image_stage = emb.supports_images and (self.rerank or self.align)
        if not emb.supports_images and (self.rerank or self.align):
            self._say_once(
                "text-only",
                "embedder %s is text-only: image rerank and frontal alignment skipped (results "
                "ranked by caption similarity, front azimuth 0). Use --embedder clip for both.",
                emb.id,
            )
        n_first = max(self.n_candidates, k) if (self.rerank and emb.supports_images) else k
        scores, rows = index.search(query.numpy(), n_first)
        candidates = [
            (int(r), float(s), rank)
            for rank, (r, s) in enumerate(zip(rows[0], scores[0], strict=True))
            if r >= 0
        ]
        views: dict[int, Tensor] = {}
        if image_stage:
            usable = []
            for row, score, rank in candidates:
                uid = db.records[row].uid
                try:
                    views[row] = self.view_embeddings(uid)
                except (FileNotFoundError, ValueError) as err:  # unreadable mesh: cannot render it
                    logger.warning("skipping asset %s: its mesh cannot be rendered (%s)", uid, err)
                    continue
                usable.append((row, score, rank))
            candidates = usable
        image_scores: dict[int, float] = {}
        if self.rerank and emb.supports_images:
            for row, _, _ in candidates:
                image_vec = F.normalize(views[row].mean(0), dim=0)  # [D]
                image_scores[row] = float(query[0] @ image_vec)
            candidates.sort(key=lambda c: image_scores[c[0]], reverse=True)
        results = []
        for row, text_score, text_rank in candidates[:k]:
            rec = db.records[row]
            extras: dict[str, object] = {
                "text_score": text_score,
                "text_rank": text_rank,
                "embedder": emb.id,
                "category": rec.category,
            }
            front = 0.0
            if row in image_scores:
                extras["image_score"] = image_scores[row]
            if self.align and emb.supports_images:
                aligned = self.aligner.align_embeddings(views[row])
                front = aligned.front_azimuth_deg
                extras["relative_front"] = [round(float(x), 5) for x in aligned.relative_front]
                extras["view_azimuths_deg"] = [float(a) for a in aligned.azimuths_deg]
            results.append(
                RetrievedAsset(
                    uid=rec.uid,
                    caption=rec.caption,
                    score=image_scores.get(row, text_score),
                    mesh_path=db.mesh_path(rec.uid),
                    front_azimuth_deg=front,
                    source=rec.source,
                    license=rec.license,
                    attribution=rec.attribution,
                    extras=extras,
                )
            )
        return results


__all__ = ["TwoStageRetriever"]
