"""Import Sweet Home 3D ``.sh3f`` furniture catalogs: parse the catalog's Java properties and
Blend Swap licence files, refuse unsafe archives, caption each piece from its metadata and
stage its model files member by member."""

from __future__ import annotations

import html
import logging
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ra3d.retrieval.database import (
    AssetRecord,
    DatabaseError,
    DatabaseNotFoundError,
    ImportTransaction,
    safe_relative_path,
    slugify_uid,
)
from ra3d.retrieval.importers.common import (
    ImportResult,
    MeshValidator,
    UnsafeArchiveError,
    _check_mesh,
    _default_validate,
    _relative_to,
    _warn_skipped,
    mesh_dependencies,
)
from ra3d.retrieval.licenses import normalise_license

logger = logging.getLogger(__name__)


def parse_java_properties(text: str) -> dict[str, str]:
    """Parse a Java ``.properties`` document (the format of SH3D catalogs).

    Handles comments (``#``/``!``), ``=``/``:``/whitespace separators, backslash line
    continuations and escapes including ``\\uXXXX``.
    """
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    escapes = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def unescape(s: str) -> str:
        out, i = [], 0
        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s):
                n = s[i + 1]
                if n == "u" and re.match(r"[0-9a-fA-F]{4}", s[i + 2 : i + 6]):
                    out.append(chr(int(s[i + 2 : i + 6], 16)))
                    i += 6
                    continue
                out.append(escapes.get(n, n))
                i += 2
                continue
            out.append(c)
            i += 1
        return "".join(out)

    props: dict[str, str] = {}
    for line in logical:
        i = 0
        while i < len(line):
            if line[i] == "\\":
                i += 2
                continue
            if line[i] in "=: \t\f":
                break
            i += 1
        key = line[:i]
        rest = line[i:].lstrip(" \t\f")
        if rest and rest[0] in "=:":
            rest = rest[1:].lstrip(" \t\f")
        props[unescape(key)] = unescape(rest)
    return props


@dataclass
class BlendSwapLicense:
    """What a Blend Swap licence file (kept in each SH3D model folder) says about the work."""

    title: str
    author: str
    license: str
    url: str


def parse_blendswap_license(text: str) -> BlendSwapLicense | None:
    """Read title, author, licence and URL from a Blend Swap ``LICENSE.txt``/``.html``.

    Three layouts exist (2013 text, 2014 and 2016 HTML). Returns None when no licence statement
    is found, so callers fall back to the catalog's licence.
    """
    is_html = "<html" in text[:500].lower() or "<title>" in text.lower()
    title = author = url = lic = ""
    if is_html:
        m = re.search(r"<title>(.*?)</title>", text, re.S | re.I)
        head = html.unescape(m.group(1)).strip() if m else ""
        m1 = re.match(r"(?P<t>.*) by (?P<a>.*?) - \d+ - Creative Commons License$", head)
        m2 = re.match(r"\d+ - (?P<t>.*) - Downloaded from Blend Swap$", head)
        if m1:
            title, author = m1.group("t"), m1.group("a")
        elif m2:
            title = m2.group("t")
        plain = html.unescape(re.sub(r"<[^>]+>", " ", text))
        plain = re.sub(r"\s+", " ", plain)
        if not title:
            m = re.search(r"Blend #\d+: (.*?) (?:Released under|This file)", plain)
            title = m.group(1).strip() if m else ""
        m = re.search(
            r"(?:Released under|under the following license:) (Creative Commons .*?(?:\)|\d\.\d))",
            plain,
        )
        lic = m.group(1) if m else ""
    else:
        m = re.search(r'Thank you for downloading "(.*?)" by (.+)', text)
        if m:
            title, author = m.group(1).strip(), m.group(2).strip()
        m = re.search(r"(?:Released under|released under)\s*\n\s*([^\n]+)", text)
        lic = m.group(1).strip() if m else ""
    m = re.search(r"https?://www\.blendswap\.com/blends/view/\d+", text)
    url = m.group(0) if m else ""
    if not lic:
        return None
    return BlendSwapLicense(title=title, author=author, license=normalise_license(lic), url=url)


@dataclass
class Sh3fPiece:
    """One furniture piece of an SH3D catalog, with what the archive says about its licence."""

    index: int
    key: str  # the piece id after '#', e.g. "teddyBear"
    uid: str
    name: str
    category: str
    tags: list[str]
    creator: str
    model: PurePosixPath  # path of the model file inside the archive
    multipart: bool
    rotation: list[float] | None  # row-major 3x3 ``modelRotation``
    license: str
    license_origin: str  # "piece", "model licence file" or "catalog"
    title: str = ""
    url: str = ""
    author: str = ""
    model_files: list[PurePosixPath] = field(default_factory=list)
    size_bytes: int = 0  # uncompressed size of model_files


