"""Object discovery on images: preprocess -> backbone features -> discovery method -> pixel box.

The stages are separate calls so that dataset runs can batch and cache them:

* :meth:`ObjectDiscoverer.prepare` (CPU, per image): decode, optional downscale; stays uint8.
* :meth:`ObjectDiscoverer.discover_batch` / :meth:`~ObjectDiscoverer.discover_packed` (device):
  normalise and pad the batch on the device, one backbone pass for images of the same padded
  size, the method batched on the device, boxes in original pixels.

With ``protocol.objects > 1`` a discovery holds several objects (:attr:`Discovery.objects`),
most confident first; its ``box_xyxy``, ``seed_rc`` and ``result`` are the most confident one's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lostreg.backbones import Backbone
from lostreg.boxes import patch_box_to_pixels, rescale_box_xyxy
from lostreg.errors import ConfigError
from lostreg.io.images import load_image_rgb
from lostreg.lost import LostResult
from lostreg.methods import MethodResult, find_objects
from lostreg.precision import check_precision
from lostreg.preprocess import ImagePreparer, PreparedImage, batch_images
from lostreg.protocol import OUTPUT_NORMS, DiscoveryProtocol, FeatureConfig, FeatureKey, LostConfig

__all__ = [
    "Discovery",
    "DiscoveryProtocol",
    "FoundObject",
    "FeatureConfig",
    "ImagePreparer",
    "LostConfig",
    "ObjectDiscoverer",
    "PreparedImage",
    "features_for_method",
]

Box = tuple[int, int, int, int]


def features_for_method(features: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """(..., D) backbone features -> what the discovery method sees (L2-normalised along D when asked)."""
    return F.normalize(features, dim=-1) if config.l2_normalize else features


@dataclass(frozen=True)
class FoundObject:
    """One object of an image, in pixels of the original image.

    Attributes:
        box_xyxy: (x1, y1, x2, y2) integers, max exclusive.
        score: the method's confidence (:attr:`lostreg.methods.MethodSpec.confidence`; higher = more
            confident), None for a method without one.
        seed_rc: (row, col) of its seed in the patch grid of the processed image.
        seed_box_xyxy: its seed patch, (x1, y1, x2, y2) pixels, max exclusive.
        result: the method's patch-level result for this object.
    """

    box_xyxy: Box
    score: float | None
    seed_rc: tuple[int, int]
    seed_box_xyxy: Box
    result: MethodResult = field(repr=False)


@dataclass(frozen=True)
class Discovery:
    """The main object of one image (and, with ``protocol.objects > 1``, the others found).

    Attributes:
        image: the image's name (path as given).
        width, height: original size in pixels (after EXIF orientation).
        box_xyxy: (x1, y1, x2, y2) in original pixels, integers, max exclusive.
        seed_rc: (row, col) of the seed in the patch grid of the processed image.
        seed_box_xyxy: the seed patch in original pixels (x1, y1, x2, y2), max exclusive.
        backbone: backbone name.
        result: the method's full patch-level result (for LOST a :class:`~lostreg.lost.LostResult`:
            mask, similars, degree, expansion map).
        processed_hw: (H, W) the backbone saw before padding (differs from the original
            only when ``max_size`` downscaled the image).
        objects: every object found, most confident first (ties: discovery order); the first
            is the one ``box_xyxy``, ``seed_rc``, ``seed_box_xyxy`` and ``result`` describe.
    """

    image: str
    width: int
    height: int
    box_xyxy: Box
    seed_rc: tuple[int, int]
    seed_box_xyxy: Box
    backbone: str
    result: MethodResult = field(repr=False)
    processed_hw: tuple[int, int]
    #: what the method adds to a prediction line (:attr:`lostreg.methods.MethodSpec.record_fields`)
    record_fields: dict[str, Any] = field(default_factory=dict, repr=False)
    objects: tuple[FoundObject, ...] = field(default=(), repr=False)

    @property
    def boxes_xyxy(self) -> list[list[int]]:
        """Every object's box, most confident first (``[x1, y1, x2, y2]`` pixels, max exclusive)."""
        return [list(o.box_xyxy) for o in self.objects] if self.objects else [list(self.box_xyxy)]

    @property
    def scores(self) -> list[float] | None:
        """Every object's confidence, most confident first; None for a method without one."""
        if not self.objects or any(o.score is None for o in self.objects):
            return None
        return [float(o.score) for o in self.objects]  # type: ignore[arg-type]

    @property
    def lost(self) -> LostResult:
        """The LOST result (``result`` under the method's own name)."""
        if not isinstance(self.result, LostResult):
            raise AttributeError(f"this discovery ran {type(self.result).__name__}, not LOST: use .result")
        return self.result

    def to_json(self, with_objects: bool = False) -> dict[str, Any]:
        """The JSON record printed by ``lostreg discover`` (plain Python types).

        A method's own fields follow (:attr:`lostreg.methods.MethodSpec.record_fields`; TokenCut's
        ``degenerate``: its spectrum gave no reliable split, the box is the spec's fixed fallback),
        as in eval's ``preds.jsonl`` lines.

        Args:
            with_objects: add ``boxes_xyxy`` (every object, most confident first) and ``scores``
                (their confidences, or None), as ``preds.jsonl`` lines have them; off, the record
                is the one of lostreg versions before several objects and scores.
        """
        record: dict[str, Any] = {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "box_xyxy": list(self.box_xyxy),
            "seed_rc": list(self.seed_rc),
            "backbone": self.backbone,
        }
        if with_objects:
            record.update(boxes_xyxy=self.boxes_xyxy, scores=self.scores)
        record.update(self.record_fields)
        return record


