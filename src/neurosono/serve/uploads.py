"""A case's upload read safely: the body bounded while it streams (413 above the limit), kept
in memory only (never spooled to disk: a DICOM carries the patient's identity), each image's
kind told from its content and its pixel count checked from its header before decoding."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from neurosono.classify.gestation import parse_ga
from neurosono.core.images import ImageReadError, LoadedImage, NotAnImageError, read_image_bytes
from neurosono.serve.problems import ProblemError

IMAGE_FIELDS = ("tv", "tc")
TEXT_FIELDS = ("ga_weeks", "spacing_mm", "frame")


class InMemoryParser(MultiPartParser):
    spool_max_size = 0  # a SpooledTemporaryFile with max_size 0 never rolls over to disk


@dataclass
class CaseUpload:
    images: dict[str, LoadedImage]
    raw: dict[str, bytes]  # the uploaded bytes per plane (for an SR of DICOM inputs)
    ga_weeks: float | None
    spacing_mm: float | None


async def _bounded(request: Request, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise ProblemError(413, f"the upload is larger than the {limit / 2**20:.3g} MB limit")
        yield chunk


async def read_case(request: Request, max_bytes: int, max_pixels: int) -> CaseUpload:
    """The TV and/or TC images and the optional age and spacing of a multipart request."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ProblemError(
            413,
            f"the upload ({int(declared) / 2**20:.1f} MB) is larger than "
            f"the {max_bytes / 2**20:.3g} MB limit",
        )
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ProblemError(415, "send the case as multipart/form-data with fields tv and/or tc")
    parser = InMemoryParser(request.headers, _bounded(request, max_bytes), max_files=2, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ProblemError(400, f"malformed multipart body: {exc.message}") from None
    try:
        return await _case_from(form, max_pixels)
    finally:
        await form.close()


async def _case_from(form, max_pixels: int) -> CaseUpload:
    for name in form:
        if name not in IMAGE_FIELDS + TEXT_FIELDS:
            raise ProblemError(422, f"{name}: unknown field (expected tv, tc, ga_weeks, spacing_mm, frame)")
    frame = _frame(_text(form, "frame"))
    images, raw = {}, {}
    for plane in IMAGE_FIELDS:
        if len(form.getlist(plane)) > 1:
            raise ProblemError(422, f"{plane}: give one image, not {len(form.getlist(plane))}")
        part = form.get(plane)
        if part is None:
            continue
        if not isinstance(part, UploadFile):
            raise ProblemError(422, f"{plane}: must be a file upload, not a text field")
        data = await part.read()
        try:
            images[plane] = read_image_bytes(data, plane, frame=frame, max_pixels=max_pixels)
        except ImageReadError as exc:
            raise ProblemError(415 if isinstance(exc, NotAnImageError) else 422, str(exc)) from None
        raw[plane] = data
    if not images:
        raise ProblemError(422, "tv, tc: give at least one image (fields tv and/or tc)")
    ga = _text(form, "ga_weeks")
    try:
        ga_weeks = parse_ga(ga)
    except ValueError as exc:
        raise ProblemError(422, f"ga_weeks: {exc}") from None
    spacing = _spacing(_text(form, "spacing_mm"))
    for image in images.values():
        if image.spacing_mm is None and spacing is not None:
            image.spacing_mm = spacing
    return CaseUpload(images, raw, ga_weeks, spacing)


def _text(form, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, UploadFile):
        raise ProblemError(422, f"{name}: must be a text field, not a file")
    return value.strip() or None


def _spacing(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ProblemError(
            422, f"spacing_mm: {text[:40]!r} is not a number of millimetres per pixel"
        ) from None
    if not 0.01 <= value <= 5.0:
        raise ProblemError(
            422, f"spacing_mm: {value:g} mm per pixel is outside 0.01-5 (an ultrasound image's)"
        )
    return value


def _frame(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or len(text) > 6:
        raise ProblemError(422, f"frame: {text[:40]!r} is not a frame number (0-based)")
    return int(text)
