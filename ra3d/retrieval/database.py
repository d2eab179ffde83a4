"""The 3D asset database D that retrieval searches (Sec. 4.1: ξ_N(c, D)).

A database is a folder::

    root/
      manifest.jsonl        one header line, then one JSON record per asset (AssetRecord)
      models/<dir>/...      the mesh files of each asset (OBJ+MTL+textures, GLB, ...)
      .cache/               embeddings, index and renders (written by other modules)

The manifest is the single source of truth and the commit point of every change: it is only
ever replaced with ``os.replace`` after all the files it names are in place, so a crash or
Ctrl-C half-way through an import leaves the previous database readable and unchanged
(see ``ImportTransaction``). Every record keeps its provenance (source, licence, attribution)
because retrieved assets end up shaping generated content and must stay creditable.

Meshes are stored as their source delivered them (OBJ / glTF convention: +Y up, metres or
centimetres); normalising scale and axes is the job of the mesh loader, not of the database.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import tempfile
import uuid as uuid_lib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ra3d.errors import Ra3dError
from ra3d.io import write_bytes_atomic  # module-level name: tests replace it to crash a commit

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_VERSION = 1
MODELS_DIR = "models"
CACHE_DIR_NAME = ".cache"
STAGING_PREFIX = ".staging-"
_HEADER_KEY = "ra3d_asset_manifest"
_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class DatabaseError(Ra3dError, ValueError):
    """A database, manifest or import input is invalid; the message names the fix."""


class DatabaseNotFoundError(Ra3dError, FileNotFoundError):
    """The database folder or its manifest does not exist."""


def slugify_uid(text: str) -> str:
    """A uid-safe slug of ``text`` (letters, digits, ``.``, ``_``, ``-``): uids become folder names."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-._")
    return slug[:200] or "asset"


def validate_uid(uid: str) -> str:
    """Return ``uid`` if it is safe as a folder name, else raise DatabaseError."""
    if not isinstance(uid, str) or not _UID_RE.match(uid):
        raise DatabaseError(
            f"invalid asset uid {uid!r}: use 1-200 characters from [A-Za-z0-9._-], starting "
            "with a letter or digit (ra3d.retrieval.database.slugify_uid makes one)"
        )
    return uid


def safe_relative_path(path: str, what: str = "path") -> PurePosixPath:
    """``path`` as a normalised relative POSIX path, rejecting absolute paths and ``..``.

    Used for manifest mesh paths and archive members alike, so that nothing a manifest or an
    archive says can point outside the folder it belongs to.
    """
    text = str(path).replace("\\", "/")
    if not text or text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise DatabaseError(f"{what} {path!r} is absolute; it must be relative to its folder")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise DatabaseError(f"{what} {path!r} escapes its folder (contains '..' or is empty)")
    return PurePosixPath(*parts)


@dataclass
class AssetRecord:
    """One captioned asset of the database.

    Attributes:
        uid: identifier, unique in the database and safe as a folder name.
        caption: text description c_ret used for text retrieval and Eq. 12's captions.
        mesh_path: relative POSIX path of the mesh inside the database root.
        source: where it came from (``sh3f:<catalog>``, ``objaverse``, ``folder:<name>``).
        license: licence identifier (SPDX where known, e.g. ``CC0-1.0``).
        attribution: author / title / URL line to credit the asset.
        category, tags: optional metadata kept from the source catalog.
        title: the title the author gave the work (may name a whole pack), if known.
        url: page of the original work, if known.
    """

    uid: str
    caption: str
    mesh_path: str
    source: str
    license: str
    attribution: str
    category: str = ""
    tags: list[str] = field(default_factory=list)
    title: str = ""
    url: str = ""

    def validate(self) -> AssetRecord:
        """Check field types and path safety; returns self so it can be chained."""
        validate_uid(self.uid)
        for name in ("caption", "mesh_path", "source", "license", "attribution", "category"):
            if not isinstance(getattr(self, name), str):
                raise DatabaseError(f"asset {self.uid!r}: field {name!r} must be a string")
        if not self.caption.strip():
            raise DatabaseError(f"asset {self.uid!r} has an empty caption; give it a text caption")
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise DatabaseError(f"asset {self.uid!r}: tags must be a list of strings")
        safe_relative_path(self.mesh_path, what=f"mesh path of asset {self.uid!r}")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> AssetRecord:
        if not isinstance(data, dict):
            raise DatabaseError(f"{where}: expected a JSON object, got {type(data).__name__}")
        required = ("uid", "caption", "mesh_path", "source", "license", "attribution")
        missing = [k for k in required if k not in data]
        if missing:
            raise DatabaseError(f"{where}: record lacks required field(s) {missing}")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["tags"] = list(kwargs.get("tags") or [])
        try:
            return cls(**kwargs).validate()
        except DatabaseError as err:
            raise DatabaseError(f"{where}: {err}") from None


