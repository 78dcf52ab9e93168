"""One inference loop for every command that runs discovery: eval, sweep, experiment, discover, export --images.

detectron2's lesson: one loop, many consumers. :class:`DiscoveryEngine` holds a backbone and one
or more discovery protocols (an eval is a sweep of one configuration). For every loader batch
(:class:`~lostreg.evaluation.loading.LoadedBatch`: images that failed to load, and groups of
prepared images of one padded size) it

1. asks the backbone ONCE per group for the union of the feature keys every configuration needs
   (:meth:`~lostreg.backbones.base.Backbone.extract_many`; twice when some configurations resize the
   position embeddings with antialiasing and others do not),
2. runs each configuration's method on its features (:meth:`ObjectDiscoverer.locate_features`),
3. hands the :class:`Outcome` of every image in every configuration to the caller's consumer
   (a run-directory sink that scores and appends lines, or ``discover``'s JSON lines and pictures).

Failures say what they are (:mod:`lostreg.errors`): an image the read stage could not decode, one
smaller than a patch, or one too large for the memory (``InsufficientMemoryError``) arrives as a
failed item and becomes an :class:`Outcome` with an error; the run goes on. A group that runs the
CUDA device out of memory is retried image by image, and an image that alone does not fit is
recorded with that error. Any other exception (from lostreg, torch or a CUDA driver) is a bug: it
leaves the loop with its traceback, after the caller has saved what was done (the sinks' writers
are closed in ``finally`` blocks), so the run stops loudly and a resume continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from lostreg.backbones import Backbone
from lostreg.datasets.base import ImageRecord
from lostreg.discovery import Discovery, ObjectDiscoverer
from lostreg.evaluation.loading import DevicePrefetcher, LoadedBatch, PackedGroup, iterate_prepared
from lostreg.preprocess import ImagePreparer, PreparedImage, batch_images
from lostreg.protocol import DiscoveryProtocol, FeatureKey
from lostreg.rundir import SessionTimer

__all__ = ["DiscoveryEngine", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """One image in one configuration: its discovery, or why there is none.

    Attributes:
        record: the dataset record (for ``discover``: a record named after the input).
        discovery: the object found (box in original pixels, xyxy, max exclusive), or None.
        error: one line (file and reason) when the image could not be processed, else None.
        index: the image's position in what the read stage was given.
    """

    record: ImageRecord
    discovery: Discovery | None
    error: str | None
    index: int = -1


class DiscoveryEngine:
    """One backbone, one or more discovery protocols, one pass of the backbone per batch.

    Args:
        backbone: built once for the whole run.
        protocols: the configurations (validated here, against the backbone too: a bad layer or
            feature kind fails before any image is read).
        max_size: downscale images whose longer side exceeds it (None: native resolution).
        precision: the backbone forward's numerics (``fp32`` exact; :mod:`lostreg.precision`).
    """

    def __init__(self, backbone: Backbone, protocols: Sequence[DiscoveryProtocol], max_size: int | None = None,
                 precision: str = "fp32") -> None:
        if not protocols:
            raise ValueError("a discovery engine needs at least one protocol")
        self.backbone = backbone
        self.discoverers = [ObjectDiscoverer(backbone, p, max_size=max_size, precision=precision) for p in protocols]
        self.precision = self.discoverers[0].precision
        self.feature_keys = self.feature_keys_of(self.protocols)
        self.passes = self.passes_of(self.protocols)

    @staticmethod
    def feature_keys_of(protocols: Sequence[DiscoveryProtocol]) -> list[FeatureKey]:
        """The union of what the configurations ask of the backbone (one forward serves them all): their
        (which, layer) in first-use order, then what their methods need besides (e.g. the output norms)."""
        keys = [p.features.key for p in protocols]
        keys += [k for p in protocols for k in p.spec.extra_keys(p.method_knobs)]
        return list(dict.fromkeys(keys))

    @staticmethod
    def passes_of(protocols: Sequence[DiscoveryProtocol]) -> dict[bool, list[FeatureKey]]:
        """The backbone passes the configurations need: position embeddings resized with antialiasing
        (``features.pos_embed_antialias``) or not -> the feature keys of that pass. One pass each."""
        passes: dict[bool, list[DiscoveryProtocol]] = {}
        for protocol in protocols:
            passes.setdefault(protocol.features.pos_embed_antialias, []).append(protocol)
        return {antialias: DiscoveryEngine.feature_keys_of(group) for antialias, group in sorted(passes.items())}

    @property
    def protocols(self) -> list[DiscoveryProtocol]:
        """The configurations, in the order outcomes are returned."""
        return [d.protocol for d in self.discoverers]

    @property
    def preparer(self) -> ImagePreparer:
        """CPU preprocessing shared by every configuration (one backbone, one ``max_size``)."""
        return self.discoverers[0].preparer

    def read(self, records: Sequence[ImageRecord], batch_size: int, num_workers: int) -> Iterator[LoadedBatch]:
        """The read stage for dataset records: decoded and packed in ``num_workers`` processes, grouped
        by padded size, the next batch copied to the device while the current one runs."""
        device = self.backbone.device
        batches = iterate_prepared(records, self.preparer, batch_size, num_workers,
                                   pin_memory=device.type == "cuda")
        return DevicePrefetcher(batches, device)

    def process(self, batch: LoadedBatch) -> list[list[Outcome]]:
        """The outcomes of one loader batch, per configuration (failed reads first, then groups in order)."""
        per_config = [[Outcome(it.record, None, it.error, it.index) for it in batch.failed] for _ in self.discoverers]
        for group in batch.groups:
            for outcomes, found in zip(per_config, self._group(group)):
                outcomes += found
        return per_config

    def run(self, batches: Iterable[LoadedBatch], consume: Callable[[LoadedBatch, list[list[Outcome]]], None],
            timer: SessionTimer | None = None) -> None:
        """The loop: for each batch, :meth:`process` it and hand the outcomes to ``consume``.

        ``timer`` (if given) counts the time spent waiting for the read stage, computing, and the
        images done. Exceptions other than those of :meth:`process`'s recorded cases propagate.
        """
        timer = timer or SessionTimer()
        waited = time.monotonic()
        for batch in batches:
            timer.load_wait_s += time.monotonic() - waited
            start = time.monotonic()
            outcomes = self.process(batch)
            timer.compute_s += time.monotonic() - start
            consume(batch, outcomes)
            timer.images += batch.size
            waited = time.monotonic()

    # -- one group ---------------------------------------------------------------------------

    def _group(self, group: PackedGroup) -> list[list[Outcome]]:
        items = [it.prepared for it in group.items]
        try:
            found = self.discover(items, group.packed)  # type: ignore[arg-type]
        except torch.OutOfMemoryError:
            if len(items) == 1:
                return self._failed(group, "out of memory on the device for this image alone; pass a smaller "
                                           "max_size (--max-size)")
            # A batch too large for the device: find the image at fault, keep the others.
            _release_cached_memory(self.backbone.device)
            per_config: list[list[Outcome]] = [[] for _ in self.discoverers]
            for i, item in enumerate(group.items):
                for outcomes, found_one in zip(per_config, self._group(PackedGroup([item], group.packed[i:i + 1]))):
                    outcomes += found_one
            return per_config
        return [[Outcome(it.record, d, None, it.index) for it, d in zip(group.items, discoveries)]
                for discoveries in found]

    def _failed(self, group: PackedGroup, reason: str) -> list[list[Outcome]]:
        return [[Outcome(it.record, None, f"{it.record.path}: {reason}", it.index) for it in group.items]
                for _ in self.discoverers]

    def discover(self, items: Sequence[PreparedImage], packed: torch.Tensor | None = None) -> list[list[Discovery]]:
        """Every configuration's discoveries for images of one padded size, from one backbone pass.

        Args:
            items: prepared images of one padded size.
            packed: their (B, 3, H_pad, W_pad) uint8 buffer if already made (by a loader worker).

        Returns:
            ``[configuration][image]`` discoveries (boxes in original pixels, xyxy, max exclusive).
        """
        images = batch_images(items, self.backbone.device, packed)
        features = {antialias: self.backbone.extract_many(images, keys, precision=self.precision, pos_antialias=antialias)
                    for antialias, keys in self.passes.items()}
        return [d.locate_features(items, features[d.protocol.features.pos_embed_antialias]) for d in self.discoverers]


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
