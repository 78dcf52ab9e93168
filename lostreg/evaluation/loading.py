"""The read stage of dataset runs: decode and prepare images in worker processes, batched by size.

Images are grouped by padded size so that one backbone pass serves a whole batch (VOC has
many 500x375 and 375x500 images). Grouping only changes *which* images share a pass, never a
box: each image's features depend on itself alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from torch.utils.data import DataLoader, Dataset

from lostreg.datasets.base import ImageRecord
from lostreg.io.images import ImageReadError, load_image_rgb
from lostreg.preprocess import ImagePreparer, ImageTooSmallError, PreparedImage


@dataclass(frozen=True)
class LoadedItem:
    """One dataset image after the read stage: prepared, or the reason it could not be."""

    index: int
    record: ImageRecord
    prepared: PreparedImage | None
    error: str | None


class PreparedImages(Dataset):
    """Map-style dataset: index -> :class:`LoadedItem` (decode + preprocess; no model)."""

    def __init__(self, records: Sequence[ImageRecord], preparer: ImagePreparer) -> None:
        self.records = list(records)
        self.preparer = preparer

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LoadedItem:
        record = self.records[index]
        try:
            image = load_image_rgb(record.path)
            prepared = self.preparer(image, str(record.path))
        except ImageReadError as err:
            return LoadedItem(index, record, None, str(err))
        except ImageTooSmallError as err:
            return LoadedItem(index, record, None, f"{record.path}: {err}")
        except Exception as err:  # anything else about one image must not stop the run
            return LoadedItem(index, record, None, f"{record.path}: {type(err).__name__}: {err}")
        return LoadedItem(index, record, prepared, None)


def size_grouped_batches(
    records: Sequence[ImageRecord], preparer: ImagePreparer, batch_size: int
) -> list[list[int]]:
    """Batches of indices whose images share a padded size, from the sizes in the annotations.

    Records without a known size (folders) form batches of one. Within a size group, dataset
    order is kept; groups come in order of first appearance. A wrong annotated size only
    costs speed: :func:`split_by_shape` regroups by the decoded size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    singles: list[list[int]] = []
    for i, record in enumerate(records):
        if record.width and record.height:
            groups.setdefault(preparer.padded_hw((record.height, record.width)), []).append(i)
        else:
            singles.append([i])
    batches = [idx[s:s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
    return batches + singles


def _keep_list(items: list[LoadedItem]) -> list[LoadedItem]:
    return items


def iterate_prepared(
    records: Sequence[ImageRecord],
    preparer: ImagePreparer,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[list[LoadedItem]]:
    """Yield lists of :class:`LoadedItem`, decoded in ``num_workers`` processes (0 = in-process)."""
    if not records:
        return
    loader = DataLoader(
        PreparedImages(records, preparer),
        batch_sampler=size_grouped_batches(records, preparer, batch_size),
        num_workers=num_workers,
        collate_fn=_keep_list,
        pin_memory=pin_memory,
    )
    yield from loader


def split_by_shape(items: Sequence[LoadedItem]) -> list[list[LoadedItem]]:
    """Group prepared items by padded tensor shape (annotation sizes can be wrong)."""
    groups: dict[tuple[int, ...], list[LoadedItem]] = {}
    for item in items:
        assert item.prepared is not None
        groups.setdefault(tuple(item.prepared.padded.tensor.shape), []).append(item)
    return list(groups.values())


__all__ = ["LoadedItem", "PreparedImages", "iterate_prepared", "size_grouped_batches", "split_by_shape"]
