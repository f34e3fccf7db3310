"""The one training loop of every stage-2 classifier, and the one scoring loop.

A classifier kind supplies ``batches(items, train, rng) -> (model inputs, labels)``; the loop
does the rest alike for all: class-weighted BCE, AdamW with cosine decay, early stopping on
validation AUC (keeping the best epoch's weights), and the threshold chosen on validation;
in one process or, under torchrun, in several (DistributedDataParallel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DistributedSampler

from neurosono.classify.config import ClassifyTrainConfig
from neurosono.core.distributed import Distributed, broadcast_buffers, broadcast_float, distributed
from neurosono.core.metrics import choose_threshold
from neurosono.core.progress import note, track

Batches = Callable[[list, bool, np.random.Generator], tuple[tuple[torch.Tensor, ...], torch.Tensor]]


@dataclass
class FitResult:
    threshold: float
    best_epoch: int
    best_val_auc: float
    history: list[dict]
    val_scores: np.ndarray


def labels_of(items: list) -> np.ndarray:
    return np.array([i.label for i in items])


def fit_binary(
    model: torch.nn.Module,
    train_items: list,
    val_items: list,
    batches: Batches,
    config: ClassifyTrainConfig,
    progress: bool = False,
    description: str = "training",
) -> FitResult:
    """Train ``model`` in place; it is left holding its best validation epoch's weights.

    Launched by torchrun (``core/distributed.py``), each process trains on its share of every
    epoch's cases (a DistributedSampler) with ``config.batch / world size`` cases per step,
    so a step still averages the gradient over ``config.batch`` cases (DDP); every process
    then sees the same validation AUC (process 0's) and stops at the same epoch.
    """
    place = distributed()
    place.share_threads()
    rng = np.random.default_rng(config.seed)
    train_labels, val_labels = labels_of(train_items), labels_of(val_items)
    for name, labels in (("training", train_labels), ("validation", val_labels)):
        if len(set(labels.tolist())) < 2:
            raise ValueError(f"the {name} cases need both normal and abnormal ones")
    model.to(place.device)
    trained, order_of, per_step = model, None, config.batch
    if place.world_size > 1:
        trained, order_of, per_step = _data_parallel(model, len(train_items), config, place)
        rng = np.random.default_rng([config.seed, place.rank])  # each process its own augmentations
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    # About 2:1 normal:abnormal: weight the positives by the ratio so both count equally.
    pos_weight = torch.tensor(
        (train_labels == 0).sum() / max(1, (train_labels == 1).sum()), dtype=torch.float32
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(place.device))
    best: dict = {"auc": -1.0, "epoch": -1, "state": None}
    history = []
    for epoch in track(range(config.epochs), description, total=config.epochs, enabled=progress):
        model.train()
        order = rng.permutation(len(train_items)) if order_of is None else order_of(epoch)
        losses = []
        for start in range(0, len(order), per_step):
            chunk = [train_items[i] for i in order[start : start + per_step]]
            if len(chunk) < 2:
                continue  # batch norm needs two samples (the sampler gives every process as many)
            inputs, labels = batches(chunk, True, rng)
            loss = loss_fn(trained(*_on(inputs, place.device)), labels.to(place.device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scheduler.step()
        broadcast_buffers(model)
        auc = float(roc_auc_score(val_labels, predict_scores(model, val_items, batches)))
        auc = broadcast_float(auc)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_auc": auc})
        note(
            f"{description}: epoch {epoch + 1}/{config.epochs} loss {np.mean(losses):.4f} "
            f"val AUC {auc:.4f} (best {max(auc, best['auc']):.4f})",
            progress,
        )
        if auc > best["auc"]:
            best = {
                "auc": auc,
                "epoch": epoch + 1,
                "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            }
        elif epoch + 1 - best["epoch"] >= config.patience:
            break
    model.to("cpu")
    model.load_state_dict(best["state"])
    val_scores = predict_scores(model, val_items, batches)
    threshold = choose_threshold(val_labels, val_scores, config.target_sensitivity)
    return FitResult(threshold, best["epoch"], best["auc"], history, val_scores)


def _data_parallel(model: torch.nn.Module, n_train: int, config: ClassifyTrainConfig, place: Distributed):
    """The DDP-wrapped model, this process's case order per epoch, and its cases per step."""
    trained = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[place.local_rank] if place.device.type == "cuda" else None
    )
    sampler = DistributedSampler(range(n_train), place.world_size, place.rank, shuffle=True, seed=config.seed)

    def order_of(epoch: int) -> list[int]:
        sampler.set_epoch(epoch)
        return list(sampler)

    return trained, order_of, place.share(config.batch)


def _on(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tensors if device.type == "cpu" else tuple(t.to(device) for t in tensors)


@torch.no_grad()
def predict_scores(model: torch.nn.Module, items: list, batches: Batches, size: int = 32) -> np.ndarray:
    """P(abnormal) per item, in evaluation mode (no augmentation)."""
    model.eval()
    rng = np.random.default_rng(0)
    device = next(model.parameters()).device
    out = [
        torch.sigmoid(model(*_on(batches(items[s : s + size], False, rng)[0], device))).cpu().numpy()
        for s in range(0, len(items), size)
    ]
    return np.concatenate(out) if out else np.zeros(0)
