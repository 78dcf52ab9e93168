"""Evaluators of prediction lines, in the detectron2 way: ``reset`` / ``process`` / ``evaluate``.

The eval loop feeds every batch of ``preds.jsonl`` lines (:func:`lostreg.evaluation.runner.prediction_record`)
to a list of evaluators; on resume it first feeds the lines already on disk. ``metrics.json``
holds what all of them return, plus the counts of :func:`prediction_counts`.

A hit is decided once: :class:`CorLoc` decides it for a new line (through
:class:`lostreg.evaluation.corloc.CorLocEvaluator`, which owns the IoU rule) and writes ``hit``
and ``iou`` into the line before it is stored; a stored line's decision is counted as it is.
Every other reader (the AP evaluator, compare, report, export) uses the stored ``hit``.

Only datasets with ground truth get evaluators (:attr:`lostreg.datasets.ImageDataset.has_ground_truth`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lostreg.evaluation.corloc import CorLocEvaluator, ImageResult

__all__ = [
    "ClassAgnosticAP",
    "ConfidenceCurve",
    "CorLoc",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "ImageOrderAP",
    "metrics_from_lines",
    "prediction_counts",
]

Line = dict[str, Any]


class DatasetEvaluator(abc.ABC):
    """Accumulates prediction lines and turns them into metrics."""

    #: Cheap enough to evaluate after every batch (``metrics.json`` during a run); otherwise
    #: evaluated at the end of a session only.
    per_batch: bool = True

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every line processed so far."""

    @abc.abstractmethod
    def process(self, lines: Sequence[Line]) -> None:
        """Take one batch of prediction lines (each image once over a whole evaluation)."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Metrics over every line processed since the last reset (JSON-ready: no NaN)."""


class CorLoc(DatasetEvaluator):
    """CorLoc (spec section 4): ``corloc`` (percent, None before any image) and ``hits``.

    New lines (``hit`` is None) are scored here and get their ``hit`` and ``iou``; stored lines
    are counted as they were scored.
    """

    def __init__(self) -> None:
        self._scores = CorLocEvaluator()

    def reset(self) -> None:
        self._scores.reset()

    def process(self, lines: Sequence[Line]) -> None:
        for line in lines:
            if line.get("hit") is None:
                result = self._scores.process(line["image_id"], line.get("box_xyxy"), line.get("gt_boxes_xyxy"))
                line["hit"], line["iou"] = bool(result.hit), round(float(result.iou), 6)
            else:
                failed = line.get("error") is not None or line.get("box_xyxy") is None
                self._scores.add(line["image_id"], ImageResult(hit=bool(line["hit"]), iou=float(line.get("iou") or 0.0),
                                                               failed=failed))

    def evaluate(self) -> dict[str, Any]:
        scores = self._scores.evaluate()
        return {"corloc": scores["corloc"] if scores["total"] else None, "hits": scores["hits"]}


class _LinesEvaluator(DatasetEvaluator):
    """Keeps every line; its metrics are computed from all of them at the end of a session."""

    per_batch = False

    def __init__(self) -> None:
        self._lines: list[Line] = []

    def reset(self) -> None:
        self._lines = []

    def process(self, lines: Sequence[Line]) -> None:
        self._lines.extend(lines)


def _fractions(scores: Mapping[str, Any], keys: Sequence[str], prefix: str = "") -> dict[str, Any]:
    return {prefix + key: None if math.isnan(float(scores[key])) else float(scores[key]) for key in keys}


class ClassAgnosticAP(_LinesEvaluator):
    """COCO AP@[.5:.95] and AP50 of the boxes, one category (:func:`lostreg.evaluation.ap.pseudo_box_ap`),
    every box of a line ranked by its score (ties when the lines have no scores).

    ``ap`` and ``ap50`` are fractions in [0, 1], None without any ground-truth box; with
    ``recall=True`` also ``ar1``, ``ar10``, ``ar100`` (COCO's AR@1, @10, @100) from the same
    COCOeval run. COCOeval takes seconds on a large dataset, so it runs at the end of a session only.
    """

    def __init__(self, recall: bool = False) -> None:
        super().__init__()
        self.recall = recall

    def evaluate(self) -> dict[str, Any]:
        from lostreg.evaluation.ap import pseudo_box_ap  # pycocotools: only when asked

        keys = ("ap", "ap50", "ar1", "ar10", "ar100") if self.recall else ("ap", "ap50")
        return _fractions(pseudo_box_ap(self._lines), keys)


