"""fit_binary on a learnable synthetic task, for tests/test_distributed.py.

Run plainly (one process) or under torchrun; each process writes OUT/rank{R}.json with its
best validation AUC, best epoch and a hash of its final weights.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neurosono.classify.config import ClassifyTrainConfig
from neurosono.classify.fit import fit_binary
from neurosono.core.distributed import distributed, finish


@dataclass
class Item:
    features: np.ndarray
    label: int


def cohort(n: int, seed: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 3 == 0).astype(int)  # about 1:2, as the cohorts are
    shift = np.where(labels[:, None] == 1, 0.6, 0.0)
    return [
        Item((rng.normal(size=8) + s).astype(np.float32), int(y)) for s, y in zip(shift, labels, strict=True)
    ]


def batches(items: list[Item], train: bool, rng: np.random.Generator):
    x = torch.from_numpy(np.stack([i.features for i in items]))
    if train:  # augmentation noise, drawn from the loop's generator
        x = x + torch.from_numpy(rng.normal(scale=0.1, size=x.shape).astype(np.float32))
    return (x,), torch.tensor([float(i.label) for i in items])


def main() -> None:
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 1),
        torch.nn.Flatten(0),
    )
    config = ClassifyTrainConfig(seed=0, epochs=12, patience=12, batch=16, lr=3e-3)
    result = fit_binary(model, cohort(192, 1), cohort(96, 2), batches, config)
    weights = b"".join(v.numpy().tobytes() for v in model.state_dict().values())
    place = distributed()
    (out / f"rank{place.rank}.json").write_text(
        json.dumps(
            {
                "world_size": place.world_size,
                "best_val_auc": result.best_val_auc,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "weights_sha256": hashlib.sha256(weights).hexdigest(),
            }
        )
    )
    finish()


if __name__ == "__main__":
    main()
