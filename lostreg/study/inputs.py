"""The study's images: which files, their labels, and the fixed-size batches the backbone sees.

* Images come from files, folders and globs (:func:`lostreg.io.images.collect_image_paths`) or a
  dataset (``dataset=voc07 dataset.root=...``, :func:`dataset_inputs`), in a fixed order: an
  image's index in that order decides its split and its random draws, for every backbone alike.
* Labels (optional, for the global probe): one class per image from its sub-folder
  (:func:`folder_labels`), one or several from a file (:func:`read_label_file`), or a dataset's
  object classes (VOC: every class with an object in the image, so several per image).
* Every image is resized so that its shorter side is ``size`` pixels (PIL bicubic, antialiased)
  and centre-cropped to ``size`` x ``size`` (:func:`square_crop`), then normalised with the
  backbone's mean and std exactly as ``lostreg discover`` normalises
  (:func:`lostreg.preprocess.to_padded_tensor`). One size for all images gives every image the
  same patch grid, which the position probe needs (its classes are the grid's cells), and lets
  any number of images share a batch. An image already ``size`` x ``size`` is not resampled.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from lostreg.errors import ConfigError, LostregError

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.study.run import StudyBatch

__all__ = [
    "LabelError",
    "StudyImage",
    "dataset_inputs",
    "folder_labels",
    "read_label_file",
    "square_crop",
    "study_batches",
]


class LabelError(LostregError, ValueError):
    """A label file or folder layout that does not give every image a label."""


@dataclass(frozen=True)
class StudyImage:
    """One input image.

    Attributes:
        path: the file.
        labels: its class names (one or more), or None without labels.
    """

    path: Path
    labels: tuple[str, ...] | None = None


def square_crop(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: shorter side to ``size`` (bicubic), centre crop.

    The crop starts at ``(new - size) // 2`` on the longer side (the extra pixel of an odd margin
    goes to the end).
    """
    height, width = int(image_rgb.shape[0]), int(image_rgb.shape[1])
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        image_rgb = np.asarray(Image.fromarray(np.ascontiguousarray(image_rgb)).resize(
            (new_w, new_h), resample=Image.Resampling.BICUBIC), dtype=np.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(image_rgb[top:top + size, left:left + size])


def folder_labels(paths: Sequence[Path], root: Path) -> list[tuple[str, ...]]:
    """One label per image: the name of its first folder under ``root`` (``root/cat/x.jpg`` -> ``cat``).

    Raises:
        LabelError: an image directly in ``root`` or outside it (one line, naming it).
    """
    root = root.resolve()
    labels = []
    for path in paths:
        try:
            parts = path.resolve().relative_to(root).parts
        except ValueError:
            raise LabelError(f"--labels folders: {path} is not under {root}") from None
        if len(parts) < 2:
            raise LabelError(f"--labels folders: {path} is not in a class sub-folder of {root} "
                             "(expected ROOT/CLASS/image)")
        labels.append((parts[0],))
    return labels


def _label_table(path: Path) -> dict[str, list[str]]:
    """``image key -> labels`` from a JSON object or a CSV file (see :func:`read_label_file`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise LabelError(f"--labels {path}: cannot read ({err.strerror or err})") from None
    table: dict[str, list[str]] = {}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LabelError(f"--labels {path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(data, dict):
            raise LabelError(f"--labels {path}: expected a JSON object {{image: label or [labels]}}")
        for key, value in data.items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, (str, int)) and str(v).strip() for v in values):
                raise LabelError(f"--labels {path}: {key!r} needs a label or a non-empty list of labels")
            table[str(key)] = [str(v).strip() for v in values]
        return table
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise LabelError(f"--labels {path}: line {number}: expected 'image,label', got {','.join(row)!r}")
        table.setdefault(row[0].strip(), []).append(row[1].strip())
    return table


def read_label_file(path: str | os.PathLike[str], images: Sequence[Path]) -> list[tuple[str, ...]]:
    """Labels of ``images`` from a file.

    Formats: JSON ``{"image": "label" or ["label", ...]}``, or CSV lines ``image,label`` (several
    lines for one image give it several labels; no header). An image is found by its path as
    listed or by its file name; every image must be found.

    Raises:
        LabelError: unreadable or malformed file, an image without labels, or a file name that
            matches several images (one line).
    """
    path = Path(path)
    table = _label_table(path)
    by_name: dict[str, int] = {}
    for image in images:
        by_name[image.name] = by_name.get(image.name, 0) + 1
    labels: list[tuple[str, ...]] = []
    missing: list[str] = []
    for image in images:
        found = table.get(str(image))
        if found is None and image.name in table:
            if by_name[image.name] > 1:
                raise LabelError(f"--labels {path}: {image.name!r} names several images; key them by path")
            found = table[image.name]
        if found is None:
            missing.append(str(image))
            continue
        labels.append(tuple(sorted(set(found))))
    if missing:
        raise LabelError(f"--labels {path}: no labels for {len(missing)} image(s), e.g. {missing[0]}")
    return labels


def dataset_inputs(overrides: Sequence[str]) -> tuple[list[StudyImage], str]:
    """The images of a dataset given as overrides (``dataset=voc07 dataset.root=/data``) and their
    object classes as labels (every class with an object in the image; none for folders).

    Returns:
        ``(images in the dataset's order, a description such as "VOC07_test (voc07)")``.

    Raises:
        ConfigError: an override that is not about the dataset, or hydra's one-line reason.
        DatasetLayoutError: the files do not match the layout.
    """
    from lostreg.config import compose_config, dataset_kwargs
    from lostreg.datasets import build_dataset

    wrong = [o for o in overrides if not o.lstrip("+~").startswith("dataset")]
    if wrong:
        raise ConfigError(f"lostreg artifacts takes only dataset=... and dataset.KEY=... overrides, got {wrong[0]!r} "
                          "(the backbone is --backbone)")
    cfg = compose_config(list(overrides))
    kind = str(cfg.dataset.name)
    dataset = build_dataset(kind, **dataset_kwargs(cfg))
    images = [StudyImage(record.path, tuple(sorted(set(record.gt_labels)))) for record in dataset]
    return images, f"{dataset.name} ({kind})"


def prefetched(loads: Iterator[Callable[[], object]]) -> Iterator[object]:
    """Call each loader of ``loads`` one step ahead in a worker thread, yielding results in order.

    Decoding the next batch overlaps the backbone's work on this one; at most two batches exist at
    once, so memory stays bounded whatever the number of images.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-images") as pool:
        pending: Future[object] | None = None
        for load in loads:
            submitted = pool.submit(load)
            if pending is not None:
                yield pending.result()
            pending = submitted
        if pending is not None:
            yield pending.result()


def study_batches(images: Sequence[StudyImage], size: int, patch_size: int, mean: Sequence[float],
                  std: Sequence[float], batch_size: int,
                  on_failure: Callable[[int, StudyImage, LostregError], None]) -> Iterator["StudyBatch"]:
    """Batches (:class:`~lostreg.study.run.StudyBatch`) of up to ``batch_size`` images, in input order.

    Each image is decoded (:func:`lostreg.io.images.load_image_rgb`: EXIF applied, RGB uint8),
    cropped (:func:`square_crop`) and normalised; the next batch is decoded while this one runs
    (:func:`prefetched`). An image that cannot be read is passed to ``on_failure`` (index, image,
    error) and skipped; the others keep their indices.
    """
    import torch

    from lostreg.io.images import ImageReadError, load_image_rgb
    from lostreg.preprocess import to_padded_tensor
    from lostreg.study.run import StudyBatch

    def loader(start: int) -> Callable[[], tuple[list[int], list[torch.Tensor], list[StudyImage]]]:
        def load() -> tuple[list[int], list[torch.Tensor], list[StudyImage]]:
            indices, tensors, kept = [], [], []
            for index in range(start, min(start + batch_size, len(images))):
                item = images[index]
                try:
                    pixels = square_crop(load_image_rgb(item.path), size)
                except ImageReadError as err:
                    on_failure(index, item, err)
                    continue
                tensors.append(to_padded_tensor(pixels, patch_size, mean, std).tensor)  # (3, size, size)
                indices.append(index)
                kept.append(item)
            return indices, tensors, kept
        return load

    for indices, tensors, kept in prefetched(loader(start) for start in range(0, len(images), batch_size)):  # type: ignore[misc]
        if not tensors:
            continue
        labels = None if any(item.labels is None for item in kept) else [item.labels for item in kept]
        yield StudyBatch(torch.stack(tensors), indices, labels)