@dataclass
class Sh3fCatalog:
    path: Path
    catalog_id: str
    name: str
    provider: str
    license: str
    pieces: list[Sh3fPiece]
    common_tags: set[str]


def check_archive_members(names: Iterable[str], archive: str | Path) -> None:
    """Raise UnsafeArchiveError when any member path is absolute or contains ``..``."""
    bad = []
    for name in names:
        try:
            safe_relative_path(name, what="member")
        except DatabaseError:
            bad.append(name)
    if bad:
        raise UnsafeArchiveError(
            f"refusing archive {archive}: {len(bad)} member path(s) would escape the "
            f"extraction folder (absolute or with '..'): {bad[:5]}. Nothing was imported; "
            "only use catalogs from trusted sources"
        )


def _zip_entry_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _model_files(
    model: PurePosixPath, multipart: bool, names: Sequence[PurePosixPath], zf: zipfile.ZipFile
) -> list[PurePosixPath]:
    if multipart:
        prefix = model.parent
        return [n for n in names if n.parent == prefix or prefix in n.parents]
    name_set = set(names)

    def read_text(p: PurePosixPath) -> str:
        return zf.read(p.as_posix()).decode("utf-8", errors="replace")

    return [model, *mesh_dependencies(model, read_text, lambda p: p in name_set)]


def read_sh3f_catalog(path: str | Path) -> Sh3fCatalog:
    """Parse an SH3D ``.sh3f`` furniture library (see :func:`_read_sh3f_catalog`); a damaged
    member (intact zip index, corrupt contents) is one clear :class:`DatabaseError`."""
    try:
        return _read_sh3f_catalog(path)
    except DAMAGED_ZIP_ERRORS as err:
        raise _damaged(path, "PluginFurnitureCatalog.properties or a licence file", err) from err


