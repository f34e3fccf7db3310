"""Reference standards: where a measurement lies for its gestational age.

Every formula here is a published one, cited beside it; ``tests/test_standards.py``
checks each against values printed in its source's tables (or, where the source
prints two equations that must agree, against the other).

* HC, BPD and OFD: the INTERGROWTH-21st fetal growth standards, Papageorghiou AT et al.,
  "International standards for fetal growth based on serial ultrasound measurements: the
  Fetal Growth Longitudinal Study of the INTERGROWTH-21st Project", Lancet 2014;384:869-79
  (equations in its web appendix; charts and tables also in Ultrasound Obstet Gynecol).
  Mean and SD are fractional polynomials in GA (weeks); the measurement is normal at each
  age, so z = (x - mean) / SD. Their conventions: HC an ellipse round the outer border of
  the skull, OFD outer to outer, BPD outer to inner.
* TCD: the INTERGROWTH-21st cerebellar standard, Rodriguez-Sibaja MJ et al., "Fetal
  cerebellar growth and Sylvian fissure maturation: international standards from Fetal
  Growth Longitudinal Study of INTERGROWTH-21st Project", Ultrasound Obstet Gynecol
  2021;57:614-23, with its GA-from-TCD equation.
* Dating from the HC with no age given: Papageorghiou AT et al., "Ultrasound-based
  gestational-age estimation in late pregnancy", Ultrasound Obstet Gynecol
  2016;48:719-26: ln(GA days) = 0.05970 ln(HC)^2 + 0.000000006409 HC^3 + 3.3258.
* The atrium (Vp), cisterna magna and CSP use the fixed clinical limits of ISUOG's
  basic CNS examination (Ultrasound Obstet Gynecol 2020;56:476-84), not centiles.

The standards cover 14+0 to 40+0 weeks; outside, a z-score is not given (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy.stats import norm

GA_RANGE_WEEKS = (14.0, 40.0)


def _hc(ga: float) -> tuple[float, float]:
    lg = math.log(ga)
    mean = -28.2849 + 1.69267 * ga**2 - 0.397485 * ga**2 * lg
    sd = 1.98735 + 0.0136772 * ga**3 - 0.00726264 * ga**3 * lg + 0.000976253 * ga**3 * lg**2
    return mean, sd


def _bpd(ga: float) -> tuple[float, float]:
    lg = math.log(ga)
    mean = 5.60878 + 0.158369 * ga**2 - 0.00256379 * ga**3
    sd = math.exp(0.101242 + 0.00150557 * ga**3 - 0.000771535 * ga**3 * lg + 0.0000999638 * ga**3 * lg**2)
    return mean, sd


def _ofd(ga: float) -> tuple[float, float]:
    lg = math.log(ga)
    mean = -12.4097 + 0.626342 * ga**2 - 0.148075 * ga**2 * lg
    sd = math.exp(-0.880034 + 0.0631165 * ga**2 - 0.0317136 * ga**2 * lg + 0.00408302 * ga**2 * lg**2)
    return mean, sd


def _tcd(ga: float) -> tuple[float, float]:
    g = ga / 10
    mean = -13.10907 + 20.8941 * g**0.5 + 0.5035914 * g**3
    sd = 0.4719837 + 0.0500382 * g**3
    return mean, sd


@dataclass(frozen=True)
class Standard:
    """A measurement's mean and SD for gestational age, with the source to cite."""

    name: str
    citation: str
    mean_sd: Callable[[float], tuple[float, float]]

    def z(self, value_mm: float, ga_weeks: float) -> float | None:
        if not GA_RANGE_WEEKS[0] <= ga_weeks <= GA_RANGE_WEEKS[1]:
            return None
        mean, sd = self.mean_sd(ga_weeks)
        return (value_mm - mean) / sd

    def centile(self, value_mm: float, ga_weeks: float) -> float | None:
        """The centile (0-100) of ``value_mm`` at ``ga_weeks``; None outside the standard's ages."""
        z = self.z(value_mm, ga_weeks)
        return None if z is None else float(100 * norm.cdf(z))

    def value_at(self, centile: float, ga_weeks: float) -> float:
        """The measurement (mm) at ``centile`` (0-100) for ``ga_weeks``."""
        mean, sd = self.mean_sd(ga_weeks)
        return mean + float(norm.ppf(centile / 100)) * sd


IG_FETAL_2014 = "INTERGROWTH-21st fetal growth standards (Papageorghiou et al., Lancet 2014)"
IG_TCD_2021 = "INTERGROWTH-21st cerebellar standard (Rodriguez-Sibaja et al., UOG 2021)"
STANDARDS: dict[str, Standard] = {
    "hc_mm": Standard("head circumference", IG_FETAL_2014, _hc),
    "bpd_mm": Standard("biparietal diameter (outer-inner)", IG_FETAL_2014, _bpd),
    "ofd_mm": Standard("occipitofrontal diameter (outer-outer)", IG_FETAL_2014, _ofd),
    "tcd_mm": Standard("transverse cerebellar diameter", IG_TCD_2021, _tcd),
}

# Fixed clinical limits (mm), ISUOG 2020 basic CNS examination.
ATRIUM_LIMITS_MM = {"mild": 10.0, "moderate": 12.0, "severe": 15.0}  # Vp >= 10 mm: ventriculomegaly
# Vp readings this close under 10 mm are hinted borderline: the shipped structure model's
# mean absolute error for the atrium on its validation windows (0.50 mm).
VP_BORDERLINE_MM = 0.5
CISTERNA_MAGNA_LIMITS_MM = (2.0, 10.0)  # normal between; < 2 obliterated, > 10 enlarged
# Cisterna magna readings this close inside either limit are hinted borderline: the shipped
# structure model's mean absolute error for the cisterna magna on its validation windows (0.38 mm).
CM_BORDERLINE_MM = 0.4
CSP_MIN_MM = 1.0  # a CSP narrower than this is reported as not seen
HC_CENTILE_LIMITS = (3.0, 97.0)
TCD_LOW_CENTILE = 5.0


def ga_from_hc(hc_mm: float) -> float | None:
    """Gestational age (weeks) estimated from the HC (Papageorghiou et al., UOG 2016).

    The equation was fitted on HCs of about 100-350 mm; outside that, None.
    """
    if not 100.0 <= hc_mm <= 350.0:
        return None
    days = math.exp(0.05970 * math.log(hc_mm) ** 2 + 0.000000006409 * hc_mm**3 + 3.3258)
    return days / 7


def ga_from_tcd(tcd_mm: float) -> float | None:
    """Gestational age (weeks) from the TCD (Rodriguez-Sibaja et al., UOG 2021), 12-55 mm."""
    if not 12.0 <= tcd_mm <= 55.0:
        return None
    t = tcd_mm / 10
    return 3.957113 + 8.154074 * t - 0.076187 * t**3
