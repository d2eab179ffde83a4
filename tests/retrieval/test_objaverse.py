"""The Objaverse + Cap3D catalog import: the streaming Cap3D reader and its bad rows, an import
that records every captioned uid and downloads nothing, mirrors, annotations, licences, re-imports
and interruptions. Never the network: downloads and annotations are injected fakes that fail the
test when they are not expected to be called."""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import trimesh

from ra3d.cli.db import main_db
from ra3d.retrieval.catalog import chain_fingerprint
from ra3d.retrieval.database import AssetDatabase, AssetRecord, ImportTransaction
from ra3d.retrieval.fetch import MirrorNotFoundError
from ra3d.retrieval.importers import AssetImportWarning, import_folder, import_objaverse
from ra3d.retrieval.importers import objaverse as objaverse_module
from ra3d.retrieval.importers.objaverse import Cap3DReport, iter_cap3d_rows, read_cap3d_captions
from ra3d.retrieval.records import DatabaseError

UIDS = ["0a1b2c3d4e5f60718293a4b5c6d7e8f9", "11112222333344445555666677778888", "ffff" * 8]


def hex_uid(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def write_cap3d(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A Cap3D-format CSV: no header, uid,caption, quoted by the csv module where needed."""
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    things = ["chair", "lamp", "car", "tree", "box", "robot", "vase", "boat"]
    return [(hex_uid(rng), f"3D model of a {rng.choice(things)}, number {i}") for i in range(n)]


def never_called(*args: object, **kwargs: object) -> dict:
    raise AssertionError(f"the network was called: {args} {kwargs}")


def glb_box(path: Path, extent: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(trimesh.creation.box(extents=(extent, 1.0, 2.0)).export(file_type="glb"))
    return path


# ------------------------------------------------------------------------------ the reader
def test_cap3d_reader_skips_and_counts_every_kind_of_bad_row(tmp_path: Path) -> None:
    good = [UIDS[0], UIDS[1], "ABCDEF" + "0" * 26, UIDS[2]]
    lines = [
        b"uid,caption",  # a header is skipped, not counted
        f'{good[0]},"A small box, made of wood."'.encode(),
        f"{good[1]},a big box, grey".encode(),  # unquoted comma: joined back
        b"",  # blank line: ignored
        f"{good[2]},an upper-case uid\x07with a bell".encode(),  # uid lower-cased, BEL cleaned
        f"{'1' * 32},\x00\x00".encode(),  # NUL bytes
        f"{'2' * 32},\x01\x02 \t".encode(),  # control-only
        f"{'3' * 32},\u200b\u200b".encode(),  # invisible-only
        f"{'4' * 32},".encode(),  # empty
        f"{'5' * 31},a short uid".encode(),  # invalid uid
        b"not-a-uid,a caption",  # invalid uid
        f"{'6' * 32}".encode(),  # no caption column
        f"{good[0]},the same uid again".encode(),  # duplicate: the first one is kept
        f"{'7' * 32},caf\xe9 latin-1".encode("latin-1"),  # not UTF-8
        f"{'8' * 32},{'x' * 1001}".encode(),  # too long
        f"{good[3]},the last good one".encode(),
    ]
    path = tmp_path / "cap3d.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    report = Cap3DReport()
    rows = list(iter_cap3d_rows(path, report))
    assert [(r.uid, r.caption) for r in rows] == [
        (good[0], "A small box, made of wood."),
        (good[1], "a big box, grey"),
        (good[2].lower(), "an upper-case uid with a bell"),
        (good[3], "the last good one"),
    ]
    assert report.skipped == Counter({
        "NUL bytes": 1,
        "empty or control-only caption": 3,
        "invalid uid": 2,
        "no caption column": 1,
        "duplicate uid": 1,
        "not UTF-8": 1,
        "caption over 1000 characters": 1,
    })  # fmt: skip
    assert report.rows == 14  # every non-blank row after the header
    assert report.examples["duplicate uid"] == ["line 13"]
    assert read_cap3d_captions(path) == {r.uid: r.caption for r in rows}


def test_a_binary_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.csv"
    path.write_bytes(bytes(range(128, 256)) * 8)
    with pytest.raises(DatabaseError, match="is not UTF-8 text"):
        list(iter_cap3d_rows(path))
    with pytest.raises(DatabaseError, match="is a directory"):
        list(iter_cap3d_rows(tmp_path))


# ------------------------------------------------------------------------------ the import
def test_catalog_import_records_every_captioned_uid_and_downloads_nothing(tmp_path: Path) -> None:
    rows = synthetic_rows(500)
    bad = [("g" * 32, "invalid"), (rows[3][0], "a duplicate"), ("9" * 32, "\x00")]
    cap3d = write_cap3d(tmp_path / "Cap3D_automated_Objaverse.csv", rows[:250] + bad + rows[250:])
    with pytest.warns(AssetImportWarning) as caught:
        result = import_objaverse(
            tmp_path / "db", cap3d_csv=cap3d, download_fn=never_called, annotations_fn=never_called
        )
    assert len(caught) == 1, "bad rows are reported in one summary line"
    summary = str(caught[0].message)
    assert "\n" not in summary and summary == result.summary
    assert "503 row(s) read, 500 recorded (500 new" in summary
    assert "3 bad row(s) skipped" in summary and "1 invalid uid (line 251)" in summary
    assert "1 duplicate uid (line 252)" in summary and "1 NUL bytes (line 253)" in summary
    db = result.database
    assert len(db) == 500 and result.added == 500 and result.imported == [u for u, _ in rows]
    # Independent check: every row of the file, read with the csv module, is in the catalog.
    for row, (uid, caption) in enumerate(rows):
        record = db.record_at(row)
        assert (record.uid, record.caption) == (uid, caption)
        assert record.mesh_store == "objaverse" and record.source == "objaverse"
        assert record.mesh_path == "" and record.license == ""  # no mirror, not annotated yet
    assert db.caption_rows(0, 500) == rows
    assert not (tmp_path / "db" / "models").exists()  # no mesh anywhere
    assert not (tmp_path / "db" / ".cache").exists()


def test_uids_limit_and_licence_filter(tmp_path: Path) -> None:
    rows = synthetic_rows(6)
    cap3d = write_cap3d(tmp_path / "cap3d.csv", rows)
    picked = [rows[4][0], rows[1][0].upper() + ".glb", "deadbeef" * 4]
    with pytest.warns(AssetImportWarning, match="1 no Cap3D caption"):
        result = import_objaverse(tmp_path / "a", cap3d_csv=cap3d, uids=picked)
    assert result.database.uids == [rows[1][0], rows[4][0]]  # CSV order, uids normalised
    assert result.skipped == [("deadbeef" * 4, "no Cap3D caption")]
    assert import_objaverse(tmp_path / "b", cap3d_csv=cap3d, limit=2).database.uids == [
        rows[0][0], rows[1][0]
    ]  # fmt: skip
    notes = {rows[0][0]: {"license": "by"}, rows[1][0]: {"license": "cc0", "name": "Cube"}}
    calls: list[list[str]] = []

    def annotations_fn(uids: list[str]) -> dict:
        calls.append(list(uids))
        return {u: notes[u] for u in uids if u in notes}

    # --limit takes the first captioned uids in CSV order, then the licence filter drops CC-BY.
    with pytest.warns(AssetImportWarning, match="licence CC-BY-4.0 not allowed"):
        filtered = import_objaverse(tmp_path / "c", cap3d_csv=cap3d, limit=3,
                                    allowed_licenses=["CC0-1.0"], annotations_fn=annotations_fn)  # fmt: skip
    assert calls == [[rows[0][0], rows[1][0], rows[2][0]]]
    assert filtered.database.uids == [rows[1][0]]
    kept = filtered.database.get(rows[1][0])
    assert kept.license == "CC0-1.0"  # from the cached annotation
    assert kept.attribution.startswith('"Cube" by unknown author, https://sketchfab.com/3d-models/')
    assert "unknown" in dict(filtered.skipped).get(rows[2][0], "")  # no annotation: refused


def test_annotations_are_cached_and_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    rows = synthetic_rows(20, seed=3)
    cap3d = write_cap3d(tmp_path / "cap3d.csv", rows)

    def annotations_fn(uids: list[str]) -> dict:
        return {
            u: {"license": "by-sa", "name": f"Thing {i}", "user": {"displayName": "Ann"},
                "viewerUrl": f"https://sketchfab.com/3d-models/{u}", "tags": [{"name": "old"}]}
            for i, u in enumerate(uids)
        }  # fmt: skip

    plain = import_objaverse(tmp_path / "plain", cap3d_csv=cap3d).database
    noted = import_objaverse(
        tmp_path / "noted", cap3d_csv=cap3d, annotations=True, annotations_fn=annotations_fn
    ).database
    assert noted.manifest_hash == plain.manifest_hash  # annotations key nothing
    first = noted.get(rows[0][0])
    assert first.license == "CC-BY-SA-4.0" and first.tags == ["old"]
    assert first.attribution == (
        f'"Thing 0" by Ann, https://sketchfab.com/3d-models/{rows[0][0]}, CC-BY-SA-4.0, via '
        "Objaverse"
    )
    assert noted.summary()["annotations"] == 20 and plain.summary()["annotations"] == 0
    assert noted.summary()["licenses"] == {"CC-BY-SA-4.0": 20}
    assert plain.summary()["licenses"] == {"not fetched yet": 20}


def test_reimport_is_a_no_op_and_updates_in_place(tmp_path: Path) -> None:
    rows = synthetic_rows(100, seed=5)
    db1 = import_objaverse(
        tmp_path / "db", cap3d_csv=write_cap3d(tmp_path / "1.csv", rows)
    ).database
    again = import_objaverse(tmp_path / "db", cap3d_csv=tmp_path / "1.csv")
    assert (again.added, again.replaced, again.unchanged) == (0, 0, 100)
    assert again.database.manifest_hash == db1.manifest_hash  # caches keyed by it stay valid
    changed = [(u, c + " (revised)") if i % 20 == 0 else (u, c) for i, (u, c) in enumerate(rows)]
    extra = synthetic_rows(10, seed=6)
    result = import_objaverse(tmp_path / "db", cap3d_csv=write_cap3d(tmp_path / "2.csv",
                                                                     extra + changed))  # fmt: skip
    assert (result.added, result.replaced, result.unchanged) == (10, 5, 95)
    db = result.database
    assert len(db) == 110 and db.manifest_hash != db1.manifest_hash
    # Old rows keep their row numbers (the caption index's rows); new uids are appended.
    assert [db.row_of(u) for u, _ in rows] == list(range(100))
    assert [db.row_of(u) for u, _ in extra] == list(range(100, 110))
    assert db.record_at(20).caption.endswith("(revised)")


def test_catalog_import_keeps_meshes_already_stored(tmp_path: Path) -> None:
    """Re-importing all of Cap3D over a database whose objects were downloaded before (stored
    files) keeps those files and their provenance; only the caption is updated."""
    src = tmp_path / "src"
    glb_box(src / f"{UIDS[0]}.glb", 1.0)
    with (tmp_path / "c.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["path", "caption", "uid", "license", "source"],
                                 [f"{UIDS[0]}.glb", "old", UIDS[0], "CC-BY-4.0", "objaverse"]])  # fmt: skip
    root = tmp_path / "db"
    import_folder(src, tmp_path / "c.csv", root)
    before = AssetDatabase.open(root).get(UIDS[0])
    cap3d = write_cap3d(tmp_path / "cap3d.csv", [(UIDS[0], "new caption"), (UIDS[1], "other")])
    db = import_objaverse(root, cap3d_csv=cap3d).database
    after = db.get(UIDS[0])
    assert after.caption == "new caption" and after.mesh_store == "database"
    assert after.mesh_path == before.mesh_path and db.mesh_path(UIDS[0]).is_file()
    assert after.license == "CC-BY-4.0"
    assert db.get(UIDS[1]).mesh_store == "objaverse"


def test_interrupted_catalog_import_leaves_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = synthetic_rows(50, seed=7)
    root = tmp_path / "db"
    old = import_objaverse(root, cap3d_csv=write_cap3d(tmp_path / "1.csv", rows)).database
    before_hash, before_bytes = old.manifest_hash, (root / "catalog.sqlite").read_bytes()
    real = objaverse_module.iter_cap3d_rows

    def ctrl_c_half_way(path: Path, report: Cap3DReport) -> object:
        for i, row in enumerate(real(path, report)):
            if i == 3000:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(objaverse_module, "iter_cap3d_rows", ctrl_c_half_way)
    big = write_cap3d(tmp_path / "2.csv", synthetic_rows(5000, seed=8))
    with pytest.raises(KeyboardInterrupt):
        import_objaverse(root, cap3d_csv=big)
    db = AssetDatabase.open(root)
    assert len(db) == 50 and db.manifest_hash == before_hash
    assert db.caption_rows(0, 100) == rows  # the old records, and none of the partial ones
    assert (root / "catalog.sqlite").read_bytes() == before_bytes
    assert sorted(p.name for p in root.iterdir()) == ["catalog.sqlite"]  # no journal, no temp


def test_mirror_gives_objaverse_paths_and_is_recorded(tmp_path: Path) -> None:
    rows = synthetic_rows(4, seed=9)
    mirror = tmp_path / "objaverse" / "hf-objaverse-v1"
    glb_box(mirror / "glbs" / "000-007" / f"{rows[1][0]}.glb", 1.0)
    glb_box(mirror / "glbs" / "000-123" / f"{rows[2][0]}.glb", 2.0)
    cap3d = write_cap3d(tmp_path / "cap3d.csv", rows)
    # No object-paths.json.gz: the paths of the files the mirror holds.
    db = import_objaverse(tmp_path / "a", cap3d_csv=cap3d, mirror=tmp_path / "objaverse").database
    assert [r.mesh_path for r in db] == [
        "", f"glbs/000-007/{rows[1][0]}.glb", f"glbs/000-123/{rows[2][0]}.glb", ""
    ]  # fmt: skip
    assert db.mirror == mirror.resolve()
    # With Objaverse's object-paths.json.gz the path of every object, held or not.
    paths = {u: f"glbs/000-{i:03d}/{u}.glb" for i, (u, _) in enumerate(rows)}
    with gzip.open(mirror / "object-paths.json.gz", "wt") as f:
        json.dump(paths, f)
    db = import_objaverse(tmp_path / "b", cap3d_csv=cap3d, mirror=mirror).database
    assert [r.mesh_path for r in db] == [paths[u] for u, _ in rows]
    with pytest.raises(MirrorNotFoundError, match="glbs/<group>/<uid>.glb"):
        import_objaverse(tmp_path / "c", cap3d_csv=cap3d, mirror=tmp_path / "nothing-here")
    assert not (tmp_path / "c").exists()


def test_download_prefetches_validates_and_keeps_only_good_meshes(tmp_path: Path) -> None:
    home = tmp_path / "home" / ".objaverse" / "hf-objaverse-v1" / "glbs" / "000-000"
    glb_box(home / f"{UIDS[0]}.glb", 3.0)
    (home / f"{UIDS[1]}.glb").write_bytes(b"glTF broken download")
    cap3d = write_cap3d(tmp_path / "cap3d.csv", [(u, f"object {i}") for i, u in enumerate(UIDS)])
    calls = []

    def download_fn(uids: list[str], download_processes: int) -> dict[str, str]:
        calls.append((list(uids), download_processes))
        return {u: str(home / f"{u}.glb") for u in uids if (home / f"{u}.glb").is_file()}

    with pytest.warns(AssetImportWarning) as caught:
        result = import_objaverse(tmp_path / "db", cap3d_csv=cap3d, download=True,
                                  download_fn=download_fn, download_processes=3)  # fmt: skip
    assert calls == [(UIDS, 3)]
    assert "2 mesh(es) could not be downloaded or validated" in str(caught[0].message)
    db = result.database
    assert len(db) == 3  # the catalog keeps every captioned uid
    cache = db.mesh_cache_dir
    assert sorted(p.name for p in cache.iterdir()) == [f"{UIDS[0]}.glb"]
    assert (cache / f"{UIDS[0]}.glb").read_bytes() == (home / f"{UIDS[0]}.glb").read_bytes()
    reasons = dict(result.skipped)
    assert "mesh invalid" in reasons[UIDS[1]] and "Objaverse returned no file" in reasons[UIDS[2]]


def test_import_transaction_refuses_files_as_catalog_records(tmp_path: Path) -> None:
    record = AssetRecord(uid="a", caption="a", mesh_path="a.obj", source="s", license="",
                         attribution="")  # fmt: skip
    with pytest.raises(DatabaseError, match="names a mesh file"):
        with ImportTransaction(tmp_path / "db") as tx:
            tx.add_catalog_records([record])
    assert not (tmp_path / "db").exists()


def test_fingerprint_chain_is_what_the_catalog_says() -> None:
    assert chain_fingerprint("a", "b") != chain_fingerprint("b", "a")


# ------------------------------------------------------------------------------ the command
def test_cli_imports_the_whole_csv_and_info_reports_meshes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = synthetic_rows(300, seed=11)
    cap3d = write_cap3d(tmp_path / "cap3d.csv", [*rows, ("zz", "bad uid")])
    mirror = tmp_path / "mirror"
    for u, _ in rows[:3]:
        glb_box(mirror / "glbs" / "000-001" / f"{u}.glb", 1.0)
    db = tmp_path / "db"
    argv = ["import", "objaverse", "--cap3d", str(cap3d), "--db", str(db), "--mirror", str(mirror)]
    assert main_db(argv) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "1 bad row(s) skipped: 1 invalid uid (line 301)" in warnings[0]
    assert "imported 300 asset(s)" in captured.out
    assert main_db(["info", "--db", str(db)]) == 0
    info = capsys.readouterr().out
    assert "assets:     300" in info and "objaverse (300)" in info
    assert "not fetched yet (300)" in info
    assert "meshes:     3 of 300 on this machine (1.0%)" in info and str(mirror.resolve()) in info
    assert "catalog.sqlite" in info
    code = main_db(["import", "objaverse", "--cap3d", str(cap3d), "--db", str(tmp_path / "x"),
                    "--mirror", str(tmp_path / "none")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ra3d db: error:") and "does not exist" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()
