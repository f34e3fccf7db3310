"""Reference standards against the values their sources print."""

from __future__ import annotations

import pytest

from neurosono.measure.standards import STANDARDS, ga_from_hc, ga_from_tcd

# INTERGROWTH-21st fetal growth standards, published centile tables (mm, to 0.1 mm), at
# whole weeks: (weeks, centile, value).
HC_TABLE = [
    (14, 50, 97.9),
    (16, 50, 122.9),
    (18, 50, 147.9),
    (20, 50, 172.5),
    (22, 50, 196.3),
    (24, 50, 219.1),
    (30, 50, 278.4),
    (40, 50, 333.9),
    (20, 3, 158.5),
    (24, 3, 203.5),
    (20, 97, 186.5),
    (24, 97, 234.7),
    (20, 10, 162.9),
    (20, 90, 182.0),
]
BPD_TABLE = [
    (18, 50, 42.0),
    (20, 50, 48.4),
    (22, 50, 55.0),
    (24, 50, 61.4),
    (28, 50, 73.5),
    (32, 50, 83.8),
    (36, 50, 91.2),
    (20, 3, 44.1),
    (20, 97, 52.8),
    (24, 97, 66.4),
]


@pytest.mark.parametrize(("weeks", "centile", "printed"), HC_TABLE)
def test_hc_centiles_match_the_published_table(weeks, centile, printed):
    assert round(STANDARDS["hc_mm"].value_at(centile, weeks), 1) == pytest.approx(printed, abs=0.051)


@pytest.mark.parametrize(("weeks", "centile", "printed"), BPD_TABLE)
def test_bpd_centiles_match_the_published_table(weeks, centile, printed):
    assert round(STANDARDS["bpd_mm"].value_at(centile, weeks), 1) == pytest.approx(printed, abs=0.051)


def test_centile_and_value_are_inverse():
    hc = STANDARDS["hc_mm"]
    assert hc.centile(hc.value_at(3, 21.4), 21.4) == pytest.approx(3.0, abs=1e-6)
    assert hc.centile(172.5, 20) == pytest.approx(50, abs=0.5)
    assert hc.centile(150, 41) is None  # outside the standard's ages


@pytest.mark.parametrize("weeks", [18, 20, 22, 24, 28])
def test_tcd_standard_and_its_dating_equation_agree(weeks):
    # The cerebellar paper prints both TCD-for-age and age-for-TCD; the median TCD dates to
    # the same age within 0.15 week.
    median = STANDARDS["tcd_mm"].value_at(50, weeks)
    assert ga_from_tcd(median) == pytest.approx(weeks, abs=0.15)


@pytest.mark.parametrize("weeks", [16, 18, 20, 22, 24])
def test_hc_dating_agrees_with_the_hc_standard(weeks):
    # Independent fits on the same study: the median HC for an age dates to that age.
    assert ga_from_hc(STANDARDS["hc_mm"].value_at(50, weeks)) == pytest.approx(weeks, abs=0.1)


def test_dating_refuses_heads_outside_its_range():
    assert ga_from_hc(40.0) is None
    assert ga_from_tcd(5.0) is None
    assert ga_from_hc(175.0) == pytest.approx(20.2, abs=0.1)
