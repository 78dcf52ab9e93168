"""The read stage of dataset runs: decode images in worker processes, batched by padded size.

Images are grouped by padded size across the whole dataset so that one backbone pass serves a
whole batch (VOC has many 500x375 and 375x500 images). Grouping only changes *which* images
share a pass, never a box: each image's features depend on itself alone.

The data path keeps bytes small and the device busy: workers decode to uint8 and pack each
batch into one (B, 3, H_pad, W_pad) uint8 buffer (a quarter of float32), the main process pins
it, and :class:`DevicePrefetcher` copies the next batch to the device while the current one
runs; normalisation and padding happen there (:func:`lostreg.preprocess.normalize_packed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from lostreg.datasets.base import ImageRecord
from lostreg.io.images import ImageReadError, load_image_rgb
from lostreg.preprocess import ImagePreparer, ImageTooSmallError, PreparedImage, pack_uint8


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
        # Anything else is a bug (load_image_rgb turns every decoding problem into ImageReadError):
        # it stops the run with its traceback.
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


@dataclass(frozen=True)
class PackedGroup:
    """Prepared images of one padded size and their packed uint8 buffer.

    Attributes:
        items: the loaded items (each with ``prepared``), in loader order.
        packed: (B, 3, H_pad, W_pad) uint8 (:func:`~lostreg.preprocess.pack_uint8`); pinned by
            the data loader when the backbone is on CUDA, then on the device after
            :class:`DevicePrefetcher`.
    """

    items: list[LoadedItem]
    packed: torch.Tensor


@dataclass(frozen=True)
class LoadedBatch:
    """One loader batch: images that failed to load, and groups of prepared images by padded size."""

    failed: list[LoadedItem] = field(default_factory=list)
    groups: list[PackedGroup] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Images in the batch, failed ones included."""
        return len(self.failed) + sum(len(g.items) for g in self.groups)

    def pin_memory(self) -> "LoadedBatch":
        """Called by the DataLoader's pin-memory thread: page-locked buffers copy to CUDA asynchronously."""
        return replace(self, groups=[replace(g, packed=g.packed.pin_memory()) for g in self.groups])

    def to(self, device: torch.device) -> "LoadedBatch":
        """The same batch with its buffers on ``device`` (non-blocking from pinned memory)."""
        return replace(self, groups=[replace(g, packed=g.packed.to(device, non_blocking=True)) for g in self.groups])


def collate_packed(items: list[LoadedItem]) -> LoadedBatch:
    """Loader collate (runs in the worker): split off failures, pack each padded size into one buffer."""
    failed = [it for it in items if it.prepared is None]
    groups = [PackedGroup(group, pack_uint8([it.prepared.pixels for it in group],  # type: ignore[union-attr]
                                            group[0].prepared.padded_hw))  # type: ignore[union-attr]
              for group in split_by_shape([it for it in items if it.prepared is not None])]
    return LoadedBatch(failed, groups)


def iterate_prepared(
    records: Sequence[ImageRecord],
    preparer: ImagePreparer,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> Iterator[LoadedBatch]:
    """Yield :class:`LoadedBatch` items, decoded and packed in ``num_workers`` processes (0 = in-process).

    The workers start on the first ``next()`` (call it early to have them decode while the
    caller does other work); each keeps ``prefetch_factor`` batches ready.
    """
    if not records:
        return
    loader = DataLoader(
        PreparedImages(records, preparer),
        batch_sampler=size_grouped_batches(records, preparer, batch_size),
        num_workers=num_workers,
        collate_fn=collate_packed,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
    )
    yield from loader


class DevicePrefetcher:
    """Copies the next loader batch to the device while the current one is processed.

    On CUDA the copy runs on a side stream from pinned memory and the compute stream waits for
    it only when the batch is used; on the CPU it is a plain pass-through.
    """

    def __init__(self, batches: Iterator[LoadedBatch], device: torch.device) -> None:
        self._batches = batches
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next: tuple[LoadedBatch, object] | None = None
        self._load()

    def _load(self) -> None:
        batch = next(self._batches, None)
        if batch is None:
            self._next = None
            return
        if self._stream is None:
            self._next = (batch, None)
            return
        with torch.cuda.stream(self._stream):
            moved = batch.to(self._device)
            event = torch.cuda.Event()
            event.record(self._stream)
        self._next = (moved, event)

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> LoadedBatch:
        if self._next is None:
            raise StopIteration
        batch, event = self._next
        if event is not None:
            torch.cuda.current_stream(self._device).wait_event(event)  # type: ignore[arg-type]
            for group in batch.groups:  # the compute stream now owns these buffers
                group.packed.record_stream(torch.cuda.current_stream(self._device))
        self._load()  # start the next copy before the caller computes on this batch
        return batch


def split_by_shape(items: Sequence[LoadedItem]) -> list[list[LoadedItem]]:
    """Group prepared items by padded tensor shape (annotation sizes can be wrong)."""
    groups: dict[tuple[int, int], list[LoadedItem]] = {}
    for item in items:
        assert item.prepared is not None
        groups.setdefault(item.prepared.padded_hw, []).append(item)
    return list(groups.values())


__all__ = [
    "DevicePrefetcher",
    "LoadedBatch",
    "LoadedItem",
    "PackedGroup",
    "PreparedImages",
    "collate_packed",
    "iterate_prepared",
    "size_grouped_batches",
    "split_by_shape",
]
