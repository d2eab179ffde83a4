"""The 3D asset database D that retrieval searches (Sec. 4.1: ξ_N(c, D)).

A database is a folder::

    root/
      catalog.sqlite        the records (SQLite, see ra3d.retrieval.catalog)
      models/<dir>/...      the mesh files stored in the database (OBJ+MTL+textures, GLB, ...)
      .cache/               embeddings, index, renders and fetched meshes (other modules)

A record's mesh is either a file under ``models/`` or an Objaverse object that is not stored at
all: the catalog of all ≈ 800k Objaverse objects with Cap3D captions is ≈ 200 MB, their meshes
8.9 TB, so only the meshes a retrieve needs are brought to this machine
(:mod:`ra3d.retrieval.fetch`, from a local mirror or the ``objaverse`` package).

The catalog is the commit point of every change: an import is one SQLite transaction, committed
after every file it names is in place (see :class:`ImportTransaction`), so a crash or Ctrl-C
half-way through an import leaves the previous database readable and unchanged. Every record
keeps its provenance (source, licence, attribution) because retrieved assets end up shaping
generated content and must stay creditable.

**JSONL databases** (``manifest.jsonl``, what ra3d wrote before the catalog, and the format of
the starter library shipped inside the package) keep working. The JSONL stays a *source
format*: opening such a folder loads it into an SQLite catalog in the database's cache (keyed by
the manifest's sha256, so it is built once per content and never written next to a read-only
package) and the manifest's sha256 stays the database's ``manifest_hash``, so caches built
before keep their keys. The first *import* into a JSONL folder migrates it: the old records and
the new ones go into ``catalog.sqlite`` in one transaction, then ``manifest.jsonl`` is renamed
``manifest.jsonl.migrated`` (kept, never read again). The starter library stays JSONL because a
text manifest is reviewable in a diff and the package may be installed read-only.

Meshes are stored as their source delivered them (OBJ / glTF convention: +Y up, metres or
centimetres); normalising scale and axes is the job of the mesh loader, not of the database.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import uuid as uuid_lib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, overload

from ra3d.io import PUBLIC_MODE, disk_full_error, fsync_dir, is_disk_full, write_bytes_atomic
from ra3d.retrieval import catalog
from ra3d.retrieval.catalog import CATALOG_NAME
from ra3d.retrieval.licenses import Provenance
from ra3d.retrieval.records import (
    MESH_STORES,
    AssetRecord,
    DatabaseError,
    DatabaseNotFoundError,
    caption_problem,
    clean_caption,
    safe_relative_path,
    slugify_uid,
    validate_uid,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_VERSION = 1
MIGRATED_SUFFIX = ".migrated"
MODELS_DIR = "models"
CACHE_DIR_NAME = ".cache"
STAGING_PREFIX = ".staging-"
CATALOG_TMP_PREFIX = ".catalog-"
CATALOG_TMP_SUFFIX = ".sqlite.partial"
#: Subfolder of a database's cache that holds the Objaverse meshes fetched for it.
MESH_CACHE_SUBDIR = "meshes"
_HEADER_KEY = "ra3d_asset_manifest"
_CHUNK = 2000


# ------------------------------------------------------------------------------ JSONL manifests
def serialise_manifest(records: Iterable[AssetRecord]) -> bytes:
    """Deterministic JSONL manifest bytes (a header line, then one record per line, sorted keys),
    so equal content hashes equal. The starter library is shipped in this format."""
    lines = [json.dumps({_HEADER_KEY: MANIFEST_VERSION}, sort_keys=True)]
    lines += [json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) for r in records]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _parse_manifest(data: bytes, path: Path) -> list[AssetRecord]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatabaseError(f"corrupt manifest {path}: not UTF-8 ({err})") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise DatabaseError(f"corrupt manifest {path}: it is empty (no header line)")
    records: list[AssetRecord] = []
    seen: set[str] = set()
    for k, (lineno, line) in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatabaseError(
                f"corrupt manifest {path}, line {lineno}: {err.msg}; restore it or re-import "
                "with `ra3d db import`"
            ) from None
        if k == 0:
            if not isinstance(obj, dict) or _HEADER_KEY not in obj:
                raise DatabaseError(f"{path} is not an ra3d asset manifest (missing header line)")
            if obj[_HEADER_KEY] != MANIFEST_VERSION:
                raise DatabaseError(
                    f"{path} has manifest version {obj[_HEADER_KEY]!r}; this ra3d reads "
                    f"version {MANIFEST_VERSION}"
                )
            continue
        record = AssetRecord.from_json(obj, where=f"{path}, line {lineno}")
        if record.uid in seen:
            raise DatabaseError(
                f"corrupt manifest {path}, line {lineno}: duplicate uid {record.uid!r}"
            )
        seen.add(record.uid)
        records.append(record)
    return records


def read_manifest(path: str | Path) -> list[AssetRecord]:
    """The records of a JSONL manifest (validated; duplicates and bad lines are errors)."""
    path = Path(path)
    return _parse_manifest(path.read_bytes(), path)


def write_manifest(path: str | Path, records: Iterable[AssetRecord]) -> Path:
    """Write ``records`` as a JSONL manifest (atomically, :mod:`ra3d.io`)."""
    return write_bytes_atomic(Path(path), serialise_manifest(records))


# ------------------------------------------------------------------------------ helpers
def _is_writable_dir(path: Path) -> bool:
    """True when ``path`` exists (or can be created) and a file can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _user_cache_base() -> Path:
    base = os.environ.get("RA3D_CACHE_DIR")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "ra3d"


