"""Two-stage retrieval over a catalog whose meshes are not on this machine: a retrieve fetches
exactly its candidates' meshes, applies a licence filter before fetching, takes the next
candidate when a fetch or a mesh fails, and is served by a local mirror. The expected candidates
are computed independently (brute force over the embedder's caption vectors); the network is an
injected fake that records every call."""

from __future__ import annotations

import gzip
import json
import logging
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from ra3d.retrieval.database import AssetDatabase, AssetRecord, ImportTransaction
from ra3d.retrieval.embed import Embedder
from ra3d.retrieval.fetch import MeshFetcher, ObjaverseFetcher
from ra3d.retrieval.importers import import_objaverse
from ra3d.retrieval.search import NoUsableAssetError, TwoStageRetriever

WORDS = ["chair", "table", "lamp", "red", "blue", "wooden", "metal", "tall", "small", "round",
         "old", "box", "car", "tree", "robot", "vase", "green", "soft", "shiny", "broken"]  # fmt: skip


class HashEmbedder(Embedder):
    """A fake CLIP without ties: a text is the normalised sum of one seeded random vector per
    word; an image is the fraction of red / grey / blue object pixels (dims 0-2)."""

    def __init__(self, images: bool = True) -> None:
        self.id = f"test:hash-embedder:{'clip' if images else 'text'}:v1"
        self.dim = 32
        self.supports_images = images

    def word(self, word: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)

    def embed_text(self, texts: list[str]) -> Tensor:
        out = np.stack([sum(self.word(w) for w in t.lower().split()) for t in texts])
        return F.normalize(torch.from_numpy(out).float(), dim=-1)

    def embed_images(self, rgb: Tensor) -> Tensor:
        r, g, b = rgb.unbind(-1)
        obj = (rgb < 0.97).any(-1)
        red = obj & (r > 2 * torch.maximum(g, b))
        blue = obj & (b > 2 * torch.maximum(r, g))
        counts = torch.stack([red, obj & ~red & ~blue, blue], -1).flatten(1, 2).float().sum(1)
        out = torch.zeros(rgb.shape[0], self.dim)
        out[:, :3] = counts / counts.sum(1, keepdim=True).clamp_min(1)
        out[:, 3] = 0.05
        return F.normalize(out, dim=-1)


def uid_of(i: int) -> str:
    return f"{i:032x}"


def captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, 3)) + f" item{i}" for i in range(n)]  # unique texts


def catalog(root: Path, texts: list[str]) -> AssetDatabase:
    with ImportTransaction(root) as tx:
        tx.add_catalog_records(
            AssetRecord(
                uid=uid_of(i),
                caption=t,
                mesh_path="",
                source="objaverse",
                license="",
                attribution="",
                mesh_store="objaverse",
            )  # fmt: skip
            for i, t in enumerate(texts)
        )
    assert tx.database is not None
    return tx.database


def ranked(emb: Embedder, texts: list[str], prompt: str) -> list[str]:
    """Independent stage 1: every caption scored by brute force, best first."""
    c = emb.embed_text(texts).numpy().astype(np.float64)
    q = emb.embed_text([prompt]).numpy()[0].astype(np.float64)
    return [uid_of(i) for i in np.argsort(-(c @ q), kind="stable")]


