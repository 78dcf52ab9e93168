"""Shared pieces of the dataset readers: the image record, the layout error, the base sequence.

Box convention everywhere in :mod:`lostreg.datasets`: ``int64`` arrays of shape ``(K, 4)``,
``[x1, y1, x2, y2]`` in pixels of the original image, max exclusive (a box covering the
whole ``W x H`` image is ``[0, 0, W, H]``). Each reader converts its file format to this
convention on read (VOC's 1-based inclusive corners, COCO's float ``xywh``), so nothing
downstream ever sees a file-format box.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from lostreg.errors import LostregError

__all__ = [
    "ANNOTATION_PROBLEMS",
    "AnnotationError",
    "DatasetLayoutError",
    "DatasetProblem",
    "ImageDataset",
    "ImageRecord",
    "LAYOUTS",
    "PROBLEM_KINDS",
    "as_gt_boxes",
    "describe_layout",
]


def as_gt_boxes(boxes: Any) -> np.ndarray:
    """Convert box-like input to a read-only ``int64`` ``(K, 4)`` xyxy array.

    Args:
        boxes: ``None``, an empty sequence, or anything ``np.asarray`` turns into
            ``(K, 4)`` (or a single ``(4,)`` box) of integral values.

    Returns:
        ``int64`` array of shape ``(K, 4)``; ``(0, 4)`` when there are no boxes.

    Raises:
        ValueError: on a wrong shape or non-integral values (a float box here means a
            conversion step was skipped, which would silently change CorLoc).
    """
    if boxes is None:
        arr = np.zeros((0, 4), dtype=np.int64)
    else:
        raw = np.asarray(boxes)
        if raw.size == 0:
            arr = np.zeros((0, 4), dtype=np.int64)
        else:
            if raw.ndim == 1:
                raw = raw[None, :]
            if raw.ndim != 2 or raw.shape[1] != 4:
                raise ValueError(f"expected boxes of shape (K, 4), got {raw.shape}")
            if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
                raise ValueError("ground-truth boxes must be integral pixels (xyxy, max exclusive)")
            arr = raw.astype(np.int64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """One image of a dataset and its ground truth.

    Attributes:
        image_id: Unique id within the dataset (VOC: ``"000005"``; COCO: the numeric id
            as a string, ``"139"``; folder: the path relative to the root, ``"a/b.jpg"``).
        path: Image file on disk.
        width: Width in pixels from the annotation file, or ``None`` when unknown until
            the image is decoded (folders). The decoded image is authoritative.
        height: Height in pixels, same rules as ``width``.
        gt_boxes_xyxy: Ground-truth boxes, read-only ``int64`` of shape ``(K, 4)``,
            ``[x1, y1, x2, y2]`` pixels of the original image, max exclusive.
            ``(0, 4)`` when the image has none (folders, COCO crowd-only images).
        gt_labels: Class names, one per row of ``gt_boxes_xyxy`` (may be empty when the
            source has no classes). Used for display only, never by CorLoc.
    """

    image_id: str
    path: Path
    width: int | None
    height: int | None
    gt_boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    gt_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ so callers may pass lists / str paths.
        if not isinstance(self.image_id, str):
            object.__setattr__(self, "image_id", str(self.image_id))
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "gt_boxes_xyxy", as_gt_boxes(self.gt_boxes_xyxy))
        object.__setattr__(self, "gt_labels", tuple(str(s) for s in self.gt_labels))
        if self.gt_labels and len(self.gt_labels) != len(self.gt_boxes_xyxy):
            raise ValueError(
                f"{len(self.gt_labels)} labels for {len(self.gt_boxes_xyxy)} boxes in image {self.image_id}"
            )

    @property
    def num_gt(self) -> int:
        """Number of ground-truth boxes."""
        return int(self.gt_boxes_xyxy.shape[0])

    def __eq__(self, other: object) -> bool:
        # The generated dataclass __eq__ would compare arrays elementwise and fail on bool().
        if not isinstance(other, ImageRecord):
            return NotImplemented
        return (
            self.image_id == other.image_id
            and self.path == other.path
            and self.width == other.width
            and self.height == other.height
            and np.array_equal(self.gt_boxes_xyxy, other.gt_boxes_xyxy)
            and self.gt_labels == other.gt_labels
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable


#: Kinds of :class:`DatasetProblem` that concern an annotation (the others concern image files).
ANNOTATION_PROBLEMS = ("missing annotation", "unreadable annotation", "malformed annotation")
#: Every kind of :class:`DatasetProblem`, in the order a check lists them.
PROBLEM_KINDS = (*ANNOTATION_PROBLEMS, "missing image", "unreadable image")


@dataclass(frozen=True)
class DatasetProblem:
    """One thing wrong with a dataset on disk, recorded instead of raised (``strict=False`` readers).

    Attributes:
        kind: ``"missing annotation"``, ``"unreadable annotation"`` (a folder, no permission),
            ``"malformed annotation"`` (:data:`ANNOTATION_PROBLEMS`), ``"missing image"`` or
            ``"unreadable image"`` (:data:`PROBLEM_KINDS`).
        path: The file concerned (the annotation file, or the image).
        reason: One line saying what is wrong, without the path.
        image_id: The image concerned, or ``None`` when the problem is not about one image.
        skipped: The image was left out of the dataset because of this problem (its ground
            truth could not be read), so it is not among the records.
        image: The image file of a skipped image, when known, so that a check can still
            look at it.
    """

    kind: str
    path: Path
    reason: str
    image_id: str | None = None
    skipped: bool = False
    image: Path | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


# Expected on-disk trees, shown in every DatasetLayoutError and by `describe_layout`. Users read
# them after a failed command, so they name what the user types (commands, dataset.* settings,
# flags), never a Python function or keyword argument.
LAYOUTS: dict[str, str] = {
    "voc": """\
