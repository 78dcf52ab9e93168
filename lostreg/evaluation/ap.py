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
* **Detections.** Every box of a line, ``boxes_xyxy`` (several with ``objects=N``; lines of
  earlier versions have only ``box_xyxy``), each with its ``scores`` entry, the method's
  confidence. Boxes may be real numbers (a detector's, :mod:`lostreg.evaluation.scoring`).
* **Scores.** With ``scored=True`` (the default) each detection has its score, so COCOeval
  ranks the boxes by the method's confidence. When any line with a box has no scores (a
  method without a confidence, or lines of lostreg versions before scores), every detection
  gets score 1.0 instead, as with ``scored=False``: all detections tie, and the
  precision/recall curve depends on the order of the tied detections. COCOeval sorts
  detections by score with numpy's *stable* ``mergesort`` after concatenating them in
  ascending image-id order, so tied detections keep image order (and, within an image, the
  order of ``boxes_xyxy``). Here images are numbered 1..N in the order of
  :func:`image_order_key` of their ``image_id`` (numeric ids by value, others as strings),
  whatever the order of the input: the value is deterministic and does not depend on the
  order in which ``preds.jsonl`` was written (a resumed run gives the same AP). The value of
  ``scored=False`` ("image order") is what lostreg reported before scores, and the baseline a
  confidence must beat.
* **Failed images** (``box_xyxy`` null) contribute their ground truth and no detection
  (lower recall); an image without ground truth that has a box contributes a false
  positive.
* **Values** are fractions in ``[0, 1]`` (``stats[0]`` = AP@[.5:.95] and ``stats[1]`` =
  AP@.5 of COCOeval: all areas, up to 100 detections per image; ``stats[6:9]`` = AR@1, AR@10,
  AR@100, IoU .5:.95); NaN when there is no ground-truth box at all.

pycocotools prints progress on stdout; it is silenced here so that lostreg's stdout keeps
only its own results.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping
from typing import Any

from lostreg.boxes import xyxy_to_xywh, xyxy_to_xywh_real

__all__ = ["detections_of", "image_order_key", "lines_are_scored", "pseudo_box_ap"]

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


def detections_of(record: Mapping[str, Any], scored: bool = True) -> list[tuple[Any, float]]:
    """The ``(box_xyxy, score)`` detections of one prediction line, most confident first.

    ``boxes_xyxy`` (or, in lines of earlier versions, ``box_xyxy`` alone) with their ``scores``;
    score 1.0 for each when ``scored`` is False or the line has no scores. A failed image (``error``
    set) or an image without a box has none.
    """
    if record.get("error") is not None:
        return []
    boxes = record.get("boxes_xyxy")
    if boxes is None:
        boxes = [] if record.get("box_xyxy") is None else [record["box_xyxy"]]
    scores = record.get("scores")
    if scored and scores is not None:
        if len(scores) != len(boxes):
            raise ValueError(f"image {record.get('image_id')!r}: {len(boxes)} boxes but {len(scores)} scores")
        return [(box, float(score)) for box, score in zip(boxes, scores)]
    return [(box, 1.0) for box in boxes]


def lines_are_scored(preds: Iterable[Mapping[str, Any]]) -> bool:
    """Whether every line with a box carries scores (then AP ranks by them; see the module docstring)."""
    return all(line.get("scores") is not None for line in preds if detections_of(line, scored=False))


def pseudo_box_ap(preds: Iterable[Mapping[str, Any]], scored: bool = True) -> dict[str, Any]:
    """COCO AP, AP50 and AR of the predicted boxes, one category, against ``gt_boxes_xyxy``.

    Args:
        preds: ``preds.jsonl`` records (see :func:`lostreg.evaluation.runner.prediction_record`):
            ``image_id``, ``box_xyxy`` (``[x1, y1, x2, y2]`` pixels, max exclusive, or
            None when the image failed), ``boxes_xyxy`` and ``scores`` when present, and
            ``gt_boxes_xyxy`` (``(K, 4)``, same convention, K may be 0). Order does not
            matter (see the module docstring).
        scored: rank detections by their scores (when every line has them); False: every
            detection ties at 1.0 (image order).

    Returns:
        ``ap`` (AP@[.5:.95]), ``ap50``, ``ar1``, ``ar10``, ``ar100`` as fractions (NaN without any
        GT box), ``images``, ``detections`` and ``gt_boxes`` (counts), and ``scored`` (whether the
        scores ranked the detections).

    Raises:
        ValueError: an image id appears twice, a box is malformed, or boxes and scores differ in number.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = sorted(preds, key=lambda r: image_order_key(r["image_id"]))
    use_scores = scored and lines_are_scored(records)
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
        for box, score in detections_of(record, use_scores):
            dets.append({"image_id": number, "category_id": CATEGORY_ID, "bbox": list(_xywh(box)), "score": score})
    counts = {"images": len(images), "detections": len(dets), "gt_boxes": len(gt_anns), "scored": use_scores}
    metrics = ("ap", "ap50", "ar1", "ar10", "ar100")
    if not gt_anns:
        return {**{m: math.nan for m in metrics}, **counts}
    if not dets:
        # COCO.loadRes cannot take an empty list; with ground truth and no detection AP is 0.
        return {**{m: 0.0 for m in metrics}, **counts}

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
    stats = evaluator.stats
    return {"ap": float(stats[0]), "ap50": float(stats[1]), "ar1": float(stats[6]), "ar10": float(stats[7]),
            "ar100": float(stats[8]), **counts}


def _xywh(box: Any) -> tuple[float, ...]:
    """COCO ``[x, y, w, h]`` of a box: integers kept integers (lostreg's boxes), real numbers as floats."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        return xyxy_to_xywh(box)
    return xyxy_to_xywh_real(box)
