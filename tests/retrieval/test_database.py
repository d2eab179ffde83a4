"""AssetDatabase, the shipped starter library, the importers and ``ra3d db``."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ra3d.cli.db import main_db
from ra3d.representations.mesh import load_mesh
from ra3d.retrieval import catalog as catalog_module
from ra3d.retrieval import database as database_module
from ra3d.retrieval.database import (
    AssetDatabase,
    AssetRecord,
    DatabaseError,
    DatabaseNotFoundError,
    default_database,
    safe_relative_path,
    serialise_manifest,
)
from ra3d.retrieval.importers import (
    AssetImportWarning,
    UnsafeArchiveError,
    import_folder,
    import_sh3f,
    parse_java_properties,
)

TEDDY_UID = "blend-swap-cc-0-teddybear"

CUBE_V = [(x, y, z) for x in (0.0, 2.0) for y in (0.0, 1.0) for z in (0.0, 3.0)]
CUBE_F = [  # 12 outward triangles over the 8 corners above (1-based OBJ indices)
    (1, 3, 4), (1, 4, 2), (5, 6, 8), (5, 8, 7), (1, 2, 6), (1, 6, 5),
    (3, 7, 8), (3, 8, 4), (1, 5, 7), (1, 7, 3), (2, 4, 8), (2, 8, 6),
]  # fmt: skip


def cube_obj(mtl: str | None = None, material: str = "wood") -> str:
    lines = [f"mtllib {mtl}", f"usemtl {material}"] if mtl else []
    lines += [f"v {x} {y} {z}" for x, y, z in CUBE_V]
    lines += ["vt 0 0", "vt 1 0", "vt 1 1"]
    lines += [f"f {a}/1 {b}/2 {c}/3" for a, b, c in CUBE_F]
    return "\n".join(lines) + "\n"


def write_textured_cube(folder: Path, stem: str, texture: str) -> None:
    """meshes/<stem>.obj + .mtl with its texture at meshes/<texture> (may climb with ../)."""
    (folder / "meshes").mkdir(parents=True, exist_ok=True)
    tex = folder / "meshes" / texture
    tex.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), (200, 30, 40), np.uint8)).save(tex)
    (folder / "meshes" / f"{stem}.mtl").write_text(f"newmtl wood\nKd 1 1 1\nmap_Kd {texture}\n")
    (folder / "meshes" / f"{stem}.obj").write_text(cube_obj(f"{stem}.mtl"))


def tree_snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (to prove nothing changed)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


# ------------------------------------------------------------------------------ starter library


def test_starter_library_is_real_cc0_and_small() -> None:
    db = AssetDatabase.builtin()
    assert 50 <= len(db) <= 150
    manifest = db.root / "manifest.jsonl"
    assert db.manifest_hash == hashlib.sha256(manifest.read_bytes()).hexdigest()
    total = sum(p.stat().st_size for p in db.root.rglob("*") if p.is_file())
    assert total <= 20_000_000, f"starter library is {total} bytes"
    assert (db.root / "LICENSE.txt").is_file() and (db.root / "ATTRIBUTION.md").is_file()
    attribution_md = (db.root / "ATTRIBUTION.md").read_text()
    for rec in db:
        assert rec.license == "CC0-1.0"
        assert rec.source.startswith("sh3f:") and " by " in rec.attribution
        assert rec.url.startswith("http://www.blendswap.com/blends/view/")
        assert db.mesh_path(rec.uid).is_file()
        assert rec.uid in attribution_md
        # Independent licence check: the author's own Blend Swap licence file travels with the
        # model and states Creative Commons Zero.
        folder = db.mesh_path(rec.uid).parent
        licences = [p for p in folder.iterdir() if "licen" in p.name.lower()]
        assert licences, f"{rec.uid} lacks its licence file"
        assert any(
            re.search(r"Creative Commons Zero", p.read_text(errors="replace")) for p in licences
        )
    assert db.missing_meshes() == []


def test_starter_library_has_the_teddy_bear() -> None:
    db = AssetDatabase.builtin()
    teddy = db.get(TEDDY_UID)
    assert teddy.caption.startswith("a teddy bear")
    assert "Manitislate" in teddy.attribution and teddy.title == "Burlap Bear"
    assert db.mesh_path(TEDDY_UID).name == "teddyBear.obj"


def test_every_starter_mesh_loads() -> None:
    db = AssetDatabase.builtin()
    for rec in db:
        mesh = load_mesh(db.mesh_path(rec.uid), max_texture_size=8)
        assert mesh.num_faces > 0
        # load_mesh fits the mesh in a sphere of radius 0.5 (farthest vertex exactly on it).
        assert float(mesh.vertices.norm(dim=-1).max()) == pytest.approx(0.5, rel=1e-4)


def test_starter_models_are_upright_like_their_catalog_dimensions() -> None:
    """Models with a catalog ``modelRotation`` were rotated on import: their bounding box must
    have the catalog's width : height : depth proportions (x : y : z, Y up)."""
    db = AssetDatabase.builtin()
    expected = {  # width, height, depth from PluginFurnitureCatalog.properties
        "blend-swap-cc-0-headphones": (18.9, 8.2, 20.0),
        "blend-swap-cc-0-iphone": (5.9, 0.91, 11.7),
    }
    checked = 0
    for uid, whd in expected.items():
        if uid not in db:
            continue
        mesh = trimesh.load(db.mesh_path(uid), force="mesh")
        extent = mesh.bounds[1] - mesh.bounds[0]
        np.testing.assert_allclose(extent / extent.max(), np.array(whd) / max(whd), atol=0.02)
        checked += 1
    assert checked >= 1


