"""Writers of LOST pseudo-boxes in the formats detector trainers load.

Every writer takes prediction records, the lines of an eval run's ``preds.jsonl``
(:func:`lostreg.evaluation.runner.prediction_record`), of which it uses ``image_id``,
``image`` (path), ``width``, ``height``, ``box_xyxy`` and ``error``. It reads no run
directory and no image: reading runs is :mod:`lostreg.export.readers`' job.

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

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lostreg.io.atomic import atomic_write_text
from lostreg.boxes import xyxy_to_voc, xyxy_to_xywh

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
    "split_failed",
    "voc_xml",
    "write_coco",
    "write_detectron2",
    "write_voc",
    "write_yolo",
    "yolo_line",
]

CATEGORY_NAME = "object"
FORMATS = ("coco", "detectron2", "yolo", "voc")
#: Formats whose output is one file (the others write a folder).
FILE_FORMATS = ("coco", "detectron2")
FAILED_HEADER = "# image_id\timage\terror  (images LOST failed on: no label was written for them)\n"

Record = Mapping[str, Any]


class ExportError(ValueError):
    """The records cannot be written as asked (image outside the root, two images with one stem, ...)."""


@dataclass(frozen=True)
class FailedImage:
    """An image without a pseudo-box: its id, path as recorded, and the error line."""

    image_id: str
    image: str
    error: str


@dataclass
class ExportResult:
    """What a writer wrote.

    Attributes:
        format: One of :data:`FORMATS`.
        out: The output file (coco, detectron2) or folder (yolo, voc).
        files: Every file written, ``failed_file`` included.
        images: Images written with their pseudo-box.
        failed: Images left out because LOST failed on them.
        failed_file: The side file that lists ``failed``.
        stale: Label files already in the output folder that this export did not write
            (left from an earlier export or another dataset; never deleted here).
    """

    format: str
    out: Path
    files: list[Path] = field(default_factory=list)
    images: int = 0
    failed: list[FailedImage] = field(default_factory=list)
    failed_file: Path | None = None
    stale: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers


def is_failed(record: Record) -> bool:
    """True when the record has no usable box (``error`` set or ``box_xyxy`` null)."""
    return record.get("error") is not None or record.get("box_xyxy") is None


def split_failed(records: Sequence[Record]) -> tuple[list[Record], list[FailedImage]]:
    """Records with a box (input order) and the failed images."""
    ok: list[Record] = []
    failed: list[FailedImage] = []
    for record in records:
        if is_failed(record):
            error = record.get("error") or "no box"
            one_line = " ".join(str(error).split())
            failed.append(FailedImage(str(record["image_id"]), str(record.get("image", "")), one_line))
        else:
            ok.append(record)
    return ok, failed


def relative_path(image: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> str:
    """The path to write for ``image``: relative to ``root`` (POSIX), or absolute if ``root`` is None.

    Relative inputs are taken relative to the current directory, as ``lostreg eval`` read
    them. Symbolic links are compared as given first, then resolved.

    Raises:
        ExportError: ``image`` is not under ``root``.
    """
    path = Path(os.path.abspath(os.path.expanduser(os.fspath(image))))
    if root is None:
        return path.as_posix()
    base = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        pass
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(base)).as_posix()
    except ValueError:
        raise ExportError(
            f"{image} is not under the root {root}: pass --root with a folder that holds every image, "
            "or --absolute for absolute paths"
        ) from None


def _size(record: Record) -> tuple[int, int]:
    width, height = record.get("width"), record.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
        raise ExportError(f"{record.get('image')}: no valid image size in the record ({width!r} x {height!r})")
    return width, height


def _box(record: Record) -> tuple[int, int, int, int]:
    x, y, w, h = xyxy_to_xywh(record["box_xyxy"])  # validates: 4 integers, x1 <= x2, y1 <= y2
    return x, y, x + w, y + h


def coco_image_ids(records: Sequence[Record]) -> list[int]:
    """Integer COCO image ids for ``records`` (in their order).

    When every ``image_id`` is a string of digits and their values are distinct (a COCO or
    COCO20k run, VOC2007), the id is that number, so a results file matches the
    dataset's own annotation file. Otherwise images are numbered 1..N in record order.
    """
    texts = [str(r["image_id"]) for r in records]
    if texts and all(t.isdigit() for t in texts):
        numbers = [int(t) for t in texts]
        if len(set(numbers)) == len(numbers):
            return numbers
    return list(range(1, len(records) + 1))


@dataclass(frozen=True)
class _PerImage:
    """What a one-file-per-image writer needs, validated for every image before anything is written."""

    record: Record
    stem: str
    rel_path: str
    size: tuple[int, int]  # (width, height) pixels
    box_xyxy: tuple[int, int, int, int]  # pixels, max exclusive


def _per_image(records: Sequence[Record], root: str | os.PathLike[str] | None) -> tuple[list[_PerImage], list[FailedImage]]:
    """Split off failed images and check stems, paths, sizes and boxes of the others, in input order."""
    ok, failed = split_failed(records)
    stems = _stems(ok)
    items = [_PerImage(r, stem, relative_path(r["image"], root), _size(r), _box(r)) for r, stem in zip(ok, stems)]
    return items, failed


def check_unique_stems(images: Sequence[str | os.PathLike[str]]) -> list[str]:
    """File stems of ``images`` (``a/x.jpg`` -> ``x``), refusing two images with one stem.

    The per-image formats (yolo, voc) name each label file after its image's stem, so two
    such images (``a/x.jpg`` and ``b/x.jpg``, or ``x.jpg`` and ``x.png``) would overwrite each
    other's labels.

    Raises:
        ExportError: naming the first two images that share a stem.
    """
    stems = [Path(os.fspath(image)).stem for image in images]
    owner: dict[str, str] = {}
    for stem, image in zip(stems, images):
        if stem in owner:
            raise ExportError(
                f"{owner[stem]} and {os.fspath(image)} have the same file stem {stem!r}: their label files would "
                "collide; rename one, or export them separately (e.g. one run per folder)"
            )
        owner[stem] = os.fspath(image)
    return stems


def _stems(records: Sequence[Record]) -> list[str]:
    """File stems of the records' images (:func:`check_unique_stems`)."""
    return check_unique_stems([str(r["image"]) for r in records])


