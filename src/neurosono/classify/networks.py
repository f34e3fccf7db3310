"""The stage-2 networks: Mini-ResNet, HexaNet, the whole-image network and the head-crop network.

HexaNet reads, for each region, a small grey crop and a few scalars (present,
detector confidence, box size in mm and relative to the head), embeds each crop with its own
Mini-ResNet branch (or one shared branch with ``share_branches``), concatenates
the embeddings with the scalars (and, for models that take them, case-level scalars
such as the gestational age: ``classify/gestation.py``), and a small MLP gives the
logit of P(abnormal).
A region the detector did not find arrives as an empty (zero) crop with
present = 0: a missing CSP is itself a sign, so absence must reach the decision.
"""

from __future__ import annotations

import torch
from torch import nn

# present, confidence, box width and height (mm / 20, or relative to the head when the
# spacing is unknown), and box width and height relative to the head's size in that plane
# (the span of the detected regions, or the skull's short axis: see classify/regions.py).
N_SCALARS = 6


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class MiniResNet(nn.Module):
    """A stride-2 stem, three residual stages (16-32-64 channels by default), global average pooling.

    The stride-2 stem halves the input before the first stage: on 2 CPU cores a training step
    of HexaNet (six branches, 64 px crops, batch 16) fell from 3.8 s to 0.38 s, which is what
    makes leave-one-centre-out and a 10-minute ``neurosono run`` possible. The parameters are
    the same; the crops' context margin keeps each structure well above the final 8 px grid.
    """

    def __init__(
        self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64), stem_stride: int = 2
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(BasicBlock(cin, width, stride=1 if i == 0 else 2))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)


class HexaNet(nn.Module):
    def __init__(
        self,
        n_regions: int = 6,
        share_branches: bool = False,
        widths: tuple[int, ...] = (16, 32, 64),
        hidden: int = 64,
        dropout: float = 0.3,
        n_scalars: int = N_SCALARS,
        n_case_scalars: int = 0,
    ) -> None:
        super().__init__()
        self.n_regions = n_regions
        self.n_scalars = n_scalars
        self.n_case_scalars = n_case_scalars
        self.share_branches = share_branches
        n_branches = 1 if share_branches else n_regions
        self.branches = nn.ModuleList(MiniResNet(1, widths) for _ in range(n_branches))
        embed = self.branches[0].out_features
        # A shared branch needs to know which region it is looking at.
        self.region_embedding = nn.Embedding(n_regions, embed) if share_branches else None
        self.head = nn.Sequential(
            nn.Linear(n_regions * (embed + n_scalars) + n_case_scalars, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(
        self, crops: torch.Tensor, scalars: torch.Tensor, case_scalars: torch.Tensor | None = None
    ) -> torch.Tensor:
        """crops [B, R, 1, H, W], scalars [B, R, n_scalars], case_scalars [B, n_case_scalars]
        (None: all unknown, zeros) -> logits [B]."""
        if crops.shape[1] != self.n_regions or scalars.shape[1:] != (self.n_regions, self.n_scalars):
            raise ValueError(
                f"expected {self.n_regions} regions with {self.n_scalars} scalars, got crops "
                f"{tuple(crops.shape)} and scalars {tuple(scalars.shape)}"
            )
        case_scalars = self.case_inputs(case_scalars, crops.shape[0])
        features = []
        for r in range(self.n_regions):
            branch = self.branches[0 if self.share_branches else r]
            emb = branch(crops[:, r])
            if self.region_embedding is not None:
                emb = emb + self.region_embedding.weight[r]
            features.append(torch.cat([emb, scalars[:, r]], dim=1))
        return self.head(torch.cat([*features, case_scalars], dim=1)).squeeze(1)

    def case_inputs(self, case_scalars: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The case-level scalars checked against the model ([B, 0] for a model without them)."""
        if case_scalars is None:
            return torch.zeros(batch, self.n_case_scalars)
        if tuple(case_scalars.shape) != (batch, self.n_case_scalars):
            raise ValueError(
                f"expected case scalars of shape ({batch}, {self.n_case_scalars}), "
                f"got {tuple(case_scalars.shape)}"
            )
        return case_scalars


@torch.no_grad()
def drop_one_region_attribution(
    model: HexaNet, crops: torch.Tensor, scalars: torch.Tensor, case_scalars: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, R]: how much P(abnormal) falls when each region is removed (empty crop, absent).

    Positive: the region pushed the decision towards abnormal; negative: towards normal.
    Case-level inputs (the gestational age) belong to no region and stay as they are.
    """
    model.eval()
    base = torch.sigmoid(model(crops, scalars, case_scalars))
    out = torch.zeros(crops.shape[0], model.n_regions)
    for r in range(model.n_regions):
        c, s = crops.clone(), scalars.clone()
        c[:, r] = 0
        s[:, r] = 0
        out[:, r] = base - torch.sigmoid(model(c, s, case_scalars))
    return out


class WholeImageNet(nn.Module):
    """One Mini-ResNet reading both planes at once (TV and TC stacked as two channels),
    plus optional case-level scalars (the gestational age) beside its embedding."""

    def __init__(self, stem_stride: int = 2, n_case_scalars: int = 0) -> None:
        super().__init__()
        self.n_case_scalars = n_case_scalars
        self.backbone = MiniResNet(in_channels=2, stem_stride=stem_stride)
        self.head = nn.Linear(self.backbone.out_features + n_case_scalars, 1)

    def forward(self, images: torch.Tensor, case_scalars: torch.Tensor | None = None) -> torch.Tensor:
        features = self.backbone(images)
        if self.n_case_scalars:
            if case_scalars is None:  # unknown
                case_scalars = torch.zeros(images.shape[0], self.n_case_scalars)
            features = torch.cat([features, case_scalars], dim=1)
        return self.head(features).squeeze(1)


class HeadCropNet(nn.Module):
    """Mini-ResNet on the head crop, then a linear layer: the logit of P(abnormal)."""

    def __init__(self, stem_stride: int = 2) -> None:
        super().__init__()
        self.backbone = MiniResNet(in_channels=1, stem_stride=stem_stride)
        self.head = nn.Linear(self.backbone.out_features, 1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(crops)).squeeze(1)


def stem_stride_of(model: nn.Module) -> int:
    """The stride of a network's first convolution (recorded with single-network models)."""
    backbone = getattr(model, "backbone", model)
    return int(backbone.stem[0].stride[0])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
