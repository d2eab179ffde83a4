"""Import Objaverse 1.0 with Cap3D captions as a catalog: every captioned uid is recorded
(caption, source ``objaverse``, its Objaverse path) and nothing is downloaded.

The paper retrieves from Objaverse's 800K+ objects captioned by Cap3D (Sec. 4.4). Their meshes are
8.9 TB, so the database keeps only the catalog (≈ 200 MB for all of them) and a retrieve fetches
the meshes it needs (:mod:`ra3d.retrieval.fetch`): from ``--mirror DIR``, a local copy laid out as
the ``objaverse`` package lays it out, or else through ``objaverse.load_objects``.

Cap3D's ``Cap3D_automated_Objaverse.csv`` has no header: ``uid,caption`` per row, the caption
quoted when it holds commas (an unquoted one is joined back). The file is read as a stream.
A bad row — NUL bytes, a caption that is empty or only control characters, a uid that is not
32 hex digits, a uid seen before (the first is kept), bytes that are not UTF-8 — is skipped and
counted; the import reports all of them in one summary line.

Licence and attribution come from Objaverse's annotations (``license``, ``name``,
``user.displayName``/``username``, ``viewerUrl``). By default they are fetched for the objects a
retrieve returns and cached in the catalog; ``annotations=True`` (``--annotations``) fetches them
for every recorded object now, from the mirror's ``metadata/`` when it has one, else through
``objaverse.load_annotations``.
"""

from __future__ import annotations

import codecs
import csv
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ra3d.retrieval.database import AssetDatabase, ImportTransaction
from ra3d.retrieval.fetch import MirrorFetcher, ObjaverseFetcher, _objaverse_module
from ra3d.retrieval.importers.common import (
    AssetImportWarning,
    ImportResult,
    MeshValidator,
    _check_mesh,
    _default_validate,
)
from ra3d.retrieval.licenses import LicenseFilter, Provenance, objaverse_provenance
from ra3d.retrieval.records import (
    OBJAVERSE_UID_RE,
    AssetRecord,
    DatabaseError,
    DatabaseNotFoundError,
    caption_problem,
    clean_caption,
)

logger = logging.getLogger(__name__)

DownloadFn = Callable[..., Mapping[str, str]]
AnnotationsFn = Callable[[list[str]], Mapping[str, Mapping[str, Any]]]

#: Bytes of the CSV's start that must be mostly UTF-8 text for it to be read at all (a binary
#: file is one error, not a million bad rows).
_SNIFF_BYTES = 1 << 16
#: uids per ``objaverse.load_annotations`` call of a bulk ``--annotations`` import (each call
#: reads the metadata shards its uids live in; fewer calls, more memory).
ANNOTATION_CHUNK = 100_000
_CSV_FIELD_LIMIT = 1 << 20


@dataclass
class Cap3DRow:
    uid: str
    caption: str
    line: int


@dataclass
class Cap3DReport:
    """What reading a Cap3D CSV found: rows read and bad rows by reason (with a few lines)."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(where)

    def describe(self) -> str:
        parts = [
            f"{n:,} {reason} ({', '.join(self.examples.get(reason, []))})"
            for reason, n in self.skipped.most_common()
        ]
        return "; ".join(parts)


def _check_csv(path: Path) -> None:
    if path.is_dir():
        raise DatabaseError(f"captions CSV {path} is a directory; pass the .csv file")
    if not path.is_file():
        raise DatabaseNotFoundError(f"captions CSV {path} does not exist")
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    # A few undecodable rows are bad rows; a file that is mostly not UTF-8 is not a CSV at all.
    if text and (text.count("\ufffd") > 0.1 * len(text) or text.count("\x00") > 0.1 * len(text)):
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            where = f" (byte {err.start}: {err.reason})"
        else:
            where = ""
        raise DatabaseError(
            f"captions CSV {path} is not UTF-8 text{where}; pass Cap3D's uid,caption CSV saved "
            "as UTF-8"
        )


def iter_cap3d_rows(path: str | Path, report: Cap3DReport | None = None) -> Iterator[Cap3DRow]:
    """The good rows of a Cap3D captions CSV, streamed; bad rows are counted in ``report``.

    A first row ``uid,caption`` is taken as a header and skipped.
    """
    path = Path(path).expanduser()
    _check_csv(path)
    report = report if report is not None else Cap3DReport()
    seen: set[str] = set()
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        first = True
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                report.skip("unreadable CSV row", f"line {reader.line_num}: {err}")
                continue
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if first:
                first = False
                if row[0].strip().lower() == "uid" and len(row) >= 2:
                    continue
            report.rows += 1
            where = f"line {line}"
            text = ",".join(row)
            if "\x00" in text:
                report.skip("NUL bytes", where)
                continue
            if any("\udc80" <= ch <= "\udcff" for ch in text):
                report.skip("not UTF-8", where)
                continue
            uid = row[0].strip().lower().removesuffix(".glb")
            if not OBJAVERSE_UID_RE.match(uid):
                report.skip("invalid uid", where)
                continue
            caption = ",".join(row[1:])  # an unquoted comma splits a caption into more cells
            problem = caption_problem(caption) if len(row) >= 2 else "no caption column"
            if problem is not None:
                report.skip(problem, where)
                continue
            if uid in seen:
                report.skip("duplicate uid", where)
                continue
            seen.add(uid)
            yield Cap3DRow(uid, clean_caption(caption), line)


def read_cap3d_captions(path: str | Path) -> dict[str, str]:
    """Cap3D's captions CSV as ``{uid: caption}`` (order kept; bad rows left out). Holds the
    whole file in memory: :func:`iter_cap3d_rows` streams it."""
    return {row.uid: row.caption for row in iter_cap3d_rows(path)}


@dataclass
class ObjaverseImportResult(ImportResult):
    """An :class:`ImportResult` with the import's counts and its one-line summary."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)
    summary: str = ""


