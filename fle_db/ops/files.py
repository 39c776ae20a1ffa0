"""Durable file writes shared by backups and exports.

A file fle-db writes replaces only a regular file or nothing: a FIFO, a device node, a socket, a
folder or a symlink at the target is refused (renaming over it would replace ``/dev/full`` by a
regular file, or a symlink instead of writing where it points).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from ..errors import FleDBError, StorageFullError, ValidationError


def checked_path(value: Any, what: str, error: type[FleDBError] = ValidationError) -> Path:
    """``value`` as a ``Path`` if it is a usable file path: a ``str`` or ``os.PathLike`` naming a
    text path, not empty, without NUL or lone surrogates (no file system takes those).

    Raises:
        ``error`` (ValidationError by default) naming ``what``.
    """
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str) or not path or "\x00" in path:
        raise error(f"{what} must be a file path, got {value!r:.80}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not a valid file path: {value!r:.80}") from None
    return Path(path)


def check_regular(
    path: str | Path, what: str, *, follow_symlinks: bool, error: type[FleDBError] = ValidationError
) -> None:
    """Raise ``error`` naming ``what`` unless ``path`` is absent or a regular file (with
    ``follow_symlinks=False``, a symlink is refused too)."""
    try:
        mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"{what} cannot be examined: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "a special file"
        raise error(f"{what} is {kind}, not a regular file")


def check_replaceable(path: Path) -> None:
    """Raise ValidationError unless ``path`` is absent or a regular file (not a symlink): the
    only things a write of fle-db may replace."""
    check_regular(path, repr(str(path)), follow_symlinks=False)


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A new owner-only file that replaces ``path`` atomically when the block succeeds (fsynced,
    then renamed, then the directory fsynced); on failure the temporary file is removed.

    Raises:
        ValidationError: ``path`` is not absent or a regular file, or its folder cannot be used.
        StorageFullError: the disk filled up (nothing is left behind).
    """
    check_replaceable(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # mode 0600
    except OSError as exc:
        raise ValidationError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as raw:
            yield raw
            raw.flush()
            os.fsync(raw.fileno())
        check_replaceable(path)  # again: something may have appeared there meanwhile
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise StorageFullError(f"the disk is full: {str(path)!r} was not written") from exc
        raise
    fsync(directory)


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A new owner-only folder beside ``path`` to fill; when the block succeeds its files are
    fsynced and it is renamed to ``path`` (an empty folder there is replaced), then the parent
    fsynced; on failure it is removed with everything in it.

    Raises:
        ValidationError: ``path`` is something other than an absent or empty folder (checked
        before and again just before the rename), or its parent cannot be used.
        StorageFullError: the disk filled up (nothing is left behind).
    """
    _check_empty_folder(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))  # mode 0700
    except OSError as exc:
        raise ValidationError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        yield work
        for folder, _, names in os.walk(work):
            for name in names:
                fsync(Path(folder) / name)
            fsync(Path(folder))
        _check_empty_folder(path)
        with suppress(FileNotFoundError):
            os.rmdir(path)
        os.rename(work, path)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise StorageFullError(f"the disk is full: {str(path)!r} was not written") from exc
        raise
    fsync(parent)


def _check_empty_folder(path: Path) -> None:
    """Raise ValidationError unless ``path`` is absent or an empty folder (not a symlink)."""
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ValidationError(f"{str(path)!r} cannot be examined: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(mode):
        raise ValidationError(f"{str(path)!r} exists and is not a folder: give a new or empty folder")
    with os.scandir(path) as entries:
        empty = next(entries, None) is None
    if not empty:
        raise ValidationError(f"{str(path)!r} is not empty: give a new or empty folder")


def fsync(path: Path) -> None:
    """Make a file's content, or a folder's entries (a rename, a new file), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