# What each folder format writes inside ``--out``: folders, then files (``failed.txt`` for all).
_FOLDER_LAYOUT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "yolo": (("labels", "images"), ("images.txt", "data.yaml")),
    "voc": (("Annotations", "ImageSets", "ImageSets/Main", "JPEGImages"), ("ImageSets/Main/trainval.txt",)),
}


def check_output(fmt: str, out: str | os.PathLike[str], results: str | os.PathLike[str] | None = None) -> None:
    """Refuse an output path that format ``fmt`` cannot write, before anything runs or is written.

    File formats (coco, detectron2) need ``out`` (and ``results``, and the ``<stem>.failed.txt``
    beside it) to be files or absent, not folders; folder formats (yolo, voc) need ``out`` to
    be a folder or absent, not a file, and nothing inside it in the way of what they write
    (``out/labels`` a file, ``out/data.yaml`` a folder). The nearest existing parent of every
    path must be a folder.

    Raises:
        ExportError: one line naming the path and what is expected there.
    """
    out = Path(out)
    if fmt in FILE_FORMATS:
        if out.is_dir():
            raise ExportError(f"--out {out} is a folder, but --format {fmt} writes one JSON file: "
                              f"give a file path, e.g. --out {out / 'pseudo.json'}")
        files = [("--out", out), ("failed-image list", failed_file_for(fmt, out))]
        if results is not None:
            results = Path(results)
            if os.path.abspath(results) == os.path.abspath(out):
                raise ExportError(f"--results {results} is the --out file: give another path")
            files.append(("--results", results))
        for what, path in files:
            if path.is_dir():
                raise ExportError(f"{what} {path} is a folder, but a file must be written there")
            _check_parents(what, path)
        return
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is an existing file, but --format {fmt} writes a folder "
                          f"({', '.join(d + '/' for d in _FOLDER_LAYOUT[fmt][0][:2])} ...): give a folder path")
    _check_parents("--out", out)
    folders, files_inside = _FOLDER_LAYOUT[fmt]
    for name in folders:
        if (out / name).exists() and not (out / name).is_dir():
            raise ExportError(f"{out / name} is a file, but --format {fmt} writes a folder there: move it away")
    for name in (*files_inside, "failed.txt"):
        if (out / name).is_dir():
            raise ExportError(f"{out / name} is a folder, but --format {fmt} writes a file there: move it away")


