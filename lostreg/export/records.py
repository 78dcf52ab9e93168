"""What every pseudo-box writer shares: the records they take, failed images, output checks, file writes.

A record is a line of an eval run's ``preds.jsonl`` (:func:`lostreg.evaluation.runner.prediction_record`);
writers use its ``image_id``, ``image`` (path), ``width``, ``height``, ``boxes_xyxy`` and ``scores``
(every object, most confident first; lines of earlier versions have only ``box_xyxy``: ``[x1, y1,
x2, y2]`` integer pixels, max exclusive) and ``error``. See :mod:`lostreg.export.formats` for the formats.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lostreg.boxes import xyxy_to_xywh
from lostreg.errors import LostregError
from lostreg.io.atomic import atomic_write_text

CATEGORY_NAME = "object"
FORMATS = ("coco", "detectron2", "yolo", "voc")
#: Formats whose output is one file (the others write a folder).
FILE_FORMATS = ("coco", "detectron2")
FAILED_HEADER = "# image_id\timage\terror  (images LOST failed on: no label was written for them)\n"

Record = Mapping[str, Any]


class ExportError(LostregError, ValueError):
    """The records cannot be written as asked (image outside the root, two images with one stem, ...)."""


@dataclass(frozen=True)
class FailedImage:
    """An image without a pseudo-box: its id, path as recorded, and the error line."""

    image_id: str
    image: str
    error: str


@dataclass(frozen=True)
class PseudoBox:
    """One pseudo-box of an image: ``(x1, y1, x2, y2)`` integer pixels, max exclusive, and the method's
    confidence (None when the run has none)."""

    box_xyxy: tuple[int, int, int, int]
    score: float | None


@dataclass(frozen=True)
class Selection:
    """What the score filters kept (:func:`select_objects`).

    Attributes:
        records: records with a box left (their ``boxes_xyxy``, ``scores`` and ``box_xyxy`` rewritten
            to the kept boxes), and the failed records, unchanged, in input order.
        dropped: image ids whose every box was filtered out: left out of the export (neither
            written as images without objects nor listed as failed).
        boxes_before: boxes of the records with a box, before the filters.
        boxes_after: boxes kept.
    """

    records: list[Record]
    dropped: list[str]
    boxes_before: int
    boxes_after: int


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
        boxes: Pseudo-boxes written (several per image with ``objects=N`` runs).
        dropped: Image ids left out because the score filters kept none of their boxes.
    """

    format: str
    out: Path
    files: list[Path] = field(default_factory=list)
    images: int = 0
    failed: list[FailedImage] = field(default_factory=list)
    failed_file: Path | None = None
    stale: list[Path] = field(default_factory=list)
    boxes: int = 0
    dropped: list[str] = field(default_factory=list)


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


def record_size(record: Record) -> tuple[int, int]:
    width, height = record.get("width"), record.get("height")
    if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
        raise ExportError(f"{record.get('image')}: no valid image size in the record ({width!r} x {height!r})")
    return width, height


def record_box(record: Record) -> tuple[int, int, int, int]:
    x, y, w, h = xyxy_to_xywh(record["box_xyxy"])  # validates: 4 integers, x1 <= x2, y1 <= y2
    return x, y, x + w, y + h


def record_objects(record: Record) -> list[PseudoBox]:
    """Every pseudo-box of a record with a box, most confident first: ``boxes_xyxy`` with ``scores``
    (``box_xyxy`` alone, score None, for lines of earlier versions).

    Raises:
        ExportError: a malformed box, or boxes and scores of different lengths.
    """
    boxes = record.get("boxes_xyxy")
    if boxes is None:
        boxes = [record["box_xyxy"]]
    scores = record.get("scores")
    if scores is not None and len(scores) != len(boxes):
        raise ExportError(f"{record.get('image')}: {len(boxes)} boxes but {len(scores)} scores in the record")
    out = []
    for i, box in enumerate(boxes):
        try:
            x, y, w, h = xyxy_to_xywh(box)  # validates: 4 integers, x1 <= x2, y1 <= y2
        except ValueError as err:
            raise ExportError(f"{record.get('image')}: {err}") from None
        out.append(PseudoBox((x, y, x + w, y + h), None if scores is None else float(scores[i])))
    return out


