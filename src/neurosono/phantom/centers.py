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
    # The realistic look (generator 2) only: image format and the scene round the head.
    aspect: float = 1.0  # image height over width
    zoom_realistic: float = 0.7  # fraction of the width the head's long axis fills
    tissue_level: float = 0.015  # echogenicity of the uterine and maternal tissue
    fluid_margin_mm: float = 4.0  # amniotic fluid rim round the skull
    placenta_rate: float = 0.5
    skull_thickness: float = 1.5  # the skull's echo, as a multiple of the bone's thickness
    reticulum: float = 4.0  # strength of the brain's echogenic network
    blur_mm: float = 0.3  # soft boundaries
    persistence: int = 1  # frames averaged
    edge_enhance: float = 0.0
    despeckle: float = 0.0  # the machine's speckle reduction (0 none, 1 strong)
    jpeg_quality: int = 0  # the export's JPEG compression (0: none)
    noise_floor: float = 0.0  # display level of the receiver's noise (0..1 of the display window)
    sector_realistic_deg: float = 32.0  # the realistic look's sector half-angle

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
        # Drawn after the fields above, so a centre's plain look stays what it was.
        aspect=float(rng.uniform(0.66, 0.8)),
        zoom_realistic=float(rng.uniform(0.62, 0.9)),
        tissue_level=float(rng.uniform(0.006, 0.025)),
        fluid_margin_mm=float(rng.uniform(1.0, 10.0)),
        placenta_rate=float(rng.uniform(0.3, 0.8)),
        skull_thickness=float(rng.uniform(1.3, 2.1)),
        reticulum=float(rng.uniform(8.0, 20.0)),
        blur_mm=float(rng.uniform(0.15, 0.45)),
        persistence=int(rng.integers(1, 4)),
        edge_enhance=float(rng.uniform(0.0, 0.8)),
        despeckle=float(rng.uniform(0.5, 1.0)),
        jpeg_quality=int(rng.integers(55, 93)) if rng.random() < 0.6 else 0,
        noise_floor=float(rng.uniform(0.01, 0.06)),
        sector_realistic_deg=float(rng.uniform(20.0, 36.0)),
    )