<root>/                      root may be this folder, VOCdevkit/ or VOC<year>/ itself
└── VOCdevkit/
    └── VOC<year>/           VOC2007 (voc07) or VOC2012 (voc12)
        ├── Annotations/
        │   └── <id>.xml     one per image: <size>, <object><bndbox>, 1-based inclusive corners
        ├── ImageSets/
        │   └── Main/
        │       └── <split>.txt   one image id per line (trainval.txt: 5011 / 11540 ids)
        └── JPEGImages/
            └── <id>.jpg""",
    "coco20k": """\
<root>/
├── annotations/
│   ├── instances_train2014.json
│   └── instances_train2014_sel20k.json   (written by lostreg on first use, cached)
└── images/train2014/COCO_train2014_<12 digits>.jpg   (or <root>/train2014/...)
<filelist>: coco_20k_filenames.txt, 19817 lines 'train2014/COCO_train2014_<12 digits>.jpg'
            (from the LOST repository: `lostreg data fetch-coco20k-list --dest <filelist>`
            downloads and verifies it; then pass dataset.filelist_path=<filelist>)""",
    "coco": """\
<annotation_json>            any COCO-format instances file: images[], annotations[], categories[]
<image_dir>/
└── <file_name>              for every images[i].file_name in the json""",
    "folder": """\
<root>/                      a folder of images (or a single image file)
├── <name>.jpg               extensions: .jpg .jpeg .png .bmp .tif .tiff .webp .ppm .pgm (any case)
└── <sub>/<name>.png         sub-folders only with dataset.recursive=true (lostreg eval, data check)
                             or --recursive (lostreg export --images); hidden files are ignored""",
}
_LAYOUT_ALIASES = {"voc07": "voc", "voc12": "voc", "voc2007": "voc", "voc2012": "voc"}


def describe_layout(name: str) -> str:
    """Return the expected on-disk tree of dataset ``name`` (voc07, voc12, coco20k, coco, folder)."""
    key = name.lower()
    key = _LAYOUT_ALIASES.get(key, key)
    if key not in LAYOUTS:
        raise KeyError(f"unknown dataset {name!r}; known: voc07, voc12, coco20k, coco, folder")
    tree = LAYOUTS[key]
    if name.lower() in ("voc07", "voc2007"):
        tree = tree.replace("VOC<year>", "VOC2007")
    elif name.lower() in ("voc12", "voc2012"):
        tree = tree.replace("VOC<year>", "VOC2012")
    return tree


class DatasetLayoutError(LostregError):
    """A dataset file or folder is missing or malformed.

    ``str(err)`` is one line naming the offending path, then the expected layout tree.
    """

    def __init__(self, message: str, layout: str | None = None) -> None:
        self.message = message
        self.layout = layout
        text = message if layout is None else f"{message}\nExpected layout:\n{layout}"
        super().__init__(text)


class AnnotationError(DatasetLayoutError):
    """One annotation file (or one entry of it) is missing or malformed.

    A strict reader raises it (it is a :class:`DatasetLayoutError`, with the expected tree);
    a ``strict=False`` reader turns it into a :class:`DatasetProblem` from ``kind``, ``path``
    and ``reason`` and goes on.
    """

    def __init__(self, message: str, layout: str | None, kind: str, path: Path, reason: str) -> None:
        super().__init__(message, layout)
        self.kind, self.path, self.reason = kind, Path(path), " ".join(str(reason).split())

    def problem(self, image_id: str | None = None, skipped: bool = False, image: Path | None = None) -> DatasetProblem:
        """This error as a recorded :class:`DatasetProblem`."""
        return DatasetProblem(self.kind, self.path, self.reason, image_id, skipped, image)


class ImageDataset(Sequence[ImageRecord]):
    """An indexable, sized, re-iterable collection of :class:`ImageRecord`.

    Subclasses fill ``self._records`` once in ``__init__``; everything else is shared.
    Iteration order is fixed and documented per subclass, so runs are reproducible.
    """

    name: str = "dataset"
    #: Whether records carry ground truth to score against (False for a folder of images):
    #: decides whether a run gets evaluators (CorLoc, AP) at all.
    has_ground_truth: bool = True

    def __init__(
        self,
        records: Sequence[ImageRecord] = (),
        name: str | None = None,
        problems: Sequence[DatasetProblem] = (),
    ) -> None:
        self._records: list[ImageRecord] = list(records)
        if name is not None:
            self.name = name
        self._index: dict[str, int] | None = None
        #: What a ``strict=False`` reader found wrong instead of raising, in file order
        #: (always empty for a strict reader, which raises on the first problem).
        self.problems: list[DatasetProblem] = list(problems)

    def __len__(self) -> int:
        return len(self._records)

    @overload
    def __getitem__(self, i: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, i: slice) -> list[ImageRecord]: ...

    def __getitem__(self, i: int | slice) -> ImageRecord | list[ImageRecord]:
        return self._records[i]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self._records)

    @property
    def image_ids(self) -> list[str]:
        """Image ids in iteration order."""
        return [r.image_id for r in self._records]

    def get(self, image_id: str) -> ImageRecord:
        """Return the record of ``image_id`` (``KeyError`` if absent)."""
        if self._index is None:
            self._index = {r.image_id: i for i, r in enumerate(self._records)}
        return self._records[self._index[str(image_id)]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, images={len(self)})"
