"""Stage 2 at inference: P(abnormal) and every drop-one-region attribution in one pass.

The drop-one attribution of region r (``classify.model.drop_one_region_attribution``)
is P(abnormal) minus P(abnormal) with region r's crop emptied and its scalars zeroed.
Each HexaNet branch sees only its own region's crop, so emptying region r changes
only region r's embedding, and always to the same vector: the branch's embedding of
an empty crop (a constant of the trained weights). :class:`DropOneHexaNet` therefore
embeds each crop once, builds the R+1 feature variants (as is, and each region
swapped for its empty features; case-level inputs such as the gestational age belong
to no region and stay as they are) and runs them through HexaNet's head as one batch:
the same numbers as R+1 full passes, at the cost of one. The torch and ONNX runtimes
both run this module (``hexanet.onnx`` is its export), so they compute alike.

:func:`check_drop_one` compares it with HexaNet itself (base logits and explicit
drop-one passes); it runs whenever it is built, so a change to HexaNet's forward
that this shortcut does not follow is an error, never a silently wrong attribution.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from neurosono.classify.regions import CROP


def n_scalars_of(model: nn.Module) -> int:
    """Region scalars HexaNet expects: its attribute, else what its head's input width implies."""
    value = getattr(model, "n_scalars", None)
    if value is not None:
        return int(value)
    # Older HexaNets: the head reads R * (embedding + scalars) numbers.
    return model.head[0].in_features // model.n_regions - model.branches[0].out_features


class DropOneHexaNet(nn.Module):
    """crops [B, R, 1, CROP, CROP], scalars [B, R, S] and, for a model with C > 0 case
    scalars, case_scalars [B, C] -> (logits [B], drop-one logits [B, R])."""

    def __init__(self, model: nn.Module, crop: int = CROP) -> None:
        super().__init__()
        self.model = model.eval()
        self.n_regions = int(model.n_regions)
        self.n_scalars = n_scalars_of(model)
        self.n_case_scalars = int(getattr(model, "n_case_scalars", 0))
        self.crop = crop
        with torch.no_grad():
            empty = self._embed(torch.zeros(1, self.n_regions, 1, crop, crop))[0]
        self.register_buffer("empty", empty)  # [R, E]: each branch's embedding of an empty crop

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        model = self.model
        out = []
        for r in range(self.n_regions):
            emb = model.branches[0 if model.share_branches else r](crops[:, r])
            if model.region_embedding is not None:
                emb = emb + model.region_embedding.weight[r]
            out.append(emb)
        return torch.stack(out, dim=1)

    def forward(
        self, crops: torch.Tensor, scalars: torch.Tensor, case_scalars: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([self._embed(crops), scalars], dim=2)  # [B, R, E + S]
        empty = torch.cat([self.empty, torch.zeros_like(scalars[0])], dim=1)  # [R, E + S]
        # Variant 0 is the case as it is; variant k + 1 has region k removed.
        eye = torch.eye(self.n_regions, dtype=torch.bool, device=crops.device)
        removed = torch.cat([torch.zeros_like(eye[:1]), eye], dim=0)  # [R + 1, R]
        variants = torch.where(removed[None, :, :, None], empty[None, None], features[:, None]).flatten(2)
        if self.n_case_scalars:
            case = self.model.case_inputs(case_scalars, crops.shape[0])  # [B, C]
            variants = torch.cat([variants, case[:, None].expand(-1, self.n_regions + 1, -1)], dim=2)
        logits = self.model.head(variants).squeeze(-1)  # [B, R + 1]
        return logits[:, 0], logits[:, 1:]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def probabilities(logits: np.ndarray, drop_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P(abnormal) [B], attribution [B, R]) from the two outputs of :class:`DropOneHexaNet`."""
    p = sigmoid(logits)
    return p, p[:, None] - sigmoid(drop_logits)


def example_inputs(
    n_regions: int, n_scalars: int, batch: int = 2, crop: int = CROP, seed: int = 0, n_case_scalars: int = 0
) -> tuple[torch.Tensor, ...]:
    """Crop-like and scalar-like inputs, with one region already missing in the first case
    (and, with case scalars, the first case's unknown: zeros)."""
    generator = torch.Generator().manual_seed(seed)
    crops = torch.randn(batch, n_regions, 1, crop, crop, generator=generator)
    scalars = torch.rand(batch, n_regions, n_scalars, generator=generator)
    scalars[:, :, 0] = 1.0
    crops[0, -1] = 0
    scalars[0, -1] = 0
    if not n_case_scalars:
        return crops, scalars
    case = torch.rand(batch, n_case_scalars, generator=generator)
    case[0] = 0
    return crops, scalars, case


@torch.no_grad()
def check_drop_one(wrapper: DropOneHexaNet, atol: float = 1e-4) -> float:
    """Largest logit difference between the wrapper and HexaNet's own passes; raises above ``atol``."""
    model, R = wrapper.model, wrapper.n_regions
    # batch=2: the second case has its case scalars (the first has them unknown).
    crops, scalars, *case = example_inputs(
        R, wrapper.n_scalars, batch=2, crop=wrapper.crop, n_case_scalars=wrapper.n_case_scalars
    )
    crops, scalars, case = crops[1:], scalars[1:], [c[1:] for c in case]
    # HexaNet itself on the case as it is and with two regions removed (first and middle):
    # a cheap spot check, run at every load; the tests compare all regions.
    removed = sorted({0, R // 2})
    c = crops.repeat(1 + len(removed), 1, 1, 1, 1)
    s = scalars.repeat(1 + len(removed), 1, 1)
    for i, r in enumerate(removed, start=1):
        c[i, r] = 0
        s[i, r] = 0
    reference = model(c, s, *[k.repeat(1 + len(removed), 1) for k in case])
    base, drop = wrapper(crops, scalars, *case)
    diff = float(torch.max(torch.abs(torch.cat([base, drop[0, removed]]) - reference)))
    if not diff <= atol:
        raise RuntimeError(
            f"the one-pass drop-one attribution differs from HexaNet's own passes by {diff:.2e} "
            f"(> {atol}); HexaNet.forward has changed: update neurosono/pipeline/stage2.py"
        )
    return diff


def drop_one_model(model: nn.Module) -> DropOneHexaNet:
    """The wrapper for a loaded HexaNet, checked against it."""
    wrapper = DropOneHexaNet(model).eval()
    check_drop_one(wrapper)
    return wrapper
