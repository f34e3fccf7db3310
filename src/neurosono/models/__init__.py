"""Models shipped inside the package (trained by neurosono on its own phantoms)."""

from pathlib import Path

PHANTOM_DIR = Path(__file__).parent / "phantom"
DEFAULT_DETECTOR = PHANTOM_DIR / "detector.pt"
