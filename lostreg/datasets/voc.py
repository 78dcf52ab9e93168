"""PASCAL VOC 2007 / 2012 reader (ground truth for CorLoc, spec section 4).

VOC annotation corners are 1-based and inclusive (``xmin=1, xmax=W`` spans the whole
image). They are converted on read to lostreg's convention, 0-based with max exclusive:
``[xmin - 1, ymin - 1, xmax, ymax]`` (:func:`lostreg.boxes.voc_to_xyxy`).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lostreg.boxes import voc_to_xyxy
from lostreg.datasets.base import (
    AnnotationError,
    DatasetLayoutError,
    DatasetProblem,
    ImageDataset,
    ImageRecord,
    describe_layout,
)

__all__ = [
    "DEFAULT_VOC_SPLIT", "VOCDataset", "VocAnnotation", "VocObject", "parse_voc_xml", "resolve_voc_root"]

#: The split the papers report on (5011 VOC07 / 11540 VOC12 images).
DEFAULT_VOC_SPLIT = "trainval"

logger = logging.getLogger(__name__)

_YEARS = ("2007", "2012")


@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` of a VOC annotation.

    Attributes:
        name: Class name.
        box_xyxy: ``(x1, y1, x2, y2)`` ints, 0-based, max exclusive (already converted).
        difficult: ``<difficult>`` is 1 (absent counts as 0).
        truncated: ``<truncated>`` is 1 (absent counts as 0).
    """

    name: str
    box_xyxy: tuple[int, int, int, int]
    difficult: bool
    truncated: bool


@dataclass(frozen=True)
class VocAnnotation:
    """A parsed ``Annotations/<id>.xml``: image size and objects in file order."""

    width: int
    height: int
    objects: tuple[VocObject, ...]


def _layout_error(message: str, year: str | None = None) -> DatasetLayoutError:
    return DatasetLayoutError(message, describe_layout("voc12" if year == "2012" else "voc07"))


def _malformed(xml_path: Path, reason: str, year: str | None) -> AnnotationError:
    layout = describe_layout("voc12" if year == "2012" else "voc07")
    return AnnotationError(f"malformed VOC annotation {xml_path}: {reason}", layout, "malformed annotation",
                           xml_path, reason)


def _number(elem: ET.Element | None, tag: str, xml_path: Path, year: str | None) -> int:
    """Integer value of child ``tag``; VOC files sometimes write ``273.0``, so float first."""
    child = None if elem is None else elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise _malformed(xml_path, f"missing <{tag}>", year)
    try:
        return int(float(child.text.strip()))
    except ValueError:
        raise _malformed(xml_path, f"<{tag}> is {child.text.strip()!r}, not a number", year) from None


def _flag(elem: ET.Element, tag: str) -> bool:
    # Some VOC2012 objects omit <difficult>/<truncated>; the reference then never matches "1".
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return False
    try:
        return int(float(child.text.strip())) == 1
    except ValueError:
        return False


def parse_voc_xml(xml_path: str | Path, year: str | None = None) -> VocAnnotation:
    """Parse one VOC annotation file.

    Every ``<object>`` is kept (difficult and truncated included); only its direct
    ``<bndbox>`` is read, never the ``<part>`` boxes of VOC2012 person layouts.

    Args:
        xml_path: Path of ``Annotations/<id>.xml``.
        year: ``"2007"`` or ``"2012"``, only to show the right tree in errors.

    Returns:
        The image size and the objects with boxes in lostreg's convention.

    Raises:
        AnnotationError: (a :class:`DatasetLayoutError`) the file is missing, unreadable, is
            not XML, or lacks a size or box field.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        layout = describe_layout("voc12" if year == "2012" else "voc07")
        raise AnnotationError(f"missing VOC annotation {xml_path}", layout, "missing annotation", xml_path,
                              "no such file") from None
    except ET.ParseError as exc:
        raise _malformed(xml_path, str(exc), year) from None
    except OSError as exc:  # a folder of that name, no permission, an I/O error
        reason = f"cannot read ({exc.strerror or exc})"
        layout = describe_layout("voc12" if year == "2012" else "voc07")
        raise AnnotationError(f"unreadable VOC annotation {xml_path}: {reason}", layout, "unreadable annotation",
                              xml_path, reason) from None
    size = root.find("size")
    if size is None:
        raise _malformed(xml_path, "missing <size>", year)
    width = _number(size, "width", xml_path, year)
    height = _number(size, "height", xml_path, year)
    objects = []
    for obj in root.findall("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise _malformed(xml_path, "<object> without <bndbox>", year)
        corners = [_number(bndbox, t, xml_path, year) for t in ("xmin", "ymin", "xmax", "ymax")]
        box = voc_to_xyxy(*corners)
        name_el = obj.find("name")
        name = name_el.text.strip() if name_el is not None and name_el.text else ""
        objects.append(
            VocObject(
                name=name,
                box_xyxy=box,
                difficult=_flag(obj, "difficult"),
                truncated=_flag(obj, "truncated"),
            )
        )
    return VocAnnotation(width=width, height=height, objects=tuple(objects))


def resolve_voc_root(root: str | Path, year: str) -> Path:
    """Find the ``VOC<year>`` folder from any of the accepted roots.

    Accepted, in this order: ``<root>/VOCdevkit/VOC<year>`` (root contains VOCdevkit),
    ``<root>/VOC<year>`` (root is VOCdevkit), ``<root>`` itself (root is VOC<year>, i.e.
    it has ``ImageSets/`` or ``Annotations/``).

    Raises:
        DatasetLayoutError: none of them exists, or root is the folder of another year.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(f"VOC root {root} is not a directory", year)
    for cand in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}"):
        if cand.is_dir():
            return cand
    if (root / "ImageSets").is_dir() or (root / "Annotations").is_dir():
        other = next((y for y in _YEARS if y != year and root.name == f"VOC{y}"), None)
        if other is not None:
            raise _layout_error(f"VOC root {root} is the VOC{other} folder, but year {year} was asked", year)
        return root
    raise _layout_error(
        f"no VOC{year} folder under {root} (looked for {root / 'VOCdevkit' / f'VOC{year}'}, "
        f"{root / f'VOC{year}'}, and ImageSets/ or Annotations/ in {root} itself)",
        year,
    )


