"""Training the structure model on datasets that record the structures' true sizes.

Only the phantom does today (its cases.csv holds ``atrium_mm``, ``tcd_mm``,
``cisterna_magna_mm`` and ``csp_width_mm``, its labels the region boxes); no public real
set has them. The windows come from the true region boxes, jittered in place and size as
much as stage 1's boxes move, then turned and flipped at random; the ``val`` split picks
the epoch with the lowest mean absolute error (mm, averaged over the structures).

Datasets whose cases.csv also says whether the TC image shows the midline behind the
vermis (``tc_cisterna_magna_in_view``, 1 or 0: the phantom records it) train the
posterior-fossa window too: the cisterna magna's depth where it is in view, and whether it
is, in the cerebellum's widened window (see :mod:`neurosono.measure.structures`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from neurosono.core.atomic import atomic_write_text, staged_directory
from neurosono.core.images import read_grey
from neurosono.core.progress import note, track
from neurosono.core.provenance import package_versions
from neurosono.data.format import Dataset, dataset_hash, read_labels
from neurosono.measure.structures import (
    FOSSA_DEPTH,
    FOSSA_FINE_BELOW,
    FOSSA_FINE_MARGIN,
    FOSSA_FINE_TRAIN_BELOW,
    FOSSA_IN_VIEW,
    FOSSA_MEASUREMENT,
    FOSSA_REGION,
    FOSSA_WINDOW_MARGIN,
    OUTPUTS,
    STRUCTURES,
    WINDOW_MARGIN,
    StructureNet,
    crop,
    load_structure_model,
    save_structure_model,
    standardise_crop,
    window,
)
from neurosono.measure.train import cpu_has_bf16

RECORD_NAME = "structures.json"
WEIGHTS_NAME = "structures.pt"


@dataclass
class StructureTrainConfig:
    epochs: int = 50
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # The one-cycle schedule anneals in its last epochs, where the best ones come: stopping
    # early would keep a high-learning-rate epoch, so by default every epoch runs.
    patience: int = 50
    seed: int = 0
    max_cases: int | None = None  # cap each dataset's train cases (None: all)
    jitter: float = 0.08  # box centre shift, share of the window's side
    size_jitter: float = 0.12  # box size change, log scale
    bf16: bool | None = None  # None: where the CPU computes bf16 natively
    init_from: str | None = None  # a structure model (file or run) to start from instead of random weights
    # Draw training windows with weight density**-balance_sizes of their true size (0: uniform),
    # so the rare extremes where the clinical limits lie are seen about as often as common sizes.
    balance_sizes: float = 0.0


@dataclass
class StructureSample:
    image: np.ndarray  # the plane's grey image
    spacing_mm: float
    box: tuple[float, float, float, float]
    structure: int  # index into the network's outputs (STRUCTURES, then FOSSA_DEPTH)
    true_mm: float
    group: str
    in_view: int = -1  # the posterior-fossa window's: 1 the depth is in the image, 0 not; -1 other windows
    margin: float = WINDOW_MARGIN  # the window's side over the box's longer side


class StructureDataError(ValueError):
    """A dataset gives no structure to train or measure on; the message names it."""


def true_size(case, measurement: str) -> float | None:
    try:
        value = float(case.extra[measurement])
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None  # 0: the structure is not there (e.g. no CSP)


def load_structure_samples(
    datasets: list[Dataset], split: str, limit: int | None = None, progress: bool = True
) -> list[StructureSample]:
    samples = []
    for dataset in datasets:
        names = dataset.spec.regions
        cases = dataset.split(split)[:limit]
        for case in track(cases, f"loading {dataset.spec.name} {split}", enabled=progress):
            for plane, rel in case.images():
                spacing = case.spacing_mm(plane)
                label = dataset.label_path(rel)
                if not spacing or not label.is_file():
                    continue
                wanted = [
                    (i, s, true_size(case, s.measurement))
                    for i, s in enumerate(STRUCTURES)
                    if plane in s.planes and s.region in names
                ]
                wanted = [w for w in wanted if w[2] is not None]
                if not wanted:
                    continue
                image = read_grey(dataset.image_path(rel))
                h, w = image.shape
                boxes = {
                    names[b.class_id]: b.to_xyxy(w, h) for b in read_labels(label) if b.class_id < len(names)
                }
                group = f"{dataset.spec.name}/{case.group}"
                for index, spec, size in wanted:
                    if spec.region in boxes:
                        samples.append(
                            StructureSample(image, spacing, boxes[spec.region], index, size, group)
                        )
                in_view = case.extra.get(f"{plane}_cisterna_magna_in_view", "")
                depth = true_size(case, FOSSA_MEASUREMENT)
                if in_view in ("0", "1") and depth is not None and FOSSA_REGION in boxes:
                    # (in view, margin) of each posterior-fossa window: the wide one, and the
                    # finer one for a small depth in view, which reads the depth only (in view
                    # is the wide window's call)
                    windows = [(int(in_view), FOSSA_WINDOW_MARGIN)]
                    if in_view == "1" and depth < FOSSA_FINE_TRAIN_BELOW:
                        windows.append((-1, FOSSA_FINE_MARGIN))
                    samples.extend(
                        StructureSample(
                            image, spacing, boxes[FOSSA_REGION], FOSSA_DEPTH, depth, group, seen, margin
                        )
                        for seen, margin in windows
                    )
    return samples


def _output_name(sample: StructureSample) -> str:
    """The validation key of a sample's output: the finer posterior-fossa window apart."""
    name = OUTPUTS[sample.structure]
    return f"{name}_fine" if sample.margin == FOSSA_FINE_MARGIN else name


