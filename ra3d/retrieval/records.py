"""One asset of the database D (Sec. 4.1) as a value: :class:`AssetRecord`, and the rules every
record obeys (safe uids and paths, clean captions).

Kept apart from the storage (:mod:`ra3d.retrieval.catalog`, SQLite) and from the database object
(:mod:`ra3d.retrieval.database`) so that both, and the importers, share one definition without
importing each other. ``ra3d.retrieval.database`` re-exports every public name.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ra3d.errors import Ra3dError

_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
OBJAVERSE_UID_RE = re.compile(r"^[0-9a-f]{32}$")
_OBJAVERSE_PATH_RE = re.compile(r"^glbs/[A-Za-z0-9_-]{1,32}/([0-9a-f]{32})\.glb$")

#: Where a record's mesh lives. ``database``: a file inside the database folder (``mesh_path`` is
#: relative to it). ``objaverse``: an Objaverse 1.0 object, brought to this machine on demand
#: (:mod:`ra3d.retrieval.fetch`); ``mesh_path`` is its path in Objaverse, ``glbs/<group>/<uid>.glb``,
#: or empty while the group is not known (``objaverse.load_objects`` finds it from the uid).
MESH_STORES = ("database", "objaverse")

#: Longest caption kept; Cap3D's are under 300 characters, so a longer cell is a broken row
#: (typically an unclosed quote that swallowed the rows after it).
MAX_CAPTION_CHARS = 1000

# Control characters (C0, DEL, C1) and the invisible format characters that turn up in scraped
# text (zero-width space/joiners, bidi marks and embeddings, word joiner, BOM).
_INVISIBLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


class DatabaseError(Ra3dError, ValueError):
    """A database, manifest or import input is invalid; the message names the fix."""


class DatabaseNotFoundError(Ra3dError, FileNotFoundError):
    """The database folder, its catalog or its manifest does not exist."""


def slugify_uid(text: str) -> str:
    """A uid-safe slug of ``text`` (letters, digits, ``.``, ``_``, ``-``): uids become folder names."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-._")
    return slug[:200] or "asset"


def validate_uid(uid: str) -> str:
    """Return ``uid`` if it is safe as a folder name, else raise DatabaseError."""
    if not isinstance(uid, str) or not _UID_RE.match(uid):
        raise DatabaseError(
            f"invalid asset uid {uid!r}: use 1-200 characters from [A-Za-z0-9._-], starting "
            "with a letter or digit (ra3d.retrieval.database.slugify_uid makes one)"
        )
    return uid


def safe_relative_path(path: str, what: str = "path") -> PurePosixPath:
    """``path`` as a normalised relative POSIX path, rejecting absolute paths and ``..``.

    Used for manifest mesh paths and archive members alike, so that nothing a manifest or an
    archive says can point outside the folder it belongs to.
    """
    text = str(path).replace("\\", "/")
    if not text or text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise DatabaseError(f"{what} {path!r} is absolute; it must be relative to its folder")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise DatabaseError(f"{what} {path!r} escapes its folder (contains '..' or is empty)")
    return PurePosixPath(*parts)


def clean_caption(text: str) -> str:
    """``text`` with control and invisible characters replaced by spaces and runs of whitespace
    collapsed: what is embedded and shown. An empty result means the caption had no text."""
    text = unicodedata.normalize("NFC", _INVISIBLE_RE.sub(" ", text))
    return " ".join(text.split())


def caption_problem(text: str) -> str | None:
    """Why ``text`` cannot be a caption (NUL bytes, no visible text, too long), else None.

    NUL bytes are refused outright rather than cleaned: they mean a binary or corrupted row, not
    a caption with a stray character.
    """
    if "\x00" in text:
        return "NUL bytes"
    cleaned = clean_caption(text)
    if not cleaned:
        return "empty or control-only caption"
    if len(cleaned) > MAX_CAPTION_CHARS:
        return f"caption over {MAX_CAPTION_CHARS} characters"
    return None