def glb_cube(path: Path, colour: tuple[int, int, int]) -> Path:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    faces = np.tile(np.array([*colour, 255], np.uint8), (len(box.faces), 1))
    mesh = trimesh.Trimesh(box.vertices, box.faces, face_colors=faces, process=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(mesh.export(file_type="glb"))
    return path


class FakeObjaverse:
    """``objaverse.load_objects`` / ``load_annotations`` over a folder; records every call."""

    def __init__(self, folder: Path, licences: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.licences = licences or {}
        self.object_calls: list[list[str]] = []
        self.annotation_calls: list[list[str]] = []

    def load_objects(self, uids: list[str], download_processes: int = 1) -> dict[str, str]:
        self.object_calls.append(list(uids))
        return {
            u: str(self.folder / f"{u}.glb") for u in uids if (self.folder / f"{u}.glb").exists()
        }

    def load_annotations(self, uids: list[str]) -> dict[str, dict]:
        self.annotation_calls.append(list(uids))
        return {
            u: {"license": self.licences.get(u, "by"), "name": f"Object {u[-4:]}",
                "user": {"username": "maker"}, "viewerUrl": f"https://sketchfab.com/3d-models/{u}"}
            for u in uids
        }  # fmt: skip

    def fetcher(self, db: AssetDatabase) -> ObjaverseFetcher:
        return ObjaverseFetcher(db.mesh_cache_dir, download_fn=self.load_objects,
                                annotations_fn=self.load_annotations)  # fmt: skip


@pytest.fixture()
def big_catalog(tmp_path: Path) -> tuple[AssetDatabase, list[str]]:
    texts = captions(1200)
    return catalog(tmp_path / "db", texts), texts


def test_a_retrieve_fetches_exactly_its_candidates(
    tmp_path: Path, big_catalog: tuple[AssetDatabase, list[str]]
) -> None:
    db, texts = big_catalog
    emb = HashEmbedder()
    prompt = "a red wooden chair"
    expected = ranked(emb, texts, prompt)[:4]  # N' = 4 caption matches
    remote = FakeObjaverse(tmp_path / "remote")
    colours = [(230, 20, 20), (150, 150, 150), (20, 20, 230), (200, 30, 30)]
    for uid, colour in zip(expected, colours, strict=True):  # only the candidates exist
        glb_cube(remote.folder / f"{uid}.glb", colour)
    kw = dict(embedder=emb, n_candidates=4, n_views=4, render_size=32, mesh_backend="torch")
    retriever = TwoStageRetriever(db, fetcher=remote.fetcher(db), **kw)
    results = retriever.retrieve(prompt, k=2)
    assert len(db) == 1200 and len(remote.object_calls) == 1
    assert remote.object_calls[0] == expected  # one batch, in caption order
    assert {p.stem for p in db.mesh_cache_dir.iterdir()} == set(expected)
    views = [p for p in retriever._views_dir().iterdir() if p.suffix == ".npy"]
    assert {p.name.split("-")[0] for p in views} == set(expected)
    # The rerank ranks by image similarity (the red cubes first), recomputed independently.
    q = emb.embed_text([prompt])[0]
    image = {
        u: float(q @ F.normalize(retriever.view_embeddings(u).mean(0), dim=0)) for u in expected
    }
    assert [r.uid for r in results] == sorted(expected, key=image.get, reverse=True)[:2]
    for r in results:
        assert r.score == pytest.approx(image[r.uid], abs=1e-6)
        assert r.mesh_path == db.mesh_cache_dir / f"{r.uid}.glb"
        assert r.license == "CC-BY-4.0" and r.attribution.endswith("CC-BY-4.0, via Objaverse")
        assert r.extras["mesh_from"] == "objaverse"
    # Licence and credit were fetched for the returned assets only, and are now cached.
    assert remote.annotation_calls == [[r.uid for r in results]]
    assert AssetDatabase.open(db.root).summary()["annotations"] == 2
    # A second retrieve downloads nothing and renders nothing (meshes and views are cached).
    again = TwoStageRetriever(AssetDatabase.open(db.root), fetcher=remote.fetcher(db), **kw)
    assert [r.uid for r in again.retrieve(prompt, k=2)] == [r.uid for r in results]
    assert len(remote.object_calls) == 1 and len(remote.annotation_calls) == 1


def test_licence_filter_is_applied_before_anything_is_fetched(
    tmp_path: Path, big_catalog: tuple[AssetDatabase, list[str]]
) -> None:
    db, texts = big_catalog
    licences = {uid_of(i): ("cc0" if i % 3 == 0 else "by") for i in range(len(texts))}
    remote = FakeObjaverse(tmp_path / "remote", licences)
    for i in range(len(texts)):
        glb_cube(remote.folder / f"{uid_of(i)}.glb", (150, 150, 150))
    emb = HashEmbedder(images=False)
    prompt = "a small blue lamp"
    order = ranked(emb, texts, prompt)
    retriever = TwoStageRetriever(db, embedder=emb, fetcher=remote.fetcher(db),
                                  licenses=["CC0-1.0"])  # fmt: skip
    results = retriever.retrieve(prompt, k=3)
    cc0 = [u for u in order if licences[u] == "cc0"]
    assert [r.uid for r in results] == cc0[:3]
    assert all(r.license == "CC0-1.0" for r in results)
    # Annotations for the oversampled caption matches (8 per asset wanted), then meshes for
    # exactly the three assets that passed; no CC-BY mesh was ever asked for.
    assert remote.annotation_calls == [order[:24]]
    assert remote.object_calls == [cc0[:3]]
    assert AssetDatabase.open(db.root).summary()["annotations"] == 24
    # Nothing passes: every caption match is examined (in growing batches), then one error.
    strict = TwoStageRetriever(db, embedder=emb, fetcher=remote.fetcher(db),
                               licenses="CC-BY-NC-4.0")  # fmt: skip
    with pytest.raises(NoUsableAssetError, match=r"1200 caption match\(es\) examined.*refused"):
        strict.retrieve(prompt, k=3)
    assert len(remote.object_calls) == 1  # still no mesh fetched for a refused asset
    assert sum(len(c) for c in remote.annotation_calls) == 1200  # each match annotated once


def test_a_failed_fetch_or_broken_mesh_takes_the_next_candidate(
    tmp_path: Path, big_catalog: tuple[AssetDatabase, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    db, texts = big_catalog
    emb = HashEmbedder(images=False)
    prompt = "an old metal robot"
    order = ranked(emb, texts, prompt)
    remote = FakeObjaverse(tmp_path / "remote")
    remote.folder.mkdir()
    (remote.folder / f"{order[1]}.glb").write_bytes(b"glTF\x02\x00\x00\x00 not a mesh")
    for uid in order[2:6]:  # order[0] is missing from Objaverse
        glb_cube(remote.folder / f"{uid}.glb", (150, 150, 150))
    retriever = TwoStageRetriever(db, embedder=emb, fetcher=remote.fetcher(db))
    with caplog.at_level(logging.WARNING, logger="ra3d.retrieval.search"):
        results = retriever.retrieve(prompt, k=3)
    assert [r.uid for r in results] == order[2:5]
    assert remote.object_calls == [order[:3], order[3:5]]  # the two replacements, in order
    assert f"skipping asset {order[0]}: its mesh could not be fetched" in caplog.text
    assert f"skipping asset {order[1]}: its mesh is invalid" in caplog.text
    # The broken download is not kept in the mesh cache, so it is never served again.
    assert {p.stem for p in db.mesh_cache_dir.iterdir()} == set(order[2:5])


def test_offline_without_a_mirror_is_one_error_naming_the_fix(
    tmp_path: Path, big_catalog: tuple[AssetDatabase, list[str]]
) -> None:
    db, _ = big_catalog

    class Offline(MeshFetcher):
        calls = 0

        def fetch(self, records):  # noqa: ANN001, ANN201
            from ra3d.retrieval.fetch import FetchResult

            Offline.calls += 1
            return FetchResult(
                failed={r.uid: "Temporary failure in name resolution" for r in records}
            )

    retriever = TwoStageRetriever(db, embedder=HashEmbedder(images=False), fetcher=Offline())
    with pytest.raises(NoUsableAssetError, match="could not be fetched.*--mirror DIR"):
        retriever.retrieve("a chair", k=3)
    assert Offline.calls <= 8  # it gives up after a bounded number of failures


def test_a_local_mirror_serves_retrieve_and_licences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ra3d db import objaverse --mirror`` then ``ra3d retrieve --licenses``: meshes and
    annotations come from the mirror, nothing is copied into the cache."""
    from ra3d.cli.retrieve import main_retrieve
    from ra3d.retrieval.embed import MiniLMTextEmbedder

    texts = captions(200, seed=4)
    uids = [uid_of(i) for i in range(200)]
    mirror = tmp_path / "objaverse" / "hf-objaverse-v1"
    shards: dict[str, dict[str, dict]] = {}
    for i, uid in enumerate(uids):
        group = f"000-{i % 3:03d}"
        glb_cube(mirror / "glbs" / group / f"{uid}.glb", (150, 150, 150))
        shards.setdefault(group, {})[uid] = {"license": "cc0" if i % 2 else "by-nc",
                                             "name": f"thing {i}", "user": {"username": "u"}}  # fmt: skip
    (mirror / "metadata").mkdir()
    for group, notes in shards.items():
        with gzip.open(mirror / "metadata" / f"{group}.json.gz", "wt") as f:
            json.dump(notes, f)
    cap3d = tmp_path / "cap3d.csv"
    cap3d.write_text("".join(f"{u},{t}\n" for u, t in zip(uids, texts, strict=True)))
    root = tmp_path / "db"
    import_objaverse(root, cap3d_csv=cap3d, mirror=tmp_path / "objaverse")
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "user-cache"))
    argv = ["a round green vase", "-k", "2", "--db", str(root), "--embedder", "minilm",
            "--licenses", "CC0-1.0", "--json"]  # fmt: skip
    assert main_retrieve(argv) == 0
    out = json.loads(capsys.readouterr().out)
    order = ranked(MiniLMTextEmbedder(), texts, "a round green vase")
    expected = [u for u in order if int(u, 16) % 2][:2]
    assert [o["uid"] for o in out] == expected
    for o in out:
        i = int(o["uid"], 16)
        assert Path(o["path"]) == mirror.resolve() / "glbs" / f"000-{i % 3:03d}" / f"{o['uid']}.glb"
        assert o["license"] == "CC0-1.0" and o["attribution"].startswith(f'"thing {i}" by u, ')
    assert not (root / ".cache" / "meshes").exists()  # the mirror is used in place