def _read_sh3f_catalog(path: str | Path) -> Sh3fCatalog:
    """Parse an SH3D ``.sh3f`` furniture library (a zip with ``PluginFurnitureCatalog.properties``).

    Rejects the whole archive (UnsafeArchiveError) if any member path escapes it, before
    anything is written. Licences come, in order of trust, from the piece's ``license#N``
    property, a Blend Swap licence file in its model folder, then the catalog's ``license``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise DatabaseError(f"Sweet Home 3D catalog {path} is a directory; pass the .sh3f file")
    if not path.is_file():
        raise DatabaseNotFoundError(f"Sweet Home 3D catalog {path} does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DatabaseError(
            f"{path} is not a Sweet Home 3D .sh3f catalog (not a zip file)"
        ) from None
    with zf:
        infos = zf.infolist()
        check_archive_members([i.filename for i in infos], path)
        files = [
            PurePosixPath(safe_relative_path(i.filename).as_posix())
            for i in infos
            if not i.is_dir() and not _zip_entry_is_symlink(i)
        ]
        sizes = {
            PurePosixPath(safe_relative_path(i.filename).as_posix()): i.file_size
            for i in infos
            if not i.is_dir()
        }
        if PurePosixPath("PluginFurnitureCatalog.properties") not in files:
            raise DatabaseError(
                f"{path} has no PluginFurnitureCatalog.properties, so it is not a Sweet Home 3D "
                "furniture catalog"
            )
        props = parse_java_properties(
            zf.read("PluginFurnitureCatalog.properties").decode("latin-1")
        )
        catalog_id = props.get("id", "") or path.stem
        cat_license = props.get("license", "")
        indices = sorted(
            {int(m.group(1)) for k in props if (m := re.match(r"^name#(\d+)$", k)) is not None}
        )
        pieces: list[Sh3fPiece] = []
        all_tags: list[set[str]] = []
        for n in indices:

            def get(key: str, n: int = n) -> str:
                return props.get(f"{key}#{n}", "").strip()

            model_ref = get("model")
            if not model_ref:
                continue
            if re.match(r"^[a-z][a-z0-9+.-]*:", model_ref, re.I):
                logger.info("piece %d: model %r is a URL, not inside the archive", n, model_ref)
                continue
            try:
                model = PurePosixPath(
                    safe_relative_path(model_ref.lstrip("/"), what=f"model#{n}").as_posix()
                )
            except DatabaseError as err:
                raise UnsafeArchiveError(f"refusing archive {path}: {err}") from None
            piece_id = get("id")
            key = piece_id.split("#", 1)[-1] if piece_id else f"{n}"
            # Lower-case so that uids (folder names) never collide on case-insensitive disks.
            uid = slugify_uid(piece_id or f"{catalog_id}-{n}").lower()
            tags = [t.strip() for t in get("tags").split(",") if t.strip()]
            all_tags.append({t.lower() for t in tags})
            rotation = None
            if get("modelRotation"):
                try:
                    rotation = [float(x) for x in get("modelRotation").split()]
                except ValueError:
                    rotation = None
                if rotation is not None and len(rotation) != 9:
                    rotation = None
            multipart = get("multiPartModel").lower() == "true"
            model_files = _model_files(model, multipart, files, zf) if model in files else []
            lic, origin, info = get("license"), "piece", None
            if not lic:
                for f in (f for f in files if f.parent == model.parent):
                    if "licen" in f.name.lower():
                        info = parse_blendswap_license(
                            zf.read(f.as_posix()).decode("utf-8", errors="replace")
                        )
                        if info is not None:
                            break
                if info is not None:
                    lic, origin = info.license, "model licence file"
                else:
                    lic, origin = normalise_license(cat_license) or "unknown", "catalog"
            else:
                lic = normalise_license(lic)
            piece = Sh3fPiece(
                index=n,
                key=key,
                uid=uid,
                name=get("name"),
                category=get("category"),
                tags=tags,
                creator=get("creator"),
                model=model,
                multipart=multipart,
                rotation=rotation,
                license=lic,
                license_origin=origin,
                title=info.title if info else "",
                url=info.url if info else "",
                author=info.author if info else "",
                model_files=model_files,
                size_bytes=sum(sizes.get(f, 0) for f in model_files),
            )
            pieces.append(piece)
        common = set.intersection(*all_tags) if len(all_tags) > 1 else set()
        return Sh3fCatalog(
            path=path,
            catalog_id=catalog_id,
            name=props.get("name", path.stem),
            provider=props.get("provider", ""),
            license=cat_license,
            pieces=pieces,
            common_tags=common,
        )


def _with_article(phrase: str) -> str:
    """``"a chair"``, ``"an oven"``, ``"a urinal"``; plural names (``"scissors"``) get none."""
    last = phrase.split()[-1] if phrase.split() else phrase
    if last.endswith("s") and not last.endswith(("ss", "us", "is")):
        return phrase
    article = "an" if re.match(r"[aeio]|u(?![nr][aeiou]|s|ni)", phrase.lower()) else "a"
    return f"{article} {phrase}"


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z]{3,}", text.lower())}


_TITLE_JARGON = re.compile(r"\b(?:cycles|ready|low[- ]?poly|blender|blend|model only)\b", re.I)


def clean_title(title: str) -> str:
    """A work title without version stamps, parenthesised notes and Blender jargon
    ("Modern Bed v5.9.2015 (MODEL ONLY)" → "modern bed", "Scissors Cycles Ready" → "scissors")."""
    text = re.sub(r"\([^)]*\)", " ", title)
    text = re.sub(r"\bv?\d+(?:\.\d+)+\b|\bv\d+\b", " ", text)
    text = _TITLE_JARGON.sub(" ", text).replace("_", " ")
    return re.sub(r"\s+", " ", text).strip(" -_").lower()


def sh3f_caption(piece: Sh3fPiece, common_tags: AbstractSet[str] = frozenset()) -> str:
    """Deterministic caption from the catalog's name, tags, category and the work's title.

    Template: ``"<a|an> <name>[ (<title>)][, <tag>, ...]; category: <category>"``. The title is
    only used when it shares a word with the name or tags (titles often name a whole pack) and
    adds at least one word; tags that every piece of the catalog has (e.g. "Blend Swap") and
    tags already in the name are left out. No word is invented.
    """
    name = piece.name.strip().lower() or piece.key.lower()
    caption = _with_article(name)
    title = clean_title(piece.title)
    name_words = _words(name)
    tag_words = set().union(*(_words(t) for t in piece.tags)) if piece.tags else set()
    title_words = _words(title)
    if title_words & (name_words | tag_words) and title_words - name_words:
        caption += f" ({title})"
    extra = [
        t.lower()
        for t in piece.tags
        if t.lower() not in common_tags and not _words(t) <= name_words | _words(title)
    ]
    if extra:
        caption += ", " + ", ".join(dict.fromkeys(extra))
    if piece.category:
        caption += f"; category: {piece.category.lower()}"
    return caption


def sh3f_attribution(piece: Sh3fPiece, catalog: Sh3fCatalog) -> str:
    """Credit line: work title, author(s), URL, licence and the catalog it came through."""
    authors = piece.creator or piece.author or "unknown author"
    work = f'"{piece.title}"' if piece.title else piece.name
    parts = [f"{work} by {authors}"]
    if piece.url:
        parts.append(piece.url)
    parts.append(piece.license)
    via = f'Sweet Home 3D catalog "{catalog.name}"'
    if catalog.provider:
        via += f" ({catalog.provider})"
    parts.append(f"via {via}")
    return ", ".join(parts)


def _rotate_obj(data: bytes, m: Sequence[float]) -> bytes:
    """Apply the row-major 3x3 ``modelRotation`` of SH3D to the ``v`` and ``vn`` lines of an OBJ,
    so the stored mesh is upright in the catalog's convention like the other pieces."""
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        tokens = line.split()
        if tokens and tokens[0] in ("v", "vn") and len(tokens) >= 4:
            try:
                x, y, z = (float(t) for t in tokens[1:4])
            except ValueError:
                out.append(line)
                continue
            r = [m[0] * x + m[1] * y + m[2] * z, m[3] * x + m[4] * y + m[5] * z]
            r.append(m[6] * x + m[7] * y + m[8] * z)
            out.append(" ".join([tokens[0], *(f"{c:.6g}" for c in r), *tokens[4:]]))
        else:
            out.append(line)
    return ("\n".join(out) + "\n").encode("utf-8")