# ------------------------------------------------------------------------------ manifest


def make_records(root: Path, uids: list[str]) -> list[AssetRecord]:
    records = []
    for uid in uids:
        (root / "models" / uid).mkdir(parents=True, exist_ok=True)
        (root / "models" / uid / "m.obj").write_text(cube_obj())
        records.append(
            AssetRecord(
                uid=uid,
                caption=f"a {uid}, ünïcode",
                mesh_path=f"models/{uid}/m.obj",
                source="test",
                license="CC0-1.0",
                attribution=f"{uid} by tester",
                category="Toys",
                tags=["a", "b"],
            )
        )
    return records


def manifest_line(record: AssetRecord) -> str:
    """A manifest line written out field by field (independent of serialise_manifest)."""
    fields = {
        "uid": record.uid, "caption": record.caption, "mesh_path": record.mesh_path,
        "source": record.source, "license": record.license, "attribution": record.attribution,
        "category": record.category, "tags": record.tags, "title": record.title, "url": record.url,
    }  # fmt: skip
    return json.dumps(fields, sort_keys=True, ensure_ascii=False)


def jsonl_bytes(records: list[AssetRecord]) -> bytes:
    lines = ['{"ra3d_asset_manifest": 1}', *(manifest_line(r) for r in records)]
    return ("\n".join(lines) + "\n").encode()


def test_catalog_round_trip_and_hash(tmp_path: Path) -> None:
    records = make_records(tmp_path, ["chair", "bear", "lamp"])
    created = AssetDatabase.create(tmp_path, records)
    assert (tmp_path / "catalog.sqlite").is_file() and not (tmp_path / "manifest.jsonl").exists()
    opened = AssetDatabase.open(tmp_path)
    assert list(opened.records) == records and opened.uids == ["chair", "bear", "lamp"]
    assert len(opened) == 3 and list(opened) == records and "bear" in opened
    assert "sofa" not in opened and 3 not in opened
    # Row lookups (what retrieval does after the vector search) keep the order asked for.
    assert opened.record_at(1) == records[1] and opened.records[2] == records[2]
    assert opened.records_at([2, 0, 2]) == [records[2], records[0], records[2]]
    assert opened.records[::-1] == records[::-1]
    assert opened.row_of("lamp") == 2 and opened.row_of("sofa") is None
    with pytest.raises(IndexError, match="outside the database"):
        opened.records_at([3])
    assert opened.caption_rows(1, 10) == [(r.uid, r.caption) for r in records[1:]]
    assert opened.caption_rows(5, 9) == []
    # The fingerprint of a created catalog is the sha256 of the same records' JSONL manifest.
    assert opened.manifest_hash == created.manifest_hash
    assert opened.manifest_hash == hashlib.sha256(jsonl_bytes(records)).hexdigest()
    assert opened.mesh_path("bear") == (tmp_path / "models/bear/m.obj").resolve()
    assert opened.mesh_path("bear").is_absolute()
    with pytest.raises(KeyError, match="no asset with uid 'sofa'"):
        opened.get("sofa")
    # The cache of a writable database lives inside it.
    assert opened.cache_dir == tmp_path.resolve() / ".cache" and opened.cache_dir.is_dir()
    # A database crosses process boundaries by pickling (the connection is reopened there).
    clone = pickle.loads(pickle.dumps(opened))
    assert clone.get("lamp") == records[2] and clone.manifest_hash == opened.manifest_hash


