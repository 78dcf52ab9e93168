"""COCO instances (and results) and detectron2 dataset dicts of pseudo-boxes (see :mod:`lostreg.export.formats`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lostreg.boxes import xyxy_to_xywh
from lostreg.export.records import (
    CATEGORY_NAME,
    ExportResult,
    Record,
    coco_image_ids,
    is_failed,
    record_box,
    record_size,
    relative_path,
    split_failed,
    write_failed_list,
    write_text_file,
)


# ---------------------------------------------------------------------------- coco


def coco_instances(records: Sequence[Record], root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A COCO *instances* dict for training: one category ``object`` (id 1), one box per image.

    ``images``: ``id`` (:func:`coco_image_ids`), ``file_name`` (relative to ``root``),
    ``width``, ``height`` and ``lostreg_image_id`` (the run's id, for mapping back).
    ``annotations``: ``id`` 1..N, ``image_id``, ``category_id`` 1, ``bbox`` ``[x, y, w, h]``
    (integer pixels), ``area`` ``w * h``, ``iscrowd`` 0. Failed records are left out.
    """
    ids = coco_image_ids(records)
    images, annotations = [], []
    for image_id, record in zip(ids, records):
        if is_failed(record):
            continue
        width, height = record_size(record)
        images.append({"id": image_id, "file_name": relative_path(record["image"], root), "width": width,
                       "height": height, "lostreg_image_id": str(record["image_id"])})
        x, y, w, h = xyxy_to_xywh(record["box_xyxy"])  # validates: 4 integers, x1 <= x2, y1 <= y2
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    return {
        "info": {"description": "LOST pseudo-boxes (lostreg), one class-agnostic box per image"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CATEGORY_NAME, "supercategory": CATEGORY_NAME}],
    }


def coco_results(records: Sequence[Record]) -> list[dict[str, Any]]:
    """A COCO *results* list for ``COCOeval``: ``image_id``, ``category_id`` 1, ``bbox`` ``[x, y, w, h]``, ``score``.

    LOST has no confidence: every score is 1.0 (see :mod:`lostreg.evaluation.ap` on ties).
    Image ids are those of :func:`coco_instances` for the same records.
    """
    return [
        {"image_id": image_id, "category_id": 1, "bbox": list(xyxy_to_xywh(record["box_xyxy"])), "score": 1.0}
        for image_id, record in zip(coco_image_ids(records), records)
        if not is_failed(record)
    ]


def write_coco(
    records: Sequence[Record],
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
) -> ExportResult:
    """Write a COCO instances json to ``out`` (and a results json to ``results``)."""
    result = ExportResult("coco", Path(out))
    ok, failed = split_failed(records)
    data = coco_instances(records, root)
    result.files.append(write_text_file(Path(out), json.dumps(data) + "\n"))
    if results is not None:
        result.files.append(write_text_file(Path(results), json.dumps(coco_results(records)) + "\n"))
    result.images = len(ok)
    write_failed_list(result, failed)
    return result


# ---------------------------------------------------------------------------- detectron2


def detectron2_dicts(records: Sequence[Record], root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """detectron2 dataset dicts, the format LOST+CAD trained on.

    One dict per image: ``file_name`` (relative to ``root``: join it with the root when
    registering), ``image_id`` (the run's id), ``height``, ``width``, ``annotations`` with
    one ``{"bbox": [x1, y1, x2, y2], "bbox_mode": 0, "category_id": 0, "iscrowd": 0}``
    (``bbox_mode`` 0 is ``BoxMode.XYXY_ABS``; category ids are 0-based in detectron2).
    """
    dicts = []
    for record in records:
        if is_failed(record):
            continue
        width, height = record_size(record)
        dicts.append({
            "file_name": relative_path(record["image"], root),
            "image_id": str(record["image_id"]),
            "height": height,
            "width": width,
            "annotations": [{"bbox": list(record_box(record)), "bbox_mode": 0, "category_id": 0, "iscrowd": 0}],
        })
    return dicts


def write_detectron2(
    records: Sequence[Record], out: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> ExportResult:
    """Write the :func:`detectron2_dicts` as a json list to ``out``."""
    result = ExportResult("detectron2", Path(out))
    ok, failed = split_failed(records)
    result.files.append(write_text_file(Path(out), json.dumps(detectron2_dicts(records, root)) + "\n"))
    result.images = len(ok)
    write_failed_list(result, failed)
    return result
