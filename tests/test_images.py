"""Reading prediction inputs: every format the issue names, and every bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from neurosono.core.images import ImageReadError, read_image


def _dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    spacing: float | None = 0.2,
    us_region_cm: float | None = None,
    frames: int = 1,
    with_pixels: bool = True,
) -> Path:
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
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


GRADIENT = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))


def test_png_jpeg_bmp_tiff_read_as_grey(tmp_path: Path) -> None:
    for suffix in ("png", "jpg", "bmp", "tiff"):
        path = tmp_path / f"scan.{suffix}"
        Image.fromarray(np.stack([GRADIENT] * 3, -1)).save(path)
        image = read_image(path)
        assert image.pixels.shape == (48, 64) and image.pixels.dtype == np.uint8
        assert image.spacing_mm is None


def test_sixteen_bit_png_works(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(GRADIENT.astype(np.uint16) * 200).save(path)
    image = read_image(path)
    assert image.pixels.dtype == np.uint8 and image.pixels.max() == 255 and image.pixels.min() == 0


def test_dicom_monochrome_rgb_ybr_and_spacing(tmp_path: Path) -> None:
    mono2 = read_image(_dicom(tmp_path / "m2.dcm", GRADIENT, spacing=0.15))
    assert mono2.spacing_mm == pytest.approx(0.15) and mono2.pixels[0, -1] > mono2.pixels[0, 0]
    mono1 = read_image(_dicom(tmp_path / "m1.dcm", GRADIENT, "MONOCHROME1"))
    assert mono1.pixels[0, -1] < mono1.pixels[0, 0]  # inverted back to bright-is-echo
    rgb = read_image(_dicom(tmp_path / "rgb.dcm", np.stack([GRADIENT] * 3, -1), "RGB"))
    assert rgb.pixels.shape == (48, 64) and abs(int(rgb.pixels[0, 10]) - int(GRADIENT[0, 10])) <= 1
    ybr = np.stack([GRADIENT, np.full_like(GRADIENT, 128), np.full_like(GRADIENT, 128)], -1)  # grey in YCbCr
    grey = read_image(_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert abs(int(grey.pixels[0, 10]) - int(GRADIENT[0, 10])) <= 2
    region = read_image(_dicom(tmp_path / "reg.dcm", GRADIENT, spacing=None, us_region_cm=0.021))
    assert region.spacing_mm == pytest.approx(0.21)  # ultrasound region delta in cm -> mm


def test_multiframe_dicom_needs_a_frame(tmp_path: Path) -> None:
    frames = np.stack([GRADIENT, 255 - GRADIENT])
    path = _dicom(tmp_path / "cine.dcm", frames, frames=2)
    with pytest.raises(ImageReadError, match="multi-frame DICOM \\(2 frames\\)"):
        read_image(path)
    second = read_image(path, frame=1)
    assert second.pixels[0, 0] > second.pixels[0, -1]
    with pytest.raises(ImageReadError, match=r"outside 0\.\.1"):
        read_image(path, frame=5)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A real header and the start of the pixel data: enough to claim 20000x20000 without the 400 MB.
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("text.png", lambda p: p.write_text("not an image at all"), "not an image file"),
        ("empty.png", lambda p: p.write_bytes(b""), "empty file"),
        ("tiny.png", lambda p: Image.new("L", (1, 1)).save(p), "too small"),
        ("huge.png", lambda p: p.write_bytes(_png_header(20000, 20000)), "exceeds the limit"),
        ("empty.dcm", lambda p: p.write_bytes(b"\0" * 128 + b"DICM"), "DICOM"),
        ("nopixels.dcm", lambda p: _dicom(p, GRADIENT, with_pixels=False), "without pixel data"),
    ],
)
def test_bad_inputs_are_named_and_explained(tmp_path: Path, name: str, make, expected: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageReadError, match=expected) as info:
        read_image(path)
    assert name in str(info.value)


def test_truncated_jpeg_and_missing_path(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated image"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"nowhere\.png: does not exist"):
        read_image(tmp_path / "nowhere.png")
