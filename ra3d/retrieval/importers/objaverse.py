"""Import Objaverse objects captioned by Cap3D: pick uids from the Cap3D captions CSV,
download them (``objaverse`` package by default) and record licence and attribution from the
Objaverse annotations."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ra3d.retrieval.database import (
    AssetRecord,
    DatabaseError,
    ImportTransaction,
    validate_uid,
)
from ra3d.retrieval.importers.common import (
    ImportResult,
    MeshValidator,
    _check_mesh,
    _default_validate,
    _read_captions_csv,
    _warn_skipped,
)

logger = logging.getLogger(__name__)

DownloadFn = Callable[..., Mapping[str, str]]
AnnotationsFn = Callable[[list[str]], Mapping[str, Mapping[str, Any]]]


def read_cap3d_captions(path: str | Path) -> dict[str, str]:
    """Cap3D's captions CSV: ``uid,caption`` rows without a header (order kept)."""
    rows = _read_captions_csv(Path(path).expanduser())
    return {r.ref: r.caption for r in rows if r.ref and r.caption}


def _objaverse_license(code: str) -> str:
    code = (code or "").strip().lower()
    if code in ("cc0", "cc-0", "cc0-1.0"):
        return "CC0-1.0"
    if code.startswith("by"):
        return "CC-" + code.upper()
    return code or "unknown"


def import_objaverse(
    out_root: str | Path,
    *,
    cap3d_csv: str | Path,
    uids: Sequence[str] | None = None,
    limit: int | None = None,
    download_fn: DownloadFn | None = None,
    annotations_fn: AnnotationsFn | None = None,
    validate: MeshValidator | None = None,
    download_processes: int = 1,
    allowed_licenses: Iterable[str] | None = None,
) -> ImportResult:
    """Download Objaverse objects and import them with their Cap3D captions.

    ``uids`` picks objects (they must have a Cap3D caption); without it the first ``limit``
    captioned uids of the CSV are used. ``download_fn(uids=..., download_processes=...)`` must
    return ``{uid: local_glb_path}`` like ``objaverse.load_objects`` (the default, which needs
    the network); ``annotations_fn(uids)`` returns Objaverse metadata used for licence and
    attribution (default ``objaverse.load_annotations``). ``allowed_licenses`` (e.g.
    ``{"CC0-1.0", "CC-BY"}``) drops objects under other licences.
    """
    captions = read_cap3d_captions(cap3d_csv)
    if uids is None:
        if limit is None:
            raise DatabaseError(
                "say which Objaverse objects to import: pass uids (--uids FILE) or a --limit"
            )
        chosen = list(captions)[: max(0, int(limit))]
        missing_caption: list[str] = []
    else:
        wanted = [u.strip().removesuffix(".glb") for u in uids if u.strip()]
        chosen = [u for u in wanted if u in captions]
        missing_caption = [u for u in wanted if u not in captions]
        if limit is not None:
            chosen = chosen[: max(0, int(limit))]
    if not chosen:
        raise DatabaseError(f"no Objaverse uid to import has a caption in {cap3d_csv}")
    for uid in chosen:
        validate_uid(uid)
    if download_fn is None or annotations_fn is None:
        try:
            import objaverse
        except ImportError:
            raise DatabaseError(
                "the Objaverse importer needs the 'objaverse' package: pip install 'ra3d[objaverse]'"
            ) from None
        download_fn = download_fn or objaverse.load_objects
        annotations_fn = annotations_fn or objaverse.load_annotations
    validate = validate or _default_validate
    try:
        annotations = dict(annotations_fn(chosen))
    except (OSError, KeyError, ValueError) as err:  # offline, or a uid unknown to Objaverse
        logger.warning("Objaverse annotations unavailable (%r); licences recorded as unknown", err)
        annotations = {}
    allowed = set(allowed_licenses) if allowed_licenses is not None else None
    skipped: list[tuple[str, str]] = [(u, "no Cap3D caption") for u in missing_caption]
    licenses: dict[str, str] = {}
    to_download: list[str] = []
    for uid in chosen:
        meta = annotations.get(uid, {})
        licenses[uid] = _objaverse_license(str(meta.get("license", "")))
        if allowed is not None and licenses[uid] not in allowed:
            skipped.append((uid, f"licence {licenses[uid]} not allowed"))
        else:
            to_download.append(uid)
    try:
        paths = dict(download_fn(uids=to_download, download_processes=download_processes))
    except OSError as err:
        raise DatabaseError(
            f"downloading {len(to_download)} Objaverse object(s) failed ({err}); check the "
            "network connection and retry (already downloaded objects are reused)"
        ) from None
    imported: list[str] = []
    with ImportTransaction(out_root) as tx:
        for uid in to_download:
            local = paths.get(uid)
            if local is None or not Path(local).is_file():
                skipped.append((uid, "download failed or file missing"))
                continue
            local = Path(local)
            target = tx.new_asset_dir(uid)
            dest = target / f"{uid}{local.suffix.lower() or '.glb'}"
            shutil.copyfile(local, dest)
            reason = _check_mesh(validate, dest)
            if reason is not None:
                tx.discard(uid)
                skipped.append((uid, reason))
                continue
            meta = annotations.get(uid, {})
            user = meta.get("user") if isinstance(meta.get("user"), Mapping) else {}
            author = str(user.get("displayName") or user.get("username") or "unknown author")
            name = str(meta.get("name") or uid)
            url = str(meta.get("viewerUrl") or f"https://sketchfab.com/3d-models/{uid}")
            tx.add(
                AssetRecord(
                    uid=uid,
                    caption=captions[uid],
                    mesh_path=dest.name,
                    source="objaverse",
                    license=licenses[uid],
                    attribution=f'"{name}" by {author}, {url}, {licenses[uid]}, via Objaverse',
                    tags=[
                        str(t.get("name"))
                        for t in meta.get("tags", [])
                        if isinstance(t, Mapping) and t.get("name")
                    ],
                    title=str(meta.get("name") or ""),
                    url=url,
                )
            )
            imported.append(uid)
    _warn_skipped(skipped, "Objaverse import")
    assert tx.database is not None
    return ImportResult(tx.database, imported, skipped)