def size_balance_weights(
    samples: list[StructureSample], bin_mm: float = 0.5, smooth_mm: float = 1.0, power: float = 0.5
) -> np.ndarray:
    """Sampling weights, one per sample: the smoothed density of its true size among its output's
    samples to the power -``power`` (label-distribution smoothing, Yang et al., ICML 2021; 0.5 the
    square-root balance, 1 the inverse), scaled so each output keeps its share of the draws."""
    from scipy.ndimage import gaussian_filter1d

    weights = np.ones(len(samples))
    keys = [_output_name(s) for s in samples]
    for key in set(keys):
        members = np.array([i for i, k in enumerate(keys) if k == key])
        sizes = np.array([samples[i].true_mm for i in members])
        edges = np.arange(sizes.min() - 3 * smooth_mm, sizes.max() + 3 * smooth_mm + bin_mm, bin_mm)
        counts, _ = np.histogram(sizes, edges)
        density = gaussian_filter1d(counts.astype(float), smooth_mm / bin_mm, mode="constant", truncate=3.0)
        where = np.clip(np.digitize(sizes, edges) - 1, 0, len(density) - 1)
        w = np.maximum(density[where], 1e-9) ** -power
        weights[members] = w / w.mean()
    return weights


def _augmented(sample: StructureSample, config: StructureTrainConfig, rng: np.random.Generator):
    # The box moves as stage 1's do, whatever the window round it.
    cx, cy, side = window(sample.box)
    cx += rng.uniform(-config.jitter, config.jitter) * side
    cy += rng.uniform(-config.jitter, config.jitter) * side
    side *= sample.margin / WINDOW_MARGIN * math.exp(rng.uniform(-config.size_jitter, config.size_jitter))
    pixels = crop(sample.image, cx, cy, side, rng.uniform(-180, 180), bool(rng.random() < 0.5)) / 255.0
    pixels = np.clip(pixels, 0, 1) ** math.exp(rng.uniform(-0.4, 0.4))
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.3, 1.0))
    pixels = pixels * rng.uniform(0.7, 1.3) + rng.normal(0, rng.uniform(0, 0.04), pixels.shape)
    return standardise_crop(np.clip(pixels, 0, 1) * 255), side * sample.spacing_mm


def _batch(samples, order, config, rng, augment: bool):
    crops, sides = [], []
    for i in order:
        s = samples[i]
        if augment:
            pixels, side_mm = _augmented(s, config, rng)
        else:
            cx, cy, side = window(s.box, s.margin)
            pixels, side_mm = standardise_crop(crop(s.image, cx, cy, side)), side * s.spacing_mm
        crops.append(pixels)
        sides.append(side_mm)
    x = torch.from_numpy(np.stack(crops).astype(np.float32)[:, None])
    index = torch.tensor([samples[i].structure for i in order])
    true = torch.tensor([samples[i].true_mm for i in order], dtype=torch.float32)
    in_view = torch.tensor([samples[i].in_view for i in order])
    return x, index, torch.tensor(sides, dtype=torch.float32), true, in_view


