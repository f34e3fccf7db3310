"""The head model: a small U-Net that outlines the skull, then an ellipse fit.

Two output maps: the head inside the skull's outer border (what HC and OFD are measured
on) and the brain inside its inner border (the far side of the BPD, measured outer to
inner). The image is framed into 192 x 144 pixels (aspect kept, grey, standardised); the maps
are mapped back to the image's own pixels and thresholded there, so the ellipse is fitted
to a smooth outline at full resolution, not to the network's grid. Measurement takes two
looks (``measure.head.measure_image``): the whole image, then a frame round the head it
found, where the skull spans most of the network's input; training shows it both views.
A model may be trained at another input size (``--input-size``); its file records the size.

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

INPUT_SIZE = (192, 144)  # the default (width, height) a framed image is seen at
WIDTHS = (8, 16, 32, 64, 64)
FORMAT_1_INPUT_SIZE = (256, 192)  # the size of a head file that does not record its own
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

    def __init__(
        self,
        widths: tuple[int, ...] = WIDTHS,
        n_out: int = len(CHANNELS),
        input_size: tuple[int, int] = INPUT_SIZE,
    ) -> None:
        super().__init__()
        self.input_size = tuple(int(v) for v in input_size)  # (width, height) of the framed image
        self.widths = tuple(int(w) for w in widths)
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
            if tuple(skip.shape[-2:]) == (2 * x.shape[-2], 2 * x.shape[-1]):
                # An exact doubling (frames are multiples of 16): the same pixels as asking for
                # the skip's size, but the ONNX graph gets constant scales instead of computing
                # the size from shapes at every run (about a sixth of its time on onnxruntime).
                x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            else:
                x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


@dataclass(frozen=True)
class Frame:
    """A box of an image (pixels; it may reach past the edges) placed in the network's input
    of ``size`` (width, height; 192 x 144 by default): scaled to fit with its aspect kept,
    centred, zero outside the image."""

    x0: float
    y0: float
    scale: float
    dx: float
    dy: float
    size: tuple[int, int] = INPUT_SIZE

    @classmethod
    def around(cls, x0: float, y0: float, x1: float, y1: float, size: tuple[int, int] = INPUT_SIZE) -> Frame:
        width, height = size
        scale = min(width / (x1 - x0), height / (y1 - y0))
        return cls(
            x0, y0, scale, (width - (x1 - x0) * scale) / 2, (height - (y1 - y0) * scale) / 2, tuple(size)
        )

    @classmethod
    def whole(cls, shape: tuple[int, ...], size: tuple[int, int] = INPUT_SIZE) -> Frame:
        return cls.around(0.0, 0.0, float(shape[1]), float(shape[0]), size)

    @classmethod
    def zoom(cls, ellipse, margin: float, size: tuple[int, int] = INPUT_SIZE) -> Frame:
        """The head's box (the ellipse's axis-aligned box, ``margin`` times its size) as the frame."""
        return cls.padded(ellipse.box(), margin, size)

    @classmethod
    def padded(
        cls, box: tuple[float, float, float, float], margin: float, size: tuple[int, int] = INPUT_SIZE
    ) -> Frame:
        """``box`` (x0, y0, x1, y1), ``margin`` times its size about its centre, as the frame."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half_w, half_h = (box[2] - box[0]) / 2 * margin, (box[3] - box[1]) / 2 * margin
        return cls.around(cx - half_w, cy - half_h, cx + half_w, cy + half_h, size)

    def matrix(self, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
        """Image pixels -> network pixels; ``origin``: the image pixel at (0, 0) of the array given."""
        s = self.scale
        ox, oy = origin
        return np.array(
            [[s, 0, self.dx - (self.x0 - ox) * s], [0, s, self.dy - (self.y0 - oy) * s]], np.float64
        )

    def put(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H x W) as the network's input (height x width); smoothed first when shrunk.

        Only the part of the image the frame sees (and the smoothing's reach round it) is
        read, so a frame round a head costs what the head's pixels cost, not the image's."""
        from neurosono.core.images import smoothed_region

        sigma = 0.5 / self.scale if self.scale < 0.8 else 0.0
        source, x0, y0 = smoothed_region(image, *self.window(image.shape), sigma)
        if source.size == 0:
            return np.zeros((self.size[1], self.size[0]), np.float32)
        return cv2.warpAffine(source, self.matrix((x0, y0)), tuple(self.size), flags=cv2.INTER_LINEAR)

    def window(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The image pixels (x0, y0, x1, y1) the frame sees, with a pixel's margin, within the image."""
        s = self.scale
        x0 = int(np.floor(self.x0 - self.dx / s)) - 1
        y0 = int(np.floor(self.y0 - self.dy / s)) - 1
        x1 = int(np.ceil(self.x0 + (self.size[0] - self.dx) / s)) + 2
        y1 = int(np.ceil(self.y0 + (self.size[1] - self.dy) / s)) + 2
        return max(0, x0), max(0, y0), min(int(shape[1]), x1), min(int(shape[0]), y1)

    def take(self, maps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Network maps [C, height, width] back in the image's pixels [C, H, W] (zero outside the frame)."""
        return self.take_window(maps, shape).full()

    def take_window(self, maps: np.ndarray, shape: tuple[int, ...]) -> MapWindow:
        """Network maps back in the image's pixels, only over the part of the image the frame
        sees (outside it they are zero)."""
        x0, y0, x1, y1 = self.window(shape)
        size = (max(1, x1 - x0), max(1, y1 - y0))
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        matrix = self.matrix((x0, y0))
        back = np.stack([cv2.warpAffine(m, matrix, size, flags=flags) for m in maps])
        return MapWindow(back, x0, y0, (int(shape[0]), int(shape[1])))


@dataclass(frozen=True)
class MapWindow:
    """Maps [C, h, w] over a window of an image: its top-left pixel is (x0, y0) of an image of
    ``image_shape``; outside the window the maps are zero."""

    maps: np.ndarray
    x0: int
    y0: int
    image_shape: tuple[int, int]

    @classmethod
    def whole(cls, maps: np.ndarray) -> MapWindow:
        return cls(maps, 0, 0, (int(maps.shape[1]), int(maps.shape[2])))

    def full(self) -> np.ndarray:
        """The maps over the whole image [C, H, W]."""
        out = np.zeros((self.maps.shape[0], *self.image_shape), np.float32)
        h, w = self.maps.shape[1:]
        out[:, self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.maps
        return out


def input_size(model) -> tuple[int, int]:
    """The (width, height) a head model (torch or onnxruntime) takes its framed image at."""
    return tuple(getattr(model, "input_size", INPUT_SIZE))


def standardise(canvas: np.ndarray) -> np.ndarray:
    """A framed image (grey levels 0-255) -> float32 with the image part at mean 0, SD 1."""
    x = canvas.astype(np.float32) / 255.0
    inside = x[x > 0]
    mean, sd = (float(inside.mean()), float(inside.std())) if inside.size > 16 else (0.0, 1.0)
    return (x - mean) / max(sd, 1e-3)


@torch.no_grad()
def framed_windows(model: HeadUNet, images: list[np.ndarray], frames: list[Frame]) -> list[MapWindow]:
    """Probability maps (head, brain) of each image seen through its frame, over the part of
    the image the frame sees."""
    model.eval()
    x = np.stack([standardise(f.put(im)) for f, im in zip(frames, images, strict=True)])[:, None]
    probs = torch.sigmoid(model(torch.from_numpy(x))).numpy()
    return [f.take_window(p, im.shape) for f, p, im in zip(frames, probs, images, strict=True)]


def framed_maps(model: HeadUNet, images: list[np.ndarray], frames: list[Frame]) -> list[np.ndarray]:
    """Probability maps [2, H, W] (head, brain) of each image seen through its frame."""
    return [window.full() for window in framed_windows(model, images, frames)]


def predict_maps(model: HeadUNet, images: list[np.ndarray], batch: int = 8) -> list[np.ndarray]:
    """Maps of whole images, each seen whole (one pass)."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        out.extend(framed_maps(model, chunk, [Frame.whole(im.shape, input_size(model)) for im in chunk]))
    return out


def save_head_model(path, model: HeadUNet, meta: dict) -> None:
    from neurosono.core.checkpoints import save_payload

    save_payload(
        path,
        {
            "format": FORMAT,
            "state_dict": model.state_dict(),
            "widths": list(model.widths),
            "input_size": list(model.input_size),
            **meta,
        },
    )


def load_head_model(path) -> tuple[HeadUNet, dict]:
    from neurosono.core.checkpoints import load_payload

    _, payload = load_payload(path, "head.pt", FORMAT, "head model")
    size = tuple(payload.get("input_size", FORMAT_1_INPUT_SIZE))
    model = HeadUNet(tuple(payload["widths"]), input_size=size)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
    return model, meta
