"""The one rule for writing a file that a person or a later run reads.

Every file ra3d writes for the user (exports, validation images, ``retrieved.json``, metrics
CSVs, caches, adapters, evaluation reports) goes through :func:`atomic_write`:

1. the bytes go to a temporary ``.<name>.<random>.partial`` in the target's own folder (the same
   file system, so the final rename is atomic);
2. they are flushed and ``fsync``-ed, so a power cut after the rename cannot leave an empty file;
3. the file gets mode ``0o644`` — ``tempfile.mkstemp`` creates ``0o600``, which hid results from
   the other users of a shared machine — unless the caller says the file is secret;
4. ``os.replace`` puts it in place and the folder is ``fsync``-ed, so the rename survives a crash.

On any failure, Ctrl-C included, the temporary file is removed and the previous file at the path
is left as it was. A full disk (``ENOSPC``, or ``EDQUOT`` for a full quota) becomes one
:class:`~ra3d.errors.DiskFullError` that names the folder, the space needed and free, and the fix;
every other ``OSError`` propagates unchanged.

A core module: only the standard library and :mod:`ra3d.errors` are imported at module level;
numpy and PIL are imported inside the image writers that need them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ra3d.errors import DiskFullError

if TYPE_CHECKING:
    import numpy as np

#: Mode of a written file: readable by everyone, writable by its owner.
PUBLIC_MODE = 0o644
#: Mode of a file only its owner may read (credentials, private caches).
SECRET_MODE = 0o600
#: Suffix of the temporary file a write goes to before it is renamed into place.
PARTIAL_SUFFIX = ".partial"
#: ``errno`` values meaning "the file system (or the user's quota) has no room left".
DISK_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None
)

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: int) -> str:
    """``1887436`` → ``"1.8 MiB"``: binary units, one decimal above a KiB (``"512 B"`` below)."""
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def is_disk_full(error: BaseException) -> bool:
    """True when ``error`` (or the error it was explicitly raised from) is ``ENOSPC``/``EDQUOT``.

    Only the ``__cause__`` chain is followed: an error raised *from* a full disk still means the
    disk is full, while one merely raised *during* the handling of an earlier full-disk error
    (its ``__context__``) may be about something else.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        current = current.__cause__
    return False


def disk_full_error(
    path: str | Path, *, needed: int | None = None, written: int = 0
) -> DiskFullError:
    """The error for a write of ``path`` that ran out of space.

    ``needed`` is the size of the whole file when the caller knows it; otherwise ``written`` (the
    bytes that made it to disk before the failure) is a lower bound of it. The free space is read
    now, after the caller removed its temporary file, so it is what another attempt would get.
    """
    path = Path(path)
    folder = path.parent
    if needed and needed > written:  # a hint smaller than what was written is wrong: ignore it
        need = f"it needs {format_bytes(needed)}"
    elif written:
        need = f"it needs more than the {format_bytes(written)} written before the disk filled"
    else:
        need = "it needs more space than is free"
    try:
        free = f"{format_bytes(shutil.disk_usage(folder).free)} is free"
    except OSError:
        free = "the free space could not be read"
    kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
    error = DiskFullError(
        f"not enough disk space in {folder} to write {path.name}: {need} and {free}; {kept}. "
        "Free up space on that disk or write to another folder (e.g. with --out DIR)"
    )
    error.errno = errno.ENOSPC
    return error


