"""Reading prediction inputs: every format the issue names, and every bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefiles import dicom_file as _dicom
from imagefiles import png_header as _png_header
from neurosono.core.images import ImageReadError, read_image

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