def test_open_reports_missing_and_corrupt_databases(tmp_path: Path) -> None:
    with pytest.raises(DatabaseNotFoundError, match="does not exist"):
        AssetDatabase.open(tmp_path / "nope")
    with pytest.raises(DatabaseNotFoundError, match="no catalog.sqlite"):
        AssetDatabase.open(tmp_path)
    # A JSONL database (the format before the catalog) is still checked line by line.
    legacy = tmp_path / "legacy"
    records = make_records(legacy, ["a"])
    good = jsonl_bytes(records).decode()
    (legacy / "manifest.jsonl").write_text(good + '{"uid": "b", "caption": \n')
    with pytest.raises(DatabaseError, match="line 3"):
        AssetDatabase.open(legacy)
    (legacy / "manifest.jsonl").write_text(good + good.splitlines()[1] + "\n")
    with pytest.raises(DatabaseError, match="duplicate uid 'a'"):
        AssetDatabase.open(legacy)
    evil = good.replace("models/a/m.obj", "../../etc/passwd")
    (legacy / "manifest.jsonl").write_text(evil)
    with pytest.raises(DatabaseError, match="escapes"):
        AssetDatabase.open(legacy)
    # A damaged catalog is one error that names the fix.
    (tmp_path / "catalog.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(DatabaseError, match="cannot be read.*re-import"):
        AssetDatabase.open(tmp_path)


def test_create_rejects_missing_meshes_and_bad_uids(tmp_path: Path) -> None:
    rec = make_records(tmp_path, ["ok"])[0]
    with pytest.raises(DatabaseNotFoundError, match="do not exist"):
        AssetDatabase.create(tmp_path, [AssetRecord(**{**rec.to_json(), "mesh_path": "x.obj"})])
    with pytest.raises(DatabaseError, match="invalid asset uid"):
        AssetDatabase.create(tmp_path, [AssetRecord(**{**rec.to_json(), "uid": "../up"})])
    with pytest.raises(DatabaseError, match="duplicate asset uids"):
        AssetDatabase.create(tmp_path, [rec, rec])
    for bad in ("/abs/x.obj", "C:/x.obj", "a/../../x.obj", ""):
        with pytest.raises(DatabaseError):
            safe_relative_path(bad)
    assert safe_relative_path("a/./b\\c.obj").as_posix() == "a/b/c.obj"
    assert not (tmp_path / "catalog.sqlite").exists()


def test_atomic_catalog_write_survives_injected_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    AssetDatabase.create(tmp_path, make_records(tmp_path, ["a"]))
    before = (tmp_path / "catalog.sqlite").read_bytes()
    more = make_records(tmp_path, ["a", "b", "c"])

    def exploding_replace(src: str, dst: str) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(database_module.os, "replace", exploding_replace)
    with pytest.raises(OSError, match="disk pulled out"):
        AssetDatabase.create(tmp_path, more)
    monkeypatch.undo()
    assert (tmp_path / "catalog.sqlite").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".catalog-")] == []
    assert AssetDatabase.open(tmp_path).uids == ["a"]


def test_jsonl_database_is_read_and_migrated_by_an_import(tmp_path: Path) -> None:
    """A JSONL database from before the catalog opens as it was (same records, same hash, so
    the caches keyed by it stay valid); the first import moves it into catalog.sqlite."""
    root = tmp_path / "db"
    records = make_records(root, ["a", "b"])
    data = jsonl_bytes(records)
    (root / "manifest.jsonl").write_bytes(data)
    db = AssetDatabase.open(root)
    assert db.format == "jsonl" and list(db) == records
    assert db.manifest_hash == hashlib.sha256(data).hexdigest()
    # Loaded into a catalog in the database's cache, keyed by the manifest hash; reopening
    # reuses it instead of parsing the manifest again.
    assert db.catalog_path == root.resolve() / ".cache" / f"catalog-{db.manifest_hash[:16]}.sqlite"
    assert AssetDatabase.open(root).catalog_path == db.catalog_path
    assert not (root / "catalog.sqlite").exists() and (root / "manifest.jsonl").read_bytes() == data

    src = tmp_path / "src"
    src.mkdir()
    (src / "c.obj").write_text(cube_obj())
    (src / "b.obj").write_text(cube_obj())
    write_csv(tmp_path / "new.csv", [["c.obj", "a c"], ["b.obj", "new b"]])
    migrated = import_folder(src, tmp_path / "new.csv", root).database
    assert migrated.format == "sqlite" and (root / "catalog.sqlite").is_file()
    assert not (root / "manifest.jsonl").exists()
    assert (root / "manifest.jsonl.migrated").read_bytes() == data  # kept, never read again
    assert migrated.uids == ["a", "b", "c"]  # old rows first, in their order; b replaced in place
    assert [r.caption for r in migrated] == [records[0].caption, "new b", "a c"]
    assert migrated.manifest_hash != db.manifest_hash
    assert all(migrated.mesh_path(u).is_file() for u in migrated.uids)


