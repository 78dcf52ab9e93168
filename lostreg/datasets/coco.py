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
from typing import TYPE_CHECKING, Any

import numpy as np

from lostreg.boxes import coco_xywh_to_xyxy
from lostreg.datasets.base import (
    AnnotationError,
    DatasetLayoutError,
    DatasetProblem,
    ImageDataset,
    ImageRecord,
    describe_layout,
)

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


def _entry_error(origin: str, layout: str, reason: str) -> AnnotationError:
    return AnnotationError(f"malformed COCO annotation file {origin}: {reason}", describe_layout(layout),
                           "malformed annotation", Path(origin), reason)


def _screen(
    data: dict[str, Any], origin: str, layout: str, strict: bool
) -> tuple[dict[str, Any], list[DatasetProblem]]:
    """Keep the entries pycocotools can index (an ``id`` on every image, category and annotation;
    an ``image_id`` and, when the file has ``categories``, a ``category_id`` on every annotation).

    Strict: raise :class:`AnnotationError` on the first entry without them. Otherwise leave
    those entries out and return one problem each. ``data`` is returned as is when nothing
    is wrong (no copy of a large file).
    """
    problems: list[DatasetProblem] = []

    def bad(reason: str) -> None:
        err = _entry_error(origin, layout, reason)
        if strict:
            raise err
        problems.append(err.problem())

    def keep(section: str, required: tuple[str, ...]) -> list[Any] | None:
        entries = data.get(section) or []
        kept = []
        for i, entry in enumerate(entries):
            absent = [key for key in required if not isinstance(entry, dict) or key not in entry]
            if absent:
                bad(f"{section}[{i}] has no {' / '.join(repr(k) for k in absent)}")
            else:
                kept.append(entry)
        return None if len(kept) == len(entries) else kept

    cats = keep("categories", ("id",))
    images = keep("images", ("id",))
    # pycocotools reads category_id whenever the file has a "categories" key, even an empty list.
    anns = keep("annotations", ("id", "image_id", "category_id") if "categories" in data else ("id", "image_id"))
    if cats is None and images is None and anns is None:
        return data, problems
    screened = dict(data)
    for section, kept in (("categories", cats), ("images", images), ("annotations", anns)):
        if kept is not None:
            screened[section] = kept
    return screened, problems


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
        strict: Raise on the first malformed entry (an image without ``file_name`` or with a
            non-integer size, an annotation without ``id`` or with a bbox that is not four
            numbers), as ``lostreg eval`` does. With ``False`` (``lostreg data check``), a bad
            image entry is left out, a bad annotation is dropped from its image's ground
            truth, and each problem is recorded in :attr:`problems`.

    Raises:
        DatasetLayoutError: missing or malformed json, or ``image_dir`` not a folder; when
            ``strict``, a malformed entry (:class:`AnnotationError`).
        KeyError: an id of ``image_ids`` is not in the json.
    """

    def __init__(
        self,
        annotation_json: str | Path | dict[str, Any],
        image_dir: str | Path,
        image_ids: list[int | str] | None = None,
        *,
        strict: bool = True,
        name: str = "COCO",
        _layout: str = "coco",
        _origin: str | Path | None = None,
    ) -> None:
        if isinstance(annotation_json, dict):
            data = annotation_json
            self.annotation_json: Path | None = None
        else:
            self.annotation_json = Path(annotation_json).expanduser()
            data = load_coco_json(self.annotation_json, _layout)
        # The file named in messages: the json, or the file a loaded dict came from (COCO20k's subset).
        origin = str(_origin or self.annotation_json or "<COCO annotation dict>")
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise DatasetLayoutError(f"missing COCO image folder {self.image_dir}", describe_layout(_layout))
        data, problems = _screen(data, origin, _layout, strict)
        coco = _coco_index(data)
        self.coco = coco

        def bad(reason: str, image_id: str | None = None, skipped: bool = False) -> None:
            err = _entry_error(origin, _layout, reason)
            if strict:
                raise err
            problems.append(err.problem(image_id, skipped))

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
            file_name = info.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                bad(f"image {img_id} has no 'file_name'", str(img_id), skipped=True)
                continue
            try:
                size = [None if info.get(k) is None else _integer(info[k]) for k in ("width", "height")]
            except ValueError:
                bad(f"image {img_id}: width / height {info.get('width')!r} x {info.get('height')!r} "
                    "are not integers", str(img_id), skipped=True)
                continue
            boxes, labels = [], []
            for ann in coco.imgToAnns.get(img_id, []):
                if ann.get("iscrowd", 0) == 1:
                    continue
                try:
                    boxes.append(coco_xywh_to_xyxy(ann["bbox"]))
                except (KeyError, TypeError, ValueError, OverflowError):
                    bad(f"annotation {ann['id']} (image {img_id}): bbox {ann.get('bbox')!r} is not "
                        "[x, y, w, h] numbers", str(img_id))
                    continue
                labels.append(cat_names.get(ann.get("category_id"), str(ann.get("category_id", ""))))
            records.append(
                ImageRecord(
                    image_id=str(img_id),
                    path=self.image_dir / file_name,
                    width=size[0],
                    height=size[1],
                    gt_boxes_xyxy=np.array(boxes, dtype=np.int64).reshape(-1, 4),
                    gt_labels=tuple(labels),
                )
            )
        super().__init__(records, name=name, problems=problems)


def _integer(value: Any) -> int:
    """``int(value)`` (as the reader always took sizes); ValueError when that fails."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(value) from None
