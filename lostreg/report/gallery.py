"""The report's gallery: images matched across runs, their order on the page, and their thumbnails."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lostreg.io.images import ImageReadError, load_image_rgb
from lostreg.report.runs import ReportRun
from lostreg.viz.draw import GT_COLOUR

__all__ = [
    "DEFAULT_THUMB_SIZE",
    "RUN_COLOURS",
    "GalleryItem",
    "draw_thumbnail",
    "gallery_items",
    "jpeg_bytes",
    "load_first_image",
    "select_items",
]

DEFAULT_THUMB_SIZE = 320

#: Box colours of runs A, B, C, ... (RGB), chosen apart from each other and from the GT green.
RUN_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),    # red
    (67, 99, 216),    # blue
    (245, 130, 49),   # orange
    (240, 50, 230),   # magenta
    (66, 212, 244),   # cyan
    (255, 225, 25),   # yellow
    (145, 30, 180),   # purple
    (154, 99, 36),    # brown
)

# Thumbnail drawing, in thumbnail pixels: GT is a ring just inside its box, each run a ring
# just outside its own, run A innermost; identical boxes thus show as concentric rings.
_GT_RING = 2
_RUN_RING = 3
_PAD_BG = (250, 250, 250)


# ------------------------------------------------------------------------------ gallery items


@dataclass(frozen=True)
class GalleryItem:
    """One image of the dataset and what each run predicted for it.

    Attributes:
        image_id: Dataset image id.
        preds: Per run (report order), its ``preds.jsonl`` line, ``None`` if the run lacks the image.
    """

    image_id: str
    preds: tuple[dict[str, Any] | None, ...]

    @property
    def hits(self) -> tuple[str, ...]:
        """Per run ``"1"`` hit, ``"0"`` miss (errors included, as CorLoc counts them), ``"-"``
        not run or no ground truth."""
        out = []
        for pred in self.preds:
            hit = None if pred is None else pred.get("hit")
            out.append("-" if hit is None else ("1" if hit else "0"))
        return tuple(out)

    @property
    def errors(self) -> tuple[bool, ...]:
        """Per run: LOST failed on the image."""
        return tuple(pred is not None and pred.get("error") is not None for pred in self.preds)

    @property
    def disagreement(self) -> bool:
        """Some run hit the image and another missed it."""
        known = set(self.hits) - {"-"}
        return len(known) > 1

    @property
    def image_paths(self) -> list[str]:
        """Where the runs found the image (several when runs read the data in different places)."""
        paths: list[str] = []
        for pred in self.preds:
            if pred is not None and pred.get("image") and pred["image"] not in paths:
                paths.append(str(pred["image"]))
        return paths

    @property
    def gt_boxes(self) -> list[list[int]]:
        """Ground-truth boxes (xyxy, max exclusive) as the first run having the image stored them."""
        for pred in self.preds:
            if pred is not None:
                return [list(b) for b in pred.get("gt_boxes_xyxy") or []]
        return []


def _natural_key(text: str) -> tuple[Any, ...]:
    # COCO ids are unpadded numbers: "42" before "100".
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def gallery_items(runs: Sequence[ReportRun]) -> list[GalleryItem]:
    """Every image of any run, matched across runs by image id, in natural id order."""
    ids: dict[str, None] = {}
    for run in runs:
        ids.update(dict.fromkeys(run.preds))
    return [GalleryItem(i, tuple(run.preds.get(i) for run in runs)) for i in sorted(ids, key=_natural_key)]


def select_items(items: Sequence[GalleryItem], max_images: int | None) -> list[GalleryItem]:
    """The images the page shows, in page order: disagreements first, then images on which a
    run failed, then the rest (each group in the order given); at most ``max_images``
    (``None`` or 0: all)."""
    def priority(item: GalleryItem) -> int:
        return 0 if item.disagreement else 1 if any(item.errors) else 2

    ordered = sorted(items, key=priority)  # stable: keeps id order within a group
    return ordered if not max_images else ordered[:max_images]


# ------------------------------------------------------------------------------ thumbnails


def _ring(draw: ImageDraw.ImageDraw, box: Sequence[float], offset: float, thickness: float,
          colour: tuple[int, int, int]) -> None:
    """Fill the frame between ``box`` grown by ``offset`` and by ``offset + thickness``
    (canvas pixels, max exclusive; a negative offset lies inside the box)."""
    outer = [round(box[0] - offset - thickness), round(box[1] - offset - thickness),
             round(box[2] + offset + thickness), round(box[3] + offset + thickness)]
    inner = [round(box[0] - offset), round(box[1] - offset), round(box[2] + offset), round(box[3] + offset)]
    if thickness < 0:
        outer, inner = inner, outer
    bars = [
        (outer[0], outer[1], outer[2], inner[1]),  # top
        (outer[0], inner[3], outer[2], outer[3]),  # bottom
        (outer[0], inner[1], inner[0], inner[3]),  # left
        (inner[2], inner[1], outer[2], inner[3]),  # right
    ]
    for x1, y1, x2, y2 in bars:
        if x2 > x1 and y2 > y1:
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)  # PIL corners are inclusive


def draw_thumbnail(
    image_rgb: np.ndarray,
    gt_boxes: Sequence[Sequence[int]],
    run_boxes: Sequence[Sequence[int] | None],
    max_side: int = DEFAULT_THUMB_SIZE,
    colours: Sequence[tuple[int, int, int]] = RUN_COLOURS,
) -> Image.Image:
    """Scale an image so its longer side is ``max_side`` and draw GT and run boxes on it.

    GT boxes are green rings just inside their edges; run ``i``'s box is a ring of colour
    ``colours[i % len(colours)]`` just outside its edges, ring ``i`` from the edge, so boxes
    that coincide stay visible. A margin around the image keeps rings of boxes at the border.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB, the frame the boxes refer to.
        gt_boxes: Ground-truth boxes, xyxy pixels, max exclusive.
        run_boxes: One box per run (``None``: no box, e.g. the run failed on the image).
        max_side: Longer side of the scaled image, without the margin.
        colours: Run colours (RGB).

    Returns:
        The thumbnail, RGB.
    """
    height, width = image_rgb.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    margin = _RUN_RING * max(1, len(run_boxes)) + 1
    picture = Image.fromarray(np.ascontiguousarray(image_rgb)).resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size[0] + 2 * margin, size[1] + 2 * margin), _PAD_BG)
    canvas.paste(picture, (margin, margin))
    draw = ImageDraw.Draw(canvas)

    def to_canvas(box: Sequence[int]) -> list[float]:
        return [margin + float(v) * scale for v in box]

    for gt in gt_boxes:
        _ring(draw, to_canvas(gt), 0.0, -_GT_RING, GT_COLOUR)
    for i, box in enumerate(run_boxes):
        if box is not None:
            _ring(draw, to_canvas(box), float(i * _RUN_RING), float(_RUN_RING), colours[i % len(colours)])
    return canvas


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def load_first_image(paths: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    """The image from the first path that reads, else ``(None, reason)``."""
    if not paths:
        return None, "no image path in preds.jsonl"
    first_error: str | None = None
    for path in paths:
        try:
            return load_image_rgb(path), None
        except ImageReadError as err:
            first_error = first_error or str(err)
    return None, first_error
