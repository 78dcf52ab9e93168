"""CorLoc: hand-computed cases, including the box conventions that decide a hit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from synthetic import SyntheticObject, write_voc_image, write_voc_split

from lostreg.boxes import coco_xywh_to_xyxy
from lostreg.datasets import CocoDataset, VOCDataset
from lostreg.evaluation import CorLocEvaluator, format_corloc, is_hit


def test_exact_tie_at_half_is_a_hit():
    # inter 10*5 = 50, union 100 + 50 - 50 = 100 -> IoU exactly 0.5
    hit, iou = is_hit([0, 0, 10, 10], [[0, 0, 10, 5]])
    assert (hit, iou) == (True, 0.5)


def test_just_below_half_is_a_miss():
    # inter 100*49, union 10000 -> 0.49
    hit, iou = is_hit([0, 0, 100, 100], [[0, 0, 100, 49]])
    assert not hit and iou == pytest.approx(0.49)


def test_touching_boxes_do_not_overlap():
    # Max-exclusive corners: [0,10) and [10,20) share no pixel. With a "+1" convention
    # they would overlap by one column.
    assert is_hit([0, 0, 10, 10], [[10, 0, 20, 10]]) == (False, 0.0)
    assert is_hit([0, 0, 10, 10], [[10, 10, 20, 20]]) == (False, 0.0)


def test_hit_through_second_gt_box_reports_best_iou():
    gt = np.array([[50, 50, 60, 60], [0, 0, 10, 6]])  # IoU 0 and 60/100
    hit, iou = is_hit(np.array([0, 0, 10, 10]), gt)
    assert hit and iou == pytest.approx(0.6)


def test_no_gt_is_a_miss():
    assert is_hit([0, 0, 10, 10], np.zeros((0, 4), dtype=np.int64)) == (False, 0.0)
    assert is_hit([0, 0, 10, 10], []) == (False, 0.0)


def test_box_shapes_are_checked():
    with pytest.raises(ValueError):
        is_hit([0, 0, 10], [[0, 0, 10, 10]])
    with pytest.raises(ValueError):
        is_hit([0, 0, 10, 10], np.zeros((4, 3)))  # must not be reshaped into (3, 4)
    assert is_hit([0, 0, 10, 10], [0, 0, 10, 10]) == (True, 1.0)  # one (4,) gt box


@pytest.mark.parametrize(
    ("bbox", "expected_xyxy", "hit", "why"),
    [
        # round(4.5) = 4 (half to even): IoU 0.4 -> miss; round-half-up (5) would hit.
        ([0, 0, 10, 4.5], [0, 0, 10, 4], False, "banker's"),
        # round(4.75) = 5: IoU 0.5 -> hit; int() truncation (4) would miss.
        ([0, 0, 10, 4.75], [0, 0, 10, 5], True, "round, not truncate"),
        # x2 = round(0.5 + 4.5) = 5: IoU 0.5 -> hit; round(x) + round(w) = 0 + 4 would miss.
        ([0.5, 0, 4.5, 10], [0, 0, 5, 10], True, "round(x + w)"),
    ],
)
def test_coco_rounding_decides_the_hit(tmp_path, bbox, expected_xyxy, hit, why):
    (tmp_path / "img").mkdir()
    ann = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": bbox, "area": 1.0, "iscrowd": 0},
            # A crowd box equal to the prediction must not rescue the image.
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    record = CocoDataset(path, tmp_path / "img")[0]
    assert record.gt_boxes_xyxy.tolist() == [expected_xyxy], why
    assert list(coco_xywh_to_xyxy(bbox)) == expected_xyxy
    ev = CorLocEvaluator()
    ev.process(record.image_id, [0, 0, 10, 10], record.gt_boxes_xyxy)
    assert ev.evaluate()["hits"] == int(hit), why


def test_voc_one_based_corners_decide_the_hit(tmp_path):
    # The file says xmin=1, ymin=1, xmax=10, ymax=5 (1-based inclusive) = [0, 0, 10, 5]:
    # IoU with [0, 0, 10, 10] is 0.5, a hit. Read naively as [1, 1, 10, 5] it would be
    # 36 / 100, a miss.
    voc = tmp_path / "VOC2007"
    write_voc_image(voc, "000001", 40, 30, [SyntheticObject("dog", (0, 0, 10, 5))], kinds=["rect"])
    write_voc_split(voc, "trainval", ["000001"])
    xml = (voc / "Annotations" / "000001.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<xmax>10</xmax>" in xml and "<ymax>5</ymax>" in xml
    record = VOCDataset(voc, year="2007")[0]
    assert record.gt_boxes_xyxy.tolist() == [[0, 0, 10, 5]]
    assert is_hit([0, 0, 10, 10], record.gt_boxes_xyxy) == (True, 0.5)
    assert not is_hit([0, 0, 10, 10], [[1, 1, 10, 5]])[0]


def test_failed_images_count_in_the_denominator():
    ev = CorLocEvaluator()
    ev.process("a", [0, 0, 10, 10], [[0, 0, 10, 10]])  # hit
    ev.process("b", [0, 0, 10, 10], [[20, 20, 30, 30]])  # miss
    ev.process("c", None, [[0, 0, 10, 10]])  # failed: a miss
    ev.process("d", None, np.zeros((0, 4)))  # failed, no gt
    assert ev.evaluate() == {"corloc": 25.0, "hits": 1, "total": 4, "failed": 2}
    per_image = ev.per_image()
    assert per_image["c"].failed and not per_image["c"].hit and per_image["c"].iou == 0.0
    assert list(per_image) == ["a", "b", "c", "d"]


def test_each_image_counted_once():
    ev = CorLocEvaluator()
    ev.process("5", [0, 0, 10, 10], [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="twice"):
        ev.process("5", [0, 0, 10, 10], [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="twice"):
        ev.process(5, None, [])  # ids compare as str
    assert ev.evaluate()["total"] == 1
    ev.reset()
    assert ev.evaluate()["total"] == 0
    ev.process("5", None, [])  # allowed again after reset


def test_merge_shards_without_overlap():
    a, b = CorLocEvaluator(), CorLocEvaluator()
    a.process("x", [0, 0, 10, 10], [[0, 0, 10, 10]])
    b.process("y", [0, 0, 10, 10], [[0, 0, 1, 1]])
    a.merge(b)
    assert a.evaluate() == {"corloc": 50.0, "hits": 1, "total": 2, "failed": 0}
    with pytest.raises(ValueError, match="both"):
        a.merge(b)


def test_empty_evaluation_is_nan():
    metrics = CorLocEvaluator().evaluate()
    assert math.isnan(metrics["corloc"]) and metrics["total"] == 0


def test_format_corloc():
    assert format_corloc({"corloc": 100 * 3102 / 5011, "hits": 3102, "total": 5011}) == "CorLoc: 61.90 (3102/5011)"
    ev = CorLocEvaluator()
    for i in range(3):
        ev.process(str(i), [0, 0, 10, 10], [[0, 0, 10, 10 if i else 1]])
    assert format_corloc(ev.evaluate()) == "CorLoc: 66.67 (2/3)"
