"""The SQLite catalog that stores an asset database's records: one file, ``catalog.sqlite``.

Why SQLite (Python's own ``sqlite3``): Objaverse 1.0 with Cap3D captions is ≈ 800k records. As
one JSONL manifest that was ≈ 250 MB of JSON parsed at every cold ``ra3d retrieve`` and rewritten
whole at every import. In SQLite a retrieve reads the few rows the vector search returned (by
row number, through the table's B-tree), and an import is one transaction.

Tables::

    meta(key, value)           format, count, fingerprint, generation, mirror
    assets(row INTEGER PRIMARY KEY, uid UNIQUE, caption, source, license, attribution,
           category, tags (JSON list), title, url, mesh_store, mesh_path)
    annotations(uid PRIMARY KEY, license, attribution, title, url, tags, fetched_at)

``uid`` is the key every lookup uses (UNIQUE, so one index probe). ``row`` is SQLite's rowid
alias, numbered 0..N-1 in import order: it is the row of the caption embedding index, so it must
never change — an ``INTEGER PRIMARY KEY`` is the one rowid ``VACUUM`` may not renumber. Rows are
never deleted; a re-imported uid keeps its row and is updated in place.

``annotations`` caches what a source says about an asset after the import (Objaverse's licence
and author, fetched when an asset is retrieved). It is not part of the content fingerprint:
annotations arrive at retrieve time, and the fingerprint keys the caption index, which they do
not change.

Durability: the default rollback journal (not WAL, which keeps ``-wal``/``-shm`` files beside the
database and cannot be read from read-only media). A transaction that is interrupted — an
exception, Ctrl-C, ``kill -9``, a power cut — leaves a "hot" journal that SQLite rolls back the
next time the file is opened, so readers see the state before the transaction or after it,
nothing in between. Readers never block on a running import: they read the last committed state
until the import's ``COMMIT``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ra3d.retrieval.licenses import Provenance
from ra3d.retrieval.records import AssetRecord, DatabaseError, DatabaseNotFoundError

CATALOG_NAME = "catalog.sqlite"
CATALOG_FORMAT = 1
#: Page cache of a connection that writes, in KiB. An 800k-row import fits in it, so nothing is
#: written to the database file before the commit (tests lower it to force early writes).
WRITE_CACHE_KIB = 256 * 1024
#: How long a connection waits for another one's lock (an import committing) before failing.
BUSY_TIMEOUT_S = 30.0
#: Rows per statement batch (well under SQLite's 32766 bound variables per statement).
BATCH = 2000

_COLUMNS = (
    "uid", "caption", "source", "license", "attribution", "category", "tags", "title", "url",
    "mesh_store", "mesh_path",
)  # fmt: skip
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE assets (
        row INTEGER PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        caption TEXT NOT NULL,
        source TEXT NOT NULL,
        license TEXT NOT NULL,
        attribution TEXT NOT NULL,
        category TEXT NOT NULL,
        tags TEXT NOT NULL,
        title TEXT NOT NULL,
        url TEXT NOT NULL,
        mesh_store TEXT NOT NULL,
        mesh_path TEXT NOT NULL
    )""",
    # Only the (few) records whose mesh is a file of the database: `db info` and imports list
    # them without scanning 800k Objaverse rows.
    "CREATE INDEX assets_stored_meshes ON assets(mesh_path) WHERE mesh_store = 'database'",
    """CREATE TABLE annotations (
        uid TEXT PRIMARY KEY,
        license TEXT NOT NULL,
        attribution TEXT NOT NULL,
        title TEXT NOT NULL,
        url TEXT NOT NULL,
        tags TEXT NOT NULL,
        fetched_at REAL NOT NULL
    ) WITHOUT ROWID""",
)
_SELECT = (
    "SELECT a.row, a.uid, a.caption, a.source, a.license, a.attribution, a.category, a.tags, "
    "a.title, a.url, a.mesh_store, a.mesh_path, n.license, n.attribution, n.title, n.url, n.tags "
    "FROM assets a LEFT JOIN annotations n ON n.uid = a.uid"
)


@dataclass(frozen=True)
class CatalogMeta:
    """What the ``meta`` table says: row count, content fingerprint, import generation and the
    Objaverse mirror recorded by ``ra3d db import objaverse --mirror``."""

    count: int
    fingerprint: str
    generation: int
    mirror: str = ""


def empty_fingerprint() -> str:
    """Fingerprint of a database with no records: the sha256 of the JSONL manifest that holds
    only its header line, so an empty catalog and an empty JSONL database agree."""
    return hashlib.sha256(b'{"ra3d_asset_manifest": 1}\n').hexdigest()


