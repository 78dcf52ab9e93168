"""Writers of LOST pseudo-boxes in the formats detector trainers load (dispatch: :func:`export_records`).

The writers live in :mod:`lostreg.export.coco` (COCO, detectron2) and :mod:`lostreg.export.folders`
(YOLO, VOC); what they share in :mod:`lostreg.export.records`.

Every writer takes prediction records, the lines of an eval run's ``preds.jsonl``
(:func:`lostreg.evaluation.runner.prediction_record`), of which it uses ``image_id``,
``image`` (path), ``width``, ``height``, ``boxes_xyxy`` and ``scores`` (every object, most
confident first; ``box_xyxy`` alone in lines of earlier versions) and ``error``. It reads no
run directory and no image: reading runs is :mod:`lostreg.export.readers`' job.

Scores and filters (:func:`export_records`): every format that has a place for a box's confidence
carries it: COCO annotations and results ``score`` and detectron2 annotations ``score`` always (1.0
for runs without confidences); YOLO (a sixth value, which ``yolo train`` does not read) and VOC (a
``<score>`` element) with ``with_score``. ``min_score`` and ``top_k`` keep the confident boxes
(:func:`lostreg.export.records.select_objects`).

Box conventions. ``box_xyxy`` is ``[x1, y1, x2, y2]`` in integer pixels of the original
image, 0-based, max exclusive (:mod:`lostreg.boxes`). The formats store it as:

* ``coco``: ``bbox = [x1, y1, x2 - x1, y2 - y1]`` (``[x, y, w, h]``), ``area = w * h``;
* ``detectron2``: ``bbox = [x1, y1, x2, y2]`` with ``bbox_mode = 0`` (``BoxMode.XYXY_ABS``:
  absolute floats, where a whole W x H image is ``[0, 0, W, H]``, the same convention);
* ``yolo``: ``0 cx cy w h`` with ``cx = (x1 + x2) / 2 / W``, ``w = (x2 - x1) / W`` (and
  ``cy``, ``h`` over H), written with enough decimals that the reader gets the pixels back;
* ``voc``: 1-based inclusive corners ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``
  (:func:`lostreg.boxes.xyxy_to_voc`).

Failed images (``error`` set or ``box_xyxy`` null) are never written as images without
labels, which a trainer would take for "no object here": each writer lists them in a
``failed.txt`` side file (tab-separated ``image_id``, ``image``, ``error``).

Paths written in the outputs are relative to ``root`` (POSIX separators) when it is given,
absolute otherwise; an image outside ``root`` raises :class:`ExportError` naming it.
"""


from __future__ import annotations

import os
from collections.abc import Sequence

from lostreg.export.coco import coco_instances, coco_results, detectron2_dicts, write_coco, write_detectron2
from lostreg.export.folders import voc_xml, write_voc, write_yolo, yolo_line
from lostreg.export.records import (
    CATEGORY_NAME,
    FILE_FORMATS,
    FORMATS,
    ExportError,
    ExportResult,
    FailedImage,
    Record,
    Selection,
    check_output,
    check_unique_stems,
    coco_image_ids,
    failed_file_for,
    relative_path,
    select_objects,
    split_failed,
)

__all__ = [
    "CATEGORY_NAME",
    "FILE_FORMATS",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "FailedImage",
    "check_output",
    "check_unique_stems",
    "coco_image_ids",
    "coco_instances",
    "coco_results",
    "detectron2_dicts",
    "export_records",
    "failed_file_for",
    "relative_path",
    "select_objects",
    "split_failed",
    "voc_xml",
    "write_coco",
    "write_detectron2",
    "write_voc",
    "write_yolo",
    "yolo_line",
]


# ---------------------------------------------------------------------------- dispatch


def export_records(
    records: Sequence[Record],
    fmt: str,
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    link_images: bool = False,
    with_score: bool = False,
    min_score: float | None = None,
    top_k: int | None = None,
) -> ExportResult:
    """Write ``records`` in format ``fmt`` (one of :data:`FORMATS`) to ``out``.

    ``results`` (a COCO results file) is for ``coco`` only; ``link_images`` for ``yolo``
    and ``voc`` only, as is ``with_score`` (COCO and detectron2 always carry the confidences);
    ``min_score`` and ``top_k`` filter the boxes first (images left without a box are not written).

    Returns:
        What was written (``dropped``: the images the filters left without a box).

    Raises:
        ExportError: an unknown format, an option the format does not take, an output path the
            format cannot write (:func:`check_output`), a filter the run cannot take, or a
            writer's error.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if results is not None and fmt != "coco":
        raise ExportError("--results (a COCO results file) goes with --format coco")
    if link_images and fmt in FILE_FORMATS:
        raise ExportError("--link-images goes with --format yolo or voc")
    if with_score and fmt in FILE_FORMATS:
        raise ExportError("--with-score goes with --format yolo or voc (coco and detectron2 always carry the scores)")
    check_output(fmt, out, results)
    selection = select_objects(records, min_score, top_k)
    kept = selection.records
    if fmt == "coco":
        result = write_coco(kept, out, root, results, with_score=True)
    elif fmt == "detectron2":
        result = write_detectron2(kept, out, root, with_score=True)
    elif fmt == "yolo":
        result = write_yolo(kept, out, root, link_images, with_score)
    else:
        result = write_voc(kept, out, root, link_images, with_score)
    result.dropped = selection.dropped
    return result