class ObjectDiscoverer:
    """Finds the main object of images on one backbone with one discovery protocol.

    Args:
        backbone: a built backbone (kept for all images: load once).
        protocol: features and method (default: LOST as published). Validated here, against the
            backbone too (``features.layer`` in range, ``features.which`` available), so a bad
            value fails before any image is read.
        max_size: if set, images whose longer side exceeds it are downscaled first; boxes are
            mapped back to original pixels. None = native resolution (the paper's protocol).
        precision: the backbone forward's numerics: ``fp32`` (exact, default), ``tf32``, ``bf16``
            (:mod:`lostreg.precision`); the method itself always runs in true fp32.

    Raises:
        ProtocolError, ValueError: a protocol value that does not apply.
    """

    def __init__(self, backbone: Backbone, protocol: DiscoveryProtocol = DiscoveryProtocol(),
                 max_size: int | None = None, precision: str = "fp32") -> None:
        if not isinstance(protocol, DiscoveryProtocol):
            raise TypeError(f"protocol must be a DiscoveryProtocol, got {type(protocol).__name__}")
        protocol.validate()
        backbone.check_feature_key(protocol.features.key, pos_antialias=protocol.features.pos_embed_antialias)
        if max_size is not None and (isinstance(max_size, bool) or max_size < 1):
            raise ConfigError(f"max_size must be a positive number of pixels or None, got {max_size!r}")
        self.backbone = backbone
        self.protocol = protocol
        self.max_size = max_size
        self.precision = check_precision(precision)
        self.preparer = ImagePreparer(backbone.patch_size, backbone.mean, backbone.std, max_size)

    def prepare(self, image_rgb: np.ndarray, name: str) -> PreparedImage:
        """(H, W, 3) uint8 RGB -> :class:`PreparedImage` (CPU work only); see :class:`ImagePreparer`."""
        return self.preparer(image_rgb, name)

    def prepare_path(self, path: str | Path) -> PreparedImage:
        """Read (EXIF-oriented RGB) and prepare one file. Raises ImageReadError / ImageTooSmallError."""
        return self.prepare(load_image_rgb(path), str(path))

    def discover_batch(self, items: Sequence[PreparedImage]) -> list[Discovery]:
        """One backbone pass for images that share a padded size, then the method on each.

        Batch composition never changes a box: every image's features depend on itself only.
        """
        return self.discover_packed(items)

    def discover_packed(self, items: Sequence[PreparedImage], packed: torch.Tensor | None = None) -> list[Discovery]:
        """:meth:`discover_batch` from the images' :func:`~lostreg.preprocess.pack_uint8` buffer, if made.

        The uint8 buffer goes to the backbone's device (without blocking when pinned) and is
        normalised and padded there; the features of the batch go through the method at once.
        """
        if not items:
            return []
        images = batch_images(items, self.backbone.device, packed)
        features = self.backbone.extract_many(images, self.feature_keys, precision=self.precision,
                                              pos_antialias=self.protocol.features.pos_embed_antialias)
        return self.locate_features(items, features)

    @property
    def feature_keys(self) -> list[FeatureKey]:
        """What the backbone must return: the protocol's features, then what the method needs besides
        (:attr:`lostreg.methods.MethodSpec.extra_keys`, e.g. the output norms for artifact-aware LOST)."""
        extra = self.protocol.spec.extra_keys(self.protocol.method_knobs)
        return list(dict.fromkeys([self.protocol.features.key, *extra]))

    def discover(self, image_rgb: np.ndarray, name: str = "<array>") -> Discovery:
        """Main object of one (H, W, 3) uint8 RGB image."""
        return self.discover_batch([self.prepare(image_rgb, name)])[0]

    def discover_path(self, path: str | Path) -> Discovery:
        """Main object of one image file."""
        return self.discover_batch([self.prepare_path(path)])[0]

    def locate(self, item: PreparedImage, features: torch.Tensor,
               output_norms: torch.Tensor | None = None) -> Discovery:
        """The method on one image's backbone features, box mapped to original pixels.

        Args:
            item: the prepared image the features come from.
            features: (rows*cols, D) float, row-major over ``item.grid_hw``, prefix tokens
                dropped, as :meth:`Backbone.extract` gives them (normalised here if the protocol says so).
            output_norms: (rows*cols, 1) output-token norms, needed by ``lost.exclude_outliers``.
        """
        norms = None if output_norms is None else output_norms[None]
        return self.locate_batch([item], features[None], norms)[0]

    def locate_batch(self, items: Sequence[PreparedImage], features: torch.Tensor,
                     output_norms: torch.Tensor | None = None) -> list[Discovery]:
        """The method on a batch of same-grid images' features (one batched call), boxes in original pixels.

        Args:
            items: the prepared images, all of one padded size.
            features: (B, rows*cols, D) float, as :meth:`Backbone.extract` gives them.
            output_norms: (B, rows*cols, 1) output-token norms (:data:`~lostreg.protocol.OUTPUT_NORMS`),
                needed by ``lost.exclude_outliers``.
        """
        found = {self.protocol.features.key: features}
        if output_norms is not None:
            found[OUTPUT_NORMS] = output_norms
        return self.locate_features(items, found)

    def locate_features(self, items: Sequence[PreparedImage],
                        features: Mapping[FeatureKey, torch.Tensor]) -> list[Discovery]:
        """The method on the feature sets one backbone pass gave a batch of same-grid images.

        Args:
            items: the prepared images, all of one padded size.
            features: ``{key: (B, rows*cols, D) float}`` holding at least :attr:`feature_keys`
                (a sweep's pass may hold more); normalised here if the protocol says so.
        """
        grid_hw = items[0].grid_hw
        key = self.protocol.features.key
        extras = {k: v for k, v in features.items() if k != key}
        found = find_objects(self.protocol, features_for_method(features[key], self.protocol.features), grid_hw,
                             extras)
        return [self._discovery(item, results) for item, results in zip(items, found)]

    def _object(self, item: PreparedImage, result: MethodResult) -> FoundObject:
        """One result's box and seed in original pixels, with the method's confidence."""
        p = self.backbone.patch_size
        processed_hw = item.image_hw
        row, col = result.seed_rc
        box = patch_box_to_pixels(result.box, p, processed_hw)
        seed_box = patch_box_to_pixels((col, row, col + 1, row + 1), p, processed_hw)
        if processed_hw != item.original_hw:
            box = rescale_box_xyxy(box, processed_hw, item.original_hw)
            seed_box = rescale_box_xyxy(seed_box, processed_hw, item.original_hw)
        confidence = self.protocol.spec.confidence
        score = None if confidence is None else float(confidence(result))
        return FoundObject(box, score, (row, col), seed_box, result)

    def _discovery(self, item: PreparedImage, results: Sequence[MethodResult]) -> Discovery:
        objects = [self._object(item, result) for result in results]
        # Most confident first; sorted() is stable, so ties keep discovery order (the first object
        # of the single-object protocol stays first whatever the scores).
        objects = sorted(objects, key=lambda o: -o.score if o.score is not None else 0.0)
        top = objects[0]
        return Discovery(
            image=item.name,
            width=item.original_hw[1],
            height=item.original_hw[0],
            box_xyxy=top.box_xyxy,
            seed_rc=top.seed_rc,
            seed_box_xyxy=top.seed_box_xyxy,
            backbone=self.backbone.name,
            result=top.result,
            processed_hw=item.image_hw,
            record_fields=self.protocol.spec.record_fields(top.result),
            objects=tuple(objects),
        )
