"""A self-contained HTML report of a run: every image inline, no network, no external files.

Laid out like the study's results: the cohort, stage-1 detection, stage-2
classification beside the published figures, ROC and reliability, the confusion
matrix, per-centre and per-finding results, an error gallery (false negatives
first) with each case's regions and attributions, and HexaNet against the
whole-image baseline.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image, ImageDraw, ImageFont

from neurosono.core.atomic import atomic_write_text
from neurosono.core.images import read_image
from neurosono.data.format import Dataset
from neurosono.data.preview import region_colour

# Ramirez Zegarra et al., Radiology: AI 2026, test set of 47 cases (15 abnormal, 32 normal).
STUDY = {
    "source": "Ramirez Zegarra et al., Radiology: AI 2026; test set 47 cases (15 abnormal, 32 normal)",
    "map50": "0.93 (0.90-0.96)",
    "auc": "0.96 (0.90-1.00)",
    "sensitivity": "87% (13 of 15; 67-100)",
    "specificity": "91% (29 of 32; 79-100)",
    "f1": "0.84 (0.67-0.96)",
}
METRICS = ("auc", "sensitivity", "specificity", "f1", "accuracy", "ppv", "npv")
PROPORTIONS = {"sensitivity", "specificity", "accuracy", "ppv", "npv"}
PHANTOM_NOTICE = (
    "Trained and evaluated on synthetic phantoms; these figures say nothing about real scans. "
    "Not for clinical use."
)


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode("ascii")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def metric_text(entry: dict | None, key: str) -> dict:
    """One metric in the study's style, with the alternative intervals beside it."""
    if not entry or entry.get("value") is None:
        return {"main": "undefined", "alt": ""}
    lo, hi = entry["ci95"]
    if key in PROPORTIONS:
        main = f"{entry['value'] * 100:.0f}% ({entry.get('count', '')}; {lo * 100:.0f}-{hi * 100:.0f})"
        wilson = entry.get("ci95_wilson")
        alt = f"Wilson {wilson[0] * 100:.0f}-{wilson[1] * 100:.0f}" if wilson else ""
    else:
        main = f"{entry['value']:.3f} ({lo:.2f}-{hi:.2f})"
        delong = entry.get("ci95_delong")
        alt = f"DeLong {delong[0]:.2f}-{delong[1]:.2f}" if delong else ""
    return {"main": main, "alt": alt}


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    return f"{entry['value']:.3f} ({entry['ci95'][0]:.3f}-{entry['ci95'][1]:.3f})"


def cohort_tables(dataset: Dataset) -> list[dict]:
    splits = [s for s in ("train", "val", "test") if dataset.split(s)]
    tables = []
    for title, attribute in (("label", "label"), ("finding", "finding"), ("centre", "center")):
        counts = Counter((getattr(c, attribute) or "(none)", c.split) for c in dataset.cases)
        rows = sorted({k for k, _ in counts})
        tables.append(
            {
                "title": f"Cases by {title} and split",
                "columns": [title, *splits, "all"],
                "rows": [
                    [
                        row,
                        *[counts.get((row, s), 0) for s in splits],
                        sum(counts.get((row, s), 0) for s in splits),
                    ]
                    for row in rows
                ],
            }
        )
    return tables


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_case(
    dataset: Dataset,
    case: dict,
    regions: list[str],
    boxes: str = "chosen",
    tile: int = 300,
) -> bytes:
    """TV beside TC with boxes: ``chosen`` (the regions HexaNet used) or ``detections`` (all, with truth)."""
    font = _font()
    planes = [p for p in ("tv", "tc") if case["images"].get(p)]
    canvas = Image.new("RGB", (tile * len(planes) + 4 * (len(planes) - 1), tile), (20, 20, 20))
    for column, plane in enumerate(planes):
        image = Image.fromarray(read_image(dataset.image_path(case["images"][plane])).rgb())
        scale = tile / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        draw = ImageDraw.Draw(image)
        if boxes == "detections":
            for truth in case["truth"]:
                if truth["plane"] == plane:
                    draw.rectangle([v * scale for v in truth["box"]], outline=(255, 255, 255), width=1)
            shown = [(d["class_id"], d) for d in case["detections"] if d["plane"] == plane]
        else:
            shown = [(r, d) for r, d in enumerate(case["chosen"]) if d and d["plane"] == plane]
        for class_id, det in shown:
            colour = region_colour(class_id)
            box = [v * scale for v in det["box"]]
            draw.rectangle(box, outline=colour, width=2)
            draw.text(
                (box[0] + 2, max(0, box[1] - 14)),
                f"{regions[class_id]} {det['confidence']:.2f}",
                fill=colour,
                font=font,
            )
        draw.text((6, 4), plane.upper(), fill=(255, 255, 255), font=font)
        canvas.paste(image, (column * (tile + 4), 0))
    return _png(canvas)


