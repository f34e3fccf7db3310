"""Contact sheet: a grid of cases, TV beside TC, with their boxes and findings, to look at."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from neurosono.core.atomic import atomic_write_bytes
from neurosono.core.images import read_image
from neurosono.data.format import Case, Dataset, read_labels

REGION_COLOURS = (
    (255, 214, 0),  # csp
    (0, 200, 255),  # thalami
    (255, 80, 80),  # lateral_ventricle
    (120, 255, 120),  # sylvian_fissure
    (255, 140, 0),  # cerebellum
    (210, 120, 255),  # cisterna_magna
)


def region_colour(class_id: int) -> tuple[int, int, int]:
    return REGION_COLOURS[class_id % len(REGION_COLOURS)]


def choose_cases(cases: list[Case], n: int) -> list[Case]:
    """Up to n cases, one per finding first (so every finding is on the sheet), then the rest."""
    chosen: list[Case] = []
    seen: set[str] = set()
    for case in cases:
        if case.finding not in seen:
            seen.add(case.finding)
            chosen.append(case)
    for case in cases:
        if len(chosen) >= n:
            break
        if case not in chosen:
            chosen.append(case)
    return sorted(chosen[:n], key=lambda c: (c.label != "normal", c.finding, c.case_id))


def _tile(dataset: Dataset, rel: str, tile: int, font: ImageFont.ImageFont) -> Image.Image:
    canvas = Image.new("RGB", (tile, tile), (30, 30, 30))
    if not rel:
        ImageDraw.Draw(canvas).text((8, tile // 2), "no image", fill=(200, 200, 200), font=font)
        return canvas
    image = Image.fromarray(read_image(dataset.image_path(rel)).rgb())
    width, height = image.size
    scale = tile / max(width, height)
    image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    label_file = dataset.label_path(rel)
    if label_file.exists():
        for box in read_labels(label_file):
            x0, y0, x1, y1 = (v * scale for v in box.to_xyxy(width, height))
            colour = region_colour(box.class_id)
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
            name = dataset.spec.regions[box.class_id] if box.class_id < len(dataset.spec.regions) else "?"
            draw.text((x0 + 2, max(0, y0 - 12)), name, fill=colour, font=font)
    return canvas


def contact_sheet(dataset: Dataset, n_cases: int = 16, tile: int = 256, columns: int = 2) -> Image.Image:
    cases = choose_cases(dataset.cases, n_cases)
    font = ImageFont.load_default(size=max(10, tile // 22))
    title_font = ImageFont.load_default(size=max(12, tile // 16))
    caption = max(18, tile // 10)
    cell_w, cell_h = 2 * tile + 8, tile + caption
    rows = max(1, -(-len(cases) // columns))
    header = caption + 8
    sheet = Image.new("RGB", (columns * cell_w + 8, rows * cell_h + header + caption + 8), (12, 12, 12))
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (8, 4),
        f"{dataset.spec.name}: {len(dataset.cases)} cases ({len(cases)} shown). Left TV, right TC.",
        fill=(240, 240, 240),
        font=title_font,
    )
    for k, case in enumerate(cases):
        x = 8 + (k % columns) * cell_w
        y = header + (k // columns) * cell_h
        for j, plane in enumerate(("tv", "tc")):
            sheet.paste(_tile(dataset, case.image(plane), tile, font), (x + j * (tile + 4), y + caption))
        colour = (255, 120, 120) if case.label == "abnormal" else (140, 230, 140)
        ga = f" {int(case.ga_weeks)}+{round((case.ga_weeks % 1) * 7) % 7}w" if case.ga_weeks else ""
        text = f"{case.case_id} {case.label}: {case.finding or '-'}{ga} {case.center} {case.split}"
        draw.text((x, y + 2), text, fill=colour, font=font)
    legend_x = 8
    for class_id, name in enumerate(dataset.spec.regions):
        draw.text((legend_x, sheet.height - 6 - caption // 2), name, fill=region_colour(class_id), font=font)
        legend_x += 12 + int(draw.textlength(name, font=font))
    return sheet


def write_contact_sheet(dataset: Dataset, out: str | Path, n_cases: int = 16, tile: int = 256) -> Path:
    out = Path(out)
    sheet = contact_sheet(dataset, n_cases=n_cases, tile=tile)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    return out
