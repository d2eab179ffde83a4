"""Meshes on demand: bring the mesh of a retrieved Objaverse object to this machine.

All of Objaverse 1.0 is ≈ 8.9 TB, so the catalog records every object and a retrieve fetches only
the meshes it needs — its N′ candidates for the image rerank and the frontal alignment (whose
renders are cached per asset) and the N it returns (Sec. 4.4). A fetcher answers for a batch of
records at once, so a download tool can work in parallel:

* :class:`MirrorFetcher` — a local copy of Objaverse laid out as the ``objaverse`` package lays it
  out (``glbs/<group>/<uid>.glb``, optionally ``metadata/<group>.json.gz`` and
  ``object-paths.json.gz``), as many labs keep on shared storage. Nothing is copied.
* :class:`ObjaverseFetcher` — downloads through ``objaverse.load_objects`` and keeps each mesh in
  the database's mesh cache (``<cache_dir>/meshes/objaverse/<uid>.glb``), so a mesh is downloaded
  once. Licence and attribution come from ``objaverse.load_annotations``.

Meshes stored in the database folder are not fetched at all. A fetch that fails is reported per
record (:class:`FetchResult`), never raised: the retriever warns and takes the next candidate.
Every fetched file is untrusted: the size is checked here, the content by the mesh validator
when it is loaded.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ra3d.errors import Ra3dError
from ra3d.io import atomic_write, format_bytes
from ra3d.representations.components.mesh_files import MeshLimits
from ra3d.retrieval.database import MESH_CACHE_SUBDIR, AssetDatabase
from ra3d.retrieval.records import AssetRecord, objaverse_path_uid

logger = logging.getLogger(__name__)


def default_max_bytes() -> int:
    """The largest mesh file a fetcher accepts: the mesh validator's file budget
    (:class:`~ra3d.representations.components.mesh_files.MeshLimits`, 512 MiB unless
    ``RA3D_MESH_MAX_BYTES`` says otherwise), so a file a fetcher hands on is never one the loader
    would refuse for its size, and one variable sets both."""
    return MeshLimits.from_env().max_file_bytes


DownloadFn = Callable[..., Mapping[str, str]]
AnnotationsFn = Callable[[list[str]], Mapping[str, Mapping[str, Any]]]


class FetchUnavailableError(Ra3dError, RuntimeError):
    """Meshes of this database cannot be fetched here (the ``objaverse`` package is missing)."""


class MirrorNotFoundError(Ra3dError, FileNotFoundError):
    """A ``--mirror`` folder is not a copy of Objaverse."""


@dataclass
class FetchResult:
    """Where each fetched mesh is now, and why the others could not be fetched."""

    paths: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


class MeshFetcher(ABC):
    """Brings meshes that are not stored in the database folder to this machine.

    Subclasses implement :meth:`fetch`; the other abilities have defaults (no annotations, no
    knowledge of what is already local).
    """

    name: ClassVar[str] = "fetcher"

    @abstractmethod
    def fetch(self, records: Sequence[AssetRecord]) -> FetchResult:
        """Make the meshes of ``records`` local; a record missing from ``paths`` is in
        ``failed`` with a one-line reason."""

    def annotations(self, uids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        """The source's metadata (licence, author, page) of ``uids``; ``{}`` when this source has
        none or it cannot be reached (the assets then keep an unknown licence)."""
        return {}

    def local_path(self, record: AssetRecord) -> Path | None:
        """Where the mesh of ``record`` already is on this machine, without fetching."""
        return None

    def local_uids(self) -> set[str] | None:
        """Every uid whose mesh is already on this machine (for ``ra3d db info``), or None when
        this fetcher cannot tell cheaply."""
        return None

    def discard(self, record: AssetRecord) -> None:
        """Forget a fetched mesh that failed to load, so it is not served again (a cache drops
        its copy; a mirror is left as it is)."""
        return None

    def describe(self) -> str:
        return self.name


def _check_size(path: Path, max_bytes: int) -> str | None:
    try:
        size = path.stat().st_size
    except OSError as err:
        return f"cannot read {path.name} ({err.strerror or err})"
    if size == 0:
        return f"{path.name} is empty"
    if size > max_bytes:
        return f"{path.name} is {format_bytes(size)}, over the {format_bytes(max_bytes)} limit"
    return None


# ------------------------------------------------------------------------------ mirror
class MirrorFetcher(MeshFetcher):
    """Meshes from a local copy of Objaverse: ``DIR/glbs/<group>/<uid>.glb`` (``DIR`` may also be
    the folder holding ``hf-objaverse-v1/``, like ``~/.objaverse``).

    A record that knows its Objaverse path is one ``stat``; one that does not is looked up in the
    ≈ 160 group folders. Annotations are read from ``metadata/<group>.json.gz`` when the mirror
    has them (the ``objaverse`` package's layout), a few shards kept in memory.
    """

    name = "mirror"

    def __init__(self, root: str | Path, max_bytes: int | None = None) -> None:
        root = Path(root).expanduser()
        for base in (root, root / "hf-objaverse-v1"):
            if (base / "glbs").is_dir():
                self.base = base.resolve()
                break
        else:
            what = "does not exist" if not root.exists() else "has no glbs/ folder"
            raise MirrorNotFoundError(
                f"Objaverse mirror {root} {what}: expected glbs/<group>/<uid>.glb as the "
                "objaverse package lays it out (e.g. ~/.objaverse/hf-objaverse-v1)"
            )
        self.root = root
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self._groups: list[str] | None = None
        self._shards: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def describe(self) -> str:
        return f"mirror {self.base}"

    @property
    def groups(self) -> list[str]:
        if self._groups is None:
            self._groups = sorted(p.name for p in (self.base / "glbs").iterdir() if p.is_dir())
        return self._groups

    def resolve(self, uid: str, objaverse_path: str = "") -> Path | None:
        """The mirror's file of ``uid``, or None."""
        if objaverse_path and objaverse_path_uid(objaverse_path) == uid:
            path = self.base / objaverse_path
            if path.is_file():
                return path
        for group in self.groups:
            path = self.base / "glbs" / group / f"{uid}.glb"
            if path.is_file():
                return path
        return None

    def fetch(self, records: Sequence[AssetRecord]) -> FetchResult:
        result = FetchResult()
        for record in records:
            path = self.resolve(record.uid, record.mesh_path)
            reason = f"not in the mirror {self.base}" if path is None else None
            if path is not None:
                reason = _check_size(path, self.max_bytes)
            if reason is None and path is not None:
                result.paths[record.uid] = path
            else:
                result.failed[record.uid] = str(reason)
        return result

    def local_path(self, record: AssetRecord) -> Path | None:
        return self.resolve(record.uid, record.mesh_path)

    def local_uids(self) -> set[str]:
        found: set[str] = set()
        for group in self.groups:
            with os.scandir(self.base / "glbs" / group) as entries:
                found.update(e.name[:-4] for e in entries if e.name.endswith(".glb"))
        return found

    def object_paths(self) -> dict[str, str]:
        """``{uid: "glbs/<group>/<uid>.glb"}``: from the mirror's ``object-paths.json.gz`` (every
        Objaverse object) when it has one, else from the files it holds."""
        index = self.base / "object-paths.json.gz"
        if index.is_file():
            try:
                with gzip.open(index, "rt", encoding="utf-8") as f:
                    data = json.load(f)
                return {
                    str(u): str(p)
                    for u, p in data.items()
                    if isinstance(p, str) and objaverse_path_uid(p) == u
                }
            except (OSError, ValueError, AttributeError) as err:
                logger.warning("ignoring unreadable %s (%s); scanning the mirror", index, err)
        paths = {}
        for group in self.groups:
            with os.scandir(self.base / "glbs" / group) as entries:
                for e in entries:
                    if e.name.endswith(".glb"):
                        paths[e.name[:-4]] = f"glbs/{group}/{e.name}"
        return paths

    def has_metadata(self) -> bool:
        return (self.base / "metadata").is_dir()

    def _shard(self, group: str) -> dict[str, Any]:
        if group in self._shards:
            self._shards.move_to_end(group)
            return self._shards[group]
        path = self.base / "metadata" / f"{group}.json.gz"
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                with gzip.open(path, "rt", encoding="utf-8") as f:
                    loaded = json.load(f)
                data = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError) as err:
                logger.warning("ignoring unreadable Objaverse metadata %s (%s)", path, err)
        self._shards[group] = data
        while len(self._shards) > 4:
            self._shards.popitem(last=False)
        return data

    def iter_metadata_shards(self) -> Iterator[dict[str, Any]]:
        """Every ``metadata/<group>.json.gz`` of the mirror, one shard at a time."""
        for path in sorted((self.base / "metadata").glob("*.json.gz")):
            yield self._shard(path.name[: -len(".json.gz")])

    def annotations(self, uids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        if not self.has_metadata():
            return {}
        out: dict[str, Mapping[str, Any]] = {}
        by_group: dict[str, list[str]] = {}
        for uid in uids:
            path = self.resolve(uid)
            if path is not None:
                by_group.setdefault(path.parent.name, []).append(uid)
        for group, members in by_group.items():
            shard = self._shard(group)
            out.update({u: shard[u] for u in members if isinstance(shard.get(u), Mapping)})
        return out


# ------------------------------------------------------------------------------ objaverse
def _objaverse_module() -> Any:
    try:
        import objaverse
    except ImportError:
        raise FetchUnavailableError(
            "this database's meshes come from Objaverse, which needs the 'objaverse' package: "
            "pip install 'ra3d[objaverse]' (or point --mirror at a local copy of Objaverse)"
        ) from None
    return objaverse


class ObjaverseFetcher(MeshFetcher):
    """Meshes downloaded through ``objaverse.load_objects`` into ``cache_dir/<uid>.glb``.

    ``download_fn(uids=..., download_processes=...)`` must return ``{uid: local path}`` like
    ``objaverse.load_objects`` (the default, which needs the network and keeps its own copy under
    ``~/.objaverse``); ``annotations_fn(uids)`` like ``objaverse.load_annotations``. A mesh is
    hard-linked into the cache when it can be (same file system), else copied.
    """

    name = "objaverse"

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        download_fn: DownloadFn | None = None,
        annotations_fn: AnnotationsFn | None = None,
        download_processes: int = 1,
        max_bytes: int | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self._download_fn = download_fn
        self._annotations_fn = annotations_fn
        self.download_processes = max(1, int(download_processes))
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)

    def describe(self) -> str:
        return f"Objaverse downloads cached in {self.cache_dir}"

    def cached(self, uid: str) -> Path:
        return self.cache_dir / f"{uid}.glb"

    def local_path(self, record: AssetRecord) -> Path | None:
        path = self.cached(record.uid)
        return path if path.is_file() else None

    def discard(self, record: AssetRecord) -> None:
        self.cached(record.uid).unlink(missing_ok=True)

    def local_uids(self) -> set[str]:
        if not self.cache_dir.is_dir():
            return set()
        with os.scandir(self.cache_dir) as entries:
            return {e.name[:-4] for e in entries if e.name.endswith(".glb")}

    def fetch(self, records: Sequence[AssetRecord]) -> FetchResult:
        result = FetchResult()
        missing = []
        for record in records:
            path = self.cached(record.uid)
            if path.is_file():
                result.paths[record.uid] = path
            else:
                missing.append(record.uid)
        if not missing:
            return result
        download = self._download_fn or _objaverse_module().load_objects
        try:
            got = dict(download(uids=missing, download_processes=self.download_processes))
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            reason = f"download failed ({type(err).__name__}: {err})".splitlines()[0][:200]
            result.failed.update({uid: reason for uid in missing})
            return result
        for uid in missing:
            local = got.get(uid)
            if local is None:
                result.failed[uid] = "Objaverse returned no file for it"
                continue
            source = Path(local)
            reason = _check_size(source, self.max_bytes)
            if reason is None:
                try:
                    result.paths[uid] = self._keep(source, self.cached(uid))
                    continue
                except OSError as err:
                    reason = f"cannot copy it into the mesh cache ({err})"
            result.failed[uid] = reason
        return result

    def _keep(self, source: Path, target: Path) -> Path:
        """``source`` as ``target`` in the cache: a hard link, else an atomic copy."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.link")
        try:
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, target)
            return target
        except OSError:
            tmp.unlink(missing_ok=True)

        def copy(handle: Any) -> None:
            with source.open("rb") as src:
                shutil.copyfileobj(src, handle, 1 << 20)

        return atomic_write(target, copy, size_hint=source.stat().st_size)

    def annotations(self, uids: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        if not uids:
            return {}
        fn = self._annotations_fn or _objaverse_module().load_annotations
        try:
            return {str(u): a for u, a in dict(fn(list(uids))).items() if isinstance(a, Mapping)}
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            logger.warning(
                "Objaverse annotations of %d object(s) are unavailable (%s: %s); their licence "
                "stays unknown", len(uids), type(err).__name__, err,
            )  # fmt: skip
            return {}


# ------------------------------------------------------------------------------ defaults
def default_fetcher(db: AssetDatabase, mirror: str | Path | None = None) -> MeshFetcher:
    """How meshes of ``db`` that are not stored in it are fetched: from ``mirror`` (or the mirror
    recorded with the database), else downloaded from Objaverse into ``db.mesh_cache_dir``."""
    mirror = mirror if mirror is not None else db.mirror
    if mirror is not None:
        return MirrorFetcher(mirror)
    return ObjaverseFetcher(db.mesh_cache_dir)


def stored_mesh(db: AssetDatabase, record: AssetRecord) -> Path:
    """The file of a mesh stored in the database folder (which may be missing)."""
    return db.root / record.mesh_path


def mesh_availability(db: AssetDatabase, fetcher: MeshFetcher | None = None) -> dict[str, Any]:
    """How many of the database's meshes are on this machine (for ``ra3d db info``).

    Stored meshes are checked file by file (they are few); Objaverse objects are counted against
    what the fetcher holds locally (one listing of the mirror or the mesh cache, then a pass over
    the catalog's uids: a few seconds at 800k).
    """
    stored = db.stored_meshes()
    stored_present = sum((db.root / p).is_file() for _, p in stored)
    n_remote = len(db) - len(stored)
    existing = db.existing_cache_dir()  # `db info` must not create the cache
    cache = existing / MESH_CACHE_SUBDIR / "objaverse" if existing is not None else None
    described = None
    if fetcher is None and n_remote:
        if db.mirror is not None:
            fetcher = MirrorFetcher(db.mirror)
        elif cache is not None:
            fetcher = ObjaverseFetcher(cache)
        else:
            described = "Objaverse downloads (none fetched yet)"
    remote_local: int | None = 0
    if n_remote and fetcher is not None:
        local = fetcher.local_uids()
        if local is None:
            remote_local = None
        elif local:
            remote_local = sum(uid in local for uid in db.iter_uids("objaverse"))
    cache_files = (
        [p for p in cache.iterdir() if p.is_file()] if cache is not None and cache.is_dir() else []
    )
    return {
        "stored": len(stored),
        "stored_present": stored_present,
        "remote": n_remote,
        "remote_local": remote_local,
        "local": stored_present + (remote_local or 0),
        "total": len(db),
        "fetcher": fetcher.describe() if n_remote and fetcher is not None else described,
        "mesh_cache": str(cache) if cache is not None else None,
        "mesh_cache_files": len(cache_files),
        "mesh_cache_bytes": sum(p.stat().st_size for p in cache_files),
    }


__all__ = [
    "default_max_bytes",
    "FetchResult",
    "FetchUnavailableError",
    "MeshFetcher",
    "MirrorFetcher",
    "MirrorNotFoundError",
    "ObjaverseFetcher",
    "default_fetcher",
    "mesh_availability",
    "stored_mesh",
]
