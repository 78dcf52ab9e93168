"""Class-agnostic detection AP of pseudo-boxes against the ground truth (COCO protocol).

CorLoc asks "is the one box right?" per image; AP asks how good the boxes are as
*training labels* for a detector: every ground-truth object that no pseudo-box covers
lowers recall. :func:`pseudo_box_ap` runs pycocotools' ``COCOeval`` (``iouType="bbox"``)
with a single category, so a class-agnostic detector trained on the boxes is scored the
same way.

Conventions (stated because each one changes the number):

* **Boxes.** ``box_xyxy`` and ``gt_boxes_xyxy`` of the ``preds.jsonl`` lines are integer
  pixels, max exclusive; they are given to COCOeval as ``[x1, y1, x2 - x1, y2 - y1]``.
  COCOeval's box IoU has no "+1" pixel term, so it equals :func:`lostreg.boxes.iou_xyxy`.
  The ground truth is the run's (integer boxes; COCO crowd boxes already dropped by the
  reader), so COCOeval on a dataset's original float annotations can differ slightly.
* **Scores.** LOST gives one box per image and no confidence, so every detection gets
  score 1.0. All detections then tie, and the precision/recall curve depends on the order
  of the tied detections. COCOeval sorts detections by score with numpy's *stable*
  ``mergesort`` after concatenating them in ascending image-id order, so tied detections
  keep image order. Here images are numbered 1..N in the order of
  :func:`image_order_key` of their ``image_id`` (numeric ids by value, others as strings),
  whatever the order of the input: the value is deterministic and does not depend on the
  order in which ``preds.jsonl`` was written (a resumed run gives the same AP).
* **Failed images** (``box_xyxy`` null) contribute their ground truth and no detection
  (lower recall); an image without ground truth that has a box contributes a false
  positive.
* **Values** are fractions in ``[0, 1]`` (``stats[0]`` = AP@[.5:.95] and ``stats[1]`` =
  AP@.5 of COCOeval: all areas, up to 100 detections per image); NaN when there is no
  ground-truth box at all.

pycocotools prints progress on stdout; it is silenced here so that lostreg's stdout keeps
only its own results.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

from lostreg.boxes import xyxy_to_xywh

__all__ = ["image_order_key", "pseudo_box_ap"]

CATEGORY_ID = 1


def image_order_key(image_id: Any) -> tuple[int, int, str]:
    """Sort key of image ids: all-digit ids by numeric value first, then the others as strings.

    ``"9" < "10"`` (COCO ids), and VOC's ``"000005"`` sorts as 5; ``"2008_000001"`` and
    folder paths sort as strings.
    """
    text = str(image_id)
    if text.isdigit():
        return (0, int(text), text)
    return (1, 0, text)


def pseudo_box_ap(preds: Iterable[Mapping[str, Any]]) -> dict[str, float | int]:
    """COCO AP and AP50 of the pseudo-boxes, one category, against ``gt_boxes_xyxy``.

    Args:
        preds: ``preds.jsonl`` records (see :func:`lostreg.evaluation.runner.prediction_record`):
            ``image_id``, ``box_xyxy`` (``[x1, y1, x2, y2]`` pixels, max exclusive, or
            None when the image failed) and ``gt_boxes_xyxy`` (``(K, 4)``, same
            convention, K may be 0). Order does not matter (see the module docstring).

    Returns:
        ``ap`` (AP@[.5:.95]) and ``ap50`` as fractions (NaN without any GT box),
        ``images``, ``detections`` and ``gt_boxes`` (counts).

    Raises:
        ValueError: an image id appears twice, or a box is malformed.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = sorted(preds, key=lambda r: image_order_key(r["image_id"]))
    seen: set[str] = set()
    images, gt_anns, dets = [], [], []
    for number, record in enumerate(records, start=1):
        key = str(record["image_id"])
        if key in seen:
            raise ValueError(f"image {key!r} appears twice: AP must count each image once")
        seen.add(key)
        images.append({"id": number, "width": record.get("width"), "height": record.get("height")})
        for gt in record.get("gt_boxes_xyxy") or []:
            x, y, w, h = xyxy_to_xywh(gt)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": number, "category_id": CATEGORY_ID,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        box = record.get("box_xyxy")
        if box is not None and record.get("error") is None:
            dets.append({"image_id": number, "category_id": CATEGORY_ID, "bbox": list(xyxy_to_xywh(box)),
                         "score": 1.0})
    counts = {"images": len(images), "detections": len(dets), "gt_boxes": len(gt_anns)}
    if not gt_anns:
        return {"ap": math.nan, "ap50": math.nan, **counts}
    if not dets:
        # COCO.loadRes cannot take an empty list; with ground truth and no detection AP is 0.
        return {"ap": 0.0, "ap50": 0.0, **counts}

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns,
                           "categories": [{"id": CATEGORY_ID, "name": "object"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"ap": float(evaluator.stats[0]), "ap50": float(evaluator.stats[1]), **counts}
