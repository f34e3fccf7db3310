"""Detector evaluation: mAP by a standard COCO implementation, CIs by a seeded bootstrap.

* Point estimates of mAP@0.5 and mAP@0.5:0.95 (overall, per region, per plane) come
  from faster-coco-eval's COCOeval on the dataset's own COCO export.
* 95% CIs come from a percentile bootstrap over images (1000 resamples by default):
  each image's detections are matched to its boxes once (COCO's greedy rule), and
  each resample recomputes 101-point interpolated AP from the pooled matches.
  ``matched_ap`` on the full set reproduces the COCOeval figure (a test checks it).
* Precision and recall are counted at the operating confidence (0.25) and IoU 0.5.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from neurosono.core.metrics import boot_method, clusters, resample
from neurosono.data.coco import CATEGORY_OFFSET, to_coco
from neurosono.data.format import Dataset
from neurosono.detect.model import Detector, RegionMismatchError
from neurosono.detect.predict import MAX_DET, OPERATING_CONF, predict_images

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0, 1, 101)


@dataclass
class ImageResult:
    """One image's ground truth and detections (pixels, x0 y0 x1 y1)."""

    image_id: int
    plane: str
    gt_classes: np.ndarray
    gt_boxes: np.ndarray
    det_classes: np.ndarray
    det_scores: np.ndarray
    det_boxes: np.ndarray


def shared_regions(detector: Detector, dataset: Dataset) -> list[str]:
    """The regions a detector and a dataset share, by name (in the dataset's order); none is an error."""
    shared = [r for r in dataset.spec.regions if r in detector.regions]
    if not shared:
        raise RegionMismatchError(
            f"{dataset.root / 'dataset.yaml'}: the dataset's regions {dataset.spec.regions} share none "
            f"with the detector's {detector.regions}"
        )
    return shared


def collect(detector: Detector, dataset: Dataset, split: str | None) -> tuple[dict, list[ImageResult]]:
    """COCO ground truth for the split, and every image's detections, on the regions the
    dataset shares with the detector (class ids are the dataset's)."""
    shared = shared_regions(detector, dataset)
    to_dataset = {detector.regions.index(r): dataset.spec.regions.index(r) for r in shared}
    scored = {dataset.spec.regions.index(r) + CATEGORY_OFFSET for r in shared}
    coco = to_coco(dataset, split)
    coco["images"] = [im for im in coco["images"] if dataset.label_path(im["file_name"]).exists()]
    kept = {im["id"] for im in coco["images"]}
    coco["annotations"] = [
        a for a in coco["annotations"] if a["image_id"] in kept and a["category_id"] in scored
    ]
    if not coco["images"]:
        raise ValueError(f"{dataset.root}: no annotated images in split {split!r}")
    predictions = predict_images(detector, [dataset.image_path(im["file_name"]) for im in coco["images"]])
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    results = []
    for image, (classes, scores, boxes) in zip(coco["images"], predictions, strict=True):
        keep = np.isin(classes, list(to_dataset))
        classes = np.array([to_dataset[int(c)] for c in classes[keep]], dtype=int)
        scores, boxes = scores[keep], boxes[keep].reshape(-1, 4)
        anns = by_image[image["id"]]
        gt = np.array(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in anns
            ]
        ).reshape(-1, 4)
        results.append(
            ImageResult(
                image_id=image["id"],
                plane=image["plane"],
                gt_classes=np.array([a["category_id"] - CATEGORY_OFFSET for a in anns], dtype=int),
                gt_boxes=gt,
                det_classes=classes,
                det_scores=scores,
                det_boxes=boxes,
            )
        )
    return coco, results