def _builtin_root() -> Path:
    resource = importlib.resources.files("ra3d").joinpath("assets", "starter")
    root = Path(str(resource))
    if not (root / MANIFEST_NAME).is_file():
        raise DatabaseNotFoundError(
            f"the starter library is missing from the ra3d installation (looked in {root}); "
            "reinstall ra3d, or rebuild it with scripts/build_starter_library.py"
        )
    return root


def _sqlite_failure(path: Path, err: BaseException) -> BaseException:
    """A full disk as ra3d's one DiskFullError; other SQLite failures as DatabaseError."""
    if is_disk_full(err) or "disk is full" in str(err) or "database or disk is full" in str(err):
        return disk_full_error(path)
    if isinstance(err, sqlite3.Error):
        return DatabaseError(f"writing the asset catalog {path} failed ({err})")
    return err


def _remove_catalog_file(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)


def _build_catalog_file(
    path: Path, records: Sequence[AssetRecord], fingerprint: str, **meta: object
) -> None:
    """Write a complete catalog of ``records`` to ``path``: built in a temporary file beside
    it, committed, then renamed over ``path`` (ra3d.io's rule: readers see the old file or the
    new one). ``fingerprint`` becomes its ``manifest_hash``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{CATALOG_TMP_PREFIX}{uuid_lib.uuid4().hex[:12]}{CATALOG_TMP_SUFFIX}")
    conn = None
    try:
        conn = catalog.connect(tmp, write=True)
        catalog.begin(conn, tmp)
        catalog.create_schema(conn)
        writer = catalog.CatalogWriter(conn, catalog.CatalogMeta(0, fingerprint, 0))
        writer.put(records)
        writer.rebase(fingerprint)
        writer.finish(**meta)
        catalog.commit(conn)
        conn.close()
        conn = None
        os.chmod(tmp, PUBLIC_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        if conn is not None:
            conn.close()
        _remove_catalog_file(tmp)
        failure = _sqlite_failure(path, err)
        if failure is err:
            raise
        raise failure from err
    fsync_dir(path.parent)


class _FileCatalog:
    """A catalog in a file; connections are opened per process."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        return catalog.connect(self.path, write=False)

    def writable(self) -> bool:
        return os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)


class _MemoryCatalog:
    """A catalog rebuilt in memory from records (a JSONL database whose cache is read-only)."""

    path = None

    def __init__(self, records: Sequence[AssetRecord], fingerprint: str) -> None:
        self.records, self.fingerprint = list(records), fingerprint

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN")
        catalog.create_schema(conn)
        writer = catalog.CatalogWriter(conn, catalog.CatalogMeta(0, self.fingerprint, 0))
        writer.put(self.records)
        writer.rebase(self.fingerprint)
        writer.finish()
        conn.execute("COMMIT")
        return conn

    def writable(self) -> bool:
        return False


class _RecordsView(Sequence[AssetRecord]):
    """``db.records``: a read-only sequence over the catalog; ``records[row]`` reads one row and
    iteration streams in chunks. ``list(db.records)`` loads every record (≈ 1 s and ≈ 0.5 GB
    at 800k: avoid it on Objaverse-size databases)."""

    def __init__(self, db: AssetDatabase) -> None:
        self._db = db

    def __len__(self) -> int:
        return len(self._db)

    @overload
    def __getitem__(self, index: int) -> AssetRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[AssetRecord]: ...
    def __getitem__(self, index: int | slice) -> AssetRecord | list[AssetRecord]:
        if isinstance(index, slice):
            return self._db.records_at(range(len(self))[index])
        return self._db.record_at(index)

    def __iter__(self) -> Iterator[AssetRecord]:
        return iter(self._db)


