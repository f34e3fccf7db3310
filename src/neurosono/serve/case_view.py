"""One case as the page shows it: overlays, the decision, attribution bars, measurements with
centiles and hints, warnings and the notice, and its downloads (JSON, a self-contained HTML
report and, for DICOM input, the SR). Rendered on the server from the prediction alone, so
whatever a prediction carries appears without new code paths in the page."""

from __future__ import annotations

import io
import json
from functools import cache

import jinja2
import pydicom

from neurosono.evaluate.report import data_uri
from neurosono.measure.structures import STRUCTURE_LABELS
from neurosono.pipeline.overlay import overlay_jpeg
from neurosono.pipeline.predict import Prediction
from neurosono.serve.uploads import CaseUpload

MEASUREMENT_LABELS = {
    "hc_mm": "HC",
    "bpd_mm": "BPD",
    "ofd_mm": "OFD",
    "cephalic_index": "Cephalic index",
    **STRUCTURE_LABELS,
}
# Removed from the SR's copy of the source header: the report goes back to a browser, and the
# patient's identity never leaves the server (the SR still references the study by its UIDs).
IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "ResponsiblePerson",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
)


@cache
def templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("neurosono.serve", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def attribution_rows(result: Prediction) -> list[dict]:
    """Per region: found where, how surely, its size, and its attribution as a bar."""
    largest = max((abs(r.attribution) for r in result.regions), default=0.0) or 1.0
    return [
        {
            "region": r.region,
            "found": r.found,
            "plane": (r.plane or "").upper(),
            "confidence": r.confidence,
            "size": f"{r.size_mm[0]:.1f} x {r.size_mm[1]:.1f} mm" if r.size_mm else "",
            "attribution": r.attribution,
            "bar": round(100 * abs(r.attribution) / largest),
        }
        for r in result.regions
    ]


def measurement_rows(biometry: dict | None) -> list[dict]:
    if biometry is None:
        return []
    rows = []
    for name, label in MEASUREMENT_LABELS.items():
        if name in biometry["values"]:
            centile = biometry["centiles"].get(name)
            rows.append(
                {
                    "label": label,
                    "value": biometry["values"][name],
                    "unit": "" if name == "cephalic_index" else "mm",
                    "centile": None if centile is None else centile["centile"],
                    "z": None if centile is None else centile["z"],
                    "absent": "",
                }
            )
        elif name in biometry["absent"]:
            rows.append({"label": label, "value": None, "absent": biometry["absent"][name]})
    return rows


def deidentified_sr(result: Prediction, upload: CaseUpload) -> tuple[bytes | None, str]:
    """(SR bytes, "") for a DICOM TV image with measurements, else (None, why not)."""
    from neurosono.measure.sr import ReportError, biometry_report

    if result.biometry is None or not result.biometry["values"]:
        return None, "nothing was measured"
    sources = {}
    for plane in ("tv", "tc"):
        image = upload.images.get(plane)
        if image is not None and image.kind == "dicom":
            dataset = pydicom.dcmread(io.BytesIO(upload.raw[plane]), stop_before_pixels=True)
            for keyword in IDENTITY_KEYWORDS:
                if keyword in dataset:
                    delattr(dataset, keyword)
            sources[plane] = dataset
    if "tv" not in sources:
        return None, "an SR needs a DICOM TV image"
    planes = {m: box["plane"] for m, box in result.biometry.get("structure_boxes", {}).items()}
    others = {"tc": (sources["tc"], "tc")} if "tc" in sources else None
    try:
        report = biometry_report(result.biometry["values"], sources["tv"], "tv", planes, others)
    except ReportError as exc:
        return None, str(exc)
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ""


def case_context(result: Prediction, upload: CaseUpload) -> dict:
    overlays = {
        plane: data_uri(overlay_jpeg(image.bgr(), result, plane), "image/jpeg")
        for plane, image in upload.images.items()
    }
    biometry = result.biometry
    return {
        "result": result,
        "overlays": overlays,
        "regions": attribution_rows(result),
        "measurements": measurement_rows(biometry),
        "hints": biometry["hints"] if biometry else [],
        "ga": None if biometry is None else (biometry["ga_weeks"], biometry["ga_source"]),
        "notice": result.model["notice"],
    }


def render_case(result: Prediction, upload: CaseUpload) -> str:
    """The page's result panel, with its downloads."""
    context = case_context(result, upload)
    report = templates().get_template("report.html.j2").render(**context, css=page_css())
    sr, sr_reason = deidentified_sr(result, upload)
    downloads = {
        "json": data_uri(json.dumps(result.to_dict(), indent=2).encode(), "application/json"),
        "report": data_uri(report.encode(), "text/html"),
        "sr": data_uri(sr, "application/dicom") if sr else None,
        "sr_reason": sr_reason,
    }
    return templates().get_template("case.html.j2").render(**context, downloads=downloads)


@cache
def page_css() -> str:
    from importlib.resources import files

    return (files("neurosono.serve") / "static" / "style.css").read_text(encoding="utf-8")
