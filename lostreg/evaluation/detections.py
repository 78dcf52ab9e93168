"""A detector's predictions, read and matched to the images of a dataset (for ``lostreg score``).

Three formats, read with :mod:`lostreg.export.readers` (the same readers that read lostreg's
own exports back):

* ``coco``: a COCO results list (``image_id``, ``bbox`` ``[x, y, w, h]``, ``score``), what
  detectron2's COCOEvaluator (``coco_instances_results.json``), MMDetection's ``format_only``
  and the LOST authors' CorLoc script use; or COCO instances with a ``score`` per annotation.
* ``yolo``: a folder of ``<stem>.txt`` files, ``class cx cy w h conf`` per line (Ultralytics'
  ``predict save_txt=True save_conf=True`` writes ``labels/`` this way), normalised by each
  image's size.
* ``detectron2``: instance predictions (``instances_predictions.pth`` of COCOEvaluator, or the
  same list as JSON) or dataset dicts with boxes (``bbox_mode`` 0 or 1) and ``score``.

Matching (:func:`match_predictions`). A prediction names its image by file name (COCO instances
and detectron2 dicts: ``file_name``; YOLO: the file's stem) or by id (COCO ``image_id``,
detectron2 ``image_id``). An image of the dataset is found, in this order, by lostreg's own id
(``lostreg_image_id`` of lostreg's COCO exports), by file name (the base name, then the stem),
then by id: equal as text, or equal as numbers (VOC2007's ``000005`` is COCO's ``5``). Ids that a
results file numbers itself (lostreg's COCO export of a dataset whose ids are not numbers, such
as VOC2012) are mapped to file names by the COCO instances file that defines them
(``coco_images``). Images without a prediction count as misses; a prediction that names no image
of the dataset is an error that lists a few of them, as is a name two images share.

Boxes stay as the file gives them, in pixels of the original image, ``(x1, y1, x2, y2)``, max
exclusive, real numbers (not rounded: the reference's CorLoc evaluation of LOST+CAD uses the
detector's float boxes as they are).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lostreg.datasets.base import ImageDataset, ImageRecord
from lostreg.errors import LostregError
from lostreg.export.readers import (
    ImageLabels,
    LabelBox,
    coco_labels,
    detectron2_labels,
    load_json,
    read_coco_json,
    read_yolo_txt,
    yolo_label_files,
)

__all__ = ["PREDICTION_FORMATS", "Detection", "PredictionsError", "guess_format", "match_predictions",
           "read_predictions"]

#: What ``lostreg score`` reads (``--format``; guessed from the path when not given).
PREDICTION_FORMATS: tuple[str, ...] = ("coco", "yolo", "detectron2")
_SHOWN = 3  # names listed in an error


class PredictionsError(LostregError, ValueError):
    """Predictions that cannot be read or matched to the dataset; ``str(err)`` is one line."""


@dataclass(frozen=True)
class Detection:
    """One predicted box: ``(x1, y1, x2, y2)`` pixels of the original image, max exclusive, and its score
    (None when the file gives none)."""

    box_xyxy: tuple[float, float, float, float]
    score: float | None


def guess_format(path: str | os.PathLike[str], data: Any = None) -> str:
    """The format of ``path``: a folder is ``yolo``, a ``.pth`` is ``detectron2``; a JSON list of per-image
    dicts (``instances`` or ``annotations``) is ``detectron2``, any other JSON is ``coco``.

    Args:
        path: the predictions.
        data: the parsed JSON of ``path``, when already read.
    """
    path = Path(path)
    if path.is_dir():
        return "yolo"
    if path.suffix == ".pth":
        return "detectron2"
    if isinstance(data, list) and data and isinstance(data[0], dict) and ("instances" in data[0]
                                                                           or "annotations" in data[0]):
        return "detectron2"
    return "coco"


class _ImageIndex:
    """The dataset's images by lostreg id, by number, by file name and by stem."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.by_id = {str(r.image_id): r for r in records}
        self.by_number: dict[int, ImageRecord] = {}
        self.by_name: dict[str, list[ImageRecord]] = {}
        self.by_stem: dict[str, list[ImageRecord]] = {}
        for record in records:
            text = str(record.image_id)
            if text.isdigit():
                self.by_number.setdefault(int(text), record)
            path = Path(str(record.path))
            self.by_name.setdefault(path.name, []).append(record)
            self.by_stem.setdefault(path.stem, []).append(record)

    def by_file(self, name: str) -> ImageRecord | None:
        """The image a file name or path names (base name first, then stem).

        Raises:
            PredictionsError: two images of the dataset share that name.
        """
        base = Path(name.replace("\\", "/")).name
        for table, key in ((self.by_name, base), (self.by_stem, Path(base).stem)):
            found = table.get(key) or []
            if len(found) > 1:
                raise PredictionsError(f"predictions name {name!r}, which {len(found)} images of the dataset share "
                                       f"({', '.join(str(r.path) for r in found[:_SHOWN])}): cannot tell them apart")
            if found:
                return found[0]
        return None

    def by_image_id(self, image_id: str) -> ImageRecord | None:
        """The image of an id: equal as text, else as numbers."""
        if image_id in self.by_id:
            return self.by_id[image_id]
        text = image_id.strip()
        return self.by_number.get(int(text)) if text.isdigit() else None


def _detections(boxes: Iterable[LabelBox]) -> list[Detection]:
    return [Detection(tuple(float(v) for v in b.box_xyxy), b.score) for b in boxes]  # type: ignore[arg-type]