def _normalise_uids(uids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(u.strip().lower().removesuffix(".glb") for u in uids if u.strip()))


def _fetch_annotations(
    uids: Sequence[str],
    mirror: MirrorFetcher | None,
    annotations_fn: AnnotationsFn | None,
    chunk: int,
) -> Iterator[dict[str, Provenance]]:
    """Provenance of ``uids`` from the mirror's metadata, else from ``annotations_fn`` (default
    ``objaverse.load_annotations``), in chunks."""
    if mirror is not None and mirror.has_metadata() and annotations_fn is None:
        wanted = set(uids)
        for shard in mirror.iter_metadata_shards():
            found = {u: objaverse_provenance(u, a) for u, a in shard.items() if u in wanted}
            if found:
                yield found
        return
    fn = annotations_fn or _objaverse_module().load_annotations
    for start in range(0, len(uids), chunk):
        part = list(uids[start : start + chunk])
        try:
            got = dict(fn(part))
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise DatabaseError(
                f"fetching the Objaverse annotations of {len(part)} object(s) failed "
                f"({type(err).__name__}: {err}); check the network, or import without "
                "--annotations (they are then fetched for the objects a retrieve returns)"
            ) from None
        yield {u: objaverse_provenance(u, a) for u, a in got.items() if isinstance(a, Mapping)}


def import_objaverse(
    out_root: str | Path,
    *,
    cap3d_csv: str | Path,
    uids: Sequence[str] | None = None,
    limit: int | None = None,
    mirror: str | Path | None = None,
    annotations: bool = False,
    download: bool = False,
    download_fn: DownloadFn | None = None,
    annotations_fn: AnnotationsFn | None = None,
    validate: MeshValidator | None = None,
    download_processes: int = 1,
    allowed_licenses: Iterable[str] | None = None,
    annotation_chunk: int = ANNOTATION_CHUNK,
) -> ObjaverseImportResult:
    """Record Objaverse objects with their Cap3D captions in the catalog at ``out_root``.

    Without ``uids`` and ``limit`` every captioned uid of the CSV is recorded; ``uids`` picks
    some (those without a caption are reported), ``limit`` keeps the first N. Nothing is
    downloaded unless ``download=True``, which fetches the recorded objects' meshes into the
    database's mesh cache now (``download_fn(uids=..., download_processes=...)`` like
    ``objaverse.load_objects``) and validates them, for a machine that retrieves offline later.

    ``mirror``: a local copy of Objaverse; its path is recorded with the database (retrieves take
    meshes from it) and gives each record its Objaverse path ``glbs/<group>/<uid>.glb``.
    ``annotations`` fetches licence and attribution now (see the module docstring);
    ``allowed_licenses`` (e.g. ``{"CC0-1.0", "CC-BY"}``, see :class:`LicenseFilter`) records only
    objects under those licences, which needs the annotations and so implies ``annotations``.
    """
    cap3d_csv = Path(cap3d_csv).expanduser()
    _check_csv(cap3d_csv)
    mirror_fetcher = MirrorFetcher(mirror) if mirror is not None else None
    license_filter = LicenseFilter.parse(list(allowed_licenses)) if allowed_licenses else None
    wanted = _normalise_uids(uids) if uids is not None else None
    if wanted is not None and not wanted:
        raise DatabaseError("the uid list is empty; give one Objaverse uid per line")
    if limit is not None and int(limit) <= 0:
        raise DatabaseError(f"limit must be a positive number of objects, got {limit}")
    paths = mirror_fetcher.object_paths() if mirror_fetcher is not None else {}
    report = Cap3DReport()
    skipped: list[tuple[str, str]] = []
    recorded: list[str] = []
    wanted_set = set(wanted) if wanted is not None else None

    def selected() -> Iterator[Cap3DRow]:
        taken = 0
        for row in iter_cap3d_rows(cap3d_csv, report):
            if wanted_set is not None and row.uid not in wanted_set:
                continue
            yield row
            taken += 1
            if limit is not None and taken >= int(limit):
                return

    def records(rows: Iterable[Cap3DRow]) -> Iterator[AssetRecord]:
        for row in rows:
            recorded.append(row.uid)
            yield AssetRecord(
                uid=row.uid, caption=row.caption, mesh_path=paths.get(row.uid, ""),
                source="objaverse", license="", attribution="", mesh_store="objaverse",
            )  # fmt: skip

    fetch_notes = annotations or license_filter is not None
    with ImportTransaction(out_root) as tx:
        if license_filter is None:
            writer = tx.add_catalog_records(records(selected()))
            notes_for = recorded
        else:  # the licence decides what is recorded: read the rows, then their annotations
            rows = list(selected())
            notes: dict[str, Provenance] = {}
            for part in _fetch_annotations([r.uid for r in rows], mirror_fetcher,
                                           annotations_fn, annotation_chunk):  # fmt: skip
                notes.update(part)
            keep = []
            for row in rows:
                lic = notes[row.uid].license if row.uid in notes else "unknown"
                if license_filter.allows(lic):
                    keep.append(row)
                else:
                    skipped.append((row.uid, f"licence {lic} not allowed"))
            writer = tx.add_catalog_records(records(keep))
            tx.add_annotations({u: notes[u] for u in recorded if u in notes})
            notes_for = []
        if fetch_notes and notes_for:
            for part in _fetch_annotations(notes_for, mirror_fetcher, annotations_fn,
                                           annotation_chunk):  # fmt: skip
                tx.add_annotations(part)
        if mirror_fetcher is not None:
            tx.set_meta(mirror=str(mirror_fetcher.base))
    if wanted is not None:
        missing = [u for u in wanted if u not in set(recorded) and u not in dict(skipped)]
        skipped += [(u, "no Cap3D caption") for u in missing]
    db = tx.database
    assert db is not None
    failed_downloads = 0
    if download and recorded:
        failed = _prefetch(db, recorded, mirror_fetcher, download_fn, download_processes,
                           validate or _default_validate)  # fmt: skip
        skipped += failed
        failed_downloads = len(failed)
    summary = _summary_line(cap3d_csv, report, writer, skipped, failed_downloads, db)
    if report.skipped or skipped:
        logger.warning(summary)
        warnings.warn(summary, AssetImportWarning, stacklevel=2)
    else:
        logger.info(summary)
    return ObjaverseImportResult(
        database=db,
        imported=recorded,
        skipped=[(where, reason) for reason, ws in report.examples.items() for where in ws]
        + skipped,
        added=writer.added,
        replaced=writer.replaced,
        unchanged=writer.unchanged,
        bad_rows=dict(report.skipped),
        summary=summary,
    )


