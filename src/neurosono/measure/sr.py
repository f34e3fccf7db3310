"""The biometry as a DICOM Structured Report (highdicom), referencing the measured image.

A Comprehensive 3D SR holding a TID 1500 measurement report: one measurement group on
the TV image (the source image it references), with the head measurements named by
DICOM's codes: HC, BPD, OFD from CID 12005 (Fetal Biometry Measurements), the cephalic
index from CID 12004 (Fetal Biometry Ratios), TCD, cisterna magna and lateral ventricle
width from CID 12007 (Fetal Cranium) when measured. Only measured values are written;
an absent one is simply not there. The report copies the study and patient modules of
its source image (as an SR of that study must); neurosono writes it only where asked.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from neurosono import __version__
from neurosono.core.atomic import atomic_write_bytes

CODES = {
    "hc_mm": codes.LN.HeadCircumference,  # 11984-2
    "bpd_mm": codes.LN.BiparietalDiameter,  # 11820-8
    "ofd_mm": codes.LN.OccipitalFrontalDiameter,  # 11851-3
    "cephalic_index": codes.LN.CephalicIndex,  # 11823-2
    "tcd_mm": codes.LN.TransverseCerebellarDiameter,  # 11863-8
    "cisterna_magna_mm": codes.LN.CisternaMagnaLength,  # 11860-4
    "atrium_mm": codes.LN.LateralVentricleWidth,
}
SITES = {
    "hc_mm": codes.SCT.Skull,
    "bpd_mm": codes.SCT.Skull,
    "ofd_mm": codes.SCT.Skull,
    "cephalic_index": codes.SCT.Skull,
    "tcd_mm": codes.SCT.Cerebellum,
    "cisterna_magna_mm": codes.SCT.CisternaMagna,
    "atrium_mm": codes.SCT.LateralVentricle,
}
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
PROCEDURE = hd.sr.CodedConcept("11525-3", "LN", "US Pelvis Fetus for pregnancy")


class ReportError(ValueError):
    """The SR cannot be written (no DICOM source, nothing measured); the message says which."""


# Patient and study attributes an SR copies from its source; type 2 (may be empty) in an
# image, so a source lacking one gets it empty in the report.
TYPE2_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _evidence(source: pydicom.Dataset, where: str) -> pydicom.Dataset:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ReportError(f"{where}: the DICOM source has no {keyword}, so the SR cannot reference it")
    evidence = pydicom.Dataset(source)
    for keyword in TYPE2_ATTRIBUTES:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def _group(values: dict[str, float], names: list[str], source: pydicom.Dataset, plane: str):
    measurements = [
        hd.sr.Measurement(
            name=CODES[name],
            value=float(values[name]),
            unit=codes.UCUM.Millimeter if name.endswith("_mm") else NO_UNITS,
            finding_sites=[hd.sr.FindingSite(SITES[name])],
        )
        for name in names
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"fetal biometry, {plane.upper()} plane"
        ),
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        finding_type=codes.SCT.Skull,
    )


def biometry_report(
    values: dict[str, float],
    source: pydicom.Dataset,
    where: str = "source",
    planes: dict[str, str] | None = None,
    others: dict[str, tuple[pydicom.Dataset, str]] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR of the measured ``values`` (a biometry's) on ``source`` (the TV image's DICOM
    dataset). ``planes`` names the plane each value was measured on (default TV); values
    from another plane go in their own group referencing that plane's image (``others``:
    plane -> (dataset, where)), and are left out where that image is not given."""
    planes = planes or {}
    sources = {"tv": _evidence(source, where)}
    for plane, (dataset, place) in (others or {}).items():
        sources[plane] = _evidence(dataset, place)
    measured = [name for name in CODES if name in values and planes.get(name, "tv") in sources]
    if not measured:
        raise ReportError("nothing was measured, so there is no report to write")
    groups = [
        _group(values, [n for n in measured if planes.get(n, "tv") == plane], dataset, plane)
        for plane, dataset in sources.items()
        if any(planes.get(n, "tv") == plane for n in measured)
    ]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="neurosono", model_name=f"neurosono {__version__}"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(sources.values()),
        content=report[0],
        series_number=990,
        series_instance_uid=hd.UID(),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="neurosono",
        series_description="neurosono fetal head biometry (research use only)",
        is_complete=True,
        is_verified=False,
    )


def _read_source(path: str | Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for a file that is not DICOM
        raise ReportError(f"{path}: an SR needs a DICOM source image ({type(exc).__name__})") from None


def write_report(
    values: dict[str, float],
    source_path: str | Path,
    out: str | Path,
    planes: dict[str, str] | None = None,
    tc_path: str | Path | None = None,
) -> Path:
    """Write the SR for a DICOM TV image (and, for the values ``planes`` places on TC, the
    DICOM TC image ``tc_path``) to ``out``, atomically and never over a file there."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new SR file")
    source = _read_source(source_path)
    others = {"tc": (_read_source(tc_path), str(tc_path))} if tc_path is not None else None
    report = biometry_report(values, source, str(source_path), planes, others)
    from io import BytesIO

    buffer = BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out