def roc_and_reliability(cases: list[dict], threshold: float, baseline_threshold: float | None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.array([c["label"] == "abnormal" for c in cases], int)
    models = [("HexaNet", np.array([c["p_abnormal"] for c in cases]), threshold)]
    if cases and cases[0].get("p_baseline") is not None:
        models.append(
            ("whole-image baseline", np.array([c["p_baseline"] for c in cases]), baseline_threshold)
        )
    figures = {}
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, scores, cut in models:
        fpr, tpr, _ = roc_curve(labels, scores)
        line = ax.plot(fpr, tpr, lw=2, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")[0]
        if cut is not None:
            ax.plot(
                [(scores[labels == 0] >= cut).mean()],
                [(scores[labels == 1] >= cut).mean()],
                "o",
                color=line.get_color(),
            )
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, test split (dots: operating points)")
    ax.legend(loc="lower right", fontsize=8)
    figures["roc"] = data_uri(_figure_png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    bins = min(10, max(2, len(labels) // 5))
    for name, scores, _ in models:
        true, predicted = calibration_curve(labels, scores, n_bins=bins)
        brier = float(np.mean((scores - labels) ** 2))
        ax.plot(predicted, true, "o-", label=f"{name} (Brier {brier:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.set(
        xlabel="predicted P(abnormal)", ylabel="observed share abnormal", title=f"Reliability ({bins} bins)"
    )
    ax.legend(loc="upper left", fontsize=8)
    figures["reliability"] = data_uri(_figure_png(fig))
    plt.close(fig)
    return figures


def gallery(cases: list[dict], threshold: float, limit: int) -> tuple[list[dict], int, int]:
    """False negatives (surest misses first), then false positives, then the closest calls."""
    fn = sorted(
        (c for c in cases if c["label"] == "abnormal" and c["p_abnormal"] < threshold),
        key=lambda c: c["p_abnormal"],
    )
    fp = sorted(
        (c for c in cases if c["label"] == "normal" and c["p_abnormal"] >= threshold),
        key=lambda c: -c["p_abnormal"],
    )
    shown = [("false negative", c) for c in fn] + [("false positive", c) for c in fp]
    if len(shown) < limit:
        errors = {id(c) for _, c in shown}
        close = sorted(
            (c for c in cases if id(c) not in errors), key=lambda c: abs(c["p_abnormal"] - threshold)
        )
        shown += [("closest correct call", c) for c in close[: limit - len(shown)]]
    return [{"kind": kind, **case} for kind, case in shown[:limit]], len(fn), len(fp)


def attribution_rows(case: dict, regions: list[str]) -> list[dict]:
    scale = max(0.05, max(abs(a) for a in case["attribution"]))
    rows = []
    for r, name in enumerate(regions):
        value = case["attribution"][r]
        chosen = case["chosen"][r]
        rows.append(
            {
                "region": name,
                "found": chosen is not None,
                "where": f"{chosen['plane'].upper()} {chosen['confidence']:.2f}" if chosen else "not found",
                "value": value,
                "width": round(abs(value) / scale * 100),
                "sign": "up" if value >= 0 else "down",
            }
        )
    return rows


def write_report(run_dir: str | Path, out: str | Path, record: dict, max_gallery: int = 12) -> Path:
    """Build ``report.html`` from a run folder (see :mod:`neurosono.pipeline.run`)."""
    run_dir = Path(run_dir)
    dataset = Dataset.load(record.get("dataset_dir") or run_dir / "cohort")
    evaluation = run_dir / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    details = json.loads((evaluation / "cases.json").read_text())
    regions, threshold, cases = details["regions"], float(details["threshold"]), details["cases"]
    hexanet, baseline, detector = metrics["hexanet"], metrics.get("baseline"), metrics["detector"]
    baseline_record = run_dir / "hexanet" / "baseline" / "baseline.json"
    baseline_threshold = (
        json.loads(baseline_record.read_text()).get("threshold") if baseline_record.exists() else None
    )
    synthetic = "phantom" in (dataset.spec.name + dataset.spec.source).lower()
    shown, n_fn, n_fp = gallery(cases, threshold, max_gallery)
    for item in shown:
        item["picture"] = data_uri(draw_case(dataset, item, regions))
        item["rows"] = attribution_rows(item, regions)
    plots = (
        roc_and_reliability(cases, threshold, baseline_threshold)
        if 0 < hexanet["n_abnormal"] < len(cases)
        else {}
    )
    biometry = biometry_section(evaluation)
    env = Environment(loader=PackageLoader("neurosono.evaluate", "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        title=f"neurosono run on {dataset.spec.name}",
        record=record,
        dataset=dataset.spec,
        n_cases=len(dataset.cases),
        synthetic=synthetic,
        notice=PHANTOM_NOTICE if synthetic else "Research software; not for clinical use.",
        cohort=cohort_tables(dataset),
        detector=detector,
        detector_record=json.loads((run_dir / "detector" / "detector.json").read_text()),
        region_rows=[{"region": k, "map50": _ci(v["map50"])} for k, v in detector["per_region"].items()],
        plane_rows=[
            {"plane": k.upper(), "map50": _ci(v["map50"]), "n": v["n_images"]}
            for k, v in detector["per_plane"].items()
        ],
        ci=_ci,
        study=STUDY,
        examples=examples(dataset, cases, regions),
        hexanet=hexanet,
        hexanet_record=json.loads((run_dir / "hexanet" / "classifier.json").read_text()),
        baseline=baseline,
        classification_rows=classification_rows(hexanet, baseline),
        confusion=hexanet.get("confusion", {}),
        plots=plots,
        gallery=shown,
        n_fn=n_fn,
        n_fp=n_fp,
        per_center=hexanet.get("per_center", {}),
        per_finding=hexanet.get("per_finding", {}),
        regions=regions,
        threshold=threshold,
        biometry=biometry,
    )
    atomic_write_text(out, html)
    return Path(out)


def biometry_section(evaluation: Path) -> dict | None:
    """The biometry tables and Bland-Altman plots of a run's evaluation (None: not measured)."""
    from neurosono.evaluate.biometry import BIOMETRY_JSON, BLAND_ALTMAN_PNG

    found = evaluation / BIOMETRY_JSON
    if not found.is_file():
        return None
    result = json.loads(found.read_text())
    rows = [
        {
            "measurement": name,
            "mae": _ci(entry["mae"]),
            "bias": _ci(entry["bias"]),
            "loa": "{:+.2f} to {:+.2f}".format(*entry["loa95"]),
            "n": entry["n"],
            "measured": entry["measured"]["count"],
        }
        for name, entry in result.items()
        if isinstance(entry, dict) and "mae" in entry
    ]
    hints = [
        {
            "finding": name,
            "sensitivity": f"{v['sensitivity']['count']} ({_ci(v['sensitivity'])})",
            "specificity": f"{v['specificity']['count']} ({_ci(v['specificity'])})",
        }
        for name, v in result.get("hints", {}).items()
    ]
    plot = evaluation / BLAND_ALTMAN_PNG
    return {
        "rows": rows,
        "hints": hints,
        "dice": _ci(result["dice"]) if "dice" in result else None,
        "plot": data_uri(plot.read_bytes()) if plot.is_file() else None,
        "n_cases": result["n_cases"],
    }


def classification_rows(hexanet: dict, baseline: dict | None) -> list[dict]:
    """Each metric for HexaNet and the baseline beside the study's published figure."""
    return [
        {
            "metric": key,
            "hexanet": metric_text(hexanet.get(key), key),
            "baseline": metric_text(baseline.get(key), key) if baseline else None,
            "study": STUDY.get(key, ""),
        }
        for key in METRICS
    ]


def examples(dataset: Dataset, cases: list[dict], regions: list[str]) -> list[dict]:
    """The first normal and the first abnormal case, with every detection and the truth drawn."""
    shown = []
    for label in ("normal", "abnormal"):
        case = next((c for c in cases if c["label"] == label), None)
        if case:
            picture = data_uri(draw_case(dataset, case, regions, boxes="detections"))
            shown.append({"case_id": case["case_id"], "finding": case["finding"], "picture": picture})
    return shown
