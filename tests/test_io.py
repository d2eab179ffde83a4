"""ra3d's one atomic-write rule (:mod:`ra3d.io`, issue 15 item 3).

Each test checks the files on disk against a fact the writer cannot fake: the bytes and mode
``os.stat``/``read_bytes`` see, the folder listing, what PIL decodes, and — on a real, deliberately
tiny tmpfs — what a file system with no room left does to a write, a checkpoint save and a whole
``ra3d export``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from ra3d.cli import main
from ra3d.errors import DiskFullError, Ra3dError
from ra3d.io import (
    PARTIAL_SUFFIX,
    atomic_write,
    format_bytes,
    write_bytes_atomic,
    write_csv_atomic,
    write_gif_atomic,
    write_image_atomic,
    write_json_atomic,
    write_text_atomic,
)
from ra3d.training.callbacks import save_checkpoint_atomic
from tests.toys import max_density, write_nerf_checkpoint

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def nerf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nerf_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so a mode other than 0o644 is the writer's doing, not the test's."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of ``size`` at ``folder`` (root on Linux only; skips otherwise)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("a real full disk needs Linux's mount -t tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {reason}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB tmpfs: a 1 MiB write cannot fit."""
    with mounted_tmpfs(tmp_path / "small_disk", "300k") as folder:
        yield folder