def coco_map(coco: dict, results: list[ImageResult], image_ids: list[int] | None = None) -> dict:
    """mAP@0.5, mAP@0.5:0.95 and per-class AP@0.5 from faster-coco-eval."""
    from faster_coco_eval import COCO, COCOeval_faster

    detections = [
        {
            "image_id": r.image_id,
            "category_id": int(c) + CATEGORY_OFFSET,
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        for r in results
        for c, s, b in zip(r.det_classes, r.det_scores, r.det_boxes, strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco
        gt.createIndex()
        dt = gt.loadRes(detections) if detections else None
        if dt is None:
            # No detection anywhere: every region with ground truth scores AP 0, as COCOeval
            # scores a region without detections when others have some.
            wanted = None if image_ids is None else set(image_ids)
            with_truth = {
                a["category_id"] - CATEGORY_OFFSET
                for a in coco["annotations"]
                if wanted is None or a["image_id"] in wanted
            }
            return {"map50": 0.0, "map50_95": 0.0, "per_class_ap50": dict.fromkeys(sorted(with_truth), 0.0)}
        evaluator = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
        evaluator.params.maxDets = [1, 10, MAX_DET]
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[0, :, k, 0, -1]
        if (p > -1).any():
            per_class[cat_id - CATEGORY_OFFSET] = float(np.mean(p[p > -1]))
    return {
        "map50": float(evaluator.stats[1]),
        "map50_95": float(evaluator.stats[0]),
        "per_class_ap50": per_class,
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (x0, y0, x1, y1): [N, M]."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-12)


@dataclass
class Matches:
    """Per image and class: detection scores, TP flags at each IoU threshold, GT count."""

    scores: dict[tuple[int, int], np.ndarray]
    tp: dict[tuple[int, int], np.ndarray]
    n_gt: dict[tuple[int, int], int]


def match(results: list[ImageResult], n_classes: int) -> Matches:
    """COCO's greedy matching: by descending score, each detection takes the best unmatched box."""
    scores, tps, n_gt = {}, {}, {}
    for index, r in enumerate(results):
        for k in range(n_classes):
            gt = r.gt_boxes[r.gt_classes == k]
            sel = r.det_classes == k
            order = np.argsort(-r.det_scores[sel], kind="mergesort")
            det, det_scores = r.det_boxes[sel][order], r.det_scores[sel][order]
            tp = np.zeros((len(det), len(IOU_THRESHOLDS)), dtype=bool)
            if len(det) and len(gt):
                ious = box_iou(det, gt)
                for t, threshold in enumerate(IOU_THRESHOLDS):
                    taken = np.zeros(len(gt), dtype=bool)
                    for d in range(len(det)):
                        candidates = np.where(~taken & (ious[d] >= threshold))[0]
                        if len(candidates):
                            best = candidates[np.argmax(ious[d, candidates])]
                            taken[best] = True
                            tp[d, t] = True
            scores[(index, k)], tps[(index, k)], n_gt[(index, k)] = det_scores, tp, len(gt)
    return Matches(scores, tps, n_gt)


def _ap(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> np.ndarray:
    """101-point interpolated AP at each IoU threshold (COCO's accumulate)."""
    if n_gt == 0:
        return np.full(tp.shape[1], np.nan)
    if len(scores) == 0:
        return np.zeros(tp.shape[1])
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    tp_cum = np.cumsum(tp, axis=0)
    fp_cum = np.cumsum(~tp, axis=0)
    recall = tp_cum / n_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(float).eps)
    precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    aps = np.zeros(tp.shape[1])
    for t in range(tp.shape[1]):
        idx = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
        q = np.where(idx < len(recall), precision[np.minimum(idx, len(recall) - 1), t], 0.0)
        aps[t] = q.mean()
    return aps


def matched_ap(matches: Matches, images: np.ndarray, n_classes: int) -> np.ndarray:
    """AP [class, IoU threshold] over a (possibly repeated) list of image indices."""
    out = np.full((n_classes, len(IOU_THRESHOLDS)), np.nan)
    for k in range(n_classes):
        keys = [(int(i), k) for i in images]
        n_gt = sum(matches.n_gt[key] for key in keys)
        scores = np.concatenate([matches.scores[key] for key in keys])
        tp = np.concatenate([matches.tp[key] for key in keys]).reshape(-1, len(IOU_THRESHOLDS))
        out[k] = _ap(scores, tp, n_gt)
    return out


def _counts(matches: Matches, images: np.ndarray, n_classes: int, conf: float) -> tuple[int, int, int]:
    tp = fp = gt = 0
    for i in images:
        for k in range(n_classes):
            key = (int(i), k)
            keep = matches.scores[key] >= conf
            hits = int(matches.tp[key][keep, 0].sum())
            tp += hits
            fp += int(keep.sum()) - hits
            gt += matches.n_gt[key]
    return tp, fp, gt


def _metric(value: float, samples: list[float], method: str) -> dict:
    finite = np.asarray([s for s in samples if np.isfinite(s)])
    if not len(finite):  # e.g. precision with no detection in any resample
        collapsed = round(float(value), 4)
        return {
            "value": collapsed,
            "ci95": [collapsed, collapsed],
            "method": method + "; undefined in every resample, interval collapsed to the value",
        }
    lo, hi = np.percentile(finite, [2.5, 97.5])
    # Percentile intervals can exclude the point estimate on tiny sets; widen to include it.
    lo, hi = min(float(lo), value), max(float(hi), value)
    return {"value": round(float(value), 4), "ci95": [round(lo, 4), round(hi, 4)], "method": method}


def evaluate_detector(
    detector: Detector, dataset: Dataset, split: str | None = "test", n_boot: int = 1000, seed: int = 0
) -> dict:
    """metrics.json content: each metric as {"value", "ci95", "method"}."""
    coco, results = collect(detector, dataset, split)
    n_classes = len(dataset.spec.regions)
    matches = match(results, n_classes)
    all_images = np.arange(len(results))
    planes = sorted({r.plane for r in results})
    plane_images = {p: np.array([i for i, r in enumerate(results) if r.plane == p]) for p in planes}
    # Images of one source (augmented copies, one patient) are resampled together where a
    # source group holds several cases; otherwise image by image, as COCO-style CIs usually are.
    group_of = {c.case_id: c.group for c in dataset.cases}
    case_groups = clusters([group_of[c.case_id] for c in dataset.cases if split is None or c.split == split])
    groups = clusters([group_of[im["case_id"]] for im in coco["images"]]) if case_groups is not None else None
    plane_groups = {
        p: None if groups is None else clusters([group_of[coco["images"][i]["case_id"]] for i in idx])
        for p, idx in plane_images.items()
    }
    method = boot_method(n_boot, seed, groups, unit="images")
    boot, boot_region, boot_plane = _bootstrap(
        matches, n_classes, plane_images, groups, plane_groups, n_boot, seed
    )

    point = coco_map(coco, results)
    tp, fp, gt = _counts(matches, all_images, n_classes, OPERATING_CONF)
    metrics = {
        "map50": _metric(point["map50"], boot["map50"], f"faster-coco-eval COCOeval; CI {method}"),
        "map50_95": _metric(point["map50_95"], boot["map50_95"], f"faster-coco-eval COCOeval; CI {method}"),
        "precision": _metric(
            tp / (tp + fp) if tp + fp else 0.0,
            boot["precision"],
            f"at confidence {OPERATING_CONF}, IoU 0.5; CI {method}",
        ),
        "recall": _metric(
            tp / gt if gt else 0.0, boot["recall"], f"at confidence {OPERATING_CONF}, IoU 0.5; CI {method}"
        ),
        "per_region": {},
        "per_plane": {},
        "n_images": len(results),
        "n_boxes": int(gt),
        "split": split,
        "dataset": dataset.spec.name,
        "regions_scored": shared_regions(detector, dataset),
        "regions_not_scored": sorted(set(dataset.spec.regions) ^ set(detector.regions)),
    }
    for k, name in enumerate(dataset.spec.regions):
        if k in point["per_class_ap50"]:
            metrics["per_region"][name] = {
                "map50": _metric(point["per_class_ap50"][k], boot_region[k], f"faster-coco-eval; CI {method}")
            }
    for p in planes:
        ids = [results[i].image_id for i in plane_images[p]]
        metrics["per_plane"][p] = {
            "map50": _metric(
                coco_map(coco, results, ids)["map50"], boot_plane[p], f"faster-coco-eval; CI {method}"
            ),
            "n_images": len(ids),
        }
    return metrics


def _bootstrap(
    matches: Matches,
    n_classes: int,
    plane_images: dict[str, np.ndarray],
    groups: list[np.ndarray] | None,
    plane_groups: dict[str, list[np.ndarray] | None],
    n_boot: int,
    seed: int,
) -> tuple[dict, dict, dict]:
    """mAP, precision and recall over resamples of images (or of source groups): overall, per
    region and per plane."""
    rng = np.random.default_rng(seed)
    all_images = np.arange(sum(len(i) for i in plane_images.values()))

    def draw(images: np.ndarray, clustered: list[np.ndarray] | None) -> np.ndarray:
        if clustered is None:
            return rng.choice(images, size=len(images), replace=True)
        return images[resample(rng, len(images), clustered)]

    boot: dict[str, list] = {"map50": [], "map50_95": [], "precision": [], "recall": []}
    boot_region: dict[int, list] = {k: [] for k in range(n_classes)}
    boot_plane: dict[str, list] = {p: [] for p in plane_images}
    for _ in range(n_boot):
        sample = draw(all_images, groups)
        ap = matched_ap(matches, sample, n_classes)
        finite = np.isfinite(ap).any()
        boot["map50"].append(float(np.nanmean(ap[:, 0])) if finite else np.nan)
        boot["map50_95"].append(float(np.nanmean(ap)) if finite else np.nan)
        tp, fp, gt = _counts(matches, sample, n_classes, OPERATING_CONF)
        boot["precision"].append(tp / (tp + fp) if tp + fp else np.nan)
        boot["recall"].append(tp / gt if gt else np.nan)
        for k in range(n_classes):
            boot_region[k].append(ap[k, 0])
        for p, idx in plane_images.items():
            boot_plane[p].append(
                float(np.nanmean(matched_ap(matches, draw(idx, plane_groups[p]), n_classes)[:, 0]))
            )
    return boot, boot_region, boot_plane


def transfer_summary(
    detections: list[list], labels: list[int], regions: list[str], conf: float = OPERATING_CONF
) -> dict:
    """How a detector fares on images it may never have been trained for (real images for the
    phantom detector): per region the share of images where it is found at ``conf``, by label,
    and its best confidence (0 where not found at all); regions found per image.

    ``detections``: each image's list of :class:`~neurosono.detect.predict.Detection`.
    """
    best = np.array(
        [
            [max((d.confidence for d in found if d.class_id == k), default=0.0) for k in range(len(regions))]
            for found in detections
        ]
    ).reshape(len(detections), len(regions))
    labels_arr = np.asarray(labels)
    out = {}
    for k, region in enumerate(regions):
        by_label = {}
        for label, name in ((0, "normal"), (1, "abnormal")):
            sub = best[labels_arr == label, k]
            by_label[name] = round(float((sub >= conf).mean()), 4) if len(sub) else None
        out[region] = {
            "found_fraction": round(float((best[:, k] >= conf).mean()), 4),
            "found_fraction_by_label": by_label,
            "median_best_confidence": round(float(np.median(best[:, k])), 4),
            "p90_best_confidence": round(float(np.percentile(best[:, k], 90)), 4),
        }
    per_image = (best >= conf).sum(axis=1)
    return {
        "conf": conf,
        "n_images": len(detections),
        "regions": out,
        "regions_found_per_image": {
            "mean": round(float(per_image.mean()), 3),
            "histogram": {str(k): int((per_image == k).sum()) for k in range(len(regions) + 1)},
        },
    }


def measure_transfer(dataset: Dataset, detector: Detector, conf: float = OPERATING_CONF) -> dict:
    """:func:`transfer_summary` of a detector (every region it finds) over the first image of
    every case of a dataset (whose own regions, if any, play no part)."""
    from neurosono.detect.predict import as_detections

    paths = [dataset.image_path(next(rel for _, rel in c.images())) for c in dataset.cases]
    found = [as_detections("image", boxes) for boxes in predict_images(detector, paths)]
    labels = [int(c.label == "abnormal") for c in dataset.cases]
    return {**transfer_summary(found, labels, detector.regions, conf), "detector_sha256": detector.sha256}
