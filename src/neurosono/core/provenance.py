"""What made a file: the package versions every run record and export carries."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

from neurosono import __version__

# The packages whose versions decide a model's numbers (training, export and inference).
PACKAGES = ("torch", "torchvision", "ultralytics", "numpy", "onnx", "onnxruntime")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """neurosono's, Python's and each installed package's version (read from metadata, no import)."""
    versions = {"neurosono": __version__, "python": platform.python_version()}
    for package in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions
