"""Image files for tests: DICOM written with pydicom, and PNG headers that claim any size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def dicom_file(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    spacing: float | None = 0.2,
    us_region_cm: float | None = None,
    frames: int = 1,
    with_pixels: bool = True,
    patient: dict[str, str] | None = None,
) -> Path:
    """A DICOM ultrasound image of ``pixels``; ``patient``: keyword -> value (PatientName, ...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = (
        pixels.shape[-3:-1] if pixels.ndim == 4 or (pixels.ndim == 3 and frames == 1) else pixels.shape[-2:]
    )
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric in ("RGB", "YBR_FULL") else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if spacing is not None:
        ds.PixelSpacing = [spacing, spacing]
    if us_region_cm is not None:
        region = pydicom.Dataset()
        region.PhysicalUnitsXDirection = 3
        region.PhysicalDeltaX = us_region_cm
        ds.SequenceOfUltrasoundRegions = [region]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in (patient or {}).items():
        setattr(ds, keyword, value)
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A real header and the start of the pixel data: enough to claim 20000x20000 without the 400 MB.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
