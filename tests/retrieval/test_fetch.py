"""Mesh fetchers: a local Objaverse mirror, Objaverse downloads through an injected fake of
``objaverse.load_objects`` (never the network), and what ``ra3d db info`` counts as local."""

from __future__ import annotations

import gzip
import json
import logging
import sys
from pathlib import Path

import pytest
import trimesh

from ra3d.io import format_bytes
from ra3d.representations.components.mesh_files import MeshLimits
from ra3d.retrieval.database import AssetDatabase, AssetRecord, ImportTransaction
from ra3d.retrieval.fetch import (
    FetchUnavailableError,
    MirrorFetcher,
    MirrorNotFoundError,
    ObjaverseFetcher,
    default_fetcher,
    mesh_availability,
)

UIDS = [f"{i:02x}" * 16 for i in range(1, 6)]


def record(uid: str, path: str = "") -> AssetRecord:
    return AssetRecord(uid=uid, caption="a box", mesh_path=path, source="objaverse", license="",
                       attribution="", mesh_store="objaverse")  # fmt: skip


def glb(path: Path, extent: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(trimesh.creation.box(extents=(extent, 1.0, 1.0)).export(file_type="glb"))
    return path


def test_mirror_finds_meshes_with_or_without_their_objaverse_path(tmp_path: Path) -> None:
    base = tmp_path / ".objaverse" / "hf-objaverse-v1"
    a = glb(base / "glbs" / "000-001" / f"{UIDS[0]}.glb")
    b = glb(base / "glbs" / "000-159" / f"{UIDS[1]}.glb", 2.0)
    (base / "glbs" / "000-159" / f"{UIDS[2]}.glb").write_bytes(b"")  # an empty download
    mirror = MirrorFetcher(tmp_path / ".objaverse")  # the folder above hf-objaverse-v1 works too
    assert mirror.base == base.resolve() and mirror.groups == ["000-001", "000-159"]
    result = mirror.fetch([
        record(UIDS[0], f"glbs/000-001/{UIDS[0]}.glb"), record(UIDS[1]), record(UIDS[2]),
        record(UIDS[3]),
    ])  # fmt: skip
    assert result.paths == {UIDS[0]: a.resolve(), UIDS[1]: b.resolve()}
    assert "is empty" in result.failed[UIDS[2]] and "not in the mirror" in result.failed[UIDS[3]]
    assert mirror.local_uids() == {UIDS[0], UIDS[1], UIDS[2]}
    assert mirror.object_paths()[UIDS[1]] == f"glbs/000-159/{UIDS[1]}.glb"
    small = MirrorFetcher(base, max_bytes=100)
    assert "over the 100 B limit" in small.fetch([record(UIDS[0])]).failed[UIDS[0]]
    with pytest.raises(MirrorNotFoundError, match="has no glbs/ folder"):
        MirrorFetcher(tmp_path)


def test_fetchers_take_their_size_limit_from_the_mesh_validator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One budget for fetch and load: RA3D_MESH_MAX_BYTES sets both, and by default a fetcher
    refuses exactly what MeshLimits refuses."""
    base = tmp_path / "mirror"
    path = glb(base / "glbs" / "000-001" / f"{UIDS[0]}.glb")
    size = path.stat().st_size
    monkeypatch.delenv("RA3D_MESH_MAX_BYTES", raising=False)
    assert MirrorFetcher(base).max_bytes == MeshLimits().max_file_bytes
    assert ObjaverseFetcher(tmp_path / "c").max_bytes == MeshLimits().max_file_bytes
    monkeypatch.setenv("RA3D_MESH_MAX_BYTES", str(size - 1))
    failed = MirrorFetcher(base).fetch([record(UIDS[0])]).failed[UIDS[0]]
    assert f"over the {format_bytes(size - 1)} limit" in failed
    monkeypatch.setenv("RA3D_MESH_MAX_BYTES", str(size))
    assert MirrorFetcher(base).fetch([record(UIDS[0])]).paths == {UIDS[0]: path.resolve()}


def test_mirror_reads_annotations_from_its_metadata_shards(tmp_path: Path) -> None:
    glb(tmp_path / "glbs" / "000-002" / f"{UIDS[0]}.glb")
    glb(tmp_path / "glbs" / "000-003" / f"{UIDS[1]}.glb")
    (tmp_path / "metadata").mkdir()
    for group, uid in (("000-002", UIDS[0]), ("000-003", UIDS[1])):
        with gzip.open(tmp_path / "metadata" / f"{group}.json.gz", "wt") as f:
            json.dump({uid: {"license": "cc0", "name": group}, UIDS[4]: {"license": "by"}}, f)
    mirror = MirrorFetcher(tmp_path)
    notes = mirror.annotations([UIDS[0], UIDS[1], UIDS[3]])
    assert {u: n["name"] for u, n in notes.items()} == {UIDS[0]: "000-002", UIDS[1]: "000-003"}
    assert MirrorFetcher(tmp_path).annotations([UIDS[4]]) == {}  # its mesh is not in the mirror


def test_objaverse_fetcher_downloads_once_into_the_mesh_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = tmp_path / "home" / "glbs" / "000-000"
    for uid in UIDS[:2]:
        glb(remote / f"{uid}.glb")
    (remote / f"{UIDS[2]}.glb").write_bytes(b"x" * 5000)
    calls: list[list[str]] = []

    def load_objects(uids: list[str], download_processes: int) -> dict[str, str]:
        calls.append(list(uids))
        return {u: str(remote / f"{u}.glb") for u in uids if (remote / f"{u}.glb").is_file()}

    cache = tmp_path / "cache"
    fetcher = ObjaverseFetcher(cache, download_fn=load_objects, max_bytes=4000)
    result = fetcher.fetch([record(u) for u in UIDS[:4]])
    assert calls == [UIDS[:4]]
    assert set(result.paths) == {UIDS[0], UIDS[1]}
    assert result.paths[UIDS[0]] == cache / f"{UIDS[0]}.glb"
    assert result.paths[UIDS[0]].read_bytes() == (remote / f"{UIDS[0]}.glb").read_bytes()
    assert "over the" in result.failed[UIDS[2]]  # refused before anything parses it
    assert "returned no file" in result.failed[UIDS[3]]
    assert sorted(p.name for p in cache.iterdir()) == [f"{UIDS[0]}.glb", f"{UIDS[1]}.glb"]
    # Cached meshes are not downloaded again.
    assert set(fetcher.fetch([record(UIDS[0]), record(UIDS[1])]).paths) == set(UIDS[:2])
    assert calls == [UIDS[:4]]
    assert fetcher.local_uids() == set(UIDS[:2]) and fetcher.local_path(record(UIDS[3])) is None

    def offline(uids: list[str], download_processes: int) -> dict[str, str]:
        raise OSError("Temporary failure in name resolution")

    down = ObjaverseFetcher(tmp_path / "c2", download_fn=offline).fetch([record(UIDS[4])])
    assert down.paths == {} and "name resolution" in down.failed[UIDS[4]]

    def no_annotations(uids: list[str]) -> dict:
        raise KeyError(uids[0])

    with caplog.at_level(logging.WARNING, logger="ra3d.retrieval.fetch"):
        assert ObjaverseFetcher(cache, annotations_fn=no_annotations).annotations(UIDS[:1]) == {}
    assert "licence stays unknown" in caplog.text


def test_objaverse_fetcher_without_the_package_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "objaverse", None)  # import objaverse -> ImportError
    with pytest.raises(FetchUnavailableError, match=r"pip install 'ra3d\[objaverse\]'.*--mirror"):
        ObjaverseFetcher(tmp_path).fetch([record(UIDS[0])])


def test_mesh_availability_counts_what_is_local(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with ImportTransaction(root) as tx:
        tx.add_catalog_records(record(u) for u in UIDS)
    assert tx.database is not None
    db = tx.database
    nothing = mesh_availability(db)
    assert (nothing["local"], nothing["total"], nothing["mesh_cache_files"]) == (0, 5, 0)
    assert not (root / ".cache").exists()  # counting never creates the cache
    fetcher = default_fetcher(db)
    assert isinstance(fetcher, ObjaverseFetcher) and fetcher.cache_dir == db.mesh_cache_dir
    glb(db.mesh_cache_dir / f"{UIDS[3]}.glb")
    some = mesh_availability(AssetDatabase.open(root))
    assert (some["local"], some["remote_local"], some["mesh_cache_files"]) == (1, 1, 1)
    assert some["mesh_cache_bytes"] == (db.mesh_cache_dir / f"{UIDS[3]}.glb").stat().st_size
    glb(tmp_path / "mirror" / "glbs" / "000-000" / f"{UIDS[0]}.glb")
    glb(tmp_path / "mirror" / "glbs" / "000-000" / f"{'ab' * 16}.glb")  # not in the catalog
    mirrored = mesh_availability(db, MirrorFetcher(tmp_path / "mirror"))
    assert mirrored["remote_local"] == 1
    assert isinstance(default_fetcher(db, mirror=tmp_path / "mirror"), MirrorFetcher)


def test_a_mirror_fetcher_does_not_import_torch(tmp_path: Path) -> None:
    """`ra3d db info` and `db import --mirror` build a fetcher; reading the mesh size limit from
    the validator must not pull in torch (a few seconds per command)."""
    import subprocess

    glb(tmp_path / "glbs" / "000-001" / f"{UIDS[0]}.glb")
    code = (
        "import sys\nfrom ra3d.retrieval.fetch import MirrorFetcher\n"
        f"f = MirrorFetcher({str(tmp_path)!r})\n"
        "print(f.max_bytes, 'TORCH' if 'torch' in sys.modules else 'LIGHT')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(MeshLimits().max_file_bytes), "LIGHT"]
