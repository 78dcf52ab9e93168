"""Evaluation of discovered boxes against dataset ground truth."""

from lostreg.evaluation.corloc import (
    CORLOC_IOU_THRESHOLD,
    CorLocEvaluator,
    ImageResult,
    format_corloc,
    is_hit,
)

__all__ = ["CORLOC_IOU_THRESHOLD", "CorLocEvaluator", "ImageResult", "format_corloc", "is_hit"]
