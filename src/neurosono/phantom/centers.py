"""Centre (machine) styles: each centre's scanner looks different, so leave-one-centre-out
is a real domain shift rather than a relabelling."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

MACHINE_NAMES = (
    "VOLUSON E10",
    "VOLUSON E8",
    "LOGIQ P9",
    "ACUSON S2000",
    "EPIQ 7",
    "AFFINITI 70",
    "ARIETTA 850",
    "RS85 PRESTIGE",
    "APLIO i800",
    "RESONA 7",
    "WS80A",
    "HERA W10",
)


@dataclass(frozen=True)
class CenterStyle:
    name: str
    machine: str
    gain_db: float  # overall brightness offset
    dynamic_range_db: float  # log-compression window
    gamma: float
    sepia: bool  # colour map: grey or sepia
    speckle_axial: float  # PSF sigma along the beam, in mm
    speckle_lateral: float  # PSF sigma across the beam at the surface, in mm
    lateral_growth: float  # how much lateral blur grows to the bottom of the image (x)
    zoom: float  # fraction of the image width the head's long axis fills
    sector_half_angle_deg: float
    probe_radius_frac: float  # virtual apex above the image, as a fraction of its size
    tgc_ripple: float  # amplitude of time-gain unevenness
    reverb_strength: float
    text: bool  # burned-in header text
    callipers_rate: float  # fraction of images with measurement callipers drawn
    depth_scale: bool

    def to_dict(self) -> dict:
        return asdict(self)


def sample_center(seed: int, index: int) -> CenterStyle:
    """Style of centre ``index`` in a cohort made with ``seed`` (independent of case count)."""
    rng = np.random.default_rng([seed, 7919, index])
    return CenterStyle(
        name=f"C{index + 1:02d}",
        machine=MACHINE_NAMES[int(rng.integers(len(MACHINE_NAMES)))],
        gain_db=float(rng.uniform(-4.0, 5.0)),
        dynamic_range_db=float(rng.uniform(38.0, 58.0)),
        gamma=float(rng.uniform(0.8, 1.3)),
        sepia=bool(rng.random() < 0.3),
        speckle_axial=float(rng.uniform(0.10, 0.22)),
        speckle_lateral=float(rng.uniform(0.22, 0.45)),
        lateral_growth=float(rng.uniform(1.3, 2.4)),
        zoom=float(rng.uniform(0.55, 0.75)),
        sector_half_angle_deg=float(rng.uniform(29.0, 38.0)),
        probe_radius_frac=float(rng.uniform(0.22, 0.5)),
        tgc_ripple=float(rng.uniform(0.03, 0.18)),
        reverb_strength=float(rng.uniform(0.5, 1.0)),
        text=bool(rng.random() < 0.8),
        callipers_rate=float(rng.uniform(0.0, 0.6)),
        depth_scale=bool(rng.random() < 0.7),
    )
