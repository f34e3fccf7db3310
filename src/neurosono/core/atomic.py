"""Atomic file and folder writes: a reader never sees half a file, a crash leaves no debris."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would surprise users sharing outputs
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class OutputExistsError(FileExistsError):
    """Refusing to overwrite something the user already has."""


@contextlib.contextmanager
def staged_directory(final: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``final`` only on success.

    ``final`` must not exist (or be an empty folder): a user's data is never overwritten.
    """
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise OutputExistsError(f"{final}: already exists and is not empty; choose a new output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(final.parent, os.W_OK):
        raise PermissionError(f"{final.parent}: output folder is not writable")
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        if final.exists():
            final.rmdir()  # empty, checked above
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def writable_folder(folder: str | Path, what: str = "output") -> Path:
    """Create ``folder`` if needed and make sure it can be written; the error names it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"{folder}: cannot create the {what} folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{folder}: {what} folder is not writable")
    return folder
