"""The SQLite catalog: transactions that survive ``kill -9``, read-only media, the write lock,
and the fingerprint that keys the caches."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ra3d.retrieval import catalog
from ra3d.retrieval.database import AssetDatabase, AssetRecord, DatabaseError, ImportTransaction
from ra3d.retrieval.licenses import Provenance
from tests.paths import REPO


def objaverse_record(i: int, caption: str = "") -> AssetRecord:
    return AssetRecord(
        uid=f"{i:032x}", caption=caption or f"object number {i}", mesh_path="",
        source="objaverse", license="", attribution="", mesh_store="objaverse",
    )  # fmt: skip


def make_catalog(root: Path, n: int) -> AssetDatabase:
    with ImportTransaction(root) as tx:
        tx.add_catalog_records(objaverse_record(i) for i in range(n))
    assert tx.database is not None
    return tx.database


KILLED_IMPORT = r"""
import sys, time
from pathlib import Path
from ra3d.retrieval import catalog
catalog.WRITE_CACHE_KIB = 64  # a tiny page cache: pages reach the file before the commit
from ra3d.retrieval.database import AssetRecord, ImportTransaction

root, ready = Path(sys.argv[1]), Path(sys.argv[2])

def rows():
    for i in range(1000, 200000):
        if i == 21000:
            ready.write_text("half-way")
            time.sleep(600)
        yield AssetRecord(uid=f"{i:032x}", caption=f"object {i} " + "x" * 200, mesh_path="",
                          source="objaverse", license="", attribution="", mesh_store="objaverse")

with ImportTransaction(root) as tx:
    tx.add_catalog_records(rows())
"""


def test_killed_import_is_rolled_back_when_the_catalog_is_next_opened(tmp_path: Path) -> None:
    root = tmp_path / "db"
    old = make_catalog(root, 3)
    before = (root / "catalog.sqlite").read_bytes()
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, str(root), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the import died before it was half-way"
            assert time.monotonic() < deadline, "the import did not get half-way in 60 s"
            time.sleep(0.05)
        # Half-way: 20,000 uncommitted rows, and the file already holds some of their pages.
        journal = root / "catalog.sqlite-journal"
        assert journal.is_file()
        assert (root / "catalog.sqlite").stat().st_size > len(before)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    db = AssetDatabase.open(root)  # SQLite rolls the hot journal back here
    assert len(db) == 3 and db.uids == [f"{i:032x}" for i in range(3)]
    assert db.manifest_hash == old.manifest_hash
    assert (root / "catalog.sqlite").read_bytes() == before and not journal.exists()
    # ... and the database takes the next import as if nothing had happened.
    more = make_catalog(root, 5)
    assert more.uids == [f"{i:032x}" for i in range(5)]


def test_keyboard_interrupt_mid_import_keeps_the_old_records(tmp_path: Path) -> None:
    root = tmp_path / "db"
    make_catalog(root, 4)
    before = (root / "catalog.sqlite").read_bytes()

    def rows() -> object:
        for i in range(100, 5000):
            if i == 4000:
                raise KeyboardInterrupt
            yield objaverse_record(i)

    with pytest.raises(KeyboardInterrupt):
        with ImportTransaction(root) as tx:
            tx.add_catalog_records(rows())
    assert (root / "catalog.sqlite").read_bytes() == before
    assert AssetDatabase.open(root).uids == [f"{i:032x}" for i in range(4)]
    # An interrupted import into a new folder leaves no folder at all.
    with pytest.raises(KeyboardInterrupt):
        with ImportTransaction(tmp_path / "new") as tx:
            tx.add_catalog_records(rows())
    assert not (tmp_path / "new").exists()


def test_a_second_writer_gets_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "db"
    make_catalog(root, 2)
    monkeypatch.setattr(catalog, "BUSY_TIMEOUT_S", 0.1)
    holder = sqlite3.connect(root / "catalog.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another import holds the write lock
    try:
        with pytest.raises(DatabaseError, match="another process is writing"):
            with ImportTransaction(root) as tx:
                tx.add_catalog_records([objaverse_record(9)])
        # Readers are not blocked by a writer that has not committed.
        assert AssetDatabase.open(root).uids == [f"{i:032x}" for i in range(2)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_read_only_catalog_is_read_and_annotations_stay_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "db"
    make_catalog(root, 3)
    before = (root / "catalog.sqlite").read_bytes()
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)  # read-only media
    db = AssetDatabase.open(root)
    uid = f"{1:032x}"
    assert db.get(uid).license == ""
    db.cache_annotations({uid: Provenance("CC0-1.0", '"One" by A, CC0-1.0, via Objaverse')})
    assert db.get(uid).license == "CC0-1.0" and db.records_at([1])[0].license == "CC0-1.0"
    assert db.get(f"{0:032x}").license == ""
    assert (root / "catalog.sqlite").read_bytes() == before  # nothing was written
    monkeypatch.undo()
    assert AssetDatabase.open(root).get(uid).license == ""  # the memory did not outlive it
    # Writable: the annotation is cached in the catalog, and the fingerprint is unchanged.
    writable = AssetDatabase.open(root)
    writable.cache_annotations({uid: Provenance("CC-BY-4.0", "credit")})
    reopened = AssetDatabase.open(root)
    assert reopened.get(uid).license == "CC-BY-4.0"
    assert reopened.manifest_hash == writable.manifest_hash


def test_fingerprint_chains_per_transaction_and_skips_no_ops(tmp_path: Path) -> None:
    root = tmp_path / "db"
    first = make_catalog(root, 2)
    # Independent recomputation: the empty fingerprint chained with the digest of the records.
    digest = hashlib.sha256(b"".join(catalog.record_bytes(objaverse_record(i)) for i in range(2)))
    assert first.manifest_hash == catalog.chain_fingerprint(
        catalog.empty_fingerprint(), digest.hexdigest()
    )
    assert first.generation == 1
    same = make_catalog(root, 2)  # the same records again: nothing changes
    assert same.manifest_hash == first.manifest_hash and same.generation == 1
    with ImportTransaction(root) as tx:
        tx.add_catalog_records([objaverse_record(1, "a new caption")])
    assert tx.database is not None
    changed = tx.database
    digest = hashlib.sha256(catalog.record_bytes(objaverse_record(1, "a new caption")))
    assert changed.manifest_hash == catalog.chain_fingerprint(
        first.manifest_hash, digest.hexdigest()
    )
    assert changed.generation == 2 and changed.row_of(f"{1:032x}") == 1


def test_inconsistent_or_foreign_catalogs_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "db"
    make_catalog(root, 3)
    conn = sqlite3.connect(root / "catalog.sqlite", isolation_level=None)
    conn.execute("UPDATE meta SET value = '5' WHERE key = 'count'")
    conn.close()
    with pytest.raises(DatabaseError, match="rows end at 2 but it says it holds 5"):
        AssetDatabase.open(root)
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / "catalog.sqlite")
    conn.execute("CREATE TABLE things (x)")
    conn.close()
    with pytest.raises(DatabaseError, match="cannot be read"):
        AssetDatabase.open(other)
    conn = sqlite3.connect(root / "catalog.sqlite", isolation_level=None)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    conn.close()
    with pytest.raises(DatabaseError, match="format '99'; this ra3d reads format 1"):
        AssetDatabase.open(root)