class ImageOrderAP(_LinesEvaluator):
    """``image_order_ap50``: AP50 with every box tied at score 1.0 (image order), the value lostreg
    reported before scores: the baseline the method's confidence must beat (``ap50``)."""

    def evaluate(self) -> dict[str, Any]:
        from lostreg.evaluation.ap import pseudo_box_ap

        return _fractions(pseudo_box_ap(self._lines, scored=False), ("ap50",), prefix="image_order_")


class ConfidenceCurve(_LinesEvaluator):
    """``corloc_by_confidence``: CorLoc of the most confident 10%, 20%, ... of the images
    (:func:`lostreg.evaluation.confidence.confidence_curve`; None without scores).

    Reads the ``hit`` that :class:`CorLoc` decided: list it after CorLoc.
    """

    def evaluate(self) -> dict[str, Any]:
        from lostreg.evaluation.confidence import confidence_curve

        return {"corloc_by_confidence": confidence_curve(self._lines)}


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators as one; their metric names must not collide."""

    def __init__(self, evaluators: Iterable[DatasetEvaluator]) -> None:
        self.evaluators = list(evaluators)

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, lines: Sequence[Line]) -> None:
        for evaluator in self.evaluators:
            evaluator.process(lines)

    def evaluate(self, final: bool = True) -> dict[str, Any]:
        """Every evaluator's metrics; with ``final=False`` only the per-batch (cheap) ones."""
        metrics: dict[str, Any] = {}
        for evaluator in self.evaluators:
            if not final and not evaluator.per_batch:
                continue
            result = evaluator.evaluate()
            clash = metrics.keys() & result.keys()
            if clash:
                raise ValueError(f"two evaluators report {sorted(clash)}")
            metrics.update(result)
        return metrics


def default_evaluators(has_ground_truth: bool) -> DatasetEvaluators:
    """Where the dataset has ground truth: CorLoc, class-agnostic AP and AR (boxes ranked by their
    scores), AP50 in image order, and the CorLoc of the most confident images; none otherwise."""
    if not has_ground_truth:
        return DatasetEvaluators([])
    return DatasetEvaluators([CorLoc(), ClassAgnosticAP(recall=True), ImageOrderAP(), ConfidenceCurve()])


def prediction_counts(lines: Iterable[Mapping[str, Any]], num_images: int) -> dict[str, Any]:
    """``total`` (images with a line), ``failed``, ``num_images`` and ``complete`` (all done)."""
    total = failed = 0
    for line in lines:
        total += 1
        failed += line.get("error") is not None
    return {"total": total, "failed": failed, "num_images": num_images, "complete": total == num_images}


def metrics_from_lines(lines: Sequence[Line], num_images: int, has_ground_truth: bool) -> dict[str, Any]:
    """Every metric of stored lines (all already scored): what ``metrics.json`` holds, without timings.

    Keys: ``corloc`` and ``hits`` (None without ground truth), ``ap``, ``ap50``, ``ar1``, ``ar10``,
    ``ar100``, ``image_order_ap50`` and ``corloc_by_confidence`` (only with ground truth),
    ``total``, ``failed``, ``num_images``, ``complete``.
    """
    evaluators = default_evaluators(has_ground_truth)
    evaluators.process(list(lines))
    metrics: dict[str, Any] = {"corloc": None, "hits": None}
    metrics.update(evaluators.evaluate())
    metrics.update(prediction_counts(lines, num_images))
    return metrics


__all__ += ["default_evaluators"]
