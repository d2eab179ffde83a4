"""Import a folder of meshes described by a captions CSV (one row per mesh: path or uid, and
caption, optionally licence, attribution, source, category, tags, title and url columns)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from ra3d.retrieval.database import (
    AssetRecord,
    DatabaseError,
    DatabaseNotFoundError,
    ImportTransaction,
    caption_problem,
    clean_caption,
    safe_relative_path,
    slugify_uid,
    validate_uid,
)
from ra3d.retrieval.importers.common import (
    ImportResult,
    MeshValidator,
    _check_mesh,
    _default_validate,
    _read_captions_csv,
    _relative_to,
    _warn_skipped,
    mesh_dependencies,
)

MESH_SUFFIXES = frozenset({".obj", ".glb", ".gltf", ".ply", ".stl", ".off"})


def _common_parent(paths: Iterable[PurePosixPath]) -> PurePosixPath:
    parts_list = [p.parent.parts for p in paths]
    common: list[str] = []
    for level in zip(*parts_list, strict=False):
        if all(x == level[0] for x in level):
            common.append(level[0])
        else:
            break
    return PurePosixPath(*common) if common else PurePosixPath(".")


def _find_mesh(folder: Path, ref: str, by_stem: Mapping[str, list[Path]]) -> Path | None:
    """The mesh a CSV row means: a relative path inside ``folder``, or a bare uid/stem."""
    try:
        rel = safe_relative_path(ref, what="mesh path")
    except DatabaseError:
        return None
    direct = folder / rel
    if direct.is_file():
        return direct
    matches = by_stem.get(ref, [])
    return matches[0] if len(matches) == 1 else None


def import_folder(
    folder: str | Path,
    captions_csv: str | Path,
    out_root: str | Path,
    validate: MeshValidator | None = None,
    *,
    source: str | None = None,
    license: str = "unknown",
    attribution: str = "",
) -> ImportResult:
    """Import the meshes a captions CSV lists from ``folder`` into the database at ``out_root``.

    Each row names a mesh (path relative to ``folder``, or a bare uid matching a file stem) and
    its caption. A mesh is copied with the files it references (MTL, textures, glTF buffers),
    keeping their relative layout. Rows whose mesh is missing or fails ``validate``, and mesh
    files no row mentions, are skipped and reported in one warning. ``license``/``attribution``
    are defaults for rows whose CSV has no such column.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatabaseNotFoundError(f"mesh folder {folder} does not exist or is not a folder")
    rows = _read_captions_csv(Path(captions_csv).expanduser())
    validate = validate or _default_validate
    source = source or f"folder:{folder.resolve().name}"
    all_meshes = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES
    )
    by_stem: dict[str, list[Path]] = {}
    for p in all_meshes:
        by_stem.setdefault(p.stem, []).append(p)

    def exists(rel: PurePosixPath) -> bool:
        return (folder / rel).is_file()

    def read_text(rel: PurePosixPath) -> str:
        return (folder / rel).read_text(encoding="utf-8", errors="replace")

    skipped: list[tuple[str, str]] = []
    imported: list[str] = []
    used: set[Path] = set()
    seen_uids: set[str] = set()
    with ImportTransaction(out_root) as tx:
        for row in rows:
            label = f"{row.ref} (line {row.line})"
            mesh = _find_mesh(folder, row.ref, by_stem)
            if mesh is None:
                skipped.append((label, "mesh file not found in the folder"))
                continue
            used.add(mesh)
            problem = caption_problem(row.caption)
            if problem is not None:
                skipped.append((label, "empty caption" if "empty" in problem else problem))
                continue
            caption = clean_caption(row.caption)
            rel_mesh = PurePosixPath(mesh.relative_to(folder).as_posix())
            uid_text = row.extra.get("uid") or rel_mesh.with_suffix("").as_posix()
            uid = validate_uid(slugify_uid(uid_text))
            if uid in seen_uids:
                raise DatabaseError(
                    f"captions CSV line {row.line}: uid {uid!r} is used twice; give the rows "
                    "distinct 'uid' values"
                )
            seen_uids.add(uid)
            deps = mesh_dependencies(rel_mesh, read_text, exists)
            root = _common_parent([rel_mesh, *deps])
            target = tx.new_asset_dir(uid)
            used.update(folder / d for d in deps)
            for rel in [rel_mesh, *deps]:
                dest = target / _relative_to(rel, root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / rel, dest)
            staged_mesh = _relative_to(rel_mesh, root)
            reason = _check_mesh(validate, target / staged_mesh)
            if reason is not None:
                tx.discard(uid)
                skipped.append((label, reason))
                continue
            tags = [t.strip() for t in re.split(r"[;|]", row.extra.get("tags", "")) if t.strip()]
            tx.add(
                AssetRecord(
                    uid=uid,
                    caption=caption,
                    mesh_path=staged_mesh.as_posix(),
                    source=row.extra.get("source") or source,
                    license=row.extra.get("license") or license,
                    attribution=row.extra.get("attribution") or attribution,
                    category=row.extra.get("category", ""),
                    tags=tags,
                    title=row.extra.get("title", ""),
                    url=row.extra.get("url", ""),
                )
            )
            imported.append(uid)
        for mesh in all_meshes:
            if mesh not in used:
                skipped.append((mesh.relative_to(folder).as_posix(), "no caption in the CSV"))
    _warn_skipped(skipped, f"import of {folder}")
    assert tx.database is not None
    return ImportResult(tx.database, imported, skipped)