def _serialise_manifest(records: Sequence[AssetRecord]) -> bytes:
    """Deterministic manifest bytes (sorted keys, one record per line) so equal content hashes equal."""
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


def _builtin_root() -> Path:
    resource = importlib.resources.files("ra3d").joinpath("assets", "starter")
    root = Path(str(resource))
    if not (root / MANIFEST_NAME).is_file():
        raise DatabaseNotFoundError(
            f"the starter library is missing from the ra3d installation (looked in {root}); "
            "reinstall ra3d, or rebuild it with scripts/build_starter_library.py"
        )
    return root


class AssetDatabase:
    """A captioned asset collection opened from a folder with a ``manifest.jsonl``.

    Use ``AssetDatabase.open(path)``, ``AssetDatabase.builtin()`` or ``default_database()``;
    ``AssetDatabase.create`` writes a new manifest for files already in place.
    """

    def __init__(
        self,
        root: str | Path,
        records: Sequence[AssetRecord],
        *,
        manifest_bytes: bytes | None = None,
        read_only: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.records = list(records)
        self._by_uid = {r.uid: r for r in self.records}
        if len(self._by_uid) != len(self.records):
            dup = [u for u, n in Counter(r.uid for r in self.records).items() if n > 1]
            raise DatabaseError(f"duplicate asset uids {dup[:5]}; every uid must be unique")
        self._manifest_bytes = (
            manifest_bytes if manifest_bytes is not None else _serialise_manifest(self.records)
        )
        # A read-only database (the shipped starter library) never gets a .cache inside the
        # installed package, even when site-packages happens to be writable.
        self._read_only = read_only

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> AssetDatabase:
        """Read ``root/manifest.jsonl``; clear errors when the folder or manifest is missing/corrupt."""
        root = Path(root).expanduser()
        manifest = root / MANIFEST_NAME
        if not root.exists():
            raise DatabaseNotFoundError(
                f"asset database folder {root} does not exist; create one with "
                "`ra3d db import folder|sh3f|objaverse ... --db PATH`"
            )
        if root.is_file():
            raise DatabaseError(f"{root} is a file; --db must name a database folder")
        if not manifest.is_file():
            raise DatabaseNotFoundError(
                f"{root} has no {MANIFEST_NAME}, so it is not an ra3d asset database; create "
                "one with `ra3d db import ... --db PATH`"
            )
        data = manifest.read_bytes()
        return cls(root, _parse_manifest(data, manifest), manifest_bytes=data)

    @classmethod
    def builtin(cls) -> AssetDatabase:
        """The starter library shipped inside the package (CC0 Sweet Home 3D furniture)."""
        root = _builtin_root()
        db = cls.open(root)
        db._read_only = True
        return db

    @classmethod
    def create(cls, root: str | Path, records: Sequence[AssetRecord]) -> AssetDatabase:
        """Write a manifest for ``records`` (whose mesh files must already exist under ``root``).

        The manifest is written atomically, replacing any previous one.
        """
        root = Path(root).expanduser()
        records = [r.validate() for r in records]
        root.mkdir(parents=True, exist_ok=True)
        missing = [r.uid for r in records if not (root / r.mesh_path).is_file()]
        if missing:
            raise DatabaseNotFoundError(
                f"{len(missing)} record(s) name mesh files that do not exist under {root}: "
                f"{missing[:5]}; copy the meshes in first"
            )
        db = cls(root, records)
        write_bytes_atomic(root / MANIFEST_NAME, db._manifest_bytes)
        return db

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AssetRecord]:
        return iter(self.records)

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def __repr__(self) -> str:
        return f"AssetDatabase(root={str(self.root)!r}, assets={len(self)})"

    @property
    def uids(self) -> list[str]:
        return [r.uid for r in self.records]

    def get(self, uid: str) -> AssetRecord:
        try:
            return self._by_uid[uid]
        except KeyError:
            raise KeyError(f"no asset with uid {uid!r} in the database at {self.root}") from None

    def mesh_path(self, uid: str) -> Path:
        """Absolute path of the mesh file of ``uid``."""
        return self.root / self.get(uid).mesh_path

    def missing_meshes(self) -> list[str]:
        """uids whose mesh file is absent (a database copied without its models/ folder)."""
        return [r.uid for r in self.records if not (self.root / r.mesh_path).is_file()]

    @property
    def manifest_bytes(self) -> bytes:
        return self._manifest_bytes

    @property
    def manifest_hash(self) -> str:
        """sha256 of the manifest content: caches are keyed by it, so any edit invalidates them."""
        return hashlib.sha256(self._manifest_bytes).hexdigest()

    @property
    def cache_dir(self) -> Path:
        """A writable folder for this database's derived data (embeddings, index, renders).

        ``root/.cache`` when the database folder is writable (and not the shipped library);
        otherwise ``$RA3D_CACHE_DIR/<manifest_hash[:16]>`` or ``~/.cache/ra3d/<manifest_hash[:16]>``.
        Created on demand. Files inside should still be keyed by ``manifest_hash`` (or by uid)
        when they depend on the content, since imports change the manifest in place.
        """
        if not self._read_only:
            local = self.root / CACHE_DIR_NAME
            if _is_writable_dir(local):
                return local
        base = os.environ.get("RA3D_CACHE_DIR")
        base_dir = Path(base).expanduser() if base else Path.home() / ".cache" / "ra3d"
        path = base_dir / self.manifest_hash[:16]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatabaseError(
                f"cannot create the cache folder {path} ({err}); set RA3D_CACHE_DIR to a "
                "writable folder"
            ) from None
        return path

    def summary(self) -> dict[str, Any]:
        """Counts by source / licence / category and cache state (for ``ra3d db info``)."""
        cache_files: list[Path] = []
        cache_location = self._existing_cache_location()
        if cache_location is not None:
            cache_files = [p for p in cache_location.rglob("*") if p.is_file()]
        return {
            "root": str(self.root),
            "assets": len(self),
            "manifest_hash": self.manifest_hash,
            "sources": dict(Counter(r.source for r in self.records).most_common()),
            "licenses": dict(Counter(r.license for r in self.records).most_common()),
            "categories": dict(Counter(r.category or "-" for r in self.records).most_common()),
            "missing_meshes": self.missing_meshes(),
            "cache_dir": str(cache_location) if cache_location else None,
            "cache_files": len(cache_files),
            "cache_bytes": sum(p.stat().st_size for p in cache_files),
        }

    def _existing_cache_location(self) -> Path | None:
        """The cache folder if it already exists (never creates one: ``info`` must not write)."""
        candidates = []
        if not self._read_only:
            candidates.append(self.root / CACHE_DIR_NAME)
        base = os.environ.get("RA3D_CACHE_DIR")
        base_dir = Path(base).expanduser() if base else Path.home() / ".cache" / "ra3d"
        candidates.append(base_dir / self.manifest_hash[:16])
        return next((c for c in candidates if c.is_dir()), None)


