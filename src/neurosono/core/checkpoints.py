"""Model files neurosono writes and reads: plain tensors and lists, never pickled objects.

Every model file is a dict with a ``format`` tag, saved atomically and loaded with
``torch.load(weights_only=True)``, so a file can not run code when it is opened.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from neurosono.core.atomic import atomic_write_bytes


class ModelFileError(ValueError):
    """A model file is missing, not neurosono's, or of the wrong kind; the message names it."""


def save_payload(path: str | Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_payload(
    path: str | Path,
    default_name: str | tuple[str, ...],
    fmt: str | tuple[str, ...],
    kind: str,
    error: type[ModelFileError] = ModelFileError,
) -> tuple[Path, dict]:
    """(resolved file, payload) for a file, or a run folder holding (the first found of) ``default_name``;
    the payload's format must be ``fmt`` (or one of them)."""
    path = Path(path)
    names = (default_name,) if isinstance(default_name, str) else default_name
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if path.is_dir():
        path = next((path / n for n in names if (path / n).is_file()), path / names[0])
    if not path.is_file():
        raise error(f"{path}: no {kind} file here")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{path}: not a neurosono {kind} file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        expected = " or ".join(repr(f) for f in formats)
        raise error(f"{path}: not a neurosono {kind} file (format {expected} expected)")
    return path, payload


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in blocks: how records and exports name the exact model files."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
