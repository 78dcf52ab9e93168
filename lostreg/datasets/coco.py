"""COCO-format datasets: any instances json with its image folder (spec section 4).

COCO boxes are float ``[x, y, w, h]``; they become ``[round(x), round(y), round(x + w),
round(y + h)]`` with Python's banker's rounding (:func:`lostreg.boxes.coco_xywh_to_xyxy`),
the reference's rule. Crowd annotations (``iscrowd == 1``) never become ground truth.
The COCO20k subset of the LOST papers is :mod:`lostreg.datasets.coco20k`.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np

from lostreg.boxes import coco_xywh_to_xyxy
from lostreg.datasets.base import DatasetLayoutError, ImageDataset, ImageRecord, describe_layout

if TYPE_CHECKING:  # pragma: no cover
    from pycocotools.coco import COCO

__all__ = ["CocoDataset", "load_coco_json"]


# ---------------------------------------------------------------------------- COCO json


def load_coco_json(path: Path, layout: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetLayoutError(f"missing COCO annotation file {path}", describe_layout(layout)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"malformed COCO annotation file {path}: {exc}", describe_layout(layout)) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetLayoutError(
            f"malformed COCO annotation file {path}: no 'images' list", describe_layout(layout)
        )
    if not isinstance(data.get("annotations", []), list):
        raise DatasetLayoutError(
            f"malformed COCO annotation file {path}: 'annotations' is not a list", describe_layout(layout)
        )
    return data


def _coco_index(data: dict[str, Any]) -> "COCO":
    from pycocotools.coco import COCO  # imported on use: listing commands must stay light

    coco = COCO()
    coco.dataset = data
    # pycocotools prints progress to stdout; lostreg keeps stdout for results.
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDataset(ImageDataset):
    """Images and ground truth of any COCO-format instances file.

    Ground truth: every annotation with ``iscrowd`` != 1 (absent counts as 0), box
    ``[round(x), round(y), round(x + w), round(y + h)]`` (banker's rounding), int64.
    Images with no non-crowd annotation are still listed, with ``(0, 4)`` ground truth:
    CorLoc counts them as misses. (The reference never meets such an image in its
    splits; its IoU call would fail on an empty box array rather than skip it.)

    Order: ``image_ids`` as given, else ascending COCO id (torchvision's CocoDetection
    order, which the reference iterates).

    Args:
        annotation_json: Path of the json, or an already-loaded COCO dict.
        image_dir: Folder holding each ``images[i].file_name``.
        image_ids: Subset of COCO image ids (ints or numeric strings) to keep.

    Raises:
        DatasetLayoutError: missing or malformed json, or ``image_dir`` not a folder.
        KeyError: an id of ``image_ids`` is not in the json.
    """

    def __init__(
        self,
        annotation_json: str | Path | dict[str, Any],
        image_dir: str | Path,
        image_ids: list[int | str] | None = None,
        *,
        name: str = "COCO",
        _layout: str = "coco",
    ) -> None:
        if isinstance(annotation_json, dict):
            data = annotation_json
            self.annotation_json: Path | None = None
        else:
            self.annotation_json = Path(annotation_json).expanduser()
            data = load_coco_json(self.annotation_json, _layout)
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise DatasetLayoutError(f"missing COCO image folder {self.image_dir}", describe_layout(_layout))
        coco = _coco_index(data)
        self.coco = coco

        if image_ids is None:
            ids = sorted(coco.imgs)
        else:
            ids = [int(i) for i in image_ids]
            missing = [i for i in ids if i not in coco.imgs]
            if missing:
                raise KeyError(f"{len(missing)} image ids not in the annotation file, e.g. {missing[:5]}")

        cat_names = {cid: str(c.get("name", cid)) for cid, c in coco.cats.items()}
        records = []
        for img_id in ids:
            info = coco.imgs[img_id]
            boxes, labels = [], []
            for ann in coco.imgToAnns.get(img_id, []):
                if ann.get("iscrowd", 0) == 1:
                    continue
                boxes.append(coco_xywh_to_xyxy(ann["bbox"]))
                labels.append(cat_names.get(ann.get("category_id"), str(ann.get("category_id", ""))))
            records.append(
                ImageRecord(
                    image_id=str(img_id),
                    path=self.image_dir / info["file_name"],
                    width=int(info["width"]) if "width" in info else None,
                    height=int(info["height"]) if "height" in info else None,
                    gt_boxes_xyxy=np.array(boxes, dtype=np.int64).reshape(-1, 4),
                    gt_labels=tuple(labels),
                )
            )
        super().__init__(records, name=name)
