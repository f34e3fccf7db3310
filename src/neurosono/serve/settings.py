"""What ``neurosono serve`` runs with, and the checks made before it starts."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from neurosono.core.images import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    model: Path | None = None  # a model folder (torch) or an export folder (onnx); None: shipped
    runtime: str = "onnx"  # the shipped models' export is written to the cache on first use
    workers: int = 1  # pipelines working at once, each a full copy of the models
    max_upload_mb: float = 50.0  # a whole request body
    token: str | None = None  # the API's bearer token (required off loopback)
    queue: int = 16  # requests allowed to wait for a worker; beyond that, 503 with Retry-After
    timeout_s: float = 60.0  # per request, waiting included
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image, checked from its header

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (its first line); refused when empty or readable by others."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < 16:
        raise ValueError(f"{path}: the token must be at least 16 characters")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ValueError(f"{path}: the token file is readable by others; chmod 600 it")
    return token


def check_settings(settings: ServeSettings) -> None:
    """Refuse, before anything loads, settings that would be unsafe or cannot work."""
    if not is_loopback(settings.host) and settings.token is None:
        raise ValueError(
            f"--host {settings.host} is reachable from other machines: give --token-file "
            "(the API then needs 'Authorization: Bearer TOKEN')"
        )
    if settings.workers < 1:
        raise ValueError("--workers must be at least 1")
    if settings.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    if settings.queue < 0:
        raise ValueError("--queue must be 0 or more")
    if settings.timeout_s <= 0:
        raise ValueError("--timeout must be positive")