def default_database() -> AssetDatabase:
    """``$RA3D_DATABASE`` when set, else the shipped starter library."""
    path = os.environ.get("RA3D_DATABASE")
    if path:
        return AssetDatabase.open(path)
    return AssetDatabase.builtin()


class ImportTransaction:
    """Stage new assets next to a database and merge them in with one atomic manifest swap.

    Usage::

        with ImportTransaction(out_root) as tx:
            folder = tx.new_asset_dir("chair-1")       # write the asset's files here
            tx.add(AssetRecord(uid="chair-1", mesh_path="chair.obj", ...))  # path inside folder
        db = tx.database

    Files are written into ``out_root/.staging-<id>/`` first. On success every staged asset
    folder is moved to a fresh name under ``out_root/models/`` (never over a folder the current
    manifest uses), then the merged manifest replaces the old one with ``os.replace`` - the
    single commit point - and only then are folders no longer referenced removed. If anything
    raises (including KeyboardInterrupt) before the commit point, the staging folder and any
    moved folders are removed and the previous manifest and meshes are untouched.

    Merge rule: a uid already in the database is replaced in place, new uids are appended.
    """

    def __init__(self, out_root: str | Path) -> None:
        self.out_root = Path(out_root).expanduser()
        if self.out_root.exists() and not self.out_root.is_dir():
            raise DatabaseError(f"{self.out_root} is a file; --db must name a folder")
        self.existing: AssetDatabase | None = None
        if (self.out_root / MANIFEST_NAME).exists():
            self.existing = AssetDatabase.open(self.out_root)
        elif self.out_root.is_dir() and any(
            not p.name.startswith(".") for p in self.out_root.iterdir()
        ):
            raise DatabaseError(
                f"{self.out_root} is a non-empty folder without {MANIFEST_NAME}; import into a "
                "new or empty folder, or into an existing ra3d database"
            )
        self._staged: dict[str, AssetRecord] = {}
        self._staging: Path | None = None
        self._created_root = False
        self.database: AssetDatabase | None = None

    def __enter__(self) -> ImportTransaction:
        self._created_root = not self.out_root.exists()
        self.out_root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        self._staging = self.out_root / f"{STAGING_PREFIX}{uuid_lib.uuid4().hex[:12]}"
        self._staging.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.database = self._commit()
        finally:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            if self.database is None and self._created_root:
                # a failed import into a new folder leaves nothing behind, not an empty "database"
                shutil.rmtree(self.out_root, ignore_errors=True)

    def _remove_stale_staging(self) -> None:
        for p in self.out_root.glob(f"{STAGING_PREFIX}*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)

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
        if not (self._staging / record.uid / record.mesh_path).is_file():
            raise DatabaseError(
                f"asset {record.uid!r}: mesh {record.mesh_path!r} was not written to its "
                "staging folder"
            )
        self._staged[record.uid] = record

    def _commit(self) -> AssetDatabase:
        assert self._staging is not None
        models = self.out_root / MODELS_DIR
        models.mkdir(exist_ok=True)
        old_records = list(self.existing.records) if self.existing else []
        used_dirs = {_model_dir_of(r) for r in old_records}
        moved: list[Path] = []
        final: dict[str, AssetRecord] = {}
        try:
            for uid, rec in self._staged.items():
                name = uid
                while name in used_dirs or (models / name).exists():
                    name = f"{uid}.{uuid_lib.uuid4().hex[:8]}"
                used_dirs.add(name)
                os.replace(self._staging / uid, models / name)
                moved.append(models / name)
                mesh = (PurePosixPath(MODELS_DIR) / name / rec.mesh_path).as_posix()
                final[uid] = AssetRecord(**{**rec.to_json(), "mesh_path": mesh})
            merged = [final.pop(r.uid, r) for r in old_records] + list(final.values())
            new_db = AssetDatabase.create(self.out_root, merged)  # commit point (os.replace)
        except BaseException:
            for folder in moved:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        self._remove_unreferenced_model_dirs(new_db)
        return new_db

    def _remove_unreferenced_model_dirs(self, db: AssetDatabase) -> None:
        """Delete models/ folders no record uses (replaced assets, leftovers of crashed imports)."""
        referenced = {_model_dir_of(r) for r in db.records}
        models = self.out_root / MODELS_DIR
        for child in models.iterdir():
            if child.is_dir() and child.name not in referenced:
                shutil.rmtree(child, ignore_errors=True)


def _model_dir_of(record: AssetRecord) -> str:
    parts = PurePosixPath(record.mesh_path).parts
    return parts[1] if len(parts) > 2 and parts[0] == MODELS_DIR else ""