def test_default_database_and_builtin_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RA3D_DATABASE", raising=False)
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "cache"))
    builtin = default_database()
    assert builtin.root == AssetDatabase.builtin().root and TEDDY_UID in builtin
    # The shipped library never writes into the installed package.
    assert builtin.cache_dir == tmp_path / "cache" / builtin.manifest_hash[:16]
    assert not (builtin.root / ".cache").exists()
    # ... also when a command names it by its path (`--db ra3d/assets/starter`).
    by_path = AssetDatabase.open(builtin.root)
    assert by_path.manifest_hash == builtin.manifest_hash
    assert by_path.cache_dir == builtin.cache_dir
    assert not (builtin.root / ".cache").exists()
    db_root = tmp_path / "db"
    AssetDatabase.create(db_root, make_records(db_root, ["x"]))
    monkeypatch.setenv("RA3D_DATABASE", str(db_root))
    assert default_database().uids == ["x"]


def test_starter_library_loads_into_a_catalog_in_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped JSONL is the source; its catalog is built once in the user's cache, the
    package is never written, and the records read back serialise to the shipped bytes."""
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "cache"))
    package = AssetDatabase.builtin().root
    before = tree_snapshot(package)
    db = AssetDatabase.builtin()
    shipped = (package / "manifest.jsonl").read_bytes()
    assert db.format == "jsonl" and db.manifest_hash == hashlib.sha256(shipped).hexdigest()
    assert db.catalog_path == tmp_path / "cache" / db.manifest_hash[:16] / (
        f"catalog-{db.manifest_hash[:16]}.sqlite"
    )
    assert serialise_manifest(list(db)) == shipped
    assert tree_snapshot(package) == before
    # A cache that cannot be written costs only speed: the catalog is then built in memory.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("RA3D_CACHE_DIR", str(blocked))
    in_memory = AssetDatabase.builtin()
    assert in_memory.catalog_path is None and len(in_memory) == len(db)
    assert in_memory.get(TEDDY_UID) == db.get(TEDDY_UID)


# ------------------------------------------------------------------------------ folder import


def test_folder_import_skips_broken_meshes_and_copies_dependencies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_textured_cube(src, "crate", "tex/crate.png")
    write_textured_cube(src, "barrel", "../textures/barrel.png")
    (src / "plain.obj").write_text(cube_obj())
    (src / "broken.obj").write_text("this is not a mesh\nf 1 2 3\n")
    (src / "corrupt.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    (src / "uncaptioned.obj").write_text(cube_obj())
    captions = write_csv(
        tmp_path / "captions.csv",
        [
            ["path", "caption", "license", "tags"],
            ["meshes/crate.obj", "a red wooden crate", "CC0-1.0", "box;storage"],
            ["plain.obj", "a plain block", "", ""],
            ["meshes/barrel.obj", "a barrel", "", ""],
            ["broken.obj", "a broken thing", "", ""],
            ["corrupt.glb", "a corrupt thing", "", ""],
            ["missing.obj", "a missing thing", "", ""],
        ],
    )
    out = tmp_path / "db"
    with pytest.warns(AssetImportWarning) as caught:
        result = import_folder(src, captions, out, license="CC-BY-4.0", attribution="me")
    message = str(caught[0].message)
    assert len(caught) == 1, "all skipped files must be reported in one warning"
    for name in ("broken.obj", "corrupt.glb", "missing.obj", "uncaptioned.obj"):
        assert name in message
    # A texture outside the mesh's own folder (../) is refused (issue 17: meshes are untrusted).
    assert "barrel.obj" in message
    assert "'../textures/barrel.png' leaves the mesh's folder" in message
    assert result.imported == ["meshes-crate", "plain"]
    db = AssetDatabase.open(out)
    assert db.uids == ["meshes-crate", "plain"]
    crate = db.get("meshes-crate")
    assert crate.caption == "a red wooden crate" and crate.tags == ["box", "storage"]
    assert crate.license == "CC0-1.0" and db.get("plain").license == "CC-BY-4.0"
    assert db.get("plain").attribution == "me" and crate.source == "folder:src"
    # MTL and textures travel with the OBJ, keeping their relative layout.
    assert crate.mesh_path == "models/meshes-crate/crate.obj"
    crate_dir = db.root / "models" / "meshes-crate"
    assert sorted(p.relative_to(crate_dir).as_posix() for p in crate_dir.rglob("*.*")) == [
        "crate.mtl", "crate.obj", "tex/crate.png"
    ]  # fmt: skip
    assert not (db.root / "models" / "meshes-barrel").exists()
    # The imported mesh is the cube we wrote: same bounding box, texture colour found.
    mesh = load_mesh(db.mesh_path("meshes-crate"), up_axis="z", normalize=False)
    np.testing.assert_allclose(mesh.vertices.min(0).values.numpy(), [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(mesh.vertices.max(0).values.numpy(), [2, 1, 3], atol=1e-6)
    assert mesh.texture is not None
    np.testing.assert_allclose(
        mesh.texture.reshape(-1, 3).mean(0).numpy(), np.array([200, 30, 40]) / 255, atol=0.02
    )
    assert not any(p.name.startswith(".staging-") for p in out.iterdir())


def test_folder_import_merges_and_replaces(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "one" / f"{name}.obj").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "one" / f"{name}.obj").write_text(cube_obj())
    write_csv(tmp_path / "one.csv", [["a.obj", "first a"], ["b.obj", "first b"]])
    out = tmp_path / "db"
    import_folder(tmp_path / "one", tmp_path / "one.csv", out)
    old_b_dir = out / Path(AssetDatabase.open(out).get("b").mesh_path).parent
    for name in ("b", "c"):
        (tmp_path / "two" / f"{name}.obj").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "two" / f"{name}.obj").write_text(cube_obj())
    write_csv(tmp_path / "two.csv", [["b", "second b"], ["c.obj", "first c"]])  # "b": bare uid
    result = import_folder(tmp_path / "two", tmp_path / "two.csv", out)
    db = result.database
    assert db.uids == ["a", "b", "c"]
    assert [r.caption for r in db] == ["first a", "second b", "first c"]
    assert db.get("b").source == "folder:two"
    assert not old_b_dir.exists(), "the replaced asset's old files are removed after the commit"
    assert all(db.mesh_path(u).is_file() for u in db.uids)
    assert {p.name for p in (out / "models").iterdir()} == {
        Path(r.mesh_path).parent.name for r in db
    }


@pytest.mark.parametrize("failure", [RuntimeError("validator crashed"), KeyboardInterrupt()])
def test_interrupted_import_leaves_previous_database_intact(
    tmp_path: Path, failure: BaseException
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.obj").write_text(cube_obj())
    write_csv(tmp_path / "first.csv", [["a.obj", "an a"]])
    out = tmp_path / "db"
    with pytest.warns(AssetImportWarning, match="no caption"):
        import_folder(src, tmp_path / "first.csv", out)
    before = tree_snapshot(out)
    write_csv(tmp_path / "second.csv", [["a.obj", "new a"], ["b.obj", "a b"], ["c.obj", "a c"]])
    calls = []

    def validate_then_fail(path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:  # half-way: the replacement of "a" is already staged
            raise failure

    with pytest.raises(type(failure)):
        import_folder(src, tmp_path / "second.csv", out, validate=validate_then_fail)
    assert tree_snapshot(out) == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    db = AssetDatabase.open(out)
    assert db.uids == ["a"] and db.get("a").caption == "an a"


def test_failure_at_commit_rolls_back_moved_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.obj").write_text(cube_obj())
    (src / "b.obj").write_text(cube_obj())
    write_csv(tmp_path / "first.csv", [["a.obj", "an a"]])
    out = tmp_path / "db"
    with pytest.warns(AssetImportWarning, match="no caption"):
        import_folder(src, tmp_path / "first.csv", out)
    before = tree_snapshot(out)
    write_csv(tmp_path / "second.csv", [["a.obj", "new a"], ["b.obj", "a b"]])

    def crash_at_commit(conn: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(catalog_module, "commit", crash_at_commit)
    with pytest.raises(OSError, match="power cut"):
        import_folder(src, tmp_path / "second.csv", out, validate=lambda p: None)
    monkeypatch.undo()
    assert tree_snapshot(out) == before
    assert AssetDatabase.open(out).uids == ["a"]


def test_folder_import_rejects_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.obj").write_text(cube_obj())
    with pytest.raises(DatabaseNotFoundError, match="captions CSV"):
        import_folder(tmp_path / "src", tmp_path / "none.csv", tmp_path / "db")
    write_csv(tmp_path / "c.csv", [["name", "caption"], ["a.obj", "x"]])
    with pytest.raises(DatabaseError, match="path column"):
        import_folder(tmp_path / "src", tmp_path / "c.csv", tmp_path / "db")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    write_csv(tmp_path / "ok.csv", [["a.obj", "x"]])
    with pytest.raises(DatabaseError, match="non-empty folder"):
        import_folder(tmp_path / "src", tmp_path / "ok.csv", tmp_path / "junk")
    assert [p.name for p in (tmp_path / "junk").iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------ sh3f import

BLENDSWAP_LICENCE_TXT = """Thank you for downloading "Burlap Bear" by manitislate
Released under
Creative Commons Zero (Public Domain)
Downloaded from http://www.blendswap.com/blends/view/759
"""

CATALOG = r"""# test catalog
id=Test#Catalog
name=Test CC-0
license=Public domain
provider=tests