def chain_fingerprint(previous: str, digest: str) -> str:
    """The fingerprint after a transaction whose records hash to ``digest``. Cheap (the records
    of one import only) and it changes with every change of content; equal fingerprints mean
    equal content, but two databases with equal content built in different steps may differ."""
    return hashlib.sha256(f"{previous}:{digest}".encode()).hexdigest()


def record_bytes(record: AssetRecord) -> bytes:
    """The canonical bytes of a record for the fingerprint (unit/record separators)."""
    fields = [getattr(record, c) if c != "tags" else json.dumps(record.tags) for c in _COLUMNS]
    return ("\x1f".join(fields) + "\x1e").encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------ connections
def connect(path: str | Path, *, write: bool) -> sqlite3.Connection:
    """A connection to the catalog file ``path`` in autocommit mode (transactions are explicit).

    A reader opens the file read-write when it may (so that SQLite can roll back the hot journal
    an interrupted import left) but with ``query_only``; on read-only media or a file it may not
    write, it opens it with ``mode=ro``.
    """
    path = Path(path)
    if write:
        conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA cache_size = -{int(WRITE_CACHE_KIB)}")
        return conn
    if not path.is_file():
        raise DatabaseNotFoundError(f"catalog {path} does not exist")
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        conn = sqlite3.connect(
            str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA query_only = ON")
    else:
        uri = path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    return conn


def _corrupt(path: object, err: BaseException) -> DatabaseError:
    return DatabaseError(
        f"asset catalog {path} cannot be read ({err}); restore it from a backup or re-import "
        "the database with `ra3d db import`"
    )


def create_schema(conn: sqlite3.Connection, fingerprint: str | None = None) -> None:
    """Create the tables of an empty catalog inside the caller's open transaction."""
    for statement in _SCHEMA:
        conn.execute(statement)
    rows = {
        "format": str(CATALOG_FORMAT),
        "count": "0",
        "fingerprint": fingerprint or empty_fingerprint(),
        "generation": "0",
        "mirror": "",
    }
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", rows.items())


def read_meta(conn: sqlite3.Connection, where: object) -> CatalogMeta:
    """The catalog's meta table, after checking its format and that rows are 0..count-1."""
    try:
        values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        top = conn.execute("SELECT max(row) FROM assets").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise _corrupt(where, err) from None
    if values.get("format") != str(CATALOG_FORMAT):
        raise DatabaseError(
            f"asset catalog {where} has format {values.get('format')!r}; this ra3d reads format "
            f"{CATALOG_FORMAT}. Use the ra3d that wrote it, or re-import the database"
        )
    try:
        meta = CatalogMeta(
            count=int(values["count"]),
            fingerprint=str(values["fingerprint"]),
            generation=int(values.get("generation", 0)),
            mirror=str(values.get("mirror", "")),
        )
    except (KeyError, ValueError) as err:
        raise _corrupt(where, err) from None
    if (top if top is not None else -1) != meta.count - 1:
        raise _corrupt(where, f"its rows end at {top} but it says it holds {meta.count}")
    return meta


def begin(conn: sqlite3.Connection, where: object) -> None:
    """Start a write transaction (taking the catalog's write lock at once)."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise DatabaseError(
                f"another process is writing the asset catalog {where} (an import?); wait for it "
                "to finish and run this again"
            ) from None
        raise _corrupt(where, err) from None


def commit(conn: sqlite3.Connection) -> None:
    """The commit point of an import (module-level: tests replace it to crash a commit)."""
    conn.execute("COMMIT")


def rollback(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if any (a failed or interrupted import)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def set_meta(conn: sqlite3.Connection, **values: object) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
        [(k, str(v)) for k, v in values.items()],
    )


# ------------------------------------------------------------------------------ reading
def _tags(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    return [str(t) for t in value] if isinstance(value, list) else []


def _decode(row: Sequence) -> tuple[int, AssetRecord]:
    """``(row, record)`` of one ``_SELECT`` result; an asset without a licence of its own (an
    Objaverse object) takes its licence, credit, title, url and tags from its annotation."""
    (rowid, uid, caption, source, lic, attribution, category, tags, title, url, store, mesh,
     n_lic, n_attr, n_title, n_url, n_tags) = row  # fmt: skip
    has_note = n_lic is not None
    record = AssetRecord(
        uid=uid,
        caption=caption,
        mesh_path=mesh,
        source=source,
        license=lic or (n_lic if has_note else ""),
        attribution=attribution or (n_attr if has_note else ""),
        category=category,
        tags=_tags(tags) or (_tags(n_tags) if has_note else []),
        title=title or (n_title if has_note else ""),
        url=url or (n_url if has_note else ""),
        mesh_store=store,
    )
    return int(rowid), record


def select_rows(conn: sqlite3.Connection, rows: Sequence[int]) -> dict[int, AssetRecord]:
    """The records at ``rows`` (absent rows are left out)."""
    out: dict[int, AssetRecord] = {}
    for i in range(0, len(rows), BATCH):
        chunk = [int(r) for r in rows[i : i + BATCH]]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"{_SELECT} WHERE a.row IN ({marks})", chunk):
            rowid, record = _decode(row)
            out[rowid] = record
    return out


def select_uid(conn: sqlite3.Connection, uid: str) -> tuple[int, AssetRecord] | None:
    row = conn.execute(f"{_SELECT} WHERE a.uid = ?", (uid,)).fetchone()
    return None if row is None else _decode(row)


def select_range(conn: sqlite3.Connection, start: int, stop: int) -> list[AssetRecord]:
    rows = conn.execute(f"{_SELECT} WHERE a.row >= ? AND a.row < ? ORDER BY a.row", (start, stop))
    return [_decode(r)[1] for r in rows]


def caption_rows(conn: sqlite3.Connection, start: int, stop: int) -> list[tuple[str, str]]:
    """``(uid, caption)`` of rows ``[start, stop)`` in row order (one B-tree range scan)."""
    query = "SELECT uid, caption FROM assets WHERE row >= ? AND row < ? ORDER BY row"
    return [(str(u), str(c)) for u, c in conn.execute(query, (int(start), int(stop)))]


def iter_uids(conn: sqlite3.Connection, count: int, store: str | None = None) -> Iterator[str]:
    """Every uid in row order (in range chunks, so no lock is held between chunks)."""
    step = 50_000
    where = "" if store is None else " AND mesh_store = ?"
    for start in range(0, count, step):
        args: tuple = (start, start + step) if store is None else (start, start + step, store)
        query = f"SELECT uid FROM assets WHERE row >= ? AND row < ?{where} ORDER BY row"
        for (uid,) in conn.execute(query, args):
            yield str(uid)


def stored_meshes(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """``(uid, mesh_path)`` of the records whose mesh is a file of the database."""
    query = "SELECT uid, mesh_path FROM assets WHERE mesh_store = 'database' ORDER BY row"
    return [(str(u), str(p)) for u, p in conn.execute(query)]


def counts(conn: sqlite3.Connection, expression: str) -> dict[str, int]:
    """``{value: count}`` of an SQL expression over the assets (with annotations), most first."""
    query = (
        f"SELECT {expression} AS v, count(*) AS n FROM assets a "
        "LEFT JOIN annotations n ON n.uid = a.uid GROUP BY v ORDER BY n DESC, v"
    )
    return {str(v): int(n) for v, n in conn.execute(query)}


def annotation_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM annotations").fetchone()[0])


def put_annotations(conn: sqlite3.Connection, items: Mapping[str, Provenance]) -> None:
    """Insert or replace cached annotations (inside the caller's transaction, if any)."""
    now = time.time()
    conn.executemany(
        "INSERT OR REPLACE INTO annotations(uid, license, attribution, title, url, tags, "
        "fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (uid, p.license, p.attribution, p.title, p.url, json.dumps(p.tags), now)
            for uid, p in items.items()
        ],
    )


# ------------------------------------------------------------------------------ writing
def _merge(old: AssetRecord, new: AssetRecord) -> AssetRecord:
    """The record stored when ``new`` is imported over ``old`` (same uid).

    A record with its own mesh file replaces the old one whole (a re-import). A catalog-only
    record (an Objaverse object, no file) fills in and never erases: its empty fields keep the
    stored values, and a mesh already stored in the database stays (re-importing all of Cap3D
    over a database with downloaded objects keeps their files).
    """
    if new.mesh_store == "database":
        return new
    values = {}
    for name in ("license", "attribution", "category", "title", "url"):
        values[name] = getattr(new, name) or getattr(old, name)
    values["tags"] = new.tags or old.tags
    if old.mesh_store == "database":
        values["mesh_store"], values["mesh_path"] = old.mesh_store, old.mesh_path
    else:
        values["mesh_store"], values["mesh_path"] = new.mesh_store, new.mesh_path or old.mesh_path
    return AssetRecord(uid=new.uid, caption=new.caption, mesh_path=values.pop("mesh_path"),
                       source=new.source, **values)  # fmt: skip


def _params(record: AssetRecord) -> tuple:
    return tuple(json.dumps(record.tags) if c == "tags" else getattr(record, c) for c in _COLUMNS)


class CatalogWriter:
    """Puts records into a catalog inside one open transaction and keeps its meta in step.

    A new uid is appended at row ``count``; a known uid is updated in place (see :func:`_merge`);
    a record equal to the stored one changes nothing, so re-running an import leaves the
    fingerprint — and every cache keyed by it — as it was.
    """

    def __init__(self, conn: sqlite3.Connection, meta: CatalogMeta) -> None:
        self.conn = conn
        self.count = meta.count
        self.fingerprint = meta.fingerprint
        self.generation = meta.generation
        self._digest = hashlib.sha256()
        self._changed = False
        self.added = self.replaced = self.unchanged = 0

    def rebase(self, fingerprint: str) -> None:
        """Declare the records written so far to have ``fingerprint`` (a migrated JSONL
        manifest keeps its hash, so the caches keyed by it stay valid)."""
        self.fingerprint = fingerprint
        self._digest = hashlib.sha256()
        self._changed = False
        self.added = self.replaced = self.unchanged = 0

    def put(self, records: Iterable[AssetRecord]) -> None:
        batch: list[AssetRecord] = []
        for record in records:
            batch.append(record.validate())
            if len(batch) >= BATCH:
                self._put_batch(batch)
                batch = []
        if batch:
            self._put_batch(batch)

    def _put_batch(self, batch: list[AssetRecord]) -> None:
        uids = list(dict.fromkeys(r.uid for r in batch))
        marks = ",".join("?" * len(uids))
        cols = ", ".join(_COLUMNS)
        stored: dict[str, tuple[int, AssetRecord]] = {}
        for row in self.conn.execute(
            f"SELECT row, {cols} FROM assets WHERE uid IN ({marks})", uids
        ):
            rowid, values = int(row[0]), dict(zip(_COLUMNS, row[1:], strict=True))
            values["tags"] = _tags(values["tags"])
            stored[values["uid"]] = (rowid, AssetRecord(**values))
        inserts: dict[str, tuple[int, AssetRecord]] = {}
        updates: dict[str, tuple[int, AssetRecord]] = {}
        for record in batch:
            if record.uid in inserts:  # twice in one batch: the later one wins
                inserts[record.uid] = (inserts[record.uid][0], record)
                continue
            if record.uid in stored:
                rowid, old = stored[record.uid]
                merged = _merge(updates.get(record.uid, (rowid, old))[1], record)
                if merged == old:
                    self.unchanged += 1
                    updates.pop(record.uid, None)
                    continue
                updates[record.uid] = (rowid, merged)
            else:
                inserts[record.uid] = (self.count, record)
                self.count += 1
        if inserts:
            self.conn.executemany(
                f"INSERT INTO assets(row, {cols}) VALUES (?, {','.join('?' * len(_COLUMNS))})",
                [(rowid, *_params(r)) for rowid, r in inserts.values()],
            )
        if updates:
            sets = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
            self.conn.executemany(
                f"UPDATE assets SET {sets} WHERE row = ?",
                [(*_params(r)[1:], rowid) for rowid, r in updates.values()],
            )
        for _, record in (*inserts.values(), *updates.values()):
            self._digest.update(record_bytes(record))
        self.added += len(inserts)
        self.replaced += len(updates)
        self._changed = self._changed or bool(inserts or updates)

    def finish(self, **meta: object) -> str:
        """Write count, fingerprint, generation (and ``meta`` such as the mirror); returns the
        new fingerprint. Call before the commit."""
        if self._changed:
            self.fingerprint = chain_fingerprint(self.fingerprint, self._digest.hexdigest())
        changed = self._changed or bool(meta)
        values: dict[str, object] = {"count": self.count, "fingerprint": self.fingerprint}
        if changed:
            values["generation"] = self.generation + 1
        set_meta(self.conn, **values, **meta)
        return self.fingerprint


__all__ = [
    "BATCH",
    "CATALOG_FORMAT",
    "CATALOG_NAME",
    "CatalogMeta",
    "CatalogWriter",
    "annotation_count",
    "begin",
    "caption_rows",
    "chain_fingerprint",
    "commit",
    "connect",
    "counts",
    "create_schema",
    "empty_fingerprint",
    "iter_uids",
    "put_annotations",
    "read_meta",
    "record_bytes",
    "rollback",
    "select_range",
    "select_rows",
    "select_uid",
    "stored_meshes",
]
