"""Evaluators of prediction lines: a hit is decided once, metrics from every evaluator."""

from __future__ import annotations

import pytest

from lostreg.evaluation.ap import pseudo_box_ap
from lostreg.evaluation.evaluators import (
    ClassAgnosticAP,
    CorLoc,
    DatasetEvaluator,
    DatasetEvaluators,
    default_evaluators,
    metrics_from_lines,
)


def line(image_id: str, box: list[int] | None, gt: list[list[int]], **extra: object) -> dict:
    record = {"image_id": image_id, "box_xyxy": box, "hit": None, "iou": None, "gt_boxes_xyxy": gt,
              "error": None if box is not None else "bad image"}
    record.update(extra)
    return record


def test_corloc_scores_new_lines_in_place_and_counts_stored_ones_as_stored() -> None:
    new = [line("a", [0, 0, 10, 10], [[0, 0, 10, 10]]), line("b", [0, 0, 10, 10], [[20, 20, 30, 30]]),
           line("c", None, [[0, 0, 5, 5]])]
    corloc = CorLoc()
    corloc.process(new)
    assert [(x["hit"], x["iou"]) for x in new] == [(True, 1.0), (False, 0.0), (False, 0.0)]
    # A stored line keeps its recorded decision: nothing re-scores it (here its box would miss).
    stored = line("d", [0, 0, 1, 1], [[50, 50, 60, 60]], hit=True, iou=0.9)
    corloc.process([stored])
    assert stored["hit"] is True
    assert corloc.evaluate() == {"corloc": 50.0, "hits": 2}
    with pytest.raises(ValueError, match="processed twice"):
        corloc.process([line("a", [0, 0, 10, 10], [[0, 0, 10, 10]], hit=True, iou=1.0)])
    corloc.reset()
    assert corloc.evaluate() == {"corloc": None, "hits": 0}


def test_ap_evaluator_is_pseudo_box_ap() -> None:
    lines = [line(str(i), [0, 0, 10 + i, 10], [[0, 0, 10, 10], [40, 40, 50, 50]]) for i in range(6)]
    ap = ClassAgnosticAP()
    ap.process(lines[:3])
    ap.process(lines[3:])
    expected = pseudo_box_ap(lines)
    assert ap.evaluate() == {"ap": expected["ap"], "ap50": expected["ap50"]}
    assert ClassAgnosticAP().evaluate() == {"ap": None, "ap50": None}, "no ground truth: None, not NaN"


def test_evaluators_combine_and_refuse_clashing_names() -> None:
    lines = [line("1", [0, 0, 10, 10], [[0, 0, 10, 10]]), line("2", None, [[0, 0, 10, 10]])]
    both = default_evaluators(has_ground_truth=True)
    both.process(lines)
    metrics = both.evaluate()
    assert metrics["corloc"] == 50.0 and metrics["hits"] == 1 and 0 < metrics["ap50"] <= 1
    assert default_evaluators(has_ground_truth=False).evaluate() == {}

    class Twice(DatasetEvaluator):
        def reset(self) -> None: ...
        def process(self, lines: object) -> None: ...
        def evaluate(self) -> dict:
            return {"corloc": 0.0}

    with pytest.raises(ValueError, match="two evaluators report"):
        DatasetEvaluators([CorLoc(), Twice()]).evaluate()


def test_metrics_from_stored_lines() -> None:
    lines = [line("1", [0, 0, 10, 10], [[0, 0, 10, 10]]), line("2", None, [[0, 0, 10, 10]])]
    default_evaluators(True).process(lines)  # as the eval loop scores them before storing
    metrics = metrics_from_lines(lines, num_images=3, has_ground_truth=True)
    assert {k: metrics[k] for k in ("corloc", "hits", "total", "failed", "num_images", "complete")} == {
        "corloc": 50.0, "hits": 1, "total": 2, "failed": 1, "num_images": 3, "complete": False}
    folder = metrics_from_lines([line("x", [0, 0, 1, 1], [])], num_images=1, has_ground_truth=False)
    assert folder["corloc"] is None and folder["complete"] is True and "ap" not in folder
