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
truth. :func:`curve_cells` formats it for ``lostreg compare`` and ``lostreg report``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lostreg.evaluation.ap import image_order_key

__all__ = ["CURVE_PERCENTS", "confidence_curve", "curve_cells", "curve_header"]

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
