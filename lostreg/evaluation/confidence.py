"""How well a confidence ranks the images: CorLoc of the most confident x% (``corloc_by_confidence``).

A pseudo-label is only worth training on if its confidence tells good boxes from bad ones: a
user who keeps the most confident boxes (``lostreg export --min-score``) wants the kept ones to
be right more often. :func:`confidence_curve` sorts the images of a run by the score of the box
CorLoc scores (``scores[0]``, the most confident), most confident first, and gives the CorLoc of
the top 10%, 20%, ..., 100% of them; a useful confidence gives a curve that falls from left to
right (the last point is the run's CorLoc). Ties keep image order (:func:`image_order_key`), so
the curve is deterministic. Images without a box (failed, or no prediction) rank last, as misses.

``metrics.json`` holds the curve as ``corloc_by_confidence``: a list of
``{"top_percent", "images", "hits", "corloc"}`` (CorLoc in percent), or null for a run whose
lines have no scores (a method without a confidence, lines of earlier versions) or no ground
truth. :func:`confidence_table` lays the runs of ``lostreg compare`` and ``lostreg report`` out
as a table: per run its AP50 ranked by the scores, its AP50 in image order, and the curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lostreg.evaluation.ap import image_order_key

__all__ = ["CURVE_PERCENTS", "CONFIDENCE_NOTE", "confidence_curve", "confidence_markdown", "confidence_table",
           "curve_cells", "curve_header"]

#: The shares of images (most confident first) at which the curve is read, in percent.
CURVE_PERCENTS: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)


def _top_score(line: Mapping[str, Any]) -> float | None:
    """The score of the box CorLoc scores, or None when the line has no box."""
    if line.get("error") is not None or line.get("box_xyxy") is None:
        return None
    scores = line.get("scores") or []
    return float(scores[0]) if scores else None


def confidence_curve(lines: Iterable[Mapping[str, Any]],
                     percents: Sequence[int] = CURVE_PERCENTS) -> list[dict[str, Any]] | None:
    """CorLoc of the most confident ``p`` percent of the images, for each ``p`` of ``percents``.

    Args:
        lines: scored prediction lines (``hit`` decided, :class:`lostreg.evaluation.evaluators.CorLoc`),
            each image once, with ``scores`` (most confident first) where they have a box.
        percents: shares of the images, in percent (1..100).

    Returns:
        One ``{"top_percent": p, "images": n, "hits": h, "corloc": 100 * h / n}`` per ``p``, with
        ``n = ceil(p / 100 * total)`` (at least 1); None when there is no image, no decided hit
        (no ground truth) or a line with a box but no scores.
    """
    lines = list(lines)
    if not lines or any(line.get("hit") is None for line in lines):
        return None
    ranked = []
    for line in lines:
        score = _top_score(line)
        if score is None and line.get("error") is None and line.get("box_xyxy") is not None:
            return None  # a box without a confidence: nothing to rank by
        ranked.append((score, line))
    # Most confident first; images without a box last; ties in image order (a stable sort).
    ranked.sort(key=lambda item: image_order_key(item[1]["image_id"]))
    ranked.sort(key=lambda item: -item[0] if item[0] is not None else math.inf)
    hits = [bool(line["hit"]) for _, line in ranked]
    curve = []
    for percent in percents:
        n = max(1, math.ceil(percent / 100 * len(hits)))
        h = sum(hits[:n])
        curve.append({"top_percent": percent, "images": n, "hits": h, "corloc": 100.0 * h / n})
    return curve


def curve_header(percents: Sequence[int] = CURVE_PERCENTS) -> list[str]:
    """Column titles of the curve: ``top 10%``, ..., ``top 100%``."""
    return [f"top {p}%" for p in percents]


def curve_cells(curve: Sequence[Mapping[str, Any]] | None, percents: Sequence[int] = CURVE_PERCENTS) -> list[str]:
    """The curve's CorLoc values as table cells (two decimals), ``-`` where a point is missing."""
    by_percent = {int(point["top_percent"]): point for point in curve or []}
    return [f"{by_percent[p]['corloc']:.2f}" if p in by_percent else "-" for p in percents]


CONFIDENCE_NOTE = ("AP50 (scored): class-agnostic AP at IoU 0.5 of every box, ranked by the method's confidence; "
                   "AP50 (image order): the same boxes all tied, ranked by image order (what a run without "
                   "confidences gets). top p%: CorLoc (percent) of the p% of images whose most confident box "
                   "scores highest; a useful confidence makes it fall from left to right.")


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def confidence_table(runs: Iterable[Any]) -> tuple[list[str], list[list[str]]] | None:
    """The runs with a confidence curve or an AP50 as ``(header, rows)``, in the order given.

    Args:
        runs: :class:`lostreg.evaluation.runs.RunSummary` items (their ``method_label``, ``backbone``,
            ``protocol``, ``dataset``, ``ap50``, ``image_order_ap50`` and ``confidence_curve``).

    Returns:
        ``method | backbone | protocol | dataset | AP50 (scored) | AP50 (image order) | top 10% | ...``
        (AP50 in percent, two decimals), or None when no run has either.
    """
    rows = []
    for run in runs:
        if run.confidence_curve is None and run.ap50 is None:
            continue
        rows.append([run.method_label, run.backbone, run.protocol, run.dataset, _fraction(run.ap50),
                     _fraction(run.image_order_ap50), *curve_cells(run.confidence_curve)])
    if not rows:
        return None
    header = ["method", "backbone", "protocol", "dataset", "AP50 (scored)", "AP50 (image order)", *curve_header()]
    return header, rows


def confidence_markdown(runs: Iterable[Any]) -> str | None:
    """:func:`confidence_table` as a markdown section (title, table, note), or None."""
    table = confidence_table(runs)
    if table is None:
        return None
    header, rows = table
    lines = ["CorLoc of the most confident images", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + CONFIDENCE_NOTE + "\n"
