"""Dataset readers: image paths plus ground-truth boxes, no pixels.

Every reader yields :class:`ImageRecord` items whose ``gt_boxes_xyxy`` are ``int64``
``(K, 4)`` ``[x1, y1, x2, y2]`` pixels of the original image, max exclusive. Decoding the
image is left to :mod:`lostreg.io`, so listing and checking a dataset is cheap.

Names for :func:`build_dataset` are those of the dataset registry (:mod:`lostreg.datasets.registry`):
the built-in ``voc07``, ``voc12``, ``coco20k``, ``coco``, ``folder`` (:mod:`lostreg.datasets.kinds`)
and any kind registered since.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lostreg.datasets.base import (
    ANNOTATION_PROBLEMS,
    PROBLEM_KINDS,
    AnnotationError,
    DatasetLayoutError,
    DatasetProblem,
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
import lostreg.datasets.kinds  # noqa: F401  (registers the built-in kinds)
from lostreg.datasets.registry import (
    DatasetKind,
    dataset_kind,
    dataset_kinds,
    dataset_names,
    kind_of,
    register_dataset,
    unregister_dataset,
)
from lostreg.datasets.voc import VOCDataset, parse_voc_xml
from lostreg.errors import ConfigError

__all__ = [
    "ANNOTATION_PROBLEMS",
    "AnnotationError",
    "COCO20K_FILELIST_URL",
    "COCO20K_NUM_IMAGES",
    "DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "PUBLISHED_SIZES",
    "PROBLEM_KINDS",
    "Coco20kDataset",
    "CocoDataset",
    "DatasetKind",
    "DatasetLayoutError",
    "DatasetProblem",
    "FileListDownloadError",
    "FolderDataset",
    "ImageDataset",
    "ImageRecord",
    "VOCDataset",
    "build_dataset",
    "check_dataset",
    "dataset_kind",
    "dataset_kinds",
    "dataset_names",
    "describe_layout",
    "download_coco20k_filelist",
    "kind_of",
    "parse_voc_xml",
    "read_coco20k_filelist",
    "register_dataset",
    "unregister_dataset",
    "verify_coco20k_filelist",
]


def __getattr__(name: str) -> Any:
    # The names of lostreg's first versions, read from the registry at each use so that a kind
    # registered later is in them: DATASET_NAMES, and PUBLISHED_SIZES (the image counts of the
    # published splits the papers report on, spec section 5).
    if name == "DATASET_NAMES":
        return dataset_names()
    if name == "PUBLISHED_SIZES":
        return {kind.name: kind.published_size for kind in dataset_kinds() if kind.published_size is not None}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_dataset(name: str, **kwargs: Any) -> ImageDataset:
    """Build a dataset by its registered name (:func:`~lostreg.datasets.registry.dataset_kind`).

    Args:
        name: ``voc07`` / ``voc12`` (kwargs of :class:`VOCDataset` except ``year``),
            ``coco20k`` (:class:`Coco20kDataset`), ``coco`` (:class:`CocoDataset`),
            ``folder`` (:class:`FolderDataset`), or another registered kind. Case-insensitive.
        **kwargs: Passed to the kind's reader.

    Raises:
        UnknownNameError: unknown name (a :class:`KeyError` too).
        DatasetLayoutError: the files on disk do not match :func:`describe_layout`.
    """
    return dataset_kind(name).build(**kwargs)


def _image_problem(image_id: str | None, path: Path, full: bool) -> DatasetProblem | None:
    """The problem of one image file, or None when it decodes (see :func:`check_image_file`)."""
    from lostreg.io.images import ImageReadError, check_image_file

    try:
        check_image_file(path, full=full)
    except ImageReadError as err:
        kind = "unreadable image" if os.path.lexists(path) else "missing image"
        return DatasetProblem(kind, Path(path), err.reason, image_id)
    return None


def _check_images(
    targets: list[tuple[str | None, Path]], full: bool, progress: bool, workers: int | None
) -> list[DatasetProblem]:
    """Problems of the image files ``targets`` (``(image_id, path)``), in their order."""
    from tqdm import tqdm

    # Threads, not processes: a header check is mostly waiting on the disk, and PIL's
    # decoders release the GIL, so threads also speed up --full.
    workers = workers or min(8, os.cpu_count() or 1)
    # disable=None: tqdm itself turns the bar off when stderr is not a terminal (logs, pipes).
    bar = tqdm(total=len(targets), desc="checking images", unit="img", file=sys.stderr,
               disable=True if not progress else None, mininterval=0.5, leave=False)
    found: list[DatasetProblem] = []
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        for problem in pool.map(lambda t: _image_problem(t[0], t[1], full), targets):
            if problem is not None:
                found.append(problem)
            bar.update(1)
    return found


def check_dataset(
    name: str,
    max_listed: int = 10,
    *,
    expected_count: int | None = None,
    full: bool = False,
    progress: bool = False,
    workers: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Validate a dataset's layout, every annotation and every image file, and count what it holds.

    Builds the dataset leniently (``strict=False``: a :class:`DatasetLayoutError` still
    propagates, with the expected tree, when the layout itself is wrong: a missing folder,
    split file or COCO json), so that every missing or malformed annotation is collected
    instead of stopping at the first. Then checks every image file with
    :func:`lostreg.io.images.check_image_file` (header and, for JPEG, end marker; every
    pixel with ``full``), the images left out for a bad annotation included.

    Args:
        name: As for :func:`build_dataset`.
        max_listed: How many missing image paths ``missing_images`` lists.
        expected_count: The number of images the dataset should list (a subset's own size,
            e.g. 20 for a 20-line split); overrides the published size. ``None``: the
            published size where there is one (VOC07/VOC12 ``trainval``, COCO20k, not with
            ``no_hard``), else no size check.
        full: Decode every image completely (what ``lostreg eval`` does) instead of the
            cheap header check.
        progress: Show a progress bar on stderr while checking images.
        workers: Threads that check images (default: up to 8, one per CPU).
        **kwargs: As for :func:`build_dataset` (``strict`` is set here).

    Returns:
        ``name`` (the dataset's own, e.g. ``VOC07_trainval``), ``images`` (listed by the
        dataset, those left out for a bad annotation included), ``images_with_gt``,
        ``gt_boxes`` (total, over the images read), ``problems`` (every
        :class:`DatasetProblem`, grouped by kind in the order of :data:`PROBLEM_KINDS`, each
        kind in file or dataset order), ``num_missing_images``, ``missing_images`` (first
        ``max_listed`` paths, as str), ``num_unreadable_images``, ``num_annotation_problems``,
        ``expected_images`` (``None`` when there is no size to check), ``expected_source``
        (``"dataset.expected_count"``, ``"published"`` or ``None``) and ``ok`` (no problem,
        at least one image, and the expected size where there is one).

    Raises:
        DatasetLayoutError: the layout cannot be read at all.
        ValueError: ``expected_count`` is negative.
    """
    if expected_count is not None and int(expected_count) < 0:
        raise ConfigError(f"dataset.expected_count must be a number of images >= 0, or null; got {expected_count}")
    kind = dataset_kind(name)
    build_kwargs = dict(kwargs)
    if kind.annotated:  # a folder has no annotation to be lenient about
        build_kwargs["strict"] = False
    ds = kind.build(**build_kwargs)
    skipped = [p for p in ds.problems if p.skipped]
    targets = [(r.image_id, r.path) for r in ds] + [(p.image_id, p.image) for p in skipped if p.image is not None]
    image_problems = _check_images(targets, full, progress, workers)
    # Grouped by kind (missing annotations, malformed ones, missing images, unreadable ones),
    # each group in file / dataset order: a long list reads as "what to fix", one kind at a time.
    problems = sorted([*ds.problems, *image_problems], key=lambda p: PROBLEM_KINDS.index(p.kind))
    missing = [str(p.path) for p in image_problems if p.kind == "missing image"]

    if expected_count is not None:
        expected, source = int(expected_count), "dataset.expected_count"
    else:
        expected = kind.expected_images(kwargs)
        source = None if expected is None else "published"
    n = len(ds) + len(skipped)
    return {
        "name": ds.name,
        "images": n,
        "images_with_gt": sum(1 for r in ds if r.num_gt > 0),
        "gt_boxes": sum(r.num_gt for r in ds),
        "problems": problems,
        "num_missing_images": len(missing),
        "missing_images": missing[:max_listed],
        "num_unreadable_images": sum(1 for p in image_problems if p.kind == "unreadable image"),
        "num_annotation_problems": sum(1 for p in problems if p.kind in ANNOTATION_PROBLEMS),
        "expected_images": expected,
        "expected_source": source,
        "ok": not problems and n > 0 and (expected is None or n == expected),
    }
