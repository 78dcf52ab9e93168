"""Readers: label and prediction files back to lostreg boxes, and eval run directories.

Label readers return boxes as ``(x1, y1, x2, y2)`` pixels, 0-based, max exclusive
(:mod:`lostreg.boxes`), with the score a file gives (None where it gives none): integers for
lostreg's own exports, so an export read back compares with ``preds.jsonl`` to the pixel; real
numbers where a file has them (a detector's predictions, read by ``lostreg score``).

* YOLO: :func:`read_yolo_txt` (``class cx cy w h [conf]``), :func:`yolo_label_files` (a folder).
* VOC: :func:`read_voc_xml` (``<score>`` when written with ``--with-score``).
* COCO: :func:`read_coco_json`, instances (``images`` + ``annotations``, ``score`` optional) or a
  results list (``image_id``, ``bbox``, ``score``).
* detectron2: :func:`read_detectron2_file`, dataset dicts (``annotations`` with ``bbox_mode``
  0 = XYXY_ABS or 1 = XYWH_ABS) or instance predictions (``instances``: COCO-style ``bbox``
  and ``score``, what detectron2's COCOEvaluator saves), as JSON or as the ``.pth`` it writes.

Run directories are read through :mod:`lostreg.rundir`, never modified (``lostreg eval`` may
still be writing them).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lostreg.boxes import voc_to_xyxy, xywh_to_xyxy_real
from lostreg.datasets.registry import kind_of
from lostreg.evaluation.ap import image_order_key
from lostreg.rundir import RunDir, RunNotFoundError

__all__ = [
    "ImageLabels",
    "LabelBox",
    "RunNotFoundError",
    "VocLabels",
    "coco_labels",
    "default_root",
    "detectron2_labels",
    "load_json",
    "parse_yolo_line",
    "read_coco_json",
    "read_detectron2_file",
    "read_run_config",
    "read_run_predictions",
    "read_voc_xml",
    "read_yolo_txt",
    "yolo_label_files",
]

Box = tuple[int, int, int, int]
#: A box of real numbers (a detector's), same convention.
RealBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelBox:
    """One labelled box: class (YOLO index, VOC name, COCO / detectron2 category id), ``(x1, y1, x2, y2)``
    pixels, max exclusive, and its score (None when the file gives none)."""

    label: int | str
    box_xyxy: Box | RealBox
    score: float | None = None


@dataclass(frozen=True)
class ImageLabels:
    """The boxes a COCO or detectron2 file gives one image.

    Attributes:
        image_id: the id the file gives the image (COCO ``id`` / ``image_id``, detectron2
            ``image_id``), as text; None when it gives none.
        file_name: the image's file name or path as the file gives it; None for COCO results.
        boxes: its boxes, in file order.
        lostreg_image_id: the run's image id, in lostreg's own COCO exports; else None.
    """

    image_id: str | None
    file_name: str | None
    boxes: tuple[LabelBox, ...]
    lostreg_image_id: str | None = None


@dataclass(frozen=True)
class VocLabels:
    """A VOC annotation file: ``filename``, ``path`` (None if absent), image size, objects."""

    filename: str
    path: str | None
    width: int
    height: int
    objects: tuple[LabelBox, ...]


def parse_yolo_line(line: str, width: int, height: int, rounded: bool = True) -> LabelBox:
    """One YOLO line ``class cx cy w h`` (normalised), or ``class cx cy w h conf`` (Ultralytics'
    predictions with ``save_conf``; lostreg's export with ``--with-score``), back to a pixel box.

    ``x1 = round((cx - w / 2) * W)``, ``x2 = round((cx + w / 2) * W)`` (y likewise with H):
    the inverse of :func:`lostreg.export.formats.yolo_line`, exact to the pixel for what
    it writes. With ``rounded=False`` the corners stay real numbers (a detector's boxes).

    Raises:
        ValueError: not 5 or 6 fields, or a normalised value outside [0, 1].
    """
    fields = line.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"expected 'class cx cy w h' or 'class cx cy w h conf', got {line!r}")
    cx, cy, w, h = (float(v) for v in fields[1:5])
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
        raise ValueError(f"YOLO values must be normalised to [0, 1], got {line!r}")
    corners = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    box = tuple(round(v) for v in corners) if rounded else corners
    score = float(fields[5]) if len(fields) == 6 else None
    return LabelBox(int(float(fields[0])), box, score)  # type: ignore[arg-type]


def read_yolo_txt(path: str | os.PathLike[str], width: int, height: int, rounded: bool = True) -> list[LabelBox]:
    """Read a YOLO label file (one :func:`parse_yolo_line` per non-blank line).

    Args:
        path: ``labels/<stem>.txt``.
        width: Width W of the image the labels belong to (YOLO files do not store it).
        height: Height H.
        rounded: integer pixels (lostreg's exports); False keeps a detector's real corners.

    Raises:
        ValueError: a malformed line, with file and line number.
    """
    boxes = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            boxes.append(parse_yolo_line(line, width, height, rounded))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
    return boxes


def yolo_label_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """The YOLO label files of a folder by file stem: ``FOLDER/labels/*.txt`` when that exists (a
    lostreg export, Ultralytics' ``runs/detect/predict``), else ``FOLDER/*.txt``.

    Raises:
        ValueError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    where = folder / "labels" if (folder / "labels").is_dir() else folder
    return {path.stem: path for path in sorted(where.glob("*.txt")) if path.name != "images.txt"}


def _number(value: Any, where: str) -> int | float:
    """An int kept int (lostreg's exports), another real number as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return value if isinstance(value, int) else float(value)


def _box_from_xywh(bbox: Any, where: str) -> Box | RealBox:
    """A COCO ``[x, y, w, h]`` to xyxy: integers when the file has integers, else real numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (_number(v, where) for v in bbox)
    if all(isinstance(v, int) for v in (x, y, w, h)):
        if w < 0 or h < 0:
            raise ValueError(f"{where}: negative width or height in {bbox!r}")
        return x, y, x + w, y + h  # type: ignore[return-value]
    try:
        return xywh_to_xyxy_real((x, y, w, h))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _box_xyxy(bbox: Any, where: str) -> Box | RealBox:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: bbox must be [x1, y1, x2, y2], got {bbox!r}")
    x1, y1, x2, y2 = (_number(v, where) for v in bbox)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where}: bbox must have x1 <= x2 and y1 <= y2, got {bbox!r}")
    return x1, y1, x2, y2  # type: ignore[return-value]


def _score(entry: Mapping[str, Any], where: str) -> float | None:
    if "score" not in entry or entry["score"] is None:
        return None
    return float(_number(entry["score"], where))


def load_json(path: Path) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None


def read_coco_json(path: str | os.PathLike[str]) -> list[ImageLabels]:
    """Read a COCO instances file (``images``, ``annotations``; a ``score`` per annotation is kept) or a
    COCO results list (``image_id``, ``bbox``, ``score``), class-agnostic (categories are kept as labels).

    Boxes are ``[x, y, w, h]`` in the file and ``(x, y, x + w, y + h)`` here, not rounded; crowd
    annotations (``iscrowd: 1``) are left out. Images of an instances file without annotations come
    with no box; a results list names only images with boxes (and no file names).

    Raises:
        ValueError: not a COCO instances dict nor a results list, or a malformed entry (named).
    """
    path = Path(path)
    return coco_labels(load_json(path), str(path))


def coco_labels(data: Any, where: str) -> list[ImageLabels]:
    """:func:`read_coco_json` on already parsed JSON (``where`` names it in errors)."""
    path = where
    images: dict[str, ImageLabels] = {}
    boxes: dict[str, list[LabelBox]] = {}
    if isinstance(data, dict) and "annotations" in data:
        for number, image in enumerate(data.get("images") or []):
            if not isinstance(image, dict) or "id" not in image:
                raise ValueError(f"{path}: image {number} needs an id")
            key = str(image["id"])
            lostreg_id = image.get("lostreg_image_id")
            images[key] = ImageLabels(key, image.get("file_name"), (), None if lostreg_id is None else str(lostreg_id))
            boxes[key] = []
        entries = data["annotations"]
    elif isinstance(data, list):
        entries = data
    else:
        raise ValueError(f"{path}: neither COCO instances (images, annotations) nor a COCO results list")
    for number, entry in enumerate(entries):
        where = f"{path}: entry {number}"
        if not isinstance(entry, dict) or "image_id" not in entry or "bbox" not in entry:
            raise ValueError(f"{where}: needs image_id and bbox")
        if entry.get("iscrowd"):
            continue
        key = str(entry["image_id"])
        if key not in images:
            images[key] = ImageLabels(key, None, ())
            boxes[key] = []
        boxes[key].append(LabelBox(entry.get("category_id", 1), _box_from_xywh(entry["bbox"], where),
                                   _score(entry, where)))
    return [ImageLabels(im.image_id, im.file_name, tuple(boxes[key]), im.lostreg_image_id)
            for key, im in images.items()]


_XYXY_ABS, _XYWH_ABS = 0, 1  # detectron2's BoxMode values


def _entry(value: Any, where: str) -> Mapping[str, Any]:
    """A box entry: a dict with a ``bbox``."""
    if not isinstance(value, dict) or "bbox" not in value:
        raise ValueError(f"{where}: needs a bbox")
    return value


def read_detectron2_file(path: str | os.PathLike[str]) -> list[ImageLabels]:
    """Read detectron2 dataset dicts (``file_name``, ``image_id``, ``annotations`` with ``bbox`` and
    ``bbox_mode`` 0 or 1, ``score`` optional) or instance predictions (``image_id``, ``instances``:
    ``bbox`` ``[x, y, w, h]``, ``score``: what COCOEvaluator saves as ``instances_predictions.pth``),
    from JSON or from a ``.pth`` (read with ``torch.load(weights_only=True)``: plain data only).

    Raises:
        ValueError: not such a list, an unknown ``bbox_mode``, or a malformed entry (named).
    """
    path = Path(path)
    if path.suffix == ".pth":
        import torch  # only for detectron2's own prediction files

        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle torch refuses: say which file, keep the reason
            raise ValueError(f"{path}: not a detectron2 predictions file torch can read as plain data ({err})") \
                from None
    else:
        data = load_json(path)
    return detectron2_labels(data, str(path))


def detectron2_labels(data: Any, where: str) -> list[ImageLabels]:
    """:func:`read_detectron2_file` on already loaded data (``where`` names it in errors)."""
    path = where
    if not isinstance(data, list):
        raise ValueError(f"{path}: a detectron2 file is a list of per-image dicts")
    out = []
    for number, entry in enumerate(data):
        where = f"{path}: image {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: not a dict")
        image_id = None if entry.get("image_id") is None else str(entry["image_id"])
        found = []
        if "instances" in entry:
            for k, inst in enumerate(entry["instances"] or []):
                inst = _entry(inst, f"{where}, instance {k}")
                found.append(LabelBox(inst.get("category_id", 0), _box_from_xywh(inst["bbox"], f"{where}, instance {k}"),
                                      _score(inst, where)))
        elif "annotations" in entry:
            for k, ann in enumerate(entry["annotations"] or []):
                ann = _entry(ann, f"{where}, annotation {k}")
                mode = ann.get("bbox_mode", _XYXY_ABS)
                mode = getattr(mode, "value", mode)  # a BoxMode enum in a .pth
                if mode == _XYXY_ABS:
                    box = _box_xyxy(ann["bbox"], f"{where}, annotation {k}")
                elif mode == _XYWH_ABS:
                    box = _box_from_xywh(ann["bbox"], f"{where}, annotation {k}")
                else:
                    raise ValueError(f"{where}, annotation {k}: bbox_mode {mode!r} is not XYXY_ABS (0) or XYWH_ABS (1)")
                found.append(LabelBox(ann.get("category_id", 0), box, _score(ann, where)))
        else:
            raise ValueError(f"{where}: needs 'instances' (predictions) or 'annotations' (dataset dicts)")
        out.append(ImageLabels(image_id, entry.get("file_name"), tuple(found)))
    return out


def _text(elem: ET.Element | None, tag: str, where: Path) -> str:
    child = None if elem is None else elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing <{tag}>")
    return child.text.strip()


def read_voc_xml(path: str | os.PathLike[str]) -> VocLabels:
    """Read a VOC annotation: 1-based inclusive corners back to 0-based max-exclusive boxes.

    Uses :func:`lostreg.boxes.voc_to_xyxy`, which refuses non-integer corners rather than
    truncate them.

    Raises:
        ValueError: missing fields or non-integer values.
        xml.etree.ElementTree.ParseError: not XML.
    """
    where = Path(path)
    root = ET.parse(where).getroot()
    size = root.find("size")
    path_el = root.find("path")
    objects = []
    for obj in root.findall("object"):
        bndbox = obj.find("bndbox")
        corners = [_text(bndbox, t, where) for t in ("xmin", "ymin", "xmax", "ymax")]
        score = float(_text(obj, "score", where)) if obj.find("score") is not None else None
        objects.append(LabelBox(_text(obj, "name", where), voc_to_xyxy(*corners), score))
    return VocLabels(
        filename=_text(root, "filename", where),
        path=path_el.text.strip() if path_el is not None and path_el.text else None,
        width=int(_text(size, "width", where)),
        height=int(_text(size, "height", where)),
        objects=tuple(objects),
    )


def read_run_predictions(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/preds.jsonl``, sorted by image id (:func:`image_order_key`).

    Read-only, through :class:`lostreg.rundir.RunDir`: a last line cut short by a kill (no
    newline) is ignored, not truncated; the first record of an image id wins, as in the runner.

    Raises:
        RunNotFoundError: no ``preds.jsonl``.
        RunError: a corrupt complete line.
    """
    records = RunDir(run_dir).read_predictions()
    return sorted(records.values(), key=lambda r: image_order_key(r["image_id"]))


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run's ``config.yaml`` as plain data (None when absent)."""
    run = RunDir(run_dir)
    return run.read_config() if run.has_config() else None


def default_root(cfg: Mapping[str, Any] | None) -> Path | None:
    """The folder export paths are relative to by default: the run's dataset root.

    The setting its dataset kind keeps the images in (:meth:`~lostreg.datasets.registry.DatasetKind.image_root`):
    ``dataset.image_dir`` for ``coco``, ``dataset.root`` for ``voc07``, ``voc12``, ``coco20k`` and
    ``folder`` (its parent when the folder dataset was one image file). None when unknown (then
    paths are written absolute).
    """
    dataset = (cfg or {}).get("dataset")
    if not isinstance(dataset, Mapping):
        return None
    value = kind_of(dataset).image_root(dataset)
    if value is None:
        return None
    root = Path(os.path.expanduser(str(value)))
    return root.parent if root.is_file() else root