def leftovers(folder: Path) -> list[str]:
    """Temporary files of unfinished writes anywhere under ``folder``."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((PARTIAL_SUFFIX, ".tmp")))


# ------------------------------------------------------------------ content and permissions
def test_written_file_holds_the_bytes_and_is_readable_by_everyone(tmp_path, umask_022) -> None:
    # tempfile.mkstemp creates 0o600; the rule is 0o644 (val/*.png, retrieved.json, exports).
    path = write_bytes_atomic(tmp_path / "sub" / "a.bin", b"\x00\x01payload")
    assert path == tmp_path / "sub" / "a.bin"
    assert path.read_bytes() == b"\x00\x01payload"
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(path.parent) == ["a.bin"]


def test_secret_file_is_readable_by_its_owner_only(tmp_path, umask_022) -> None:
    path = write_text_atomic(tmp_path / "token.txt", "s3cret\n", mode=0o600)
    assert path.read_text() == "s3cret\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_rewrite_replaces_the_whole_file_and_resets_its_mode(tmp_path, umask_022) -> None:
    path = tmp_path / "m.json"
    path.write_text("x" * 1000)
    path.chmod(0o600)
    write_json_atomic(path, {"b": [1, 2], "a": "é"})
    assert (
        path.read_text(encoding="utf-8")
        == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": "\\u00e9"\n}\n'
    )
    assert json.loads(path.read_text()) == {"b": [1, 2], "a": "é"}
    assert path.stat().st_mode & 0o777 == 0o644


def test_json_options_reach_json_dumps(tmp_path) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json_atomic(tmp_path / "nan.json", {"x": float("nan")}, allow_nan=False)
    assert not (tmp_path / "nan.json").exists() and leftovers(tmp_path) == []
    write_json_atomic(tmp_path / "c.json", [1], indent=None, trailing_newline=False)
    assert (tmp_path / "c.json").read_text() == "[1]"


def test_csv_has_a_header_and_empty_cells_for_missing_keys(tmp_path) -> None:
    path = write_csv_atomic(
        tmp_path / "t.csv", ["step", "loss"], [{"step": 0, "loss": 1.5}, {"step": 1}]
    )
    assert path.read_bytes() == b"step,loss\r\n0,1.5\r\n1,\r\n"


# ------------------------------------------------------------------ failures keep the old file
@pytest.mark.parametrize("failure", [RuntimeError("encoder bug"), KeyboardInterrupt()])
def test_writer_failing_midway_keeps_the_previous_file(tmp_path, failure) -> None:
    path = tmp_path / "result.glb"
    path.write_bytes(b"the earlier, complete export")

    def write_half_then_fail(handle: BinaryIO) -> None:
        handle.write(b"new bytes " * 10_000)
        handle.flush()  # on disk in the temporary file, not only in a buffer
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"the earlier, complete export"
    assert os.listdir(tmp_path) == ["result.glb"]


def _fill_then(code: int):
    """A write callback that writes 1000 bytes, then fails with ``OSError(code)``."""

    def write(handle: BinaryIO) -> None:
        handle.write(b"x" * 1000)
        raise OSError(code, os.strerror(code))

    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_one_clear_error_and_keeps_the_previous_file(tmp_path, code) -> None:
    path = tmp_path / "out" / "retrieved.json"
    path.parent.mkdir()
    path.write_text("[]\n")
    with pytest.raises(DiskFullError) as caught:
        atomic_write(path, _fill_then(code))
    error = caught.value
    assert isinstance(error, Ra3dError) and error.exit_code == 2
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC  # old `except OSError` works
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == code
    message = str(error)
    assert "\n" not in message  # the CLI prints it as one line
    assert str(path.parent) in message and "retrieved.json" in message
    assert "1000 B" in message  # what had been written when the disk filled (a lower bound)
    assert "free" in message and "--out" in message
    assert "previous retrieved.json is kept" in message
    assert path.read_text() == "[]\n"
    assert os.listdir(path.parent) == ["retrieved.json"]


def test_full_disk_message_uses_the_known_size(tmp_path) -> None:
    with pytest.raises(DiskFullError, match=r"it needs 1\.8 MiB .* was not written"):
        atomic_write(tmp_path / "big.png", _fill_then(errno.ENOSPC), size_hint=1_887_437)
    assert os.listdir(tmp_path) == []


def test_other_os_errors_propagate_unchanged(tmp_path) -> None:
    with pytest.raises(PermissionError) as caught:
        atomic_write(tmp_path / "a.txt", _fill_then(errno.EACCES))
    assert not isinstance(caught.value, DiskFullError)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1_887_437, "1.8 MiB"),
        (5 * 1024**3, "5.0 GiB"),
    ],
)
def test_sizes_are_human_readable(size, text) -> None:
    assert format_bytes(size) == text


# ------------------------------------------------------------------ images
def test_png_decodes_to_the_same_pixels(tmp_path, umask_022) -> None:
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    path = write_image_atomic(image, tmp_path / "val" / "step000010.png")
    with Image.open(path) as decoded:
        assert decoded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), image)
    assert path.stat().st_mode & 0o777 == 0o644


def test_gif_has_every_frame_loops_and_keeps_the_frame_rate(tmp_path) -> None:
    from PIL import Image

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    frames = [np.full((8, 12, 3), c, dtype=np.uint8) for c in colours]
    path = write_gif_atomic(frames, tmp_path / "turntable.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        assert gif.info["loop"] == 0 and gif.info["duration"] == 100
        for i, colour in enumerate(colours):
            gif.seek(i)
            assert gif.convert("RGB").getpixel((5, 3)) == colour
    with pytest.raises(ValueError, match="at least one frame"):
        write_gif_atomic([], tmp_path / "empty.gif")
    assert sorted(os.listdir(tmp_path)) == ["turntable.gif"]


# ------------------------------------------------------------------ a real full disk
def test_real_full_disk_keeps_the_previous_file(small_disk) -> None:
    path = small_disk / "vectors.npy"
    path.write_bytes(b"old small file")
    with pytest.raises(DiskFullError) as caught:
        write_bytes_atomic(path, b"\x07" * MIB)
    message = str(caught.value)
    assert str(small_disk) in message and "it needs 1.0 MiB" in message
    free = shutil.disk_usage(small_disk).free
    assert f"{format_bytes(free)} is free" in message and free < MIB
    assert path.read_bytes() == b"old small file"
    assert os.listdir(small_disk) == ["vectors.npy"]


class FileWritingTrainer:
    """Stands in for a Lightning trainer: ``save_checkpoint`` writes ``size`` bytes to the path
    it is given, by name, as Lightning does."""

    lightning_module = None
    is_global_zero = True
    global_step = 7

    def __init__(self, size: int) -> None:
        self.size = size

    def save_checkpoint(self, path: Path) -> None:
        Path(path).write_bytes(b"\x05" * self.size)


def test_checkpoint_save_on_a_full_disk_keeps_last_ckpt(small_disk) -> None:
    last = small_disk / "checkpoints" / "last.ckpt"
    assert save_checkpoint_atomic(FileWritingTrainer(40_000), last)  # fits: replaced
    assert last.read_bytes() == b"\x05" * 40_000
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint_atomic(FileWritingTrainer(MIB), last)
    message = str(caught.value)
    assert str(last.parent) in message and "last.ckpt is kept" in message
    assert last.read_bytes() == b"\x05" * 40_000
    assert os.listdir(last.parent) == ["last.ckpt"]  # no last.ckpt.tmp


def _export_args(run: Path, out: Path) -> list[str]:
    threshold = 0.5 * max_density(run)  # the blob's surface exists at half its peak
    return [
        "export", str(run), "--resolution", "24", "--texture-size", "64",
        "--threshold", str(threshold), "--no-turntable", "--out", str(out),
    ]  # fmt: skip


def test_export_to_a_full_disk_is_one_error_and_leaves_only_complete_files(
    nerf_checkpoint,
    tmp_path,
    capsys,
) -> None:
    reference = tmp_path / "reference"
    assert main(_export_args(nerf_checkpoint, reference)) == 0
    sizes = {p.name: p.stat().st_size for p in reference.iterdir()}
    capsys.readouterr()
    with mounted_tmpfs(tmp_path / "full", "300k") as mount:
        # Leave room for particle0's PNG, MTL and OBJ and half its GLB (tmpfs counts 4 KiB pages),
        # so the disk fills while the GLB is written.
        pages = sum(-(-sizes[f"particle0{s}"] // 4096) for s in ("_albedo.png", ".mtl", ".obj"))
        room = 4096 * (pages + -(-sizes["particle0.glb"] // 4096) // 2)
        filler = mount / "filler.bin"
        filler_size = shutil.disk_usage(mount).free - room
        filler.write_bytes(b"\x00" * filler_size)
        out = mount / "export"
        code = main(_export_args(nerf_checkpoint, out))
        err = capsys.readouterr().err
        left = {p.name: p.read_bytes() for p in out.iterdir()}
        filler_left = filler.stat().st_size
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("ra3d: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert str(out) in errors[0] and "particle0.glb" in errors[0]
    # Only whole files are left, each identical to the same export on a roomy disk.
    assert sorted(left) == ["particle0.mtl", "particle0.obj", "particle0_albedo.png"]
    for name, data in left.items():
        assert data == (reference / name).read_bytes(), name
    assert filler_left == filler_size  # the export touched nothing of what was there


def test_build_folder_atomically_is_all_or_nothing(tmp_path: Path) -> None:
    from ra3d.io import build_folder_atomically

    target = tmp_path / "cache" / "model"
    calls: list[Path] = []

    def failing(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise OSError("interrupted")

    with pytest.raises(OSError, match="interrupted"):
        build_folder_atomically(target, failing, "done.json", ".model-")
    assert not target.exists() and list((tmp_path / "cache").iterdir()) == []  # no temp left

    def good(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "done.json").write_text("{}")

    assert build_folder_atomically(target, good, "done.json", ".model-") == target
    assert (target / "done.json").is_file() and len(calls) == 1
    build_folder_atomically(target, good, "done.json", ".model-")  # complete: not built again
    assert len(calls) == 1 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["model"]