def fsync_file(path: str | Path) -> None:
    """Flush a file that someone else wrote (by name) to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside folder ``path`` durable, where the file system supports it (some,
    and Windows, refuse to open or sync a folder: that is not an error)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _bytes_written(handle: BinaryIO | None, tmp: Path | None) -> int:
    """How far a failed write got: the handle's position (buffered bytes count) or the size on
    disk, whichever is larger; 0 when neither can be read."""
    sizes = [0]
    if handle is not None:
        with contextlib.suppress(Exception):
            sizes.append(handle.tell())
    if tmp is not None:
        with contextlib.suppress(OSError):
            sizes.append(tmp.stat().st_size)
    return max(sizes)


def atomic_write(
    path: str | Path,
    write: Callable[[BinaryIO], object],
    *,
    mode: int = PUBLIC_MODE,
    size_hint: int | None = None,
) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then move it to ``path``.

    Readers see the previous file or the complete new one, never a part. ``mode`` is the new
    file's permission bits (``0o644``; :data:`SECRET_MODE` for a file only its owner may read).
    ``size_hint`` is the file's final size when the caller knows it, for the full-disk message.
    The parent folder is created. Returns ``path``.

    Raises:
        DiskFullError: the file system of ``path`` is full; nothing was changed.
    """
    path = Path(path)
    folder = path.parent
    fd: int | None = None
    handle: BinaryIO | None = None
    tmp: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=folder)
        tmp = Path(tmp_name)
        handle = os.fdopen(fd, "wb")
        fd = None  # owned by the handle now
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as error:
        written = _bytes_written(handle, tmp)
        if handle is not None:
            with contextlib.suppress(OSError):  # flushing the rest fails again on a full disk
                handle.close()
        elif fd is not None:
            os.close(fd)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full_error(path, needed=size_hint, written=written) from error
        raise
    fsync_dir(folder)
    return path


def write_bytes_atomic(path: str | Path, data: bytes, mode: int = PUBLIC_MODE) -> Path:
    """``data`` as the whole content of ``path`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data), mode=mode, size_hint=len(data))


def write_text_atomic(
    path: str | Path, text: str, mode: int = PUBLIC_MODE, encoding: str = "utf-8"
) -> Path:
    """``text`` (encoded as ``encoding``, newlines as they are) as the content of ``path``."""
    return write_bytes_atomic(path, text.encode(encoding), mode=mode)


def write_json_atomic(
    path: str | Path,
    obj: Any,
    *,
    indent: int | None = 2,
    trailing_newline: bool = True,
    mode: int = PUBLIC_MODE,
    **json_options: Any,
) -> Path:
    """``json.dumps(obj, indent=indent, **json_options)`` (and a final newline, so the file is a
    proper text file) as the content of ``path``."""
    text = json.dumps(obj, indent=indent, **json_options)
    return write_text_atomic(path, text + "\n" if trailing_newline else text, mode=mode)


def write_csv_atomic(
    path: str | Path,
    fieldnames: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    mode: int = PUBLIC_MODE,
) -> Path:
    """A CSV with a header of ``fieldnames`` and one line per row (``csv.DictWriter``'s dialect:
    ``\\r\\n`` line ends, missing keys as empty cells)."""
    import csv

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue(), mode=mode)


def write_image_atomic(image: np.ndarray, path: str | Path) -> Path:
    """A PNG of ``image`` (``[H, W, 3]`` or ``[H, W]`` uint8)."""
    from PIL import Image

    picture = Image.fromarray(image)
    return atomic_write(path, lambda handle: picture.save(handle, format="PNG"))


def write_gif_atomic(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """An endlessly looping GIF of ``frames`` (uint8 ``[H, W, 3]``) at ``fps`` frames a second."""
    from PIL import Image

    if not frames:
        raise ValueError(f"a GIF needs at least one frame; none were given for {path}")
    images = [Image.fromarray(frame) for frame in frames]

    def write(handle: BinaryIO) -> None:
        images[0].save(
            handle, format="GIF", save_all=True, append_images=images[1:],
            duration=int(1000 / fps), loop=0,
        )  # fmt: skip

    return atomic_write(path, write)


__all__ = [
    "DISK_FULL_ERRNOS",
    "PARTIAL_SUFFIX",
    "PUBLIC_MODE",
    "SECRET_MODE",
    "atomic_write",
    "disk_full_error",
    "format_bytes",
    "fsync_dir",
    "fsync_file",
    "is_disk_full",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_gif_atomic",
    "write_image_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def build_folder_atomically(
    folder: Path, build: Callable[[Path], None], marker: str, prefix: str
) -> Path:
    """``folder``, made by ``build(tmp)`` in a temporary folder beside it and renamed into place.

    An interrupted build never leaves a half-written folder that a later run would take as
    complete (``marker`` is the file whose presence means "complete"); when another process
    finished the same folder first, its copy is kept. The temporary folder is always removed.
    """
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=prefix))
    try:
        build(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first
            if not (folder / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