def _loss(shares: torch.Tensor, index, side, true, in_view) -> torch.Tensor:
    """Smooth L1 (mm) on every size there is to read, plus, for the posterior-fossa windows,
    the cross-entropy of whether the depth is in view (per window of the batch)."""
    got = shares.gather(1, index[:, None]).squeeze(1) * side
    sized = in_view != 0
    loss = nn.functional.smooth_l1_loss(got[sized], true[sized], beta=0.5)
    fossa = in_view >= 0
    if fossa.any():
        p = shares[fossa, FOSSA_IN_VIEW].clamp(1e-6, 1 - 1e-6)
        bce = nn.functional.binary_cross_entropy(p, in_view[fossa].float(), reduction="sum")
        loss = loss + bce / len(index)
    return loss


@torch.no_grad()
def validate_structures(model: StructureNet, samples: list[StructureSample]) -> dict:
    """Mean absolute error (mm) per output on un-jittered windows of the true boxes (the
    posterior-fossa depth where it is in view), and how often the in-view call is right."""
    model.eval()
    errors: dict[str, list[float]] = {}
    calls = []
    for start in range(0, len(samples), 256):
        order = list(range(start, min(start + 256, len(samples))))
        x, index, side, true, in_view = _batch(samples, order, None, None, augment=False)
        shares = model(x)
        got = shares.gather(1, index[:, None]).squeeze(1) * side
        for j, e, v in zip(order, (got - true).abs().tolist(), in_view.tolist(), strict=True):
            if v != 0:
                errors.setdefault(_output_name(samples[j]), []).append(e)
        fossa = in_view >= 0
        if fossa.any():
            said = shares[fossa, FOSSA_IN_VIEW] >= 0.5
            calls += (said == (in_view[fossa] == 1)).tolist()
    per = {m: round(float(np.mean(e)), 3) for m, e in errors.items() if e}
    metrics = {"mae_mm": per, "mean_mae_mm": round(float(np.mean(list(per.values()))), 3), "n": len(samples)}
    if calls:
        metrics["in_view_accuracy"] = round(float(np.mean(calls)), 4)
    return metrics


def train_structure_model(
    dataset_paths: list[str | Path], out: str | Path, config: StructureTrainConfig, progress: bool = True
) -> dict:
    """Train the structure model; writes ``out``/structures.pt and structures.json. Returns the record."""
    datasets = [Dataset.load(p) for p in dataset_paths]
    train = load_structure_samples(datasets, "train", config.max_cases, progress)
    val = load_structure_samples(datasets, "val", None, progress)
    if not train or not val:
        names = ", ".join(str(d.root) for d in datasets)
        raise StructureDataError(
            f"{names}: no train and val cases with region boxes and true structure sizes "
            "(atrium_mm, tcd_mm, cisterna_magna_mm, csp_width_mm); split the dataset first"
        )
    bf16 = cpu_has_bf16() if config.bf16 is None else config.bf16
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    # The posterior-fossa outputs only where the data train them: untrained, they would answer.
    fossa = any(s.in_view >= 0 for s in train) and any(s.in_view >= 0 for s in val)
    model = StructureNet(n_out=len(OUTPUTS) if fossa else len(STRUCTURES))
    init_sha256 = None
    if config.init_from:
        from neurosono.core.checkpoints import file_sha256, load_payload
        from neurosono.measure.structures import FORMAT, FORMAT_FOSSA

        start_file, _ = load_payload(
            config.init_from, WEIGHTS_NAME, (FORMAT, FORMAT_FOSSA), "structure model"
        )
        _start_from(model, load_structure_model(start_file)[0])
        init_sha256 = file_sha256(start_file)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train) // config.batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.15
    )
    history, best, best_state, stale, started = [], math.inf, None, 0, time.time()
    draw = _draw_probabilities(train, config.balance_sizes)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = _epoch_order(rng, len(train), draw)
        losses = []
        for step in range(steps_per_epoch):
            x, index, side, true, in_view = _batch(
                train, order[step * config.batch : (step + 1) * config.batch], config, rng, True
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                shares = model(x)
            loss = _loss(shares.float(), index, side, true, in_view)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        metrics = validate_structures(model, val)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **metrics})
        if metrics["mean_mae_mm"] < best:
            best, best_state, stale = (
                metrics["mean_mae_mm"],
                {k: v.clone() for k, v in model.state_dict().items()},
                0,
            )
        else:
            stale += 1
        note(
            f"training structure model: epoch {epoch}/{config.epochs} loss {history[-1]['loss']:.4f} "
            f"val MAE {metrics['mean_mae_mm']} mm {metrics['mae_mm']}",
            progress,
        )
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    best_epoch = min(history, key=lambda h: h["mean_mae_mm"])
    record = _record(
        config, model, history, best_epoch, time.time() - started, datasets, train, val, bf16, init_sha256
    )
    with staged_directory(out) as staging:
        save_structure_model(staging / WEIGHTS_NAME, model, {"record": json.dumps(record)})
        atomic_write_text(staging / RECORD_NAME, json.dumps(record, indent=2) + "\n")
    return record