class AssetDatabase:
    """A captioned asset collection: a folder with a ``catalog.sqlite`` (or a JSONL manifest).

    Use ``AssetDatabase.open(path)``, ``AssetDatabase.builtin()`` or ``default_database()``;
    ``AssetDatabase.create`` writes a new catalog for files already in place.

    Reads go to the catalog as they are made: opening reads only its meta table (count and
    fingerprint, fixed for the life of this object: an import elsewhere shows in a new
    ``open``), and a retrieve reads the rows the vector search returns. The cost of the calls
    that touch every record is said where they are documented.
    """

    def __init__(
        self,
        root: str | Path,
        source: _FileCatalog | _MemoryCatalog,
        *,
        read_only: bool = False,
        manifest: Path | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self._source = source
        # A read-only database (the shipped starter library) never gets a .cache inside the
        # installed package, even when site-packages happens to be writable.
        self._read_only = read_only
        self._manifest = manifest
        self._connection: sqlite3.Connection | None = None
        self._pid = -1
        self._overlay: dict[str, Provenance] = {}
        self._meta = catalog.read_meta(self._conn(), self._where)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> AssetDatabase:
        """Open the database in folder ``root`` (its ``catalog.sqlite``, else its JSONL
        manifest); clear errors when the folder, catalog or manifest is missing or corrupt."""
        root = Path(root).expanduser()
        if not root.exists():
            raise DatabaseNotFoundError(
                f"asset database folder {root} does not exist; create one with "
                "`ra3d db import folder|sh3f|objaverse ... --db PATH`"
            )
        if root.is_file():
            raise DatabaseError(f"{root} is a file; --db must name a database folder")
        if (root / CATALOG_NAME).is_file():
            return cls(root, _FileCatalog(root / CATALOG_NAME))
        if (root / MANIFEST_NAME).is_file():
            # The shipped library named by its path is still the shipped library: no .cache
            # inside the installed package.
            shipped = root.resolve() == _builtin_root().resolve()
            return cls._from_manifest(root, read_only=shipped)
        raise DatabaseNotFoundError(
            f"{root} has no {CATALOG_NAME} (or {MANIFEST_NAME}), so it is not an ra3d asset "
            "database; create one with `ra3d db import ... --db PATH`"
        )

    @classmethod
    def builtin(cls) -> AssetDatabase:
        """The starter library shipped inside the package (CC0 Sweet Home 3D furniture)."""
        return cls._from_manifest(_builtin_root(), read_only=True)

    @classmethod
    def _from_manifest(cls, root: Path, *, read_only: bool) -> AssetDatabase:
        """A JSONL database, loaded into a catalog cached by the manifest's sha256."""
        manifest = root / MANIFEST_NAME
        data = manifest.read_bytes()
        fingerprint = hashlib.sha256(data).hexdigest()
        cached = _cache_location(root.resolve(), read_only, fingerprint) / (
            f"catalog-{fingerprint[:16]}.sqlite"
        )
        if cached.is_file():
            try:
                db = cls(root, _FileCatalog(cached), read_only=read_only, manifest=manifest)
                if db.manifest_hash == fingerprint:
                    return db
            except DatabaseError:
                pass
            logger.warning("rebuilding the stale catalog %s of %s", cached, manifest)
        records = _parse_manifest(data, manifest)
        try:
            _build_catalog_file(cached, records, fingerprint)
            source: _FileCatalog | _MemoryCatalog = _FileCatalog(cached)
            for old in cached.parent.glob("catalog-*.sqlite"):  # earlier versions' copies
                if old != cached:
                    old.unlink(missing_ok=True)
        except (OSError, DatabaseError) as err:  # a read-only cache: keep it in memory
            logger.debug("cannot cache the catalog of %s (%s); loading it in memory", root, err)
            source = _MemoryCatalog(records, fingerprint)
        return cls(root, source, read_only=read_only, manifest=manifest)

    @classmethod
    def create(cls, root: str | Path, records: Sequence[AssetRecord]) -> AssetDatabase:
        """Write a catalog of exactly ``records`` into ``root``, replacing any previous one.

        The files of records stored in the database must already be under ``root``. The
        catalog's ``manifest_hash`` is the sha256 of the JSONL manifest of the same records,
        as it was when databases were JSONL.
        """
        root = Path(root).expanduser()
        records = [r.validate() for r in records]
        dup = [u for u, n in Counter(r.uid for r in records).items() if n > 1]
        if dup:
            raise DatabaseError(f"duplicate asset uids {dup[:5]}; every uid must be unique")
        root.mkdir(parents=True, exist_ok=True)
        missing = [
            r.uid
            for r in records
            if r.mesh_store == "database" and not (root / r.mesh_path).is_file()
        ]
        if missing:
            raise DatabaseNotFoundError(
                f"{len(missing)} record(s) name mesh files that do not exist under {root}: "
                f"{missing[:5]}; copy the meshes in first"
            )
        fingerprint = hashlib.sha256(serialise_manifest(records)).hexdigest()
        _build_catalog_file(root / CATALOG_NAME, records, fingerprint)
        return cls(root, _FileCatalog(root / CATALOG_NAME))

    # -- the connection -------------------------------------------------------------------
    @property
    def _where(self) -> str:
        path = self._source.path
        return str(path) if path is not None else f"{self.root} (in memory)"

    def _conn(self) -> sqlite3.Connection:
        """This process's read connection (reopened after a fork: SQLite connections must not
        cross one)."""
        if self._connection is None or self._pid != os.getpid():
            try:
                self._connection = self._source.connect()
            except sqlite3.Error as err:
                raise catalog._corrupt(self._where, err) from None
            self._pid = os.getpid()
        return self._connection

    def _query(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(self._conn(), *args)
        except sqlite3.DatabaseError as err:
            raise catalog._corrupt(self._where, err) from None

    def close(self) -> None:
        """Close the read connection (reopened on the next read)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_connection"], state["_pid"] = None, -1
        return state

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._meta.count

    def __iter__(self) -> Iterator[AssetRecord]:
        """Every record in row order, read in chunks (the whole table at 800k: ≈ 5 s)."""
        for start in range(0, len(self), _CHUNK):
            for record in self._query(catalog.select_range, start, start + _CHUNK):
                yield self._with_overlay(record)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self.row_of(uid) is not None

    def __repr__(self) -> str:
        return f"AssetDatabase(root={str(self.root)!r}, assets={len(self)})"

    @property
    def uids(self) -> list[str]:
        """Every uid in row order. One range scan, but at 800k it is ≈ 0.5 s and ≈ 60 MB of
        strings: use ``uid in db``, :meth:`get` or :meth:`caption_rows` where they do."""
        return list(self._query(catalog.iter_uids, len(self)))

    def iter_uids(self, mesh_store: str | None = None) -> Iterator[str]:
        """The uids in row order, streamed, optionally only those of one mesh store."""
        if mesh_store is not None and mesh_store not in MESH_STORES:
            raise ValueError(f"mesh_store must be one of {MESH_STORES}, got {mesh_store!r}")
        yield from self._query(catalog.iter_uids, len(self), mesh_store)

    @property
    def records(self) -> _RecordsView:
        """The records as a lazy sequence: ``db.records[row]`` is :meth:`record_at`."""
        return _RecordsView(self)

    def get(self, uid: str) -> AssetRecord:
        found = self._query(catalog.select_uid, uid)
        if found is None:
            raise KeyError(f"no asset with uid {uid!r} in the database at {self.root}")
        return self._with_overlay(found[1])

    def row_of(self, uid: str) -> int | None:
        """The row of ``uid`` (its row in the caption index), or None."""
        found = self._query(catalog.select_uid, uid)
        return None if found is None else found[0]

    def record_at(self, row: int) -> AssetRecord:
        """The record at ``row`` (0-based, the caption index's row order)."""
        return self.records_at([row])[0]

    def records_at(self, rows: Iterable[int]) -> list[AssetRecord]:
        """The records at ``rows``, in that order: one query per 2000 rows, reading only them."""
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < len(self)]
        if bad:
            raise IndexError(f"rows {bad[:5]} are outside the database (0..{len(self) - 1})")
        found = self._query(catalog.select_rows, list(dict.fromkeys(rows)))
        return [self._with_overlay(found[r]) for r in rows]

    def caption_rows(self, start: int, stop: int) -> list[tuple[str, str]]:
        """``(uid, caption)`` of rows ``[start, stop)`` (clipped to the database) in row order —
        the row order of the caption index. One B-tree range scan: ≈ 10 ms per 10k rows."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        if stop <= start:
            return []
        return self._query(catalog.caption_rows, start, stop)

    def mesh_path(self, uid: str) -> Path:
        """Absolute path of the mesh file of ``uid``, for a mesh stored in the database.

        An Objaverse object's mesh is not part of the database: it is brought to this machine
        on demand by :mod:`ra3d.retrieval.fetch` (as a retrieve does), so asking for its path
        here is a :class:`DatabaseError`.
        """
        record = self.get(uid)
        if record.mesh_store != "database":
            raise DatabaseError(
                f"asset {uid!r} is an Objaverse object whose mesh is fetched on demand; use "
                "ra3d.retrieval.fetch.default_fetcher(db).fetch([record]) (ra3d retrieve does)"
            )
        return self.root / record.mesh_path

    def missing_meshes(self) -> list[str]:
        """uids of stored meshes whose file is absent (a database copied without models/)."""
        stored = self._query(catalog.stored_meshes)
        return [uid for uid, path in stored if not (self.root / path).is_file()]

    def stored_meshes(self) -> list[tuple[str, str]]:
        """``(uid, relative mesh path)`` of the meshes stored in the database folder."""
        return self._query(catalog.stored_meshes)

    @property
    def manifest_hash(self) -> str:
        """The content fingerprint caches are keyed by (the caption index, the cache folder of a
        read-only database). Kept in the catalog and chained at every import that changes a
        record, so reading it costs nothing; for a JSONL database it is the manifest's sha256.
        Annotations cached at retrieve time do not change it."""
        return self._meta.fingerprint

    @property
    def generation(self) -> int:
        """How many imports changed this catalog."""
        return self._meta.generation

    @property
    def mirror(self) -> Path | None:
        """The Objaverse mirror recorded by ``ra3d db import objaverse --mirror``, if any."""
        return Path(self._meta.mirror) if self._meta.mirror else None

    @property
    def format(self) -> str:
        """``"sqlite"``, or ``"jsonl"`` for a manifest loaded into a cached catalog."""
        return "jsonl" if self._manifest is not None else "sqlite"

    @property
    def catalog_path(self) -> Path | None:
        """The SQLite file the records are read from (None when held in memory)."""
        return self._source.path

    @property
    def cache_dir(self) -> Path:
        """A writable folder for this database's derived data (embeddings, index, renders,
        fetched meshes).

        ``root/.cache`` when the database folder is writable (and not the shipped library);
        otherwise ``$RA3D_CACHE_DIR/<manifest_hash[:16]>`` or ``~/.cache/ra3d/<manifest_hash[:16]>``.
        Created on demand. Files inside should still be keyed by ``manifest_hash`` (or by uid)
        when they depend on the content, since imports change the catalog in place.
        """
        path = _cache_location(self.root, self._read_only, self.manifest_hash)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatabaseError(
                f"cannot create the cache folder {path} ({err}); set RA3D_CACHE_DIR to a "
                "writable folder"
            ) from None
        return path

    @property
    def mesh_cache_dir(self) -> Path:
        """Where Objaverse meshes fetched for this database are kept (inside :attr:`cache_dir`)."""
        return self.cache_dir / MESH_CACHE_SUBDIR / "objaverse"

    # -- annotations ----------------------------------------------------------------------
    def cache_annotations(self, items: Mapping[str, Provenance]) -> None:
        """Keep the licence and credit fetched for assets (Objaverse annotations) in the catalog,
        so that no later retrieve fetches them again. When the catalog is read-only they are
        kept in memory for the life of this object instead."""
        items = {u: p for u, p in items.items() if u in self}
        if not items:
            return
        path = self._source.path
        if path is not None and self._source.writable():
            try:
                conn = catalog.connect(path, write=True)
                try:
                    catalog.begin(conn, path)
                    catalog.put_annotations(conn, items)
                    catalog.commit(conn)
                finally:
                    catalog.rollback(conn)
                    conn.close()
                return
            except (sqlite3.Error, DatabaseError, OSError) as err:
                logger.warning("could not cache %d annotation(s) in %s (%s)", len(items), path, err)
        self._overlay.update(items)

    def _with_overlay(self, record: AssetRecord) -> AssetRecord:
        note = self._overlay.get(record.uid) if self._overlay else None
        if note is None or record.license:
            return record
        return AssetRecord(
            **{
                **record.__dict__,
                "license": note.license,
                "attribution": record.attribution or note.attribution,
                "title": record.title or note.title,
                "url": record.url or note.url,
                "tags": record.tags or list(note.tags),
            }
        )

    def summary(self) -> dict[str, Any]:
        """Counts by source / licence / category / mesh store and cache state (for
        ``ra3d db info``). Groups every record: ≈ 2 s at 800k."""
        cache_files: list[Path] = []
        cache_location = self.existing_cache_dir()
        if cache_location is not None:
            cache_files = [p for p in cache_location.rglob("*") if p.is_file()]
        licence = "COALESCE(NULLIF(a.license, ''), n.license, 'not fetched yet')"
        path = self._source.path
        return {
            "root": str(self.root),
            "format": self.format,
            "catalog": str(path) if path is not None else None,
            "catalog_bytes": path.stat().st_size if path is not None else 0,
            "assets": len(self),
            "manifest_hash": self.manifest_hash,
            "sources": self._query(catalog.counts, "a.source"),
            "licenses": self._query(catalog.counts, licence),
            "categories": self._query(catalog.counts, "COALESCE(NULLIF(a.category, ''), '-')"),
            "mesh_stores": self._query(catalog.counts, "a.mesh_store"),
            "annotations": self._query(catalog.annotation_count) + len(self._overlay),
            "mirror": str(self.mirror) if self.mirror else None,
            "missing_meshes": self.missing_meshes(),
            "cache_dir": str(cache_location) if cache_location else None,
            "cache_files": len(cache_files),
            "cache_bytes": sum(p.stat().st_size for p in cache_files),
        }

    def existing_cache_dir(self) -> Path | None:
        """The cache folder if it already exists (never creates one: ``info`` must not write)."""
        candidates = []
        if not self._read_only:
            candidates.append(self.root / CACHE_DIR_NAME)
        candidates.append(_user_cache_base() / self.manifest_hash[:16])
        return next((c for c in candidates if c.is_dir()), None)


def _cache_location(root: Path, read_only: bool, fingerprint: str) -> Path:
    """``root/.cache`` for a writable database, else the user cache keyed by ``fingerprint``."""
    if not read_only:
        local = root / CACHE_DIR_NAME
        if _is_writable_dir(local):
            return local
    return _user_cache_base() / fingerprint[:16]


def default_database() -> AssetDatabase:
    """``$RA3D_DATABASE`` when set, else the shipped starter library."""
    path = os.environ.get("RA3D_DATABASE")
    if path:
        return AssetDatabase.open(path)
    return AssetDatabase.builtin()


class ImportTransaction:
    """Stage new assets next to a database and merge them in with one SQLite transaction.

    Usage::

        with ImportTransaction(out_root) as tx:
            folder = tx.new_asset_dir("chair-1")       # write the asset's files here
            tx.add(AssetRecord(uid="chair-1", mesh_path="chair.obj", ...))  # path inside folder
            tx.add_catalog_records(objaverse_records)  # records without files, streamed
        db = tx.database

    Files are written into ``out_root/.staging-<id>/`` first. On success every staged asset
    folder is moved to a fresh name under ``out_root/models/`` (never over a folder the current
    catalog uses), their records are written, and the transaction commits — the single commit
    point — and only then are folders no longer referenced removed. Records without files
    (:meth:`add_catalog_records`) go into the open transaction as they come, so an 800k-row
    catalog never sits in memory. If anything raises (including KeyboardInterrupt) before the
    commit point, the transaction is rolled back, the staging folder and any moved folders are
    removed, and the previous catalog and meshes are untouched; after ``kill -9`` SQLite rolls the
    transaction back when the catalog is next opened.

    A new database, and the migration of a JSONL one (its records first, then the new ones), is
    built in a temporary catalog beside the final one and renamed into place at the commit.

    Merge rule: a uid already in the database is replaced in place (keeping its row), new uids
    are appended; a record without a file never removes a stored mesh (:func:`catalog._merge`).
    """

    def __init__(self, out_root: str | Path) -> None:
        self.out_root = Path(out_root).expanduser()
        if self.out_root.exists() and not self.out_root.is_dir():
            raise DatabaseError(f"{self.out_root} is a file; --db must name a folder")
        self._catalog_file = self.out_root / CATALOG_NAME
        self._manifest = self.out_root / MANIFEST_NAME
        self.existing: AssetDatabase | None = None
        self._old_records: list[AssetRecord] = []
        self._old_hash = ""
        if self._catalog_file.is_file():
            self._kind = "catalog"
            self.existing = AssetDatabase.open(self.out_root)
        elif self._manifest.is_file():
            self._kind = "jsonl"
            data = self._manifest.read_bytes()
            self._old_records = _parse_manifest(data, self._manifest)
            self._old_hash = hashlib.sha256(data).hexdigest()
        elif self.out_root.is_dir() and any(
            not p.name.startswith(".") for p in self.out_root.iterdir()
        ):
            raise DatabaseError(
                f"{self.out_root} is a non-empty folder without {CATALOG_NAME}; import into a "
                "new or empty folder, or into an existing ra3d database"
            )
        else:
            self._kind = "new"
        self._staged: dict[str, AssetRecord] = {}
        self._staging: Path | None = None
        self._created_root = False
        self._conn: sqlite3.Connection | None = None
        self._writer: catalog.CatalogWriter | None = None
        self._tmp_catalog: Path | None = None
        self._meta: dict[str, object] = {}
        self._annotations: dict[str, Provenance] = {}
        self.database: AssetDatabase | None = None

    def __enter__(self) -> ImportTransaction:
        self._created_root = not self.out_root.exists()
        self.out_root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_files()
        self._staging = self.out_root / f"{STAGING_PREFIX}{uuid_lib.uuid4().hex[:12]}"
        self._staging.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.database = self._commit()
        finally:
            self._close(rollback=True)
            if self._tmp_catalog is not None:
                _remove_catalog_file(self._tmp_catalog)
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            if self.database is None and self._created_root:
                # a failed import into a new folder leaves nothing behind, not an empty "database"
                shutil.rmtree(self.out_root, ignore_errors=True)

    def _remove_stale_files(self) -> None:
        """Leftovers of imports that were killed: staging folders and temporary catalogs."""
        for p in self.out_root.glob(f"{STAGING_PREFIX}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        for p in self.out_root.glob(f"{CATALOG_TMP_PREFIX}*{CATALOG_TMP_SUFFIX}*"):
            p.unlink(missing_ok=True)

    # -- staging files ----------------------------------------------------------------------
    @property
    def staged_uids(self) -> list[str]:
        return list(self._staged)

    def new_asset_dir(self, uid: str) -> Path:
        """An empty folder in the staging area for the files of asset ``uid``."""
        if self._staging is None:
            raise RuntimeError("ImportTransaction must be used as a context manager")
        validate_uid(uid)
        folder = self._staging / uid
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        return folder

    def discard(self, uid: str) -> None:
        """Drop a staged asset (e.g. its mesh failed validation)."""
        self._staged.pop(uid, None)
        if self._staging is not None:
            shutil.rmtree(self._staging / uid, ignore_errors=True)

    def add(self, record: AssetRecord) -> None:
        """Stage ``record``; its ``mesh_path`` is relative to ``new_asset_dir(record.uid)``."""
        record.validate()
        assert self._staging is not None
        if record.mesh_store != "database":
            raise DatabaseError(
                f"asset {record.uid!r} has no file to stage; use add_catalog_records for it"
            )
        if not (self._staging / record.uid / record.mesh_path).is_file():
            raise DatabaseError(
                f"asset {record.uid!r}: mesh {record.mesh_path!r} was not written to its "
                "staging folder"
            )
        self._staged[record.uid] = record

    # -- records without files ----------------------------------------------------------------
    def add_catalog_records(self, records: Iterable[AssetRecord]) -> catalog.CatalogWriter:
        """Write records whose mesh is not a file of the database (Objaverse objects) into the
        open transaction, streaming; returns the writer (its ``added``/``replaced`` counts)."""
        writer = self._begin()

        def checked() -> Iterator[AssetRecord]:
            for record in records:
                if record.mesh_store == "database":
                    raise DatabaseError(
                        f"asset {record.uid!r} names a mesh file; stage it with "
                        "new_asset_dir() and add()"
                    )
                yield record

        writer.put(checked())
        return writer

    def add_annotations(self, items: Mapping[str, Provenance]) -> None:
        """Cache source annotations (licence, credit) with the import, in the same commit."""
        self._annotations.update(items)

    def set_meta(self, **values: object) -> None:
        """Catalog metadata to record at the commit (e.g. ``mirror``)."""
        self._meta.update(values)

    @property
    def writer(self) -> catalog.CatalogWriter:
        return self._begin()

    # -- the transaction --------------------------------------------------------------------
    def _begin(self) -> catalog.CatalogWriter:
        if self._writer is not None:
            return self._writer
        if self._staging is None:
            raise RuntimeError("ImportTransaction must be used as a context manager")
        if self._kind == "catalog":
            conn = catalog.connect(self._catalog_file, write=True)
            self._conn = conn
            catalog.begin(conn, self._catalog_file)
            meta = catalog.read_meta(conn, self._catalog_file)
            self._writer = catalog.CatalogWriter(conn, meta)
            return self._writer
        name = f"{CATALOG_TMP_PREFIX}{uuid_lib.uuid4().hex[:12]}{CATALOG_TMP_SUFFIX}"
        self._tmp_catalog = self.out_root / name
        conn = catalog.connect(self._tmp_catalog, write=True)
        self._conn = conn
        catalog.begin(conn, self._tmp_catalog)
        catalog.create_schema(conn)
        self._writer = catalog.CatalogWriter(conn, catalog.read_meta(conn, self._tmp_catalog))
        if self._kind == "jsonl":
            self._writer.put(self._old_records)
            self._writer.rebase(self._old_hash)
        return self._writer

    def _close(self, rollback: bool) -> None:
        if self._conn is not None:
            try:
                if rollback:
                    catalog.rollback(self._conn)
            finally:
                self._conn.close()
                self._conn = None

    def _commit(self) -> AssetDatabase:
        try:
            writer = self._begin()
            assert self._conn is not None and self._staging is not None
        except sqlite3.Error as err:
            raise _sqlite_failure(self.out_root / CATALOG_NAME, err) from err
        models = self.out_root / MODELS_DIR
        moved: list[Path] = []
        try:
            if self._staged:
                models.mkdir(exist_ok=True)
                used_dirs = {_model_dir_of(p) for _, p in catalog.stored_meshes(self._conn)}
                final = []
                for uid, rec in self._staged.items():
                    name = uid
                    while name in used_dirs or (models / name).exists():
                        name = f"{uid}.{uuid_lib.uuid4().hex[:8]}"
                    used_dirs.add(name)
                    os.replace(self._staging / uid, models / name)
                    moved.append(models / name)
                    mesh = (PurePosixPath(MODELS_DIR) / name / rec.mesh_path).as_posix()
                    final.append(AssetRecord(**{**rec.__dict__, "mesh_path": mesh}))
                writer.put(final)
            if self._annotations:
                catalog.put_annotations(self._conn, self._annotations)
            writer.finish(**self._meta)
            catalog.commit(self._conn)  # the commit point of an existing catalog
            if self._tmp_catalog is not None:
                self._close(rollback=False)
                os.chmod(self._tmp_catalog, PUBLIC_MODE)
                os.replace(self._tmp_catalog, self._catalog_file)  # ... of a new or migrated one
                self._tmp_catalog = None
                fsync_dir(self.out_root)
        except BaseException as err:
            self._close(rollback=True)
            for folder in moved:
                shutil.rmtree(folder, ignore_errors=True)
            failure = _sqlite_failure(self.out_root / CATALOG_NAME, err)
            if failure is err:
                raise
            raise failure from err
        self._close(rollback=False)
        if self._kind == "jsonl":  # after the commit: the catalog wins over a leftover manifest
            kept = self._manifest.with_name(MANIFEST_NAME + MIGRATED_SUFFIX)
            try:
                os.replace(self._manifest, kept)
                logger.info("migrated %s to %s (kept as %s)", self._manifest, CATALOG_NAME, kept)
            except OSError as err:
                logger.warning("migrated to %s but could not rename %s (%s)", CATALOG_NAME,
                               self._manifest, err)  # fmt: skip
        db = AssetDatabase.open(self.out_root)
        self._remove_unreferenced_model_dirs(db)
        return db

    def _remove_unreferenced_model_dirs(self, db: AssetDatabase) -> None:
        """Delete models/ folders no record uses (replaced assets, leftovers of crashed imports)."""
        models = self.out_root / MODELS_DIR
        if not models.is_dir():
            return
        referenced = {_model_dir_of(p) for _, p in db.stored_meshes()}
        for child in models.iterdir():
            if child.is_dir() and child.name not in referenced:
                shutil.rmtree(child, ignore_errors=True)


def _model_dir_of(mesh_path: str) -> str:
    parts = PurePosixPath(mesh_path).parts
    return parts[1] if len(parts) > 2 and parts[0] == MODELS_DIR else ""


__all__ = [
    "CACHE_DIR_NAME",
    "CATALOG_NAME",
    "MANIFEST_NAME",
    "MESH_CACHE_SUBDIR",
    "MESH_STORES",
    "MODELS_DIR",
    "AssetDatabase",
    "AssetRecord",
    "DatabaseError",
    "DatabaseNotFoundError",
    "ImportTransaction",
    "caption_problem",
    "clean_caption",
    "default_database",
    "read_manifest",
    "safe_relative_path",
    "serialise_manifest",
    "slugify_uid",
    "validate_uid",
    "write_manifest",
]
