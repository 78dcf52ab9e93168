"""Correct localisation (CorLoc), spec section 4.

An image is a hit when the single predicted box has IoU >= 0.5 with **any** of its
ground-truth boxes. CorLoc = 100 * hits / images evaluated. IoU is
:func:`lostreg.boxes.iou_matrix`: exact ratio, no "+1" pixel convention and no epsilon.

About the reference's epsilon (1e-7 added to each box height and to the union): it runs
in float32, where for integer boxes at least 2 px tall the epsilon is below half an ulp
and vanishes, so its IoU is the exact ratio too and an exact 0.5 is a hit in both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lostreg.boxes import iou_matrix

__all__ = ["CORLOC_IOU_THRESHOLD", "CorLocEvaluator", "ImageResult", "format_corloc", "is_hit"]

CORLOC_IOU_THRESHOLD = 0.5


def is_hit(pred_box_xyxy: Sequence[float] | np.ndarray, gt_boxes_xyxy: Any) -> tuple[bool, float]:
    """Score one prediction against the ground truth of its image.

    Args:
        pred_box_xyxy: ``(4,)`` ``[x1, y1, x2, y2]`` pixels of the original image,
            max exclusive.
        gt_boxes_xyxy: ``(K, 4)`` boxes, same convention; ``K`` may be 0.

    Returns:
        ``(hit, best_iou)``: hit is ``best_iou >= 0.5`` (ties count as hits); an image
        without ground truth is a miss with IoU 0.0.
    """
    pred = np.asarray(pred_box_xyxy, dtype=np.float64).reshape(-1)
    if pred.shape != (4,):
        raise ValueError(f"pred_box_xyxy must have 4 values, got shape {np.shape(pred_box_xyxy)}")
    gt = np.asarray(gt_boxes_xyxy, dtype=np.float64)
    if gt.size == 0:
        return False, 0.0
    if gt.ndim == 1:  # a single (4,) box
        gt = gt[None, :]
    ious = iou_matrix(pred[None, :], gt)[0]  # iou_matrix rejects anything but (K, 4)
    best = float(ious.max())
    return best >= CORLOC_IOU_THRESHOLD, best


@dataclass(frozen=True)
class ImageResult:
    """Outcome for one image: ``hit``, ``iou`` (best over GT; 0.0 if failed), ``failed``."""

    hit: bool
    iou: float
    failed: bool


class CorLocEvaluator:
    """Accumulates CorLoc over a dataset, detectron2-style: reset / process / evaluate.

    Each image id may be processed once; a second time raises, because a sampler that
    pads or repeats images would otherwise bias the score silently. Images whose run
    failed (``pred_box_xyxy=None``) count in the denominator as misses.
    """

    def __init__(self) -> None:
        self._results: dict[str, ImageResult] = {}
        self._hits = self._failed = 0  # running counts: evaluate() is O(1), cheap after every batch

    def reset(self) -> None:
        """Forget all processed images."""
        self._results = {}
        self._hits = self._failed = 0

    def process(
        self,
        image_id: str,
        pred_box_xyxy: Sequence[float] | np.ndarray | None,
        gt_boxes: Any,
    ) -> ImageResult:
        """Score one image and record it.

        Args:
            image_id: Dataset image id (compared as ``str``).
            pred_box_xyxy: ``(4,)`` xyxy pixel box, max exclusive; ``None`` if LOST
                failed on this image.
            gt_boxes: ``(K, 4)`` xyxy pixel boxes, max exclusive (K may be 0).

        Returns:
            The recorded :class:`ImageResult`.

        Raises:
            ValueError: ``image_id`` was already processed since the last reset.
        """
        if str(image_id) in self._results:
            raise ValueError(f"image {str(image_id)!r} processed twice: CorLoc must count each image once")
        if pred_box_xyxy is None:
            result = ImageResult(hit=False, iou=0.0, failed=True)
        else:
            hit, iou = is_hit(pred_box_xyxy, gt_boxes)
            result = ImageResult(hit=hit, iou=iou, failed=False)
        self.add(image_id, result)
        return result

    def add(self, image_id: str, result: ImageResult) -> None:
        """Record an image scored earlier (a stored prediction line), without scoring it again.

        Raises:
            ValueError: ``image_id`` was already processed since the last reset.
        """
        key = str(image_id)
        if key in self._results:
            raise ValueError(f"image {key!r} processed twice: CorLoc must count each image once")
        self._results[key] = result
        self._hits += result.hit
        self._failed += result.failed

    def merge(self, other: CorLocEvaluator) -> None:
        """Add the images of another evaluator (e.g. another rank's shard).

        Raises:
            ValueError: the two share an image id.
        """
        overlap = self._results.keys() & other._results.keys()
        if overlap:
            raise ValueError(f"{len(overlap)} images processed by both evaluators, e.g. {sorted(overlap)[:3]}")
        self._results.update(other._results)
        self._hits += other._hits
        self._failed += other._failed

    def per_image(self) -> dict[str, ImageResult]:
        """Results keyed by image id, in processing order (a copy)."""
        return dict(self._results)

    def evaluate(self) -> dict[str, float | int]:
        """Return ``corloc`` (percent; NaN when nothing was processed), ``hits``, ``total``, ``failed``."""
        total, hits, failed = len(self._results), self._hits, self._failed
        corloc = 100.0 * hits / total if total else math.nan
        return {"corloc": corloc, "hits": hits, "total": total, "failed": failed}


def format_corloc(metrics: Mapping[str, Any]) -> str:
    """Format as the reference prints it: ``"CorLoc: 61.90 (3101/5011)"``."""
    return f"CorLoc: {metrics['corloc']:.2f} ({metrics['hits']}/{metrics['total']})"