def objaverse_path_uid(path: str) -> str | None:
    """The uid of an Objaverse path ``glbs/<group>/<uid>.glb``, None if ``path`` is not one."""
    m = _OBJAVERSE_PATH_RE.match(path)
    return m.group(1) if m else None


@dataclass
class AssetRecord:
    """One captioned asset of the database.

    Attributes:
        uid: identifier, unique in the database and safe as a folder name.
        caption: text description c_ret used for text retrieval and Eq. 12's captions.
        mesh_path: for ``mesh_store="database"`` the relative POSIX path of the mesh inside the
            database root; for ``"objaverse"`` the object's path in Objaverse
            (``glbs/<group>/<uid>.glb``) or ``""`` while its group is not known.
        source: where it came from (``sh3f:<catalog>``, ``objaverse``, ``folder:<name>``).
        license: licence identifier (SPDX where known, e.g. ``CC0-1.0``); ``""`` for an Objaverse
            object whose annotation has not been fetched yet.
        attribution: author / title / URL line to credit the asset (``""`` likewise).
        category, tags: optional metadata kept from the source catalog.
        title: the title the author gave the work (may name a whole pack), if known.
        url: page of the original work, if known.
        mesh_store: where the mesh lives, one of :data:`MESH_STORES`.
    """

    uid: str
    caption: str
    mesh_path: str
    source: str
    license: str
    attribution: str
    category: str = ""
    tags: list[str] = field(default_factory=list)
    title: str = ""
    url: str = ""
    mesh_store: str = "database"

    def validate(self) -> AssetRecord:
        """Check field types and path safety; returns self so it can be chained."""
        validate_uid(self.uid)
        for name in ("caption", "mesh_path", "source", "license", "attribution", "category"):
            if not isinstance(getattr(self, name), str):
                raise DatabaseError(f"asset {self.uid!r}: field {name!r} must be a string")
        if not self.caption.strip():
            raise DatabaseError(f"asset {self.uid!r} has an empty caption; give it a text caption")
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise DatabaseError(f"asset {self.uid!r}: tags must be a list of strings")
        if self.mesh_store == "database":
            safe_relative_path(self.mesh_path, what=f"mesh path of asset {self.uid!r}")
        elif self.mesh_store == "objaverse":
            if not OBJAVERSE_UID_RE.match(self.uid):
                raise DatabaseError(
                    f"asset {self.uid!r} is an Objaverse object but its uid is not 32 lower-case "
                    "hex digits"
                )
            if self.mesh_path and objaverse_path_uid(self.mesh_path) != self.uid:
                raise DatabaseError(
                    f"asset {self.uid!r}: Objaverse path {self.mesh_path!r} is not "
                    f"glbs/<group>/{self.uid}.glb"
                )
        else:
            raise DatabaseError(
                f"asset {self.uid!r}: mesh_store {self.mesh_store!r} is not one of {MESH_STORES}"
            )
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; ``mesh_store`` is left out when it is ``"database"``, so manifests
        written before it existed read back byte for byte."""
        data = asdict(self)
        if self.mesh_store == "database":
            del data["mesh_store"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> AssetRecord:
        if not isinstance(data, dict):
            raise DatabaseError(f"{where}: expected a JSON object, got {type(data).__name__}")
        required = ("uid", "caption", "mesh_path", "source", "license", "attribution")
        missing = [k for k in required if k not in data]
        if missing:
            raise DatabaseError(f"{where}: record lacks required field(s) {missing}")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["tags"] = list(kwargs.get("tags") or [])
        try:
            return cls(**kwargs).validate()
        except DatabaseError as err:
            raise DatabaseError(f"{where}: {err}") from None
        except TypeError as err:  # e.g. a field that is null
            raise DatabaseError(f"{where}: {err}") from None


__all__ = [
    "MAX_CAPTION_CHARS",
    "MESH_STORES",
    "OBJAVERSE_UID_RE",
    "AssetRecord",
    "DatabaseError",
    "DatabaseNotFoundError",
    "caption_problem",
    "clean_caption",
    "objaverse_path_uid",
    "safe_relative_path",
    "slugify_uid",
    "validate_uid",
]