def _summary_line(
    path: Path,
    report: Cap3DReport,
    writer: Any,
    skipped: list[tuple[str, str]],
    failed_downloads: int,
    db: AssetDatabase,
) -> str:
    line = (
        f"Cap3D import of {path.name}: {report.rows:,} row(s) read, "
        f"{writer.added + writer.replaced + writer.unchanged:,} recorded ({writer.added:,} new, "
        f"{writer.replaced:,} updated, {writer.unchanged:,} unchanged)"
    )
    bad = sum(report.skipped.values())
    if bad:
        line += f"; {bad:,} bad row(s) skipped: {report.describe()}"
    other: dict[str, list[str]] = {}
    for uid, reason in skipped:
        other.setdefault(reason.split(" (")[0], []).append(uid)
    if other:
        line += "; also skipped: " + ", ".join(
            f"{len(us):,} {r} ({', '.join(us[:3])}{', ...' if len(us) > 3 else ''})"
            for r, us in sorted(other.items(), key=lambda kv: -len(kv[1]))
        )
    if failed_downloads:
        line += f" ({failed_downloads:,} mesh(es) could not be downloaded or validated)"
    return line + f"; {db.root} now holds {len(db):,} asset(s)"


def _prefetch(
    db: AssetDatabase,
    uids: Sequence[str],
    mirror: MirrorFetcher | None,
    download_fn: DownloadFn | None,
    processes: int,
    validate: MeshValidator,
) -> list[tuple[str, str]]:
    """Fetch (and validate) the meshes of ``uids`` now; returns what failed, and why."""
    if mirror is not None:
        fetcher: MirrorFetcher | ObjaverseFetcher = mirror
    else:
        fetcher = ObjaverseFetcher(
            db.mesh_cache_dir, download_fn=download_fn, download_processes=processes
        )
    failed: list[tuple[str, str]] = []
    step = 256
    for start in range(0, len(uids), step):
        records = [db.get(u) for u in uids[start : start + step]]
        result = fetcher.fetch(records)
        failed += [(u, f"mesh not fetched ({why})") for u, why in result.failed.items()]
        for uid, path in result.paths.items():
            reason = _check_mesh(validate, path)
            if reason is not None:
                failed.append((uid, f"mesh invalid ({reason})"))
                if isinstance(fetcher, ObjaverseFetcher):
                    path.unlink(missing_ok=True)  # never serve it from the cache
    return failed


__all__ = [
    "ANNOTATION_CHUNK",
    "AnnotationsFn",
    "Cap3DReport",
    "Cap3DRow",
    "DownloadFn",
    "ObjaverseImportResult",
    "import_objaverse",
    "iter_cap3d_rows",
    "read_cap3d_captions",
]
