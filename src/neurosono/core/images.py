"""The one image reader: PNG, JPEG, BMP, TIFF or DICOM, for checking, training, evaluation
and prediction alike, so that a model sees the same pixels when it is trained and when it is used.

Everything comes back as an 8-bit grey array (16-bit and float images windowed by their own
range), the colour pixels where the source had colour, and the pixel spacing when the file
knows it. A bad file raises :class:`ImageReadError` whose message names the file and the
problem; huge images are refused from their header, before decoding.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = int(os.environ.get("NEUROSONO_MAX_PIXELS", 50_000_000))
MIN_SIDE = 32  # smaller than this cannot hold a fetal head plane
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".dcm",
    ".dicom",
)


class ImageReadError(ValueError):
    """An input image cannot be used; the message names the file and the problem."""


class NotAnImageError(ImageReadError):
    """The file is no image of a kind read here (its content, whatever its name)."""


@dataclass
class LoadedImage:
    path: Path
    pixels: np.ndarray  # uint8, H x W
    spacing_mm: float | None = None
    kind: str = ""
    info: dict = field(default_factory=dict)
    colour: np.ndarray | None = None  # uint8 H x W x 3 (RGB) when the source had colour

    def bgr(self) -> np.ndarray:
        """The detector's input: 3-channel BGR (grey repeated when grey), as OpenCV decodes a file."""
        if self.colour is not None:
            return np.ascontiguousarray(self.colour[..., ::-1])
        return np.repeat(self.pixels[..., None], 3, axis=2)

    def rgb(self) -> np.ndarray:
        """3-channel RGB (grey repeated when grey), for pictures of the image."""
        if self.colour is not None:
            return self.colour
        return np.repeat(self.pixels[..., None], 3, axis=2)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.pixels.shape[1], self.pixels.shape[0]


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Window any integer or float grey image to 0..255 by its own range."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return ((array - lo) / (hi - lo) * 255).round().astype(np.uint8)


def _rgb_to_grey(array: np.ndarray) -> np.ndarray:
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    return (array[..., :3].astype(np.float32) @ weights).round().clip(0, 255).astype(np.uint8)


def _check_size(path: Path | str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
            "(raise --max-pixels or NEUROSONO_MAX_PIXELS if this is intended)"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(f"{path}: {width}x{height} pixels is too small to be an ultrasound plane")


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_image(
    path: str | Path, frame: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: does not exist")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: is an empty file")
    if is_dicom(path):
        return _read_dicom(path, frame, max_pixels)
    return _read_raster(path, max_pixels)


def read_image_bytes(
    data: bytes, name: str, frame: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """An image held in memory (an upload): its kind is told from its content alone, never
    from a file name; ``name`` labels it in messages and in ``LoadedImage.path``."""
    if not data:
        raise ImageReadError(f"{name}: is an empty file")
    if data[128:132] == b"DICM":
        return _read_dicom(io.BytesIO(data), frame, max_pixels, where=name)
    return _read_raster(io.BytesIO(data), max_pixels, where=name)


def read_grey(path: str | Path) -> np.ndarray:
    """The 8-bit grey pixels of an image file (what the stage-2 classifiers read)."""
    return read_image(path).pixels


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    path = Path(path)
    try:
        if is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # a header the readers reject, whatever the library's exception
        raise ImageReadError(f"{path}: unreadable image header ({type(exc).__name__}: {exc})") from None


def _read_raster(path: Path | io.BytesIO, max_pixels: int, where: str | None = None) -> LoadedImage:
    where = where or str(path)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit, checked from the header, applies instead
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                _check_size(where, *image.size, max_pixels)
                mode = image.mode
                image.load()
                colour = None
                if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    pixels = _to_uint8(np.asarray(image))
                else:
                    pixels = np.asarray(image.convert("L"))
                    if mode not in ("L", "1", "LA"):
                        colour = np.asarray(image.convert("RGB"))
                kind = (image.format or Path(where).suffix.lstrip(".")).lower()
    except UnidentifiedImageError:
        raise NotAnImageError(
            f"{where}: not an image file (PNG, JPEG, BMP, TIFF or DICOM expected)"
        ) from None
    except ImageReadError:
        raise
    except Exception as exc:  # decoders raise a wide variety on corrupt data
        problem = "truncated image" if "truncated" in str(exc).lower() else "unreadable image"
        raise ImageReadError(f"{where}: {problem} ({type(exc).__name__}: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return LoadedImage(Path(where), pixels, None, kind, {"mode": mode}, colour)


def _dicom_spacing(ds) -> float | None:
    """Pixel spacing in mm: PixelSpacing, else the ultrasound regions' physical deltas."""
    spacing = ds.get("PixelSpacing")
    if spacing:
        return float(spacing[1])  # column spacing: the horizontal mm per pixel
    for region in ds.get("SequenceOfUltrasoundRegions", []) or []:
        units = region.get("PhysicalUnitsXDirection")
        delta = region.get("PhysicalDeltaX")
        if units == 3 and delta:  # 3 = centimetres (DICOM PS3.3 C.8.5.5.1.15)
            return float(delta) * 10.0
    return None


def _read_dicom(
    path: Path | io.BytesIO, frame: int | None, max_pixels: int, where: str | None = None
) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    where = where or str(path)

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise NotAnImageError(f"{where}: not a valid DICOM file") from None
    except Exception as exc:
        raise ImageReadError(f"{where}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        raise ImageReadError(f"{where}: DICOM file without pixel data (a report or structured document?)")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(where, cols, rows, max_pixels)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise ImageReadError(
            f"{where}: multi-frame DICOM ({frames} frames); choose one (0-based) "
            "with --frame N, or the API's frame field"
        )
    if frame is not None and not 0 <= frame < frames:
        raise ImageReadError(f"{where}: frame {frame} is outside 0..{frames - 1}")
    try:
        array = ds.pixel_array  # pydicom converts YBR colour spaces to RGB
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise ImageReadError(f"{where}: cannot decode pixel data (transfer syntax {syntax}): {exc}") from None
    if frames > 1:
        array = array[frame]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    colour = None
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        colour = _to_uint8(array)[..., :3]
        pixels = _rgb_to_grey(colour)
    else:
        pixels = _to_uint8(array)
        if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
            pixels = 255 - pixels
    info = {
        "photometric": photometric,
        "frames": frames,
        "frame": frame,
        "bits": int(ds.get("BitsAllocated", 8)),
    }
    return LoadedImage(Path(where), pixels, _dicom_spacing(ds), "dicom", info, colour)


def smoothed_region(
    image: np.ndarray, x0: int, y0: int, x1: int, y1: int, sigma: float
) -> tuple[np.ndarray, int, int]:
    """The pixels [y0:y1, x0:x1] of ``image`` (clipped to it) as float32, Gaussian-smoothed by
    ``sigma`` (0: not smoothed), with the image pixel at their top left. They are read with the
    smoothing's reach round them, so they equal the same pixels of the whole image smoothed,
    while only the region's pixels are read."""
    import cv2

    reach = int(np.ceil(4 * sigma)) + 2 if sigma else 0  # OpenCV's kernel radius is 4 sigma
    x0, y0 = max(0, x0 - reach), max(0, y0 - reach)
    x1, y1 = min(image.shape[1], x1 + reach), min(image.shape[0], y1 + reach)
    source = image[y0 : max(0, y1), x0 : max(0, x1)].astype(np.float32)  # a region past the image: empty
    if sigma and source.size:
        source = cv2.GaussianBlur(source, (0, 0), sigma)
    return source, x0, y0
