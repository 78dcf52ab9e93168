"""Class-agnostic COCO AP of pseudo-boxes (lostreg.evaluation.ap)."""

from __future__ import annotations

import math
import random

import pytest

import synthetic
from lostreg.evaluation.ap import image_order_key, pseudo_box_ap


def pred(image_id: str, box: list[int] | None, gt: list[list[int]]) -> dict:
    """A preds.jsonl-like record built by hand (only the keys AP reads, plus a size)."""
    return {"image_id": image_id, "width": 200, "height": 200, "box_xyxy": box, "gt_boxes_xyxy": gt,
            "error": None if box is not None else "failed"}


def test_pseudo_boxes_equal_to_gt_give_ap_one(voc_one_object12: synthetic.SyntheticVoc,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    images = voc_one_object12.images
    preds = [pred(im.image_id, list(im.objects[0].box_xyxy), [list(im.objects[0].box_xyxy)]) for im in images]
    result = pseudo_box_ap(preds)
    assert result["ap"] == pytest.approx(1.0, abs=1e-12)
    assert result["ap50"] == pytest.approx(1.0, abs=1e-12)
    assert (result["images"], result["detections"], result["gt_boxes"]) == (12, 12, 12)
    assert capsys.readouterr().out == "", "pycocotools' prints must not reach lostreg's stdout"


def test_hand_made_case() -> None:
    """Four images, all detections with score 1.0, ranked by image id (1, 2, 3; 4 has none).

    * "1": GT [0,0,100,100], box equal            -> TP at every IoU threshold.
    * "2": no GT, a box                            -> FP at every threshold.
    * "3": GT [0,0,100,100], box [0,0,100,58]      -> IoU 5800/10000 = 0.58: TP at t = .50, .55; FP above.
    * "4": GT [10,10,50,50], discovery failed      -> GT only (3 GT boxes in all).

    COCO AP per IoU threshold t = mean over the 101 recall thresholds r = 0, .01, .., 1 of the
    interpolated precision (max precision at recall >= r; 0 beyond the last recall):

    * t in {.50, .55}: TP, FP, TP -> recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3;
      interpolated 1 for r <= 1/3 (34 thresholds: 0 .. .33) and 2/3 for 1/3 < r <= 2/3
      (33 thresholds: .34 .. .66): (34 + 33 * 2/3) / 101 = 56/101.
    * t in {.60, .., .95} (8 thresholds): TP, FP, FP -> 1 for r <= 1/3: 34/101.

    AP50 = 56/101; AP = (2 * 56 + 8 * 34) / (10 * 101) = 384/1010.
    Recalls k/3 never fall on the 0.01 grid, so no threshold sits on a boundary.
    """
    preds = [
        pred("1", [0, 0, 100, 100], [[0, 0, 100, 100]]),
        pred("2", [20, 20, 60, 60], []),
        pred("3", [0, 0, 100, 58], [[0, 0, 100, 100]]),
        pred("4", None, [[10, 10, 50, 50]]),
    ]
    expected_ap50, expected_ap = 56 / 101, 384 / 1010
    for order in (preds, preds[::-1], random.Random(0).sample(preds, len(preds))):
        result = pseudo_box_ap(order)
        assert result["ap50"] == pytest.approx(expected_ap50, rel=1e-12)
        assert result["ap"] == pytest.approx(expected_ap, rel=1e-12)
        assert (result["images"], result["detections"], result["gt_boxes"]) == (4, 3, 3)


def test_ties_are_broken_by_numeric_image_id() -> None:
    """Equal scores: COCOeval's stable sort keeps image order, and "9" comes before "10".

    "9": TP, "10": FP, "11": GT only (3 GT). Ranked 9, 10: precision 1 for r <= 1/3 -> 34/101.
    Ranked 10, 9 (string order) it would be precision 1/2 for r <= 1/3 -> 17/101.
    """
    preds = [
        pred("10", [0, 0, 10, 10], [[100, 100, 150, 150]]),
        pred("9", [0, 0, 10, 10], [[0, 0, 10, 10]]),
        pred("11", None, [[5, 5, 20, 20]]),
    ]
    assert pseudo_box_ap(preds)["ap50"] == pytest.approx(34 / 101, rel=1e-12)
    assert sorted(["10", "9", "000005", "a/b.jpg", "2008_000001"], key=image_order_key) == [
        "000005", "9", "10", "2008_000001", "a/b.jpg"]


def test_degenerate_sets() -> None:
    no_gt = pseudo_box_ap([pred("1", [0, 0, 5, 5], []), pred("2", [1, 1, 5, 5], [])])
    assert math.isnan(no_gt["ap"]) and math.isnan(no_gt["ap50"])
    all_failed = pseudo_box_ap([pred("1", None, [[0, 0, 5, 5]])])
    assert (all_failed["ap"], all_failed["ap50"], all_failed["detections"]) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="appears twice"):
        pseudo_box_ap([pred("1", [0, 0, 5, 5], []), pred("1", [0, 0, 5, 5], [])])


def test_multiple_gt_objects_cap_recall() -> None:
    """One box per image finds at most one of its objects: AP50 counts the others as missed.

    Two images, each with 3 GT boxes and one exact box: recall reaches 2/6 = 1/3 with
    precision 1, so AP50 = 34/101 (recall thresholds 0 .. .33).
    """
    preds = [
        pred("1", [0, 0, 10, 10], [[0, 0, 10, 10], [50, 50, 90, 90], [100, 0, 120, 30]]),
        pred("2", [0, 0, 20, 20], [[0, 0, 20, 20], [100, 100, 120, 140], [30, 30, 40, 40]]),
    ]
    assert pseudo_box_ap(preds)["ap50"] == pytest.approx(34 / 101, rel=1e-12)
