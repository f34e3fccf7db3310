"""Run ultralytics fully offline, quietly, on every CPU core, writing nothing to the user's home.

Import this module before ``ultralytics``: the library reads its environment at import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from neurosono.core.runtime import cpu_cores


def config_dir() -> Path:
    """The folder neurosono lends ultralytics for settings and fonts (never the home folder)."""
    base = os.environ.get("NEUROSONO_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"neurosono-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )
    return Path(base) / "ultralytics"


def configure_ultralytics() -> Path:
    """Set the offline environment, install a font, turn settings sync and integrations off; idempotent."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(folder)
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("MPLCONFIGDIR", str(folder / "matplotlib"))
    import ultralytics.utils as yolo_utils
    import ultralytics.utils.torch_utils as yolo_torch

    # ultralytics downloads Arial.ttf for its plots into its settings folder (YOLO_CONFIG_DIR
    # plus a sub-folder of its own); matplotlib ships DejaVuSans, which serves.
    font = Path(yolo_utils.USER_CONFIG_DIR) / "Arial.ttf"
    if not font.exists():
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        tmp = font.parent / f".Arial.{os.getpid()}.ttf"
        shutil.copyfile(source, tmp)
        os.replace(tmp, font)
    # No sync, and none of ultralytics' logging integrations: they would report to services
    # (or, with ray installed, call Ray Tune's session and warn outside a tuning run).
    integrations = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
    yolo_utils.SETTINGS.update({"sync": False, **dict.fromkeys(integrations, False)})
    # ultralytics patches PIL's Image.open to pip-install HEIF support on the first file PIL
    # cannot identify; offline that turns "not an image" into ModuleNotFoundError. Mark the
    # plugins as registered so a bad file stays a clear UnidentifiedImageError.
    import ultralytics.utils.patches as yolo_patches

    yolo_patches._pil_plugins_registered = True
    # ultralytics sets torch to cores-1 threads on CPU; use them all.
    yolo_torch.NUM_THREADS = cpu_cores()
    return folder
