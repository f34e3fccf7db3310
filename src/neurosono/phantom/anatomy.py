"""Fetal brain anatomy in millimetres, sampled from gestational age, with findings.

Population figures follow ``shared/docs/neurosonography.md`` (ISUOG 2020,
INTERGROWTH-21st, Hadlock). Each finding changes the anatomy so that the
quantity a sonographer would measure crosses its clinical threshold
(``NORMAL_LIMITS``); normal cases, including the normal variants, stay inside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

GA_RANGE = (19.0, 24.0 - 1.0 / 7.0)  # 19+0 to 23+6 weeks

# Clinical normal limits of the measured quantities. A case is normal only if
# every quantity is inside; each abnormal finding pushes at least one outside.
ATRIUM_MAX_MM = 10.0  # ventriculomegaly at >= 10 mm
CISTERNA_MAGNA_MIN_MM = 2.0  # obliterated (< 2 mm) in Chiari II
CISTERNA_MAGNA_MAX_MM = 10.0  # > 10 mm: mega cisterna magna / Dandy-Walker
CSP_MIN_WIDTH_MM = 2.0  # CSP must be seen
TCD_P5_BELOW_GA_MM = 2.0  # TCD 5th centile is about GA (weeks) - 2 mm
VERMIS_MIN_FRACTION = 0.75  # vermis covering < 75 % of its normal height: hypoplastic
CYST_MAX_MM = 0.0  # any arachnoid cyst is abnormal (a choroid plexus cyst is not counted here)

NORMAL_FINDINGS = ("normal", "normal_upper_limit", "choroid_plexus_cyst")
ABNORMAL_FINDINGS = (
    "ventriculomegaly_mild",
    "ventriculomegaly_moderate",
    "ventriculomegaly_severe",
    "absent_csp_colpocephaly",
    "holoprosencephaly",
    "chiari_ii",
    "dandy_walker",
    "mega_cisterna_magna",
    "cerebellar_hypoplasia",
    "arachnoid_cyst",
)
# Relative frequencies among abnormal cases (roughly a referral-centre case mix).
ABNORMAL_WEIGHTS = {
    "ventriculomegaly_mild": 0.17,
    "ventriculomegaly_moderate": 0.10,
    "ventriculomegaly_severe": 0.08,
    "absent_csp_colpocephaly": 0.10,
    "holoprosencephaly": 0.06,
    "chiari_ii": 0.12,
    "dandy_walker": 0.08,
    "mega_cisterna_magna": 0.09,
    "cerebellar_hypoplasia": 0.10,
    "arachnoid_cyst": 0.10,
}
NORMAL_WEIGHTS = {"normal": 0.72, "normal_upper_limit": 0.18, "choroid_plexus_cyst": 0.10}

# The quantity each finding is defined by (what must cross its threshold).
FINDING_QUANTITY = {
    "ventriculomegaly_mild": "atrium_mm",
    "ventriculomegaly_moderate": "atrium_mm",
    "ventriculomegaly_severe": "atrium_mm",
    "absent_csp_colpocephaly": "csp_width_mm",
    "holoprosencephaly": "falx_present",
    "chiari_ii": "cisterna_magna_mm",
    "dandy_walker": "cisterna_magna_mm",
    "mega_cisterna_magna": "cisterna_magna_mm",
    "cerebellar_hypoplasia": "tcd_mm",
    "arachnoid_cyst": "arachnoid_cyst_mm",
}


@dataclass
class Anatomy:
    """True anatomy of one fetal head (mm unless noted)."""

    ga_weeks: float
    finding: str
    bpd_mm: float
    ofd_mm: float
    skull_mm: float
    atrium_mm: float
    choroid_fill: float  # choroid plexus thickness as a fraction of the atrium width
    csp_width_mm: float  # 0 = absent
    csp_length_mm: float
    thalamus_length_mm: float
    thalamus_width_mm: float
    third_ventricle_mm: float
    tcd_mm: float
    cisterna_magna_mm: float
    vermis_fraction: float  # 1 = complete vermis
    sylvian_depth_mm: float
    falx_present: bool = True
    thalami_fused: bool = False
    colpocephaly: bool = False
    monoventricle: bool = False
    banana_cerebellum: bool = False
    lemon_mm: float = 0.0  # frontal scalloping depth
    open_fourth_ventricle: bool = False
    arachnoid_cyst_mm: float = 0.0
    cyst_position: tuple[float, float] = (0.0, 0.0)  # (x, y) as fractions of the inner skull
    choroid_cyst_mm: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "normal" if self.finding in NORMAL_FINDINGS else "abnormal"

    @property
    def cephalic_index(self) -> float:
        return self.bpd_mm / self.ofd_mm

    @property
    def hc_mm(self) -> float:
        """Outer head circumference (Ramanujan's ellipse perimeter)."""
        a = self.ofd_mm / 2
        b = self.bpd_mm / 2 + self.skull_mm / 2
        return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))

    def measurements(self) -> dict[str, float]:
        """The quantities a sonographer measures, rounded as a report would print them."""
        return {
            "bpd_mm": round(self.bpd_mm, 2),
            "ofd_mm": round(self.ofd_mm, 2),
            "hc_mm": round(self.hc_mm, 1),
            "cephalic_index": round(self.cephalic_index, 3),
            # A monoventricle (alobar holoprosencephaly) has no atrium to measure: 0, like an
            # absent CSP's width; its own size is the rendering's, not a Vp.
            "atrium_mm": 0.0 if self.monoventricle else round(self.atrium_mm, 2),
            "csp_width_mm": round(self.csp_width_mm, 2),
            "tcd_mm": round(self.tcd_mm, 2),
            "cisterna_magna_mm": round(self.cisterna_magna_mm, 2),
            "vermis_fraction": round(self.vermis_fraction, 3),
            "sylvian_depth_mm": round(self.sylvian_depth_mm, 2),
            "arachnoid_cyst_mm": round(self.arachnoid_cyst_mm, 2),
            "choroid_cyst_mm": round(self.choroid_cyst_mm, 2),
            "falx_present": int(self.falx_present),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def out_of_range(anatomy: Anatomy) -> list[str]:
    """The measured quantities outside their clinical normal limits."""
    signs = []
    if anatomy.atrium_mm >= ATRIUM_MAX_MM:
        signs.append("atrium_mm")
    if not CISTERNA_MAGNA_MIN_MM <= anatomy.cisterna_magna_mm <= CISTERNA_MAGNA_MAX_MM:
        signs.append("cisterna_magna_mm")
    if anatomy.csp_width_mm < CSP_MIN_WIDTH_MM:
        signs.append("csp_width_mm")
    if anatomy.tcd_mm < anatomy.ga_weeks - TCD_P5_BELOW_GA_MM:
        signs.append("tcd_mm")
    if anatomy.vermis_fraction < VERMIS_MIN_FRACTION:
        signs.append("vermis_fraction")
    if not anatomy.falx_present:
        signs.append("falx_present")
    if anatomy.arachnoid_cyst_mm > CYST_MAX_MM:
        signs.append("arachnoid_cyst_mm")
    return signs


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    """Normal sample restricted to [low, high] by rejection (no pile-up at the edges)."""
    for _ in range(1000):
        value = rng.normal(mean, sd)
        if low <= value <= high:
            return float(value)
    return float(np.clip(mean, low, high))


def sample_finding(rng: np.random.Generator, abnormal: bool) -> str:
    weights = ABNORMAL_WEIGHTS if abnormal else NORMAL_WEIGHTS
    names = list(weights)
    p = np.array([weights[n] for n in names])
    return str(rng.choice(names, p=p / p.sum()))


def bpd_mean_mm(ga_weeks: float) -> float:
    return 44.0 + 3.0 * (ga_weeks - 19.0)


def sample_anatomy(rng: np.random.Generator, finding: str, ga_weeks: float | None = None) -> Anatomy:
    """A head of the given finding, with biological variation around the population means."""
    if finding not in NORMAL_FINDINGS + ABNORMAL_FINDINGS:
        raise ValueError(f"unknown finding {finding!r}")
    ga = float(rng.uniform(*GA_RANGE)) if ga_weeks is None else float(ga_weeks)
    growth = ga / 20.0
    bpd = _truncated_normal(rng, bpd_mean_mm(ga), 1.8, bpd_mean_mm(ga) - 4.5, bpd_mean_mm(ga) + 4.5)
    cephalic = _truncated_normal(rng, 0.79, 0.022, 0.75, 0.85)
    anatomy = Anatomy(
        ga_weeks=ga,
        finding=finding,
        bpd_mm=bpd,
        ofd_mm=bpd / cephalic,
        skull_mm=float(rng.uniform(1.6, 2.6)),
        atrium_mm=_truncated_normal(rng, 6.4, 1.1, 4.0, 8.6),
        choroid_fill=float(rng.uniform(0.7, 0.92)),
        csp_width_mm=_truncated_normal(rng, 4.6, 1.1, 2.6, 8.5),
        csp_length_mm=_truncated_normal(rng, 10.0 * growth, 1.2, 7.0, 14.0),
        thalamus_length_mm=_truncated_normal(rng, 11.0 * growth, 0.9, 8.0, 15.0),
        thalamus_width_mm=_truncated_normal(rng, 6.5 * growth, 0.6, 4.5, 9.0),
        third_ventricle_mm=float(rng.uniform(1.0, 2.5)),
        tcd_mm=_truncated_normal(rng, ga, 0.9, ga - 1.5, ga + 2.5),
        cisterna_magna_mm=_truncated_normal(rng, 5.0, 1.4, 2.6, 8.4),
        vermis_fraction=float(rng.uniform(0.92, 1.0)),
        sylvian_depth_mm=float(2.0 + 0.55 * (ga - 19.0) + rng.uniform(-0.4, 0.4)),
    )
    _apply_finding(rng, anatomy)
    return anatomy


def _apply_finding(rng: np.random.Generator, a: Anatomy) -> None:
    f = a.finding
    # Borderline cases on both sides of each threshold: normals can sit just
    # under a limit, abnormals start just over it.
    if f == "normal_upper_limit":
        which = rng.choice(["atrium", "cisterna", "tcd", "csp"])
        if which == "atrium":
            a.atrium_mm = float(rng.uniform(8.6, 9.8))
        elif which == "cisterna":
            a.cisterna_magna_mm = float(rng.uniform(8.4, 9.8))
        elif which == "tcd":
            a.tcd_mm = float(a.ga_weeks - rng.uniform(1.5, 1.85))
        else:
            a.csp_width_mm = float(rng.uniform(2.2, 2.6))
        a.extras["borderline"] = 1.0
    elif f == "choroid_plexus_cyst":
        a.choroid_cyst_mm = float(rng.uniform(2.5, 6.0))
    elif f == "ventriculomegaly_mild":
        # Half of mild cases sit within 0.8 mm of the threshold.
        a.atrium_mm = float(rng.uniform(10.05, 10.8) if rng.random() < 0.5 else rng.uniform(10.8, 12.0))
        a.choroid_fill = float(rng.uniform(0.5, 0.7))
    elif f == "ventriculomegaly_moderate":
        a.atrium_mm = float(rng.uniform(12.0, 15.0))
        a.choroid_fill = float(rng.uniform(0.35, 0.55))
    elif f == "ventriculomegaly_severe":
        a.atrium_mm = float(rng.uniform(15.0, 22.0))
        a.choroid_fill = float(rng.uniform(0.22, 0.4))
    elif f == "absent_csp_colpocephaly":
        a.csp_width_mm = 0.0
        a.colpocephaly = True
        a.atrium_mm = float(rng.uniform(9.0, 14.0))
        a.choroid_fill = float(rng.uniform(0.4, 0.65))
    elif f == "holoprosencephaly":
        a.falx_present = False
        a.csp_width_mm = 0.0
        a.thalami_fused = True
        a.monoventricle = True
        a.atrium_mm = float(rng.uniform(14.0, 24.0))  # sizes the monoventricle (no atrium is recorded)
        a.choroid_fill = float(rng.uniform(0.25, 0.45))
    elif f == "chiari_ii":
        a.cisterna_magna_mm = float(rng.uniform(0.0, 1.8))
        a.banana_cerebellum = True
        a.lemon_mm = float(rng.uniform(1.8, 3.5))
        a.tcd_mm = float(a.ga_weeks - rng.uniform(0.5, 3.0))
        if rng.random() < 0.5:
            a.atrium_mm = float(rng.uniform(10.0, 13.5))
            a.choroid_fill = float(rng.uniform(0.45, 0.65))
    elif f == "dandy_walker":
        a.cisterna_magna_mm = float(rng.uniform(11.0, 20.0))
        a.vermis_fraction = float(rng.uniform(0.0, 0.45))
        a.open_fourth_ventricle = True
        if rng.random() < 0.3:
            a.atrium_mm = float(rng.uniform(10.0, 13.0))
    elif f == "mega_cisterna_magna":
        a.cisterna_magna_mm = float(
            rng.uniform(10.2, 11.0) if rng.random() < 0.4 else rng.uniform(11.0, 15.0)
        )
    elif f == "cerebellar_hypoplasia":
        a.tcd_mm = float(
            a.ga_weeks - (rng.uniform(2.2, 3.0) if rng.random() < 0.4 else rng.uniform(3.0, 5.5))
        )
    elif f == "arachnoid_cyst":
        a.arachnoid_cyst_mm = float(rng.uniform(10.0, 24.0))
        # Interhemispheric or far-hemisphere, supratentorial (seen in both planes).
        a.cyst_position = (float(rng.uniform(-0.25, 0.25)), float(rng.uniform(0.25, 0.5)))
