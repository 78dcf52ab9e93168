"""Readers: exported label files back to lostreg boxes, and eval run directories.

Label readers return boxes as ``(x1, y1, x2, y2)`` integer pixels, 0-based, max exclusive
(:mod:`lostreg.boxes`), so an export read back compares with ``preds.jsonl`` to the pixel.
Run directories are read through :mod:`lostreg.rundir`, never modified (``lostreg eval`` may
still be writing them).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lostreg.boxes import voc_to_xyxy
from lostreg.datasets.registry import kind_of
from lostreg.evaluation.ap import image_order_key
from lostreg.rundir import RunDir, RunNotFoundError

__all__ = [
    "LabelBox",
    "RunNotFoundError",
    "VocLabels",
    "default_root",
    "parse_yolo_line",
    "read_run_config",
    "read_run_predictions",
    "read_voc_xml",
    "read_yolo_txt",
]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class LabelBox:
    """One labelled box: class (YOLO index or VOC name) and ``(x1, y1, x2, y2)`` pixels, max exclusive."""

    label: int | str
    box_xyxy: Box


@dataclass(frozen=True)
class VocLabels:
    """A VOC annotation file: ``filename``, ``path`` (None if absent), image size, objects."""

    filename: str
    path: str | None
    width: int
    height: int
    objects: tuple[LabelBox, ...]


def parse_yolo_line(line: str, width: int, height: int) -> LabelBox:
    """One YOLO line ``class cx cy w h`` (normalised) back to a pixel box.

    ``x1 = round((cx - w / 2) * W)``, ``x2 = round((cx + w / 2) * W)`` (y likewise with H):
    the inverse of :func:`lostreg.export.formats.yolo_line`, exact to the pixel for what
    it writes.

    Raises:
        ValueError: not 5 fields, or a normalised value outside [0, 1].
    """
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"expected 'class cx cy w h', got {line!r}")
    cx, cy, w, h = (float(v) for v in fields[1:])
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
        raise ValueError(f"YOLO values must be normalised to [0, 1], got {line!r}")
    box = (
        round((cx - w / 2) * width), round((cy - h / 2) * height),
        round((cx + w / 2) * width), round((cy + h / 2) * height),
    )
    return LabelBox(int(fields[0]), box)


def read_yolo_txt(path: str | os.PathLike[str], width: int, height: int) -> list[LabelBox]:
    """Read a YOLO label file (one :func:`parse_yolo_line` per non-blank line).

    Args:
        path: ``labels/<stem>.txt``.
        width: Width W of the image the labels belong to (YOLO files do not store it).
        height: Height H.

    Raises:
        ValueError: a malformed line, with file and line number.
    """
    boxes = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            boxes.append(parse_yolo_line(line, width, height))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
    return boxes


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
        objects.append(LabelBox(_text(obj, "name", where), voc_to_xyxy(*corners)))
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
