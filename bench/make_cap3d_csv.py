"""Write a synthetic captions CSV in the format of Cap3D's ``Cap3D_automated_Objaverse.csv``.

Cap3D's file (Luo et al., 2023) has no header and one ``uid,caption`` row per Objaverse object:
the uid is 32 lower-case hex digits, the caption one sentence such as ``"3D model of a red and
white mushroom house with a door and windows."``, quoted by the CSV writer when it holds a comma
(some rows of the real file are not quoted, which splits the caption into more cells). This
script writes such rows from templates — objects, colours, materials, parts — for benchmarks of
the catalog import at Objaverse's size (≈ 800k rows), plus a few percent of the bad rows a real
download can contain: NUL bytes, empty or control-only captions, invalid uids, duplicate uids and
bytes that are not UTF-8. The counts of each kind are printed (and written with ``--counts``), so
an import's summary line can be checked against them.

    python bench/make_cap3d_csv.py /tmp/cap3d-800k.csv --rows 800000 --bad 0.03
    python bench/make_cap3d_csv.py /tmp/cap3d-1k.csv --rows 1000 --seed 1
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

OBJECTS = (
    "chair", "table", "lamp", "sofa", "car", "truck", "tree", "house", "castle", "robot",
    "sword", "shield", "helmet", "teddy bear", "dog", "cat", "dragon", "bird", "fish", "boat",
    "airplane", "rocket", "guitar", "piano", "mug", "bottle", "vase", "book", "clock", "phone",
    "laptop", "shoe", "hat", "backpack", "barrel", "crate", "bench", "bed", "door", "window",
    "tower", "bridge", "statue", "skull", "mushroom", "flower", "rock", "building", "character",
    "spaceship",
)  # fmt: skip
COLOURS = (
    "red", "blue", "green", "white", "black", "brown", "grey", "yellow", "orange", "pink",
    "purple", "golden", "silver",
)  # fmt: skip
MATERIALS = ("wooden", "metal", "stone", "plastic", "glass", "leather", "ceramic", "low-poly")
PARTS = (
    "a handle", "four legs", "a door and windows", "wheels", "a long tail", "a roof",
    "a cushion", "a base", "wings", "a chimney", "two arms", "a lid", "a stand", "horns",
)  # fmt: skip
OPENINGS = ("3D model of a", "A 3D model of a", "a", "A", "3D rendering of a")
BAD_KINDS = (
    "NUL bytes",
    "empty or control-only caption",
    "invalid uid",
    "duplicate uid",
    "not UTF-8",
)


def caption(rng: random.Random) -> str:
    """One Cap3D-style sentence."""
    obj = rng.choice(OBJECTS)
    colours = rng.sample(COLOURS, rng.choice((1, 1, 2)))
    colour = " and ".join(colours)
    material = rng.choice(MATERIALS) + " " if rng.random() < 0.5 else ""
    text = f"{rng.choice(OPENINGS)} {colour} {material}{obj}"
    if rng.random() < 0.6:
        text += f" with {rng.choice(PARTS)}"
        if rng.random() < 0.3:
            text += f", {rng.choice(PARTS)}"
    return text + "."


def write(path: Path, rows: int, bad: float, seed: int) -> Counter:
    """Write ``rows`` rows (``bad`` of them bad) to ``path``; returns the bad rows by kind."""
    rng = random.Random(seed)
    counts: Counter = Counter()
    seen: list[str] = []
    with path.open("wb") as out:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text)
        for _ in range(rows):
            uid = f"{rng.getrandbits(128):032x}"
            cap = caption(rng)
            kind = rng.choice(BAD_KINDS) if rng.random() < bad else None
            if kind == "duplicate uid" and not seen:
                kind = None
            counts[kind or "good"] += 1
            if kind == "not UTF-8":  # raw bytes no encoder writes: a latin-1 file spliced in
                text.flush()
                out.write(uid.encode() + b",caf\xe9 " + cap.encode() + b"\r\n")
                continue
            if kind == "NUL bytes":
                cap = "\x00" * rng.randint(1, 4)
            elif kind == "empty or control-only caption":
                cap = rng.choice(("", "   ", "\x01\x02", "\u200b"))
            elif kind == "invalid uid":
                uid = rng.choice((uid[:31], uid + "0", uid.replace(uid[3], "g"), "", "uid-" + uid))
            elif kind == "duplicate uid":
                uid = rng.choice(seen)
            if kind is None and len(seen) < 100_000:
                seen.append(uid)
            writer.writerow([uid, cap])
        text.flush()
        text.detach()
    counts.pop("good", None)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path, help="CSV file to write")
    ap.add_argument("--rows", type=int, default=800_000)
    ap.add_argument("--bad", type=float, default=0.03, help="fraction of bad rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--counts", type=Path, default=None, help="write the bad-row counts as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    counts = write(args.out, args.rows, args.bad, args.seed)
    seconds = time.perf_counter() - t0
    size = args.out.stat().st_size
    print(
        f"wrote {args.rows:,} rows ({sum(counts.values()):,} bad: {dict(counts)}) to {args.out}, "
        f"{size / 2**20:.1f} MiB, in {seconds:.1f} s"
    )
    if args.counts:
        args.counts.write_text(json.dumps(dict(counts), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
