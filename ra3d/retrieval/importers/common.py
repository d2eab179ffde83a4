"""What the importers share: their result and warning types, mesh validation, the files a mesh
references, the captions CSV reader and small path helpers.

Every importer (``folder``, ``sh3f``, ``objaverse``) keeps one contract:

* it writes through ``ImportTransaction``: files are staged next to the database and merged
  in by one atomic manifest swap, so an import that fails or is interrupted half-way leaves the
  previous database exactly as it was;
* each mesh is validated (default: ``ra3d.representations.mesh.load_mesh``) after it is staged
  with its materials and textures; broken or unreadable meshes are skipped and listed in one
  ``AssetImportWarning`` - they never abort an import;
* every record keeps source, licence and attribution.

This module imports none of the source modules.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import posixpath
import re
import urllib.parse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ra3d.retrieval.database import AssetDatabase, DatabaseError, DatabaseNotFoundError

logger = logging.getLogger(__name__)

MeshValidator = Callable[[Path], Any]


class AssetImportWarning(UserWarning):
    """Some inputs were skipped during an import (broken mesh, missing caption, ...)."""


class UnsafeArchiveError(DatabaseError):
    """An archive member's path is absolute or climbs out with ``..`` (zip-slip)."""


@dataclass
class ImportResult:
    """What an import did: the merged database, the uids added, and what was skipped (why)."""

    database: AssetDatabase
    imported: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# validation and reporting


def _default_validate(path: Path) -> Any:
    """Load the mesh as retrieval will (small textures: only readability matters here).

    ``quiet``: the loader logs every mesh at INFO; for thousands of validation loads that is
    noise.
    """
    from ra3d.representations.mesh import load_mesh

    return load_mesh(path, max_texture_size=64, quiet=True)


def _broken_mesh_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this mesh is unreadable" (skip it) rather than a bug (abort)."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError)
    try:
        from ra3d.representations.mesh import MeshLoadError
    except ImportError:
        return errors
    return (MeshLoadError, *errors)


def _check_mesh(validate: MeshValidator, path: Path) -> str | None:
    """None when ``validate(path)`` accepts the mesh, else a one-line reason."""
    try:
        validate(path)
    except _broken_mesh_errors() as err:
        # The validator's own one-line message (it names the problem); other errors keep their
        # type. Name the file, not its temporary staging location.
        text = str(err) if _is_mesh_error(err) else f"{type(err).__name__}: {err}"
        text = text.replace(str(path), path.name)
        return (text.splitlines() or [type(err).__name__])[0][:300]
    return None


def _is_mesh_error(err: BaseException) -> bool:
    try:
        from ra3d.representations.mesh import MeshLoadError
    except ImportError:
        return False
    return isinstance(err, MeshLoadError)


