"""Dataset readers: image paths plus ground-truth boxes, no pixels.

Every reader yields :class:`ImageRecord` items whose ``gt_boxes_xyxy`` are ``int64``
``(K, 4)`` ``[x1, y1, x2, y2]`` pixels of the original image, max exclusive. Decoding the
image is left to :mod:`lostreg.io`, so listing and checking a dataset is cheap.

Names for :func:`build_dataset`: ``voc07``, ``voc12``, ``coco20k``, ``coco``, ``folder``.
"""

from __future__ import annotations

from typing import Any

from lostreg.datasets.base import (
    DatasetLayoutError,
    ImageDataset,
    ImageRecord,
    describe_layout,
)
from lostreg.datasets.coco import CocoDataset
from lostreg.datasets.coco20k import (
    COCO20K_FILELIST_URL,
    COCO20K_NUM_IMAGES,
    Coco20kDataset,
    FileListDownloadError,
    download_coco20k_filelist,
    read_coco20k_filelist,
    verify_coco20k_filelist,
)
from lostreg.datasets.folder import IMAGE_EXTENSIONS, FolderDataset
from lostreg.datasets.voc import VOCDataset, parse_voc_xml

__all__ = [
    "COCO20K_FILELIST_URL",
    "COCO20K_NUM_IMAGES",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "PUBLISHED_SIZES",
    "Coco20kDataset",
    "CocoDataset",
    "DatasetLayoutError",
    "FileListDownloadError",
    "FolderDataset",
    "ImageDataset",
    "ImageRecord",
    "VOCDataset",
    "build_dataset",
    "check_dataset",
    "describe_layout",
    "download_coco20k_filelist",
    "parse_voc_xml",
    "read_coco20k_filelist",
    "verify_coco20k_filelist",
]

DATASET_NAMES = ("voc07", "voc12", "coco20k", "coco", "folder")

#: Image counts of the datasets the papers report on (spec section 5): VOC07 and VOC12 trainval, COCO20k.
PUBLISHED_SIZES = {"voc07": 5011, "voc12": 11540, "coco20k": COCO20K_NUM_IMAGES}
# Published split sizes, to tell a user whether a local copy is complete.
_EXPECTED_IMAGES = {("voc07", "trainval"): PUBLISHED_SIZES["voc07"], ("voc12", "trainval"): PUBLISHED_SIZES["voc12"],
                    ("coco20k", None): PUBLISHED_SIZES["coco20k"]}


def build_dataset(name: str, **kwargs: Any) -> ImageDataset:
    """Build a dataset by name.

    Args:
        name: ``voc07`` / ``voc12`` (kwargs of :class:`VOCDataset` except ``year``),
            ``coco20k`` (:class:`Coco20kDataset`), ``coco`` (:class:`CocoDataset`),
            ``folder`` (:class:`FolderDataset`). Case-insensitive.
        **kwargs: Passed to the class.

    Raises:
        KeyError: unknown name.
        DatasetLayoutError: the files on disk do not match :func:`describe_layout`.
    """
    key = name.lower()
    if key in ("voc07", "voc12"):
        year = "2007" if key == "voc07" else "2012"
        if "year" in kwargs and str(kwargs.pop("year")) != year:
            raise ValueError(f"dataset {name!r} is VOC{year}; do not pass another year")
        return VOCDataset(year=year, **kwargs)
    if key == "coco20k":
        return Coco20kDataset(**kwargs)
    if key == "coco":
        return CocoDataset(**kwargs)
    if key == "folder":
        return FolderDataset(**kwargs)
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


def check_dataset(name: str, max_listed: int = 10, **kwargs: Any) -> dict[str, Any]:
    """Validate a dataset's layout and count what it holds.

    Builds the dataset (a :class:`DatasetLayoutError` propagates, with the expected
    tree) and checks that every image file exists.

    Args:
        name: As for :func:`build_dataset`.
        max_listed: How many missing image paths to list.
        **kwargs: As for :func:`build_dataset`.

    Returns:
        ``name`` (the dataset's own, e.g. ``VOC07_trainval``), ``images``,
        ``images_with_gt``, ``gt_boxes`` (total), ``num_missing_images``,
        ``missing_images`` (first ``max_listed`` paths, as str), ``expected_images``
        (the published split size, or ``None`` where there is none) and ``ok`` (no image
        missing, at least one image, and the published size where there is one).
    """
    ds = build_dataset(name, **kwargs)
    missing = [str(r.path) for r in ds if not r.path.is_file()]
    key = name.lower()
    split = None if key == "coco20k" else kwargs.get("split", "trainval")
    expected = None if kwargs.get("no_hard") else _EXPECTED_IMAGES.get((key, split))
    n = len(ds)
    return {
        "name": ds.name,
        "images": n,
        "images_with_gt": sum(1 for r in ds if r.num_gt > 0),
        "gt_boxes": sum(r.num_gt for r in ds),
        "num_missing_images": len(missing),
        "missing_images": missing[:max_listed],
        "expected_images": expected,
        "ok": not missing and n > 0 and (expected is None or n == expected),
    }
