"""The head model: a small U-Net that outlines the skull, then an ellipse fit.

Two output maps: the head inside the skull's outer border (what HC and OFD are measured
on) and the brain inside its inner border (the far side of the BPD, measured outer to
inner). The image is letterboxed to 256 x 192 pixels (aspect kept, grey, standardised);
the maps are resized back to the image's own pixels and thresholded there, so the
ellipse is fitted to a smooth outline at full resolution, not to the network's grid.

Segmentation then a fit was chosen over regressing the five ellipse numbers directly: a
fit uses every outline pixel, a part of the skull hidden by shadow or cut by the sector
edge only removes points, and the mask gives the Dice HC18 is scored with.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

INPUT_W, INPUT_H = 256, 192
WIDTHS = (12, 24, 48, 96, 96)
CHANNELS = ("head", "brain")  # outer and inner border of the skull, filled
FORMAT = "neurosono-head-1"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HeadUNet(nn.Module):
    """U-Net: four 2x poolings, skip connections, bilinear upsampling; two logit maps."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, n_out: int = len(CHANNELS)) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        for skip, w in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(_block(w + skip, skip))
        self.head = nn.Conv2d(widths[0], n_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


@dataclass(frozen=True)
class Letterbox:
    """Where an image of (width, height) lies in the network's input."""

    width: int
    height: int
    new_w: int
    new_h: int
    dx: int
    dy: int

    @classmethod
    def for_size(cls, width: int, height: int) -> Letterbox:
        scale = min(INPUT_W / width, INPUT_H / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        return cls(width, height, new_w, new_h, (INPUT_W - new_w) // 2, (INPUT_H - new_h) // 2)

    def put(self, image: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """``image`` (H x W, any dtype) shrunk into a zero 192 x 256 canvas."""
        small = cv2.resize(image, (self.new_w, self.new_h), interpolation=interpolation)
        canvas = np.zeros((INPUT_H, INPUT_W), small.dtype)
        canvas[self.dy : self.dy + self.new_h, self.dx : self.dx + self.new_w] = small
        return canvas

    def take(self, maps: np.ndarray) -> np.ndarray:
        """Network maps [C, 192, 256] back at the image's own size [C, H, W]."""
        inner = maps[:, self.dy : self.dy + self.new_h, self.dx : self.dx + self.new_w]
        return np.stack(
            [cv2.resize(m, (self.width, self.height), interpolation=cv2.INTER_LINEAR) for m in inner]
        )


def standardise(canvas: np.ndarray) -> np.ndarray:
    """uint8 letterboxed image -> float32 with the image part at mean 0, SD 1."""
    x = canvas.astype(np.float32) / 255.0
    inside = x[x > 0]
    mean, sd = (float(inside.mean()), float(inside.std())) if inside.size > 16 else (0.0, 1.0)
    return (x - mean) / max(sd, 1e-3)


@torch.no_grad()
def predict_maps(model: HeadUNet, images: list[np.ndarray], batch: int = 8) -> list[np.ndarray]:
    """Probability maps [2, H, W] (head, brain) for each grey uint8 image, at its own size."""
    model.eval()
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        boxes = [Letterbox.for_size(im.shape[1], im.shape[0]) for im in chunk]
        x = np.stack([standardise(b.put(im)) for b, im in zip(boxes, chunk, strict=True)])[:, None]
        probs = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        out.extend(b.take(p) for b, p in zip(boxes, probs, strict=True))
    return out


def save_head_model(path, model: HeadUNet, meta: dict) -> None:
    from neurosono.core.checkpoints import save_payload

    save_payload(path, {"format": FORMAT, "state_dict": model.state_dict(), "widths": list(WIDTHS), **meta})


def load_head_model(path) -> tuple[HeadUNet, dict]:
    from neurosono.core.checkpoints import load_payload

    _, payload = load_payload(path, "head.pt", FORMAT, "head model")
    model = HeadUNet(tuple(payload["widths"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
    return model, meta
