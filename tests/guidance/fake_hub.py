"""A fake Hugging Face hub for tests: repositories held in memory, served through the two
``huggingface_hub`` functions ra3d calls (``list_repo_tree`` and ``hf_hub_download``), which write
into a temporary cache in huggingface_hub's own layout
(``models--org--name/{blobs,snapshots/<commit>,refs/main}``) so that the real
``try_to_load_from_cache`` finds them. The network is never used: sockets are blocked."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def http_error(cls: type, status: int, repo_id: str) -> BaseException:
    """An instance of a huggingface_hub HTTP error class with a real response of ``status``."""
    import httpx2

    url = f"https://huggingface.co/api/models/{repo_id}/tree/main"
    response = httpx2.Response(status, request=httpx2.Request("GET", url))
    return cls(f"{status} Client Error for url {url}", response=response)


def repo_from_folder(folder: Path) -> dict[str, bytes]:
    """Every file of a local folder as ``{path in repo: bytes}``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def sd_repo_with_duplicates(folder: Path) -> dict[str, bytes]:
    """A diffusers SD 2.1-base repository as the hub holds it: the loadable files of ``folder``
    plus what the prior must never download — ``.bin`` twins, fp16 variants, original ``.ckpt``
    and single-file ``.safetensors`` checkpoints, and the pipeline's feature extractor."""
    files = repo_from_folder(folder)
    for sub, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("text_encoder", "pytorch_model")):  # fmt: skip
        files[f"{sub}/{stem}.bin"] = b"bin twin"
        files[f"{sub}/{stem}.fp16.bin"] = b"fp16 bin"
        weights = "model" if sub == "text_encoder" else stem
        files[f"{sub}/{weights}.fp16.safetensors"] = b"fp16 safetensors"
    files["v2-1_512-ema-pruned.ckpt"] = b"ckpt" * 100
    files["v2-1_512-nonema-pruned.ckpt"] = b"ckpt" * 100
    files["v2-1_512-ema-pruned.safetensors"] = b"single file" * 10
    files["feature_extractor/preprocessor_config.json"] = b"{}"
    files["README.md"] = b"# sd"
    return files


class FakeHub:
    """``repos``: repo id → ``{path: bytes}``. ``errors``: repo id → exception raised by every
    call for it; ``download_errors``: path → exception raised when that file is downloaded."""

    def __init__(self, cache: Path, repos: dict[str, dict[str, bytes]]) -> None:
        self.cache = cache
        self.repos = repos
        self.errors: dict[str, BaseException] = {}
        self.download_errors: dict[str, BaseException] = {}
        self.listed: list[str] = []
        self.downloaded: list[tuple[str, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
        import huggingface_hub
        import huggingface_hub.constants

        self.cache.mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(huggingface_hub, "list_repo_tree", self.list_repo_tree)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(self.cache))
        monkeypatch.setenv("HF_HUB_CACHE", str(self.cache))
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(var, raising=False)

        def no_network(*args: object, **kwargs: object) -> None:
            raise AssertionError("a test touched the network")

        monkeypatch.setattr(socket.socket, "connect", no_network)
        monkeypatch.setattr(socket, "create_connection", no_network)
        return self

    def _check(self, repo_id: str) -> dict[str, bytes]:
        from huggingface_hub.errors import RepositoryNotFoundError

        if repo_id in self.errors:
            raise self.errors[repo_id]
        if repo_id not in self.repos:
            raise http_error(RepositoryNotFoundError, 404, repo_id)
        return self.repos[repo_id]

    def list_repo_tree(self, repo_id: str, recursive: bool = False, **kwargs: object) -> list:
        from huggingface_hub.hf_api import RepoFile, RepoFolder

        files = self._check(repo_id)
        self.listed.append(repo_id)
        folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        return [RepoFolder(path=f, oid="tree") for f in folders] + [
            RepoFile(path=p, size=len(b), oid=hashlib.sha1(b).hexdigest()) for p, b in files.items()
        ]

    def hf_hub_download(
        self, repo_id: str, filename: str, local_dir: str | None = None, **kwargs: object
    ) -> str:
        data = self._check(repo_id)[filename]
        if filename in self.download_errors:
            raise self.download_errors[filename]
        self.downloaded.append((repo_id, filename))
        if local_dir is not None:
            target = Path(local_dir) / filename
        else:
            repo = self.cache / f"models--{repo_id.replace('/', '--')}"
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / "main").write_text(COMMIT)
            target = repo / "snapshots" / COMMIT / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return str(target)
