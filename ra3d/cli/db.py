"""``ra3d db``: inspect an asset database or import assets into one.

    ra3d db info [--db PATH]
    ra3d db import folder PATH --captions CSV --db OUT [--license L] [--attribution A]
    ra3d db import sh3f FILE --db OUT
    ra3d db import objaverse --cap3d CSV --db OUT [--uids FILE | --limit N] [--mirror DIR]
                             [--annotations] [--license L ...] [--download [--processes P]]
    ra3d db embed [--db PATH] [--embedder minilm|clip] [--devices N] [--accelerator cpu|gpu]
                  [--chunk N]

User errors print one ``ra3d db: error: ...`` line and return 2; an import that skipped every
mesh returns 1; skipped meshes are listed as warnings on stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ra3d.errors import Ra3dError
from ra3d.retrieval.database import AssetDatabase, default_database


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main_db can return a status code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message}\n\n{self.format_usage().strip()}")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="ra3d db", description="Inspect or import 3D asset databases.")
    sub = parser.add_subparsers(
        dest="command", metavar="{info,import,embed}", parser_class=_ArgumentParser
    )
    info = sub.add_parser("info", help="summary of a database (count, sources, licences, cache)")
    info.add_argument(
        "--db", type=Path, default=None, help="database folder (default: $RA3D_DATABASE or builtin)"
    )
    imp = sub.add_parser("import", help="import assets into a database (created if missing)")
    kinds = imp.add_subparsers(
        dest="kind", metavar="{folder,sh3f,objaverse}", parser_class=_ArgumentParser
    )

    folder = kinds.add_parser("folder", help="a folder of meshes with a captions CSV")
    folder.add_argument("path", type=Path, help="folder holding the meshes")
    folder.add_argument("--captions", type=Path, required=True, help="CSV: path,caption[,...]")
    folder.add_argument("--db", type=Path, required=True, help="database folder to import into")
    folder.add_argument("--license", default="unknown", help="licence of rows without one")
    folder.add_argument("--attribution", default="", help="attribution of rows without one")
    folder.add_argument("--source", default=None, help="source label (default folder:<name>)")

    sh3f = kinds.add_parser("sh3f", help="a Sweet Home 3D furniture catalog (.sh3f)")
    sh3f.add_argument("file", type=Path)
    sh3f.add_argument("--db", type=Path, required=True)

    obj = kinds.add_parser(
        "objaverse",
        help="Objaverse objects with Cap3D captions: a catalog, meshes fetched when retrieved",
    )
    obj.add_argument("--cap3d", type=Path, required=True, help="Cap3D captions CSV (uid,caption)")
    pick = obj.add_mutually_exclusive_group()
    pick.add_argument("--uids", type=Path, help="only the uids of this file (one per line)")
    pick.add_argument("--limit", type=int, help="only the first N captioned uids of the CSV")
    obj.add_argument("--db", type=Path, required=True)
    obj.add_argument(
        "--mirror", type=Path, default=None, metavar="DIR",
        help="local copy of Objaverse (DIR/glbs/<group>/<uid>.glb, as the objaverse package lays "
        "it out): retrieves take meshes from it instead of downloading them",
    )  # fmt: skip
    obj.add_argument(
        "--annotations", action="store_true",
        help="fetch licence and attribution of every recorded object now (default: when retrieved)",
    )  # fmt: skip
    obj.add_argument(
        "--license", action="append", default=None,
        help="only record objects under this licence (repeatable, e.g. CC0-1.0, CC-BY; fetches "
        "the annotations)",
    )  # fmt: skip
    obj.add_argument(
        "--download", action="store_true",
        help="also download (and validate) the recorded objects' meshes now, for offline use",
    )  # fmt: skip
    obj.add_argument("--processes", type=int, default=1, help="parallel download processes")

    emb = sub.add_parser(
        "embed",
        help="compute the caption embeddings of a database ahead of retrieval (resumable; "
        "several devices through Lightning DDP)",
    )
    emb.add_argument(
        "--db", type=Path, default=None, help="database folder (default: $RA3D_DATABASE or builtin)"
    )
    emb.add_argument("--embedder", choices=("minilm", "clip"), default="minilm")
    emb.add_argument("--clip-model", default=None, help="open_clip model (with --embedder clip)")
    emb.add_argument(
        "--clip-pretrained", default=None, help="CLIP weights tag or file (with --embedder clip)"
    )
    emb.add_argument("--devices", type=int, default=1, help="devices (ranks) per node")
    emb.add_argument("--num-nodes", type=int, default=1, help="nodes (Lightning's num_nodes)")
    emb.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    emb.add_argument(
        "--chunk", type=int, default=None,
        help="captions per chunk, the unit written (and resumed) at once (default 4096)",
    )  # fmt: skip
    emb.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "-"


def _info(db_path: Path | None) -> int:
    from ra3d.io import format_bytes
    from ra3d.retrieval.fetch import mesh_availability

    db = AssetDatabase.open(db_path) if db_path is not None else default_database()
    s = db.summary()
    meshes = mesh_availability(db)
    catalog = s["catalog"] or "in memory"
    if s["format"] == "jsonl":
        catalog = f"manifest.jsonl, loaded into {catalog}"
    else:
        catalog = f"{catalog} ({format_bytes(s['catalog_bytes'])})"
    print(f"database:   {s['root']}")
    print(f"catalog:    {catalog}")
    print(f"assets:     {s['assets']}")
    print(f"manifest:   {s['manifest_hash'][:16]}")
    print(f"sources:    {_format_counts(s['sources'])}")
    print(f"licences:   {_format_counts(s['licenses'])}")
    print(f"categories: {_format_counts(s['categories'])}")
    share = meshes["local"] / meshes["total"] if meshes["total"] else 1.0
    local = f"{meshes['local']} of {meshes['total']} on this machine ({100 * share:.1f}%)"
    if meshes["remote"]:
        if meshes["remote_local"] is None:
            local = f"{meshes['stored_present']} stored; {meshes['remote']} fetched on demand"
        local += f"; {meshes['remote']} Objaverse object(s) fetched by {meshes['fetcher']}"
    print(f"meshes:     {local}")
    if s["annotations"]:
        print(f"annotated:  {s['annotations']} asset(s) with cached licence and credit")
    if s["missing_meshes"]:
        print(f"missing:    {len(s['missing_meshes'])} mesh file(s): {s['missing_meshes'][:5]}")
    if s["cache_dir"]:
        print(
            f"cache:      {s['cache_dir']} ({s['cache_files']} files, "
            f"{format_bytes(s['cache_bytes'])}; fetched meshes: {meshes['mesh_cache_files']}, "
            f"{format_bytes(meshes['mesh_cache_bytes'])})"
        )
    else:
        print("cache:      empty (embeddings are computed on first retrieval)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ra3d.retrieval import importers

    if args.kind == "folder":
        result = importers.import_folder(
            args.path,
            args.captions,
            args.db,
            source=args.source,
            license=args.license,
            attribution=args.attribution,
        )
    elif args.kind == "sh3f":
        result = importers.import_sh3f(args.file, args.db)
    else:
        uids = None
        if args.uids is not None:
            if not args.uids.is_file():
                what = "is a directory" if args.uids.is_dir() else "does not exist"
                raise _UsageError(f"uid list {args.uids} {what}; pass a text file of uids")
            try:
                text = args.uids.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise _UsageError(f"uid list {args.uids} is not UTF-8 text") from None
            uids = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if args.limit is not None and args.limit <= 0:
            raise _UsageError("--limit must be a positive number of objects")
        if args.processes < 1:
            raise _UsageError(f"--processes must be >= 1, got {args.processes}")
        result = importers.import_objaverse(
            args.db,
            cap3d_csv=args.cap3d,
            uids=uids,
            limit=args.limit,
            mirror=args.mirror,
            annotations=args.annotations,
            download=args.download,
            download_processes=args.processes,
            allowed_licenses=args.license,
        )
    db = result.database
    print(
        f"imported {len(result.imported)} asset(s), skipped {len(result.skipped)}; "
        f"{db.root} now holds {len(db)} asset(s)"
    )
    return 0 if result.imported or not result.skipped else 1


def _embed(args: argparse.Namespace) -> int:
    """``ra3d db embed``: fill the caption store that ``ra3d retrieve`` then reads (the same
    folder and chunking, so a later retrieve only builds the index)."""
    import time

    from ra3d.retrieval.embed import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, make_embedder
    from ra3d.retrieval.embed_predict import embed_with_trainer
    from ra3d.retrieval.search import CACHE_SUBDIR, CAPTION_CHUNK

    chunk = CAPTION_CHUNK if args.chunk is None else args.chunk
    if chunk < 1 or args.devices < 1 or args.num_nodes < 1:
        raise _UsageError("--chunk, --devices and --num-nodes must be >= 1")
    if args.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise _UsageError("--accelerator gpu: no CUDA device here; use --accelerator cpu")
    db = AssetDatabase.open(args.db) if args.db is not None else default_database()
    clip = dict(
        clip_model=args.clip_model or DEFAULT_CLIP_MODEL,
        clip_pretrained=args.clip_pretrained or DEFAULT_CLIP_PRETRAINED,
    )
    embedder = make_embedder(args.embedder, device="cpu", **clip)

    def factory(device: object) -> object:
        return make_embedder(args.embedder, device=device, **clip)  # type: ignore[arg-type]

    t0 = time.perf_counter()
    store, trainer, writer = embed_with_trainer(
        db, embedder, root=db.cache_dir / CACHE_SUBDIR, chunk=chunk, devices=args.devices,
        accelerator=args.accelerator, num_nodes=args.num_nodes, factory=factory,  # type: ignore[arg-type]
        progress=not args.no_progress,
    )  # fmt: skip
    if trainer.global_rank != 0:
        return 0
    missing = store.missing_chunks()
    dt = time.perf_counter() - t0
    print(
        f"caption embeddings of {len(db)} asset(s) with {embedder.id}: "
        f"{store.n_chunks - len(missing)} of {store.n_chunks} chunk(s) done "
        f"({len(writer.written)} by rank 0 in this run, {trainer.world_size} rank(s), "
        f"{dt:.1f} s) in {store.folder}"
    )
    if missing:
        print(f"ra3d db: error: {len(missing)} chunk(s) are still missing; run it again to resume",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    print(f"ra3d db: warning: {message}", file=sys.stderr)


def main_db(argv: Sequence[str]) -> int:
    """Entry point of ``ra3d db``; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "import" and args.kind is None:
            raise _UsageError("say what to import: ra3d db import {folder,sh3f,objaverse} ...")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            if args.command == "info":
                return _info(args.db)
            if args.command == "embed":
                return _embed(args)
            return _import(args)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    except _UsageError as err:
        print(f"ra3d db: error: {err}", file=sys.stderr)
        return 2
    except (Ra3dError, FileNotFoundError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"ra3d db: error: {message}", file=sys.stderr)
        return 2  # bad input, as every ra3d command (ra3d.errors)


if __name__ == "__main__":
    sys.exit(main_db(sys.argv[1:]))