def _unknown(names: list[str], dataset: str, hint: str = "") -> PredictionsError:
    shown = ", ".join(repr(n) for n in names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN
                                                           else "")
    return PredictionsError(f"predictions for {len(names)} image{'s' if len(names) != 1 else ''} that "
                            f"{'are' if len(names) != 1 else 'is'} not in dataset {dataset}: {shown}{hint}")


def match_predictions(labels: Sequence[ImageLabels], records: Sequence[ImageRecord], dataset: str,
                      coco_images: Sequence[ImageLabels] = ()) -> dict[str, list[Detection]]:
    """The predictions of each dataset image, by its ``image_id`` (file order within an image).

    Args:
        labels: what a COCO or detectron2 file gives, per image it names.
        records: the dataset's images.
        dataset: its name, for messages.
        coco_images: the ``images`` of a COCO instances file that numbers the images of ``labels``
            (``--coco-images``): its ids are mapped to its file names (or ``lostreg_image_id``).

    Raises:
        PredictionsError: predictions for images not in the dataset (a few are listed), or a name
            two images share.
    """
    index = _ImageIndex(records)
    numbered = {im.image_id: im for im in coco_images if im.image_id is not None}
    out: dict[str, list[Detection]] = {}
    unknown: list[str] = []
    for item in labels:
        named = numbered.get(item.image_id) if item.image_id is not None else None
        record = None
        for source in (item, named):
            if source is None or record is not None:
                continue
            if source.lostreg_image_id is not None:
                record = index.by_id.get(source.lostreg_image_id)
            if record is None and source.file_name:
                record = index.by_file(source.file_name)
        if record is None and named is None and item.image_id is not None:
            record = index.by_image_id(item.image_id)
        if record is None:
            unknown.append(item.file_name or str(item.image_id))
            continue
        out.setdefault(str(record.image_id), []).extend(_detections(item.boxes))
    if unknown:
        hint = ("; if the file numbers the images itself, pass --coco-images with the COCO file that defines those "
                "ids (e.g. the lostreg export the detector was trained on)") if not coco_images else ""
        raise _unknown(unknown, dataset, hint)
    return out


def _yolo_predictions(folder: Path, records: Sequence[ImageRecord], dataset: str) -> dict[str, list[Detection]]:
    index = _ImageIndex(records)
    out: dict[str, list[Detection]] = {}
    unknown: list[str] = []
    for stem, path in yolo_label_files(folder).items():
        record = index.by_file(stem)
        if record is None:
            unknown.append(path.name)
            continue
        if not record.width or not record.height:
            raise PredictionsError(f"{path}: YOLO boxes are normalised, and dataset {dataset} gives no size for "
                                   f"{record.path}")
        try:
            boxes = read_yolo_txt(path, record.width, record.height, rounded=False)
        except ValueError as err:
            raise PredictionsError(str(err)) from None
        out[str(record.image_id)] = _detections(boxes)
    if unknown:
        raise _unknown(unknown, dataset)
    return out


def read_predictions(path: str | os.PathLike[str], dataset: ImageDataset, fmt: str | None = None,
                     coco_images: str | os.PathLike[str] | None = None) -> tuple[str, dict[str, list[Detection]]]:
    """Read a detector's predictions and match them to ``dataset``'s images.

    Args:
        path: a COCO or detectron2 file, or a folder of YOLO files.
        dataset: the images (and their sizes, for YOLO).
        fmt: one of :data:`PREDICTION_FORMATS`; None: :func:`guess_format`.
        coco_images: a COCO instances file whose ``images`` define the ids of a results file.

    Returns:
        ``(format, {image_id: detections})``; images without a prediction are absent.

    Raises:
        PredictionsError: a missing or unreadable file, a format that does not fit, unmatched
            predictions.
    """
    path = Path(path)
    if not path.exists():
        raise PredictionsError(f"{path}: no such file or folder")
    if fmt is not None and fmt not in PREDICTION_FORMATS:
        raise PredictionsError(f"--format must be one of {', '.join(PREDICTION_FORMATS)}; got {fmt!r}")
    records = list(dataset)
    name = str(getattr(dataset, "name", "")) or "(this dataset)"
    try:
        if path.is_dir() or fmt == "yolo":
            if not path.is_dir():
                raise PredictionsError(f"{path}: --format yolo reads a folder of .txt files")
            if coco_images is not None:
                raise PredictionsError("--coco-images goes with COCO results, not with a YOLO folder")
            return "yolo", _yolo_predictions(path, records, name)
        if path.suffix == ".pth":
            from lostreg.export.readers import read_detectron2_file

            data, fmt = None, fmt or "detectron2"
            labels = read_detectron2_file(path)
        else:
            data = load_json(path)
            fmt = fmt or guess_format(path, data)
            labels = detectron2_labels(data, str(path)) if fmt == "detectron2" else coco_labels(data, str(path))
        numbered = read_coco_json(coco_images) if coco_images is not None else []
    except ValueError as err:  # a malformed file: the readers name it and the entry
        raise PredictionsError(f"{err}" if str(path) in str(err) else f"{path}: {err}") from None
    except OSError as err:
        raise PredictionsError(f"{err.filename or path}: {err.strerror or err}") from None
    return fmt, match_predictions(labels, records, name, numbered)


def detection_counts(matched: Mapping[str, Sequence[Detection]]) -> dict[str, int]:
    """``images_with_predictions`` and ``detections`` of matched predictions."""
    return {"images_with_predictions": sum(1 for d in matched.values() if d),
            "detections": sum(len(d) for d in matched.values())}


__all__ += ["detection_counts"]