def _extract_member(
    zf: zipfile.ZipFile, member: PurePosixPath, dest_root: Path, rel: PurePosixPath
) -> Path:
    """Copy one archive member to ``dest_root/rel``, refusing any path that leaves ``dest_root``."""
    dest = (dest_root / rel).resolve()
    root = dest_root.resolve()
    if root not in dest.parents:
        raise UnsafeArchiveError(f"archive member {member} would be written outside {dest_root}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zf.open(member.as_posix()) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except DAMAGED_ZIP_ERRORS as err:
        raise _damaged(zf.filename, member, err) from err
    return dest


# What zipfile raises for a member whose bytes are damaged although the zip index is intact:
# "Bad CRC-32" (BadZipFile), a corrupt deflate stream (zlib.error), a stream cut short (EOFError).
DAMAGED_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)


def _damaged(archive: str | Path | None, member: object, err: BaseException) -> DatabaseError:
    return DatabaseError(
        f"{archive} is damaged: its member {member} cannot be read ({type(err).__name__}: "
        f"{err}). Nothing was imported; download the catalog again"
    )


def import_sh3f(
    path: str | Path,
    out_root: str | Path,
    validate: MeshValidator | None = None,
    *,
    select: Callable[[Sh3fPiece], bool] | None = None,
) -> ImportResult:
    """Import the furniture of a Sweet Home 3D ``.sh3f`` catalog into ``out_root``.

    The archive is checked for zip-slip first (any absolute or ``..`` member rejects it with
    UnsafeArchiveError and nothing is written); files are read member by member, never with
    ``extractall``. ``select`` picks a subset of pieces (the starter-library build uses it).
    Pieces whose model file is missing or fails ``validate`` are skipped with a warning.
    """
    catalog = read_sh3f_catalog(path)
    validate = validate or _default_validate
    pieces = [p for p in catalog.pieces if select is None or select(p)]
    source = f"sh3f:{catalog.catalog_id}"
    skipped: list[tuple[str, str]] = []
    imported: list[str] = []
    with zipfile.ZipFile(catalog.path) as zf, ImportTransaction(out_root) as tx:
        for piece in pieces:
            label = f"{piece.key} ({piece.model})"
            if not piece.model_files:
                skipped.append((label, "model file not in the archive"))
                continue
            if piece.model.suffix.lower() in (".zip", ".kmz"):
                skipped.append((label, "nested-archive models are not supported"))
                continue
            target = tx.new_asset_dir(piece.uid)
            root = piece.model.parent
            for member in piece.model_files:
                dest = _extract_member(zf, member, target, _relative_to(member, root))
                if member == piece.model and piece.rotation is not None:
                    if member.suffix.lower() == ".obj":
                        dest.write_bytes(_rotate_obj(dest.read_bytes(), piece.rotation))
                    else:
                        logger.warning("%s: modelRotation not applied to a non-OBJ model", label)
            staged_mesh = _relative_to(piece.model, root)
            reason = _check_mesh(validate, target / staged_mesh)
            if reason is not None:
                tx.discard(piece.uid)
                skipped.append((label, reason))
                continue
            tx.add(
                AssetRecord(
                    uid=piece.uid,
                    caption=sh3f_caption(piece, catalog.common_tags),
                    mesh_path=staged_mesh.as_posix(),
                    source=source,
                    license=piece.license,
                    attribution=sh3f_attribution(piece, catalog),
                    category=piece.category,
                    tags=[t for t in piece.tags if t.lower() not in catalog.common_tags],
                    title=piece.title,
                    url=piece.url,
                )
            )
            imported.append(piece.uid)
    _warn_skipped(skipped, f"import of {catalog.path.name}")
    assert tx.database is not None
    return ImportResult(tx.database, imported, skipped)