def _draw_probabilities(train: list[StructureSample], power: float) -> np.ndarray | None:
    """Each sample's probability of a draw with size balance; None without (permutations)."""
    if not power:
        return None
    weights = size_balance_weights(train, power=power)
    return weights / weights.sum()


def _epoch_order(rng: np.random.Generator, n: int, draw: np.ndarray | None) -> np.ndarray:
    """An epoch's sample indices: a permutation, or ``n`` draws with the balance probabilities."""
    return rng.permutation(n) if draw is None else rng.choice(n, n, p=draw)


def _start_from(model: StructureNet, start: StructureNet) -> None:
    """``start``'s weights in ``model``; a start without the posterior-fossa outputs gives
    all the others (the new outputs' rows of the last layer keep their random start)."""
    state = start.state_dict()
    if start.n_out != model.n_out:
        own = model.state_dict()
        rows = min(start.n_out, model.n_out)
        for name in ("out.4.weight", "out.4.bias"):
            own[name][:rows] = state[name][:rows]
            state[name] = own[name]
        if model.n_out > FOSSA_DEPTH >= rows:
            # A depth of a tenth of the window to start from, near the common one, not half of it.
            state["out.4.bias"][FOSSA_DEPTH] = math.log(0.1 / 0.9)
    model.load_state_dict(state)


def _record(config, model, history, best_epoch, seconds, datasets, train, val, bf16, init_sha256) -> dict:
    """The run's record: settings (bf16 as run, the start's hash), the epoch chosen, the history
    and the data it saw."""
    record = {
        "kind": "neurosono structure model run",
        "structures": {
            s.measurement: {"region": s.region, "planes": list(s.planes), "what": s.what} for s in STRUCTURES
        },
        "config": {**asdict(config), "bf16": bf16, "init_from": "given" if config.init_from else None},
        "parameters": sum(p.numel() for p in model.parameters()),
        "outputs": list(OUTPUTS[: model.n_out]),
        "posterior_fossa_window": {
            "measurement": FOSSA_MEASUREMENT,
            "region": FOSSA_REGION,
            "margin": FOSSA_WINDOW_MARGIN,
            "fine_margin": FOSSA_FINE_MARGIN,
            "fine_below_mm": FOSSA_FINE_BELOW,
            "n_train_fine_windows": sum(s.margin == FOSSA_FINE_MARGIN for s in train),
            "n_train_windows": sum(s.in_view >= 0 for s in train),
            "n_train_in_view": sum(s.in_view == 1 for s in train),
            "n_val_windows": sum(s.in_view >= 0 for s in val),
        }
        if model.reads_fossa
        else None,
        "best_epoch": best_epoch["epoch"],
        "val_metrics": {
            k: best_epoch[k] for k in ("mae_mm", "mean_mae_mm", "n", "in_view_accuracy") if k in best_epoch
        },
        "history": history,
        "train_seconds": round(seconds, 1),
        "datasets": [
            {
                "name": d.spec.name,
                "source": d.spec.source,
                "licence": d.spec.licence,
                "n_train_windows": sum(s.group.startswith(d.spec.name + "/") for s in train),
                "n_val_windows": sum(s.group.startswith(d.spec.name + "/") for s in val),
                "sha256_train_val": dataset_hash(d, ("train", "val")),
            }
            for d in datasets
        ],
        "versions": package_versions(),
    }
    if init_sha256:
        record["init_from_sha256"] = init_sha256
    return record