def _read_split(split_file: Path, year: str) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(split_file.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        # Class files (aeroplane_trainval.txt) carry a +-1 flag per id: not a plain image list.
        if len(tokens) != 1:
            raise _layout_error(
                f"malformed split file {split_file}:{lineno}: expected one image id per line, got {line.strip()!r}",
                year,
            )
        if tokens[0] in seen:
            raise _layout_error(f"malformed split file {split_file}:{lineno}: duplicate id {tokens[0]!r}", year)
        seen.add(tokens[0])
        ids.append(tokens[0])
    return ids


class VOCDataset(ImageDataset):
    """PASCAL VOC detection split as :class:`ImageRecord` items.

    Images come in the order of ``ImageSets/Main/<split>.txt``. Annotations are parsed
    eagerly in ``__init__`` (VOC12 trainval, 11540 files: about a second), so a
    malformed file fails before any model runs.

    Ground truth: every ``<object>`` by default, difficult and truncated included (the
    paper's "VOC_all"), box ``[xmin - 1, ymin - 1, xmax, ymax]``. With ``no_hard=True``,
    objects with difficult == 1 or truncated == 1 are dropped and images left with none
    are skipped (not listed at all, so they are not in the CorLoc denominator).

    Args:
        root: The folder that contains ``VOCdevkit/``, or ``VOCdevkit/`` itself, or the
            ``VOC<year>/`` folder itself.
        year: ``"2007"`` or ``"2012"``.
        split: Name of a file in ``ImageSets/Main/`` without ``.txt``.
        no_hard: Drop difficult/truncated objects and images left without objects.
        strict: Raise on the first missing or malformed annotation file (what ``lostreg
            eval`` does: no run on a damaged copy). With ``False`` (``lostreg data check``),
            such images are left out and each problem is recorded in :attr:`problems`.

    Raises:
        DatasetLayoutError: missing folder or split file, a malformed split file; and when
            ``strict``, a missing or malformed annotation file (:class:`AnnotationError`).
    """

    def __init__(
        self,
        root: str | Path,
        year: str = "2007",
        split: str = DEFAULT_VOC_SPLIT,
        no_hard: bool = False,
        strict: bool = True,
    ) -> None:
        year = str(year)
        if year not in _YEARS:
            raise ValueError(f"VOC year must be one of {_YEARS}, got {year!r}")
        self.year = year
        self.split = split
        self.no_hard = no_hard
        self.voc_dir = resolve_voc_root(root, year)
        name = f"VOC{year[2:]}_{split}" + ("-nohards" if no_hard else "")

        split_file = self.voc_dir / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise _layout_error(f"missing VOC split file {split_file}", year)
        ann_dir = self.voc_dir / "Annotations"
        if not ann_dir.is_dir():
            raise _layout_error(f"missing VOC annotation folder {ann_dir}", year)
        img_dir = self.voc_dir / "JPEGImages"
        if not img_dir.is_dir():
            raise _layout_error(f"missing VOC image folder {img_dir}", year)

        records: list[ImageRecord] = []
        problems: list[DatasetProblem] = []
        self.num_skipped_hard = 0
        for image_id in _read_split(split_file, year):
            try:
                ann = parse_voc_xml(ann_dir / f"{image_id}.xml", year)
            except AnnotationError as err:
                if strict:
                    raise
                problems.append(err.problem(image_id, skipped=True, image=img_dir / f"{image_id}.jpg"))
                continue
            objects = ann.objects
            if no_hard:
                objects = tuple(o for o in objects if not (o.difficult or o.truncated))
                if not objects:
                    self.num_skipped_hard += 1
                    continue
            boxes = np.array([o.box_xyxy for o in objects], dtype=np.int64).reshape(-1, 4)
            records.append(
                ImageRecord(
                    image_id=image_id,
                    path=img_dir / f"{image_id}.jpg",
                    width=ann.width,
                    height=ann.height,
                    gt_boxes_xyxy=boxes,
                    gt_labels=tuple(o.name for o in objects),
                )
            )
        if no_hard:
            logger.info("%s: %d images without easy objects skipped", name, self.num_skipped_hard)
        super().__init__(records, name=name, problems=problems)
