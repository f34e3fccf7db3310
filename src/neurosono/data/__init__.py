"""Stage 0: the dataset format, its validation, splits and exports."""

from neurosono.data.format import (
    DEFAULT_PLANE_REGIONS,
    DEFAULT_REGIONS,
    Box,
    Case,
    Dataset,
    DatasetFormatError,
    DatasetSpec,
    PlaneSpec,
    default_spec,
    read_labels,
)

__all__ = [
    "DEFAULT_PLANE_REGIONS",
    "DEFAULT_REGIONS",
    "Box",
    "Case",
    "Dataset",
    "DatasetFormatError",
    "DatasetSpec",
    "PlaneSpec",
    "default_spec",
    "read_labels",
]