def select_objects(records: Sequence[Record], min_score: float | None = None,
                   top_k: int | None = None) -> Selection:
    """Keep, per image, the boxes with a score >= ``min_score``, then the ``top_k`` most confident.

    Boxes are stored most confident first, so ``top_k`` keeps the first ones (for a run without
    scores: the first found). An image left without a box is dropped from the export: a low
    confidence is no proof that the image holds no object, so it is not written as a negative.

    Raises:
        ExportError: ``min_score`` on a run without scores, or ``top_k < 1``.
    """
    if top_k is not None and top_k < 1:
        raise ExportError(f"--top-k-objects must be >= 1, got {top_k}")
    kept: list[Record] = []
    dropped: list[str] = []
    before = after = 0
    for record in records:
        if is_failed(record):
            kept.append(record)
            continue
        objects = record_objects(record)
        before += len(objects)
        if min_score is not None:
            if any(o.score is None for o in objects):
                raise ExportError(f"--min-score needs scores, but {record.get('image')} has none (a run of a method "
                                  "without a confidence, or of a lostreg version before scores)")
            objects = [o for o in objects if o.score is not None and o.score >= min_score]
        if top_k is not None:
            objects = objects[:top_k]
        if not objects:
            dropped.append(str(record["image_id"]))
            continue
        after += len(objects)
        scores = None if objects[0].score is None else [o.score for o in objects]
        kept.append({**record, "box_xyxy": list(objects[0].box_xyxy),
                     "boxes_xyxy": [list(o.box_xyxy) for o in objects], "scores": scores})
    return Selection(kept, dropped, before, after)


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
class PerImage:
    """What a one-file-per-image writer needs, validated for every image before anything is written."""

    record: Record
    stem: str
    rel_path: str
    size: tuple[int, int]  # (width, height) pixels
    objects: tuple[PseudoBox, ...]  # most confident first; boxes in pixels, max exclusive

    @property
    def box_xyxy(self) -> tuple[int, int, int, int]:
        """The most confident box."""
        return self.objects[0].box_xyxy


def per_image(records: Sequence[Record], root: str | os.PathLike[str] | None) -> tuple[list[PerImage], list[FailedImage]]:
    """Split off failed images and check stems, paths, sizes and boxes of the others, in input order."""
    ok, failed = split_failed(records)
    stems = record_stems(ok)
    items = [PerImage(r, stem, relative_path(r["image"], root), record_size(r), tuple(record_objects(r)))
             for r, stem in zip(ok, stems)]
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


def record_stems(records: Sequence[Record]) -> list[str]:
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
            check_parents(what, path)
        return
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is an existing file, but --format {fmt} writes a folder "
                          f"({', '.join(d + '/' for d in _FOLDER_LAYOUT[fmt][0][:2])} ...): give a folder path")
    check_parents("--out", out)
    folders, files_inside = _FOLDER_LAYOUT[fmt]
    for name in folders:
        if (out / name).exists() and not (out / name).is_dir():
            raise ExportError(f"{out / name} is a file, but --format {fmt} writes a folder there: move it away")
    for name in (*files_inside, "failed.txt"):
        if (out / name).is_dir():
            raise ExportError(f"{out / name} is a folder, but --format {fmt} writes a file there: move it away")


def check_parents(what: str, path: Path) -> None:
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


def write_text_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)  # a reader never sees half a file


def write_failed_list(result: ExportResult, failed: list[FailedImage]) -> None:
    # Written even when empty, so that a stale list of an earlier export never survives.
    path = failed_file_for(result.format, result.out)
    lines = "".join(f"{f.image_id}\t{f.image}\t{f.error}\n" for f in failed)
    result.files.append(write_text_file(path, FAILED_HEADER + lines))
    result.failed, result.failed_file = failed, path


def stale_files(folder: Path, suffix: str, written: list[Path]) -> list[Path]:
    if not folder.is_dir():
        return []
    keep = {p.resolve() for p in written}
    return sorted(p for p in folder.glob(f"*{suffix}") if p.resolve() not in keep)


def check_images_exist(items: Sequence[PerImage]) -> None:
    """Refuse to link images that are not where the run found them (a link would point nowhere).

    Raises:
        ExportError: how many are missing, the first few named.
    """
    missing = [str(it.record["image"]) for it in items if not Path(str(it.record["image"])).is_file()]
    if missing:
        hint = ("; relative paths are relative to the folder the run was made in: export from there"
                if any(not Path(m).is_absolute() for m in missing) else "")
        raise ExportError(f"{len(missing)} of {len(items)} images to link do not exist (e.g. "
                          f"{', '.join(missing[:3])}){hint}")


def link_image(target: str, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            raise ExportError(f"{link} exists and is not a link: will not replace a real file")
        link.unlink()
    link.symlink_to(os.path.abspath(target))
    return link