id#1=Test CC-0#teddyBear
name#1=Teddy bear
tags#1=Blend Swap, Toy, Baby
category#1=Bedroom
model#1=/test/teddyBear/teddyBear.obj
multiPartModel#1=true
creator#1=Manitislate

id#2=Test CC-0#phone
name#2=Phone \u00e9l\
  egant
tags#2=Blend Swap, Electronics
category#2=Miscellaneous
model#2=/test/phone.obj
multiPartModel#2=false
modelRotation#2=0 0 1 -1 0 0 0 -1 0
creator#2=Someone

id#3=Test CC-0#ghost
name#3=Ghost
tags#3=Blend Swap
category#3=Miscellaneous
model#3=/test/ghost/ghost.obj
multiPartModel#3=true
creator#3=Nobody
"""


def build_sh3f(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    png = tmp_png_bytes()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PluginFurnitureCatalog.properties", CATALOG.encode("latin-1"))
        zf.writestr("LICENSE.TXT", "public domain")
        zf.writestr("test/teddyBear/teddyBear.obj", cube_obj("teddyBear.mtl"))
        zf.writestr("test/teddyBear/teddyBear.mtl", "newmtl wood\nmap_Kd teddy.jpg\n")
        zf.writestr("test/teddyBear/teddy.jpg", png)
        zf.writestr("test/teddyBear/BLENDSWAP_LICENSE.txt", BLENDSWAP_LICENCE_TXT)
        zf.writestr("test/phone.obj", cube_obj())
        zf.writestr("test/unrelated.obj", cube_obj())
        zf.writestr("test/ghost/ghost.obj", "not a mesh at all\n")
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def tmp_png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((2, 2, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_java_properties_parser() -> None:
    props = parse_java_properties(
        "# comment\n! also\nkey = value\nname#1:Caf\\u00e9 \\\n   au lait\nspaced\\ key x\n"
        "url=http\\://x\\=y\nempty=\n"
    )
    assert props == {
        "key": "value",
        "name#1": "Café au lait",
        "spaced key": "x",
        "url": "http://x=y",
        "empty": "",
    }


def test_sh3f_import(tmp_path: Path) -> None:
    sh3f = build_sh3f(tmp_path / "test.sh3f")
    out = tmp_path / "db"
    with pytest.warns(AssetImportWarning, match="ghost"):
        result = import_sh3f(sh3f, out)
    db = result.database
    assert db.uids == ["test-cc-0-teddybear", "test-cc-0-phone"]
    teddy, phone = db.get("test-cc-0-teddybear"), db.get("test-cc-0-phone")
    # Captions follow the documented template; the catalog-wide "Blend Swap" tag is dropped.
    assert teddy.caption == "a teddy bear (burlap bear), toy, baby; category: bedroom"
    assert phone.caption == "a phone élegant, electronics; category: miscellaneous"
    assert teddy.license == "CC0-1.0" and teddy.url.endswith("/759")  # from its licence file
    assert phone.license == "Public domain"  # no licence file: the catalog's statement
    assert teddy.attribution.startswith('"Burlap Bear" by Manitislate, http://www.blendswap')
    assert teddy.source == "sh3f:Test#Catalog" and teddy.tags == ["Toy", "Baby"]
    teddy_dir = db.mesh_path(teddy.uid).parent
    assert {p.name for p in teddy_dir.iterdir()} == {
        "teddyBear.obj", "teddyBear.mtl", "teddy.jpg", "BLENDSWAP_LICENSE.txt"
    }  # fmt: skip
    assert [p.name for p in db.mesh_path(phone.uid).parent.iterdir()] == ["phone.obj"]
    # modelRotation (row-major M, p' = M p) was baked into the phone's vertices.
    m = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    expected = np.array(CUBE_V) @ m.T
    got = np.array(
        [
            [float(t) for t in ln.split()[1:4]]
            for ln in db.mesh_path(phone.uid).read_text().splitlines()
            if ln.startswith("v ")
        ]
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("evil", ["../evil.obj", "test/../../evil.obj", "..\\evil.obj"])
def test_sh3f_rejects_zip_slip(tmp_path: Path, evil: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    sh3f = build_sh3f(tmp_path / "evil.sh3f", {evil: b"v 0 0 0\n"})
    before = tree_snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="escape"):
        import_sh3f(sh3f, work / "db")
    assert tree_snapshot(tmp_path) == before
    assert not (work / "db").exists() and not list(tmp_path.rglob("evil.obj"))


def test_sh3f_rejects_escaping_model_property(tmp_path: Path) -> None:
    sh3f = tmp_path / "bad.sh3f"
    with zipfile.ZipFile(sh3f, "w") as zf:
        zf.writestr("PluginFurnitureCatalog.properties", "name#1=x\nmodel#1=/../../etc/passwd\n")
    with pytest.raises(UnsafeArchiveError):
        import_sh3f(sh3f, tmp_path / "db")
    (tmp_path / "notzip.sh3f").write_text("hello")
    with pytest.raises(DatabaseError, match="not a zip"):
        import_sh3f(tmp_path / "notzip.sh3f", tmp_path / "db")
    assert not (tmp_path / "db").exists()


# ------------------------------------------------------------------------------ CLI


def test_cli_info_and_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.obj").write_text(cube_obj())
    (src / "b.obj").write_text("garbage\n")
    write_csv(tmp_path / "c.csv", [["a.obj", "an a"], ["b.obj", "a b"]])
    out = tmp_path / "db"
    code = main_db(
        ["import", "folder", str(src), "--captions", str(tmp_path / "c.csv"), "--db", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "imported 1 asset(s), skipped 1" in captured.out
    assert "warning" in captured.err and "b.obj" in captured.err

    assert main_db(["info", "--db", str(out)]) == 0
    info = capsys.readouterr().out
    assert re.search(r"assets:\s+1\b", info) and "folder:src (1)" in info and "unknown (1)" in info

    sh3f = build_sh3f(tmp_path / "x.sh3f")
    assert main_db(["import", "sh3f", str(sh3f), "--db", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"{out.resolve()} now holds 3 asset(s)" in captured.out

    evil = build_sh3f(tmp_path / "evil.sh3f", {"../evil.obj": b"v 0 0 0\n"})
    assert main_db(["import", "sh3f", str(evil), "--db", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "escape" in err and "Traceback" not in err

    assert main_db(["info", "--db", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ra3d db: error:") and "does not exist" in err

    assert main_db(["import", "objaverse", "--cap3d", "x.csv", "--db", str(out)]) == 2
    assert "captions CSV x.csv does not exist" in capsys.readouterr().err
    assert main_db(["frobnicate"]) == 2
    assert main_db([]) == 2


def test_cli_info_builtin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RA3D_DATABASE", raising=False)
    assert main_db(["info"]) == 0
    out = capsys.readouterr().out
    n = len(AssetDatabase.builtin())
    assert re.search(rf"assets:\s+{n}\b", out) and f"CC0-1.0 ({n})" in out
