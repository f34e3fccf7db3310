"""Model files neurosono writes and reads: plain tensors and lists, never pickled objects.

Every model file is a dict with a ``format`` tag, saved atomically and loaded with
``torch.load(weights_only=True)``, so a file can not run code when it is opened.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from neurosono.data.atomic import atomic_write_bytes


class ModelFileError(ValueError):
    """A model file is missing, not neurosono's, or of the wrong kind; the message names it."""


def save_payload(path: str | Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_payload(
    path: str | Path, default_name: str, fmt: str, kind: str, error: type[ModelFileError] = ModelFileError
) -> tuple[Path, dict]:
    """(resolved file, payload) for a file or a run folder holding ``default_name``."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise error(f"{path}: no {kind} file here")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{path}: not a neurosono {kind} file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{path}: not a neurosono {kind} file (format {fmt!r} expected)")
    return path, payload
