"""Draw discovery results on images with OpenCV."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

# RGB colours.
BOX_COLOUR = (255, 40, 40)
SEED_COLOUR = (255, 220, 0)
GT_COLOUR = (40, 220, 40)
OTHER_BOX_COLOUR = (255, 140, 40)


def draw_discovery(
    image_rgb: np.ndarray,
    box_xyxy: Sequence[int],
    seed_box_xyxy: Sequence[int] | None = None,
    label: str | None = None,
    gt_boxes_xyxy: Sequence[Sequence[int]] = (),
    other_boxes_xyxy: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Return a copy of ``image_rgb`` with the box, the seed patch and optional GT drawn.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        box_xyxy: predicted box (x1, y1, x2, y2), pixels, max exclusive.
        seed_box_xyxy: the seed patch in the same convention, filled translucent.
        label: text written above the box (e.g. the backbone name).
        gt_boxes_xyxy: ground-truth boxes in the same convention, drawn in green.
        other_boxes_xyxy: the image's less confident objects (``--objects N``), drawn thinner in orange.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    canvas = np.ascontiguousarray(image_rgb.copy())
    h, w = canvas.shape[:2]
    thickness = max(2, round(max(h, w) / 250))
    for gt in gt_boxes_xyxy:
        _rectangle(canvas, gt, GT_COLOUR, thickness)
    if seed_box_xyxy is not None:
        x1, y1, x2, y2 = (int(v) for v in seed_box_xyxy)
        overlay = canvas.copy()
        cv2.rectangle(overlay, (x1, y1), (x2 - 1, y2 - 1), SEED_COLOUR, thickness=-1)
        canvas = cv2.addWeighted(overlay, 0.5, canvas, 0.5, 0.0)
        _rectangle(canvas, seed_box_xyxy, SEED_COLOUR, max(1, thickness // 2))
    for other in other_boxes_xyxy:
        _rectangle(canvas, other, OTHER_BOX_COLOUR, max(1, thickness // 2))
    _rectangle(canvas, box_xyxy, BOX_COLOUR, thickness)
    if label:
        scale = max(0.4, max(h, w) / 900)
        x1, y1 = int(box_xyxy[0]), int(box_xyxy[1])
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(h - base - 1, y1 + th + 4)
        cv2.rectangle(canvas, (x1, ty - th - 2), (x1 + tw + 4, ty + base), BOX_COLOUR, thickness=-1)
        cv2.putText(canvas, label, (x1 + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _rectangle(canvas: np.ndarray, box: Sequence[int], colour: tuple[int, int, int], thickness: int) -> None:
    # OpenCV's corners are inclusive; our boxes are max-exclusive.
    x1, y1, x2, y2 = (int(v) for v in box)
    cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thickness)


def save_png(image_rgb: np.ndarray, path: str | Path) -> Path:
    """Write (H, W, 3) uint8 RGB as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write PNG")
    return path
