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
    record_objects,
    record_size,
    relative_path,
    split_failed,
    write_failed_list,
    write_text_file,
)


# ---------------------------------------------------------------------------- coco


def _score(score: float | None) -> float:
    # A run without a confidence: every box ties at 1.0 (lostreg.evaluation.ap).
    return 1.0 if score is None else float(score)


def coco_instances(records: Sequence[Record], root: str | os.PathLike[str] | None = None,
                   with_score: bool = False) -> dict[str, Any]:
    """A COCO *instances* dict for training: one category ``object`` (id 1), every box of every image.

    ``images``: ``id`` (:func:`coco_image_ids`), ``file_name`` (relative to ``root``),
    ``width``, ``height`` and ``lostreg_image_id`` (the run's id, for mapping back).
    ``annotations`` (most confident first within an image): ``id`` 1..N, ``image_id``,
    ``category_id`` 1, ``bbox`` ``[x, y, w, h]`` (integer pixels), ``area`` ``w * h``,
    ``iscrowd`` 0, and with ``with_score`` the method's confidence ``score`` (a key COCO loaders
    ignore). Failed records are left out.
    """
    ids = coco_image_ids(records)
    images, annotations = [], []
    for image_id, record in zip(ids, records):
        if is_failed(record):
            continue
        width, height = record_size(record)
        images.append({"id": image_id, "file_name": relative_path(record["image"], root), "width": width,
                       "height": height, "lostreg_image_id": str(record["image_id"])})
        for found in record_objects(record):  # validated: 4 integers, x1 <= x2, y1 <= y2
            x, y, w, h = xyxy_to_xywh(found.box_xyxy)
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                          "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            if with_score:
                annotation["score"] = _score(found.score)
            annotations.append(annotation)
    return {
        "info": {"description": "LOST pseudo-boxes (lostreg), one class-agnostic box per image"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": CATEGORY_NAME, "supercategory": CATEGORY_NAME}],
    }


def coco_results(records: Sequence[Record], with_score: bool = False) -> list[dict[str, Any]]:
    """A COCO *results* list for ``COCOeval``: ``image_id``, ``category_id`` 1, ``bbox`` ``[x, y, w, h]``, ``score``.

    ``score`` is the method's confidence with ``with_score``; without (as lostreg wrote it before
    scores), or for a run without confidences, every score is 1.0: ties in image order (see
    :mod:`lostreg.evaluation.ap`). Image ids are those of :func:`coco_instances` for the same records.
    """
    return [
        {"image_id": image_id, "category_id": 1, "bbox": list(xyxy_to_xywh(found.box_xyxy)),
         "score": _score(found.score) if with_score else 1.0}
        for image_id, record in zip(coco_image_ids(records), records)
        if not is_failed(record)
        for found in record_objects(record)
    ]


def write_coco(
    records: Sequence[Record],
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    with_score: bool = False,
) -> ExportResult:
    """Write a COCO instances json to ``out`` (and a results json to ``results``)."""
    result = ExportResult("coco", Path(out))
    ok, failed = split_failed(records)
    data = coco_instances(records, root, with_score)
    result.files.append(write_text_file(Path(out), json.dumps(data) + "\n"))
    if results is not None:
        result.files.append(write_text_file(Path(results), json.dumps(coco_results(records, with_score)) + "\n"))
    result.images = len(ok)
    result.boxes = len(data["annotations"])
    write_failed_list(result, failed)
    return result


# ---------------------------------------------------------------------------- detectron2


def detectron2_dicts(records: Sequence[Record], root: str | os.PathLike[str] | None = None,
                     with_score: bool = False) -> list[dict[str, Any]]:
    """detectron2 dataset dicts, the format LOST+CAD trained on.

    One dict per image: ``file_name`` (relative to ``root``: join it with the root when
    registering), ``image_id`` (the run's id), ``height``, ``width``, ``annotations`` with
    one ``{"bbox": [x1, y1, x2, y2], "bbox_mode": 0, "category_id": 0, "iscrowd": 0}`` per box,
    most confident first (``bbox_mode`` 0 is ``BoxMode.XYXY_ABS``; category ids are 0-based in
    detectron2), and with ``with_score`` the method's confidence ``score`` (the key detectron2's
    own prediction files use; its dataset mapper ignores it).
    """
    dicts = []
    for record in records:
        if is_failed(record):
            continue
        width, height = record_size(record)
        annotations = []
        for found in record_objects(record):
            annotation: dict[str, Any] = {"bbox": list(found.box_xyxy), "bbox_mode": 0, "category_id": 0,
                                          "iscrowd": 0}
            if with_score:
                annotation["score"] = _score(found.score)
            annotations.append(annotation)
        dicts.append({
            "file_name": relative_path(record["image"], root),
            "image_id": str(record["image_id"]),
            "height": height,
            "width": width,
            "annotations": annotations,
        })
    return dicts


def write_detectron2(
    records: Sequence[Record], out: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
    with_score: bool = False,
) -> ExportResult:
    """Write the :func:`detectron2_dicts` as a json list to ``out``."""
    result = ExportResult("detectron2", Path(out))
    ok, failed = split_failed(records)
    dicts = detectron2_dicts(records, root, with_score)
    result.files.append(write_text_file(Path(out), json.dumps(dicts) + "\n"))
    result.images = len(ok)
    result.boxes = sum(len(d["annotations"]) for d in dicts)
    write_failed_list(result, failed)
    return result