def _check_parents(what: str, path: Path) -> None:
    """The nearest existing parent of ``path`` must be a folder (else nothing can be created under it)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"{what} {path}: {parent} is a file, not a folder")


def failed_file_for(fmt: str, out: str | os.PathLike[str]) -> Path:
    """Where the list of failed images goes: ``<out>/failed.txt`` for folders, ``<stem>.failed.txt`` beside files."""
    out = Path(out)
    if fmt in FILE_FORMATS:
        return out.with_name(f"{out.stem}.failed.txt")
    return out / "failed.txt"


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)  # a reader never sees half a file


def _write_failed(result: ExportResult, failed: list[FailedImage]) -> None:
    # Written even when empty, so that a stale list of an earlier export never survives.
    path = failed_file_for(result.format, result.out)
    lines = "".join(f"{f.image_id}\t{f.image}\t{f.error}\n" for f in failed)
    result.files.append(_write_text(path, FAILED_HEADER + lines))
    result.failed, result.failed_file = failed, path


def _stale(folder: Path, suffix: str, written: list[Path]) -> list[Path]:
    if not folder.is_dir():
        return []
    keep = {p.resolve() for p in written}
    return sorted(p for p in folder.glob(f"*{suffix}") if p.resolve() not in keep)


def _link(target: str, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            raise ExportError(f"{link} exists and is not a link: will not replace a real file")
        link.unlink()
    link.symlink_to(os.path.abspath(target))
    return link


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
        width, height = _size(record)
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
    result.files.append(_write_text(Path(out), json.dumps(data) + "\n"))
    if results is not None:
        result.files.append(_write_text(Path(results), json.dumps(coco_results(records)) + "\n"))
    result.images = len(ok)
    _write_failed(result, failed)
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
        width, height = _size(record)
        dicts.append({
            "file_name": relative_path(record["image"], root),
            "image_id": str(record["image_id"]),
            "height": height,
            "width": width,
            "annotations": [{"bbox": list(_box(record)), "bbox_mode": 0, "category_id": 0, "iscrowd": 0}],
        })
    return dicts


def write_detectron2(
    records: Sequence[Record], out: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> ExportResult:
    """Write the :func:`detectron2_dicts` as a json list to ``out``."""
    result = ExportResult("detectron2", Path(out))
    ok, failed = split_failed(records)
    result.files.append(_write_text(Path(out), json.dumps(detectron2_dicts(records, root)) + "\n"))
    result.images = len(ok)
    _write_failed(result, failed)
    return result


# ---------------------------------------------------------------------------- yolo


def _yolo_decimals(width: int, height: int) -> int:
    # Reading back computes x1 = (cx - w/2) * W; with d decimals each value is off by at
    # most 0.5e-d, so x1 is off by at most 0.75e-d * W. Rounding recovers the pixel while
    # that is < 0.5, i.e. 10**d > 1.5 W: 6 decimals serve images up to 666k pixels wide.
    return max(6, math.ceil(math.log10(1.5 * max(width, height))) + 1)


def yolo_line(box_xyxy: Sequence[int], width: int, height: int, class_id: int = 0) -> str:
    """``"<class> cx cy w h"``, normalised to [0, 1] by the image size (no newline).

    Args:
        box_xyxy: ``(x1, y1, x2, y2)`` pixels, max exclusive.
        width: Image width W.
        height: Image height H.
        class_id: YOLO class index (0: the single class ``object``).
    """
    x, y, w, h = xyxy_to_xywh(box_xyxy)
    d = _yolo_decimals(width, height)
    values = ((2 * x + w) / (2 * width), (2 * y + h) / (2 * height), w / width, h / height)
    return f"{class_id} " + " ".join(f"{v:.{d}f}" for v in values)


def _yolo_data_yaml(out_dir: Path) -> str:
    # JSON strings are valid YAML scalars and need no escaping rules of their own.
    path = json.dumps(Path(os.path.abspath(out_dir)).as_posix())
    return (
        "# LOST pseudo-boxes written by lostreg: one class-agnostic class.\n"
        "# Ultralytics finds the label of <dir>/images/<name>.<ext> at <dir>/labels/<name>.txt, so\n"
        "# `images/` here must hold the images (lostreg export --link-images creates links).\n"
        "# `val` is required by Ultralytics; validating on pseudo-labels only tracks the fit.\n"
        f"path: {path}\n"
        "train: images\n"
        "val: images\n"
        "nc: 1\n"
        f"names: [{json.dumps(CATEGORY_NAME)}]\n"
    )


def write_yolo(
    records: Sequence[Record],
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    link_images: bool = False,
) -> ExportResult:
    """Write a YOLO (Ultralytics) detection dataset to ``out_dir``.

    * ``labels/<stem>.txt``: one line ``0 cx cy w h`` (:func:`yolo_line`) per image;
    * ``images.txt``: the images, one per line, relative to ``root`` (absolute without one);
    * ``data.yaml``: ``path`` (``out_dir``, absolute), ``train``/``val`` (``images``),
      ``nc: 1``, ``names: ["object"]``;
    * with ``link_images``: ``images/<file name>`` symbolic links to the images, so that
      Ultralytics pairs each image with its label;
    * ``failed.txt``.

    Raises:
        ExportError: two images share a file stem, or an image is outside ``root``.
    """
    out = Path(out_dir)
    result = ExportResult("yolo", out)
    items, failed = _per_image(records, root)  # checks every image before writing anything
    for it in items:
        result.files.append(_write_text(out / "labels" / f"{it.stem}.txt", yolo_line(it.box_xyxy, *it.size) + "\n"))
        if link_images:
            result.files.append(_link(str(it.record["image"]), out / "images" / Path(str(it.record["image"])).name))
    result.stale = _stale(out / "labels", ".txt", result.files)
    result.files.append(_write_text(out / "images.txt", "".join(it.rel_path + "\n" for it in items)))
    result.files.append(_write_text(out / "data.yaml", _yolo_data_yaml(out)))
    result.images = len(items)
    _write_failed(result, failed)
    return result


# ---------------------------------------------------------------------------- voc


def voc_xml(box_xyxy: Sequence[int], width: int, height: int, path: str, name: str = CATEGORY_NAME) -> str:
    """A PASCAL VOC annotation with one object.

    Corners are 1-based inclusive: ``(x1 + 1, y1 + 1, x2, y2)`` for the 0-based,
    max-exclusive ``box_xyxy``. ``<filename>`` is the base name of ``path``; ``<path>``
    is ``path`` itself (relative to the export root, or absolute). ``<depth>`` is 3:
    lostreg reads every image as RGB.
    """
    xmin, ymin, xmax, ymax = xyxy_to_voc(box_xyxy)
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = Path(path).parent.name
    ET.SubElement(ann, "filename").text = Path(path).name
    ET.SubElement(ann, "path").text = path
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "database").text = "LOST pseudo-boxes (lostreg)"
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    obj = ET.SubElement(ann, "object")
    ET.SubElement(obj, "name").text = name
    ET.SubElement(obj, "pose").text = "Unspecified"
    ET.SubElement(obj, "truncated").text = "0"
    ET.SubElement(obj, "difficult").text = "0"
    bndbox = ET.SubElement(obj, "bndbox")
    for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
        ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_voc(
    records: Sequence[Record],
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    link_images: bool = False,
) -> ExportResult:
    """Write VOC annotations to ``out_dir``.

    * ``Annotations/<stem>.xml``: one per image (:func:`voc_xml`), class ``object``;
    * ``ImageSets/Main/trainval.txt``: the stems, one per line (what VOC loaders list);
    * with ``link_images``: ``JPEGImages/<file name>`` symbolic links to the images;
    * ``failed.txt``.

    Raises:
        ExportError: two images share a file stem, or an image is outside ``root``.
    """
    out = Path(out_dir)
    result = ExportResult("voc", out)
    items, failed = _per_image(records, root)  # checks every image before writing anything
    for it in items:
        xml = voc_xml(it.box_xyxy, *it.size, it.rel_path)
        result.files.append(_write_text(out / "Annotations" / f"{it.stem}.xml", xml))
        if link_images:
            result.files.append(_link(str(it.record["image"]), out / "JPEGImages" / Path(str(it.record["image"])).name))
    result.stale = _stale(out / "Annotations", ".xml", result.files)
    result.files.append(_write_text(out / "ImageSets" / "Main" / "trainval.txt", "".join(it.stem + "\n" for it in items)))
    result.images = len(items)
    _write_failed(result, failed)
    return result


# ---------------------------------------------------------------------------- dispatch


def export_records(
    records: Sequence[Record],
    fmt: str,
    out: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    link_images: bool = False,
) -> ExportResult:
    """Write ``records`` in format ``fmt`` (one of :data:`FORMATS`) to ``out``.

    ``results`` (a COCO results file) is for ``coco`` only; ``link_images`` for ``yolo``
    and ``voc`` only.

    Raises:
        ExportError: an unknown format, an option the format does not take, an output path the
            format cannot write (:func:`check_output`), or a writer's error.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if results is not None and fmt != "coco":
        raise ExportError("--results (a COCO results file) goes with --format coco")
    if link_images and fmt in FILE_FORMATS:
        raise ExportError("--link-images goes with --format yolo or voc")
    check_output(fmt, out, results)
    if fmt == "coco":
        return write_coco(records, out, root, results)
    if fmt == "detectron2":
        return write_detectron2(records, out, root)
    if fmt == "yolo":
        return write_yolo(records, out, root, link_images)
    return write_voc(records, out, root, link_images)
