"""A case's biometry: the measurements, their centiles for age, and the finding hints.

Measured here: HC, BPD, OFD and the cephalic index on the TV image (the head model); the
atrium (Vp), TCD, cisterna magna depth and CSP width inside stage 1's boxes (the structure
model, ``structures.py``); and whether the CSP was seen (stage 1's CSP box on TV or TC).
A measurement that cannot be made is absent with the reason, never a number, and the
hints built on it say so.

With no gestational age given, the age is estimated from the measured HC (Papageorghiou
et al. 2016) and marked ``estimated``; the HC's own centile is then not given (it would
only restate the estimate), but the other centiles are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neurosono.measure.head import HEAD_MEASUREMENTS, HeadMeasurement
from neurosono.measure.hints import Hint, all_hints
from neurosono.measure.standards import STANDARDS, ga_from_hc
from neurosono.measure.structures import STRUCTURE_NAMES, StructureMeasurement

STRUCTURE_MEASUREMENTS = STRUCTURE_NAMES
NOT_MEASURED = "no structure model loaded"
MEASUREMENTS = (*HEAD_MEASUREMENTS, *STRUCTURE_MEASUREMENTS)
ESTIMATED_GA_SOURCE = "estimated from the HC (INTERGROWTH-21st dating, Papageorghiou et al., UOG 2016)"


@dataclass
class Biometry:
    values: dict[str, float] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    centiles: dict[str, dict] = field(default_factory=dict)
    ga_weeks: float | None = None
    ga_source: str = ""  # "given", the estimate's method, or "" (none)
    hints: list[Hint] = field(default_factory=list)
    head: HeadMeasurement | None = None
    structures: StructureMeasurement | None = None

    def to_dict(self) -> dict:
        return {
            "values": dict(self.values),
            "absent": dict(self.absent),
            "centiles": dict(self.centiles),
            "ga_weeks": None if self.ga_weeks is None else round(self.ga_weeks, 3),
            "ga_source": self.ga_source,
            "hints": [h.to_dict() for h in self.hints],
            "head": self.head.to_dict() if self.head else None,
            "structure_boxes": self.structures.to_dict()["boxes"] if self.structures else {},
            "calliper_convention": "HC and OFD on the outer skull border; BPD outer to inner",
        }

    def flat(self) -> dict[str, object]:
        """One row for a table: each measurement, its centile, and the hints found."""
        row: dict[str, object] = {m: self.values.get(m, "") for m in MEASUREMENTS}
        for m, c in self.centiles.items():
            row[f"{m}_centile"] = c["centile"]
        row["ga_weeks"] = "" if self.ga_weeks is None else round(self.ga_weeks, 2)
        row["ga_source"] = self.ga_source
        row["hints"] = ";".join(h.finding for h in self.hints if h.present)
        return row


def centiles_for(values: dict[str, float], ga_weeks: float | None, skip: tuple[str, ...] = ()) -> dict:
    out = {}
    if ga_weeks is None:
        return out
    for name, standard in STANDARDS.items():
        if name in values and name not in skip:
            z = standard.z(values[name], ga_weeks)
            if z is not None:
                out[name] = {
                    "z": round(z, 3),
                    "centile": round(standard.centile(values[name], ga_weeks), 1),
                    "standard": standard.citation,
                }
    return out


def assemble(
    head: HeadMeasurement | None,
    ga_weeks: float | None,
    csp_seen: bool | None,
    csp_reason: str = "",
    head_reason: str = "no TV image",
    structures: StructureMeasurement | None = None,
    structures_reason: str = NOT_MEASURED,
) -> Biometry:
    """The case's biometry from its head and structure measurements, the given age and
    whether the CSP was seen."""
    result = Biometry(head=head, structures=structures)
    if head is not None:
        result.values.update(head.values)
        result.absent.update(head.absent)
    else:
        result.absent.update({m: head_reason for m in HEAD_MEASUREMENTS})
    if structures is not None:
        result.values.update(structures.values)
        result.absent.update(structures.absent)
    for m in STRUCTURE_MEASUREMENTS:
        if m not in result.values:
            result.absent.setdefault(m, structures_reason)
    estimated = False
    if ga_weeks is not None:
        result.ga_weeks, result.ga_source = float(ga_weeks), "given"
    elif "hc_mm" in result.values:
        result.ga_weeks = ga_from_hc(result.values["hc_mm"])
        estimated = result.ga_weeks is not None
        result.ga_source = ESTIMATED_GA_SOURCE if estimated else ""
    result.centiles = centiles_for(result.values, result.ga_weeks, skip=("hc_mm",) if estimated else ())
    result.hints = all_hints(result.values, result.absent, result.ga_weeks, estimated, csp_seen, csp_reason)
    return result
