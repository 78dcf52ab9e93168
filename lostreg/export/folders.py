"""YOLO and VOC label folders of pseudo-boxes (see :mod:`lostreg.export.formats`)."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from lostreg.boxes import xyxy_to_voc, xyxy_to_xywh
from lostreg.export.records import (
    CATEGORY_NAME,
    ExportResult,
    Record,
    check_images_exist,
    link_image,
    per_image,
    stale_files,
    write_failed_list,
    write_text_file,
)


# ---------------------------------------------------------------------------- yolo


def _yolo_decimals(width: int, height: int) -> int:
    # Reading back computes x1 = (cx - w/2) * W; with d decimals each value is off by at
    # most 0.5e-d, so x1 is off by at most 0.75e-d * W. Rounding recovers the pixel while
    # that is < 0.5, i.e. 10**d > 1.5 W: 6 decimals serve images up to 666k pixels wide.
    return max(6, math.ceil(math.log10(1.5 * max(width, height))) + 1)


def yolo_line(box_xyxy: Sequence[int], width: int, height: int, class_id: int = 0,
              score: float | None = None) -> str:
    """``"<class> cx cy w h"``, normalised to [0, 1] by the image size (no newline); with ``score``,
    ``"<class> cx cy w h conf"``, the layout of Ultralytics' predictions (``save_conf``).

    Args:
        box_xyxy: ``(x1, y1, x2, y2)`` pixels, max exclusive.
        width: Image width W.
        height: Image height H.
        class_id: YOLO class index (0: the single class ``object``).
        score: the box's confidence, written as a sixth value (Ultralytics *training* reads five:
            labels with scores are for reading back and scoring, not for ``yolo train``).
    """
    x, y, w, h = xyxy_to_xywh(box_xyxy)
    d = _yolo_decimals(width, height)
    values = ((2 * x + w) / (2 * width), (2 * y + h) / (2 * height), w / width, h / height)
    line = f"{class_id} " + " ".join(f"{v:.{d}f}" for v in values)
    return line if score is None else f"{line} {score:.6f}"


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
    with_score: bool = False,
) -> ExportResult:
    """Write a YOLO (Ultralytics) detection dataset to ``out_dir``.

    * ``labels/<stem>.txt``: one line ``0 cx cy w h`` (:func:`yolo_line`) per box, most confident
      first; with ``with_score``, ``0 cx cy w h conf`` (1.0 for a run without confidences);
    * ``images.txt``: the images, one per line, relative to ``root`` (absolute without one);
    * ``data.yaml``: ``path`` (``out_dir``, absolute), ``train``/``val`` (``images``),
      ``nc: 1``, ``names: ["object"]``;
    * with ``link_images``: ``images/<file name>`` symbolic links to the images, so that
      Ultralytics pairs each image with its label;
    * ``failed.txt``.

    Raises:
        ExportError: two images share a file stem, an image is outside ``root``, or (with
            ``link_images``) an image is not where the run found it.
    """
    out = Path(out_dir)
    result = ExportResult("yolo", out)
    items, failed = per_image(records, root)  # checks every image before writing anything
    if link_images:
        check_images_exist(items)
    for it in items:
        lines = [yolo_line(o.box_xyxy, *it.size, score=(1.0 if o.score is None else o.score) if with_score else None)
                 for o in it.objects]
        result.files.append(write_text_file(out / "labels" / f"{it.stem}.txt", "".join(line + "\n" for line in lines)))
        result.boxes += len(lines)
        if link_images:
            result.files.append(link_image(str(it.record["image"]), out / "images" / Path(str(it.record["image"])).name))
    result.stale = stale_files(out / "labels", ".txt", result.files)
    result.files.append(write_text_file(out / "images.txt", "".join(it.rel_path + "\n" for it in items)))
    result.files.append(write_text_file(out / "data.yaml", _yolo_data_yaml(out)))
    result.images = len(items)
    write_failed_list(result, failed)
    return result


# ---------------------------------------------------------------------------- voc


def voc_xml(box_xyxy: Sequence[int] | Sequence[Sequence[int]], width: int, height: int, path: str,
            name: str = CATEGORY_NAME, scores: Sequence[float] | None = None) -> str:
    """A PASCAL VOC annotation with one object per box.

    Corners are 1-based inclusive: ``(x1 + 1, y1 + 1, x2, y2)`` for the 0-based,
    max-exclusive ``box_xyxy`` (one box, or a list of boxes). ``<filename>`` is the base name
    of ``path``; ``<path>`` is ``path`` itself (relative to the export root, or absolute).
    ``<depth>`` is 3: lostreg reads every image as RGB. With ``scores`` (one per box) each
    object gets a ``<score>`` element, which VOC has no field for: VOC loaders (detectron2's,
    MMDetection's) ignore it.
    """
    boxes = [box_xyxy] if box_xyxy and not isinstance(box_xyxy[0], Sequence) else list(box_xyxy)
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
    for i, box in enumerate(boxes):
        xmin, ymin, xmax, ymax = xyxy_to_voc(box)  # type: ignore[arg-type]
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(bndbox, tag).text = str(value)
        if scores is not None:
            ET.SubElement(obj, "score").text = f"{float(scores[i]):.6f}"
    ET.indent(ann, space="\t")
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_voc(
    records: Sequence[Record],
    out_dir: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    link_images: bool = False,
    with_score: bool = False,
) -> ExportResult:
    """Write VOC annotations to ``out_dir``.

    * ``Annotations/<stem>.xml``: one per image (:func:`voc_xml`), one object of class ``object``
      per box, most confident first; with ``with_score``, a ``<score>`` per object;
    * ``ImageSets/Main/trainval.txt``: the stems, one per line (what VOC loaders list);
    * with ``link_images``: ``JPEGImages/<file name>`` symbolic links to the images;
    * ``failed.txt``.

    Raises:
        ExportError: two images share a file stem, an image is outside ``root``, or (with
            ``link_images``) an image is not where the run found it.
    """
    out = Path(out_dir)
    result = ExportResult("voc", out)
    items, failed = per_image(records, root)  # checks every image before writing anything
    if link_images:
        check_images_exist(items)
    for it in items:
        scores = [1.0 if o.score is None else o.score for o in it.objects] if with_score else None
        xml = voc_xml([o.box_xyxy for o in it.objects], *it.size, it.rel_path, scores=scores)
        result.boxes += len(it.objects)
        result.files.append(write_text_file(out / "Annotations" / f"{it.stem}.xml", xml))
        if link_images:
            result.files.append(link_image(str(it.record["image"]), out / "JPEGImages" / Path(str(it.record["image"])).name))
    result.stale = stale_files(out / "Annotations", ".xml", result.files)
    result.files.append(write_text_file(out / "ImageSets" / "Main" / "trainval.txt", "".join(it.stem + "\n" for it in items)))
    result.images = len(items)
    write_failed_list(result, failed)
    return result