def _warn_skipped(skipped: Sequence[tuple[str, str]], what: str) -> None:
    if not skipped:
        return
    listing = "; ".join(f"{name} ({reason})" for name, reason in skipped)
    message = f"{what}: skipped {len(skipped)} item(s): {listing}"
    logger.warning(message)
    warnings.warn(message, AssetImportWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# mesh dependencies (materials, textures, buffers)

_MTL_MAP_KEYS = ("map_", "bump", "disp", "decal", "refl", "norm")


def _reference_candidates(rest: str) -> list[str]:
    """File names a material/mtllib statement may mean: the whole rest, then without options.

    Statements like ``map_Kd -s 1 1 1 wood grain.jpg`` mix options and names with spaces, so
    we try the longest suffixes of the token list first.
    """
    tokens = rest.split()
    return [" ".join(tokens[i:]) for i in range(len(tokens))]


def _resolve_reference(
    base_dir: PurePosixPath, ref: str, exists: Callable[[PurePosixPath], bool]
) -> PurePosixPath | None:
    """The path of referenced file ``ref`` relative to the root, or None when it cannot be found.

    Relative references resolve against ``base_dir``; absolute ones (``C:/Users/x/wood.jpg``,
    common in exported OBJ/MTL files) fall back to their file name in ``base_dir``.
    """
    ref = ref.strip().strip('"').replace("\\", "/")
    if not ref:
        return None
    if not (ref.startswith("/") or re.match(r"^[A-Za-z]:", ref)):
        candidate = PurePosixPath(posixpath.normpath((base_dir / ref).as_posix()))
        if not candidate.as_posix().startswith("..") and exists(candidate):
            return candidate
    by_name = base_dir / PurePosixPath(ref).name
    return by_name if exists(by_name) else None


def mesh_dependencies(
    mesh: PurePosixPath,
    read_text: Callable[[PurePosixPath], str],
    exists: Callable[[PurePosixPath], bool],
) -> list[PurePosixPath]:
    """Files ``mesh`` needs besides itself: OBJ → MTL → textures, glTF → buffers and images.

    Works on any tree through ``read_text``/``exists`` (a folder or a zip archive). Paths are
    relative to the same root as ``mesh``; unresolvable references are simply not listed (the
    validator decides whether the mesh is still usable).
    """
    base = mesh.parent
    deps: list[PurePosixPath] = []

    def add(path: PurePosixPath | None) -> None:
        if path is not None and path != mesh and path not in deps:
            deps.append(path)

    suffix = mesh.suffix.lower()
    if suffix == ".obj":
        for line in read_text(mesh).splitlines():
            if line.startswith("mtllib"):
                for cand in _reference_candidates(line[6:]):
                    found = _resolve_reference(base, cand, exists)
                    if found is not None:
                        add(found)
                        break
        for mtl in [d for d in deps if d.suffix.lower() == ".mtl"]:
            for line in read_text(mtl).splitlines():
                key, _, rest = line.strip().partition(" ")
                if not key.lower().startswith(_MTL_MAP_KEYS) or not rest.strip():
                    continue
                for cand in _reference_candidates(rest):
                    found = _resolve_reference(mtl.parent, cand, exists)
                    if found is not None:
                        add(found)
                        break
    elif suffix == ".gltf":
        try:
            doc = json.loads(read_text(mesh))
        except json.JSONDecodeError:
            return deps
        for item in [*doc.get("buffers", []), *doc.get("images", [])]:
            uri = item.get("uri") if isinstance(item, dict) else None
            if isinstance(uri, str) and not uri.startswith("data:"):
                add(_resolve_reference(base, urllib.parse.unquote(uri), exists))
    return deps


def _relative_to(path: PurePosixPath, root: PurePosixPath) -> PurePosixPath:
    return path if root == PurePosixPath(".") else path.relative_to(root)


# --------------------------------------------------------------------------------------------
# folder + captions CSV

_PATH_COLUMNS = ("path", "file", "mesh", "mesh_path", "filename", "uid")


@dataclass
class _CaptionRow:
    ref: str
    caption: str
    extra: dict[str, str]
    line: int


def _read_captions_csv(path: Path) -> list[_CaptionRow]:
    """Rows of a captions CSV: with a header (``path``/``uid`` + ``caption`` columns, optional
    ``uid, license, attribution, source, category, tags, title, url``) or without one
    (``path_or_uid,caption``, the Cap3D layout)."""
    if path.is_dir():
        raise DatabaseError(f"captions CSV {path} is a directory; pass the .csv file")
    if not path.is_file():
        raise DatabaseNotFoundError(f"captions CSV {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except UnicodeDecodeError as err:
        raise DatabaseError(
            f"captions CSV {path} is not UTF-8 text (byte {err.start}: {err.reason}); pass a "
            "CSV of 'path,caption' rows saved as UTF-8"
        ) from None
    except csv.Error as err:
        raise DatabaseError(f"captions CSV {path} is not a valid CSV file ({err})") from None
    if not rows:
        raise DatabaseError(f"captions CSV {path} is empty; expected rows 'path,caption'")
    header = [c.strip().lower() for c in rows[0]]
    out: list[_CaptionRow] = []
    if "caption" in header:
        ref_col = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
        if ref_col is None:
            raise DatabaseError(
                f"captions CSV {path} has a header without a path column; name one of "
                f"{list(_PATH_COLUMNS)}"
            )
        cap_col = header.index("caption")
        for lineno, row in enumerate(rows[1:], start=2):
            cells = row + [""] * (len(header) - len(row))
            extra = {h: cells[i].strip() for i, h in enumerate(header) if i not in (ref_col,)}
            out.append(_CaptionRow(cells[ref_col].strip(), cells[cap_col].strip(), extra, lineno))
    else:
        for lineno, row in enumerate(rows, start=1):
            if len(row) < 2:
                raise DatabaseError(
                    f"captions CSV {path}, line {lineno}: expected 'path_or_uid,caption', "
                    f"got {row!r}"
                )
            # Unquoted commas inside a caption split it into more cells: join them back.
            out.append(_CaptionRow(row[0].strip(), ",".join(row[1:]).strip(), {}, lineno))
    return out
