"""Object discovery on images: preprocess -> backbone features -> LOST -> pixel box.

The stages are separate calls so that dataset runs can batch and cache them:

* :meth:`ObjectDiscoverer.prepare` (CPU, per image): optional downscale, normalise, pad.
* :meth:`ObjectDiscoverer.discover_batch` (device): one backbone pass for images of the same
  padded size, then LOST per image and the box in original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lostreg.backbones import Backbone, FeatureKind
from lostreg.boxes import patch_box_to_pixels, rescale_box_xyxy
from lostreg.io.images import load_image_rgb
from lostreg.lost import LostResult, lost
from lostreg.preprocess import PaddedImage, downscale_to_max_size, downscaled_hw, to_padded_tensor

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class LostConfig:
    """LOST protocol knobs (defaults = the LOST paper: raw keys of the last layer, k = 100, no bias).

    ``l2_normalize`` divides each patch feature by its L2 norm before LOST (the Gram matrix
    becomes cosine similarities), as in the public-checkpoint protocol of spec section 6.
    """

    k_patches: int = 100
    gram_bias: float = 0.0
    which: FeatureKind = "k"
    layer: int = -1
    l2_normalize: bool = False

    def features_for_lost(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) backbone features -> what LOST sees (L2-normalised along D when asked)."""
        return F.normalize(features, dim=-1) if self.l2_normalize else features


@dataclass(frozen=True)
class ImagePreparer:
    """CPU preprocessing for one backbone: optional downscale, normalise, pad.

    Small and picklable, so data-loader worker processes can run it without the model.
    """

    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_size: int | None = None

    def __call__(self, image_rgb: np.ndarray, name: str) -> "PreparedImage":
        """(H, W, 3) uint8 RGB -> :class:`PreparedImage`.

        Raises:
            lostreg.preprocess.ImageTooSmallError: image smaller than one patch.
        """
        original_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
        resized = downscale_to_max_size(image_rgb, self.max_size)
        padded = to_padded_tensor(resized, self.patch_size, self.mean, self.std)
        return PreparedImage(name=name, original_hw=original_hw, padded=padded)

    def padded_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the padded tensor for an image of size ``image_hw``, without decoding it."""
        h, w = downscaled_hw(image_hw, self.max_size)
        p = self.patch_size
        return (-(-h // p) * p, -(-w // p) * p)


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the backbone.

    Attributes:
        name: how the image is reported (a path, or ``skimage:astronaut``).
        original_hw: (H, W) of the decoded image after EXIF orientation.
        padded: the (possibly downscaled) image, normalised and zero-padded; its ``image_hw`` is
            the processed (unpadded) size that LOST boxes are clipped to.
    """

    name: str
    original_hw: tuple[int, int]
    padded: PaddedImage


@dataclass(frozen=True)
class Discovery:
    """The main object of one image.

    Attributes:
        image: the image's name (path as given).
        width, height: original size in pixels (after EXIF orientation).
        box_xyxy: (x1, y1, x2, y2) in original pixels, integers, max exclusive.
        seed_rc: (row, col) of the seed in the patch grid of the processed image.
        seed_box_xyxy: the seed patch in original pixels (x1, y1, x2, y2), max exclusive.
        backbone: backbone name.
        lost: the full patch-level result (mask, similars, degree, expansion map).
        processed_hw: (H, W) the backbone saw before padding (differs from the original
            only when ``max_size`` downscaled the image).
    """

    image: str
    width: int
    height: int
    box_xyxy: Box
    seed_rc: tuple[int, int]
    seed_box_xyxy: Box
    backbone: str
    lost: LostResult = field(repr=False)
    processed_hw: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        """The JSON record printed by ``lostreg discover`` (plain Python types)."""
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "box_xyxy": list(self.box_xyxy),
            "seed_rc": list(self.seed_rc),
            "backbone": self.backbone,
        }


class ObjectDiscoverer:
    """Finds the main object of images with LOST on one backbone.

    Args:
        backbone: a built backbone (kept for all images: load once).
        config: LOST protocol.
        max_size: if set, images whose longer side exceeds it are downscaled first; boxes are
            mapped back to original pixels. None = native resolution (the paper's protocol).
    """

    def __init__(self, backbone: Backbone, config: LostConfig = LostConfig(), max_size: int | None = None) -> None:
        self.backbone = backbone
        self.config = config
        self.max_size = max_size
        self.preparer = ImagePreparer(backbone.patch_size, backbone.mean, backbone.std, max_size)

    def prepare(self, image_rgb: np.ndarray, name: str) -> PreparedImage:
        """(H, W, 3) uint8 RGB -> :class:`PreparedImage` (CPU work only); see :class:`ImagePreparer`."""
        return self.preparer(image_rgb, name)

    def prepare_path(self, path: str | Path) -> PreparedImage:
        """Read (EXIF-oriented RGB) and prepare one file. Raises ImageReadError / ImageTooSmallError."""
        return self.prepare(load_image_rgb(path), str(path))

    def discover_batch(self, items: Sequence[PreparedImage]) -> list[Discovery]:
        """One backbone pass for images that share a padded size, then LOST on each.

        Batch composition never changes a box: every image's features depend on itself only.
        """
        if not items:
            return []
        shapes = {tuple(it.padded.tensor.shape) for it in items}
        if len(shapes) != 1:
            raise ValueError(f"a batch needs one padded size, got {sorted(shapes)}")
        images = torch.stack([it.padded.tensor for it in items])
        features = self.backbone.extract(images, which=self.config.which, layer=self.config.layer)
        return [self.locate(item, feats) for item, feats in zip(items, features)]

    def discover(self, image_rgb: np.ndarray, name: str = "<array>") -> Discovery:
        """Main object of one (H, W, 3) uint8 RGB image."""
        return self.discover_batch([self.prepare(image_rgb, name)])[0]

    def discover_path(self, path: str | Path) -> Discovery:
        """Main object of one image file."""
        return self.discover_batch([self.prepare_path(path)])[0]

    def locate(self, item: PreparedImage, features: torch.Tensor) -> Discovery:
        """LOST on one image's backbone features, box mapped to original pixels.

        Args:
            item: the prepared image the features come from.
            features: (rows*cols, D) float, row-major over ``item.padded.grid_hw``, prefix tokens
                dropped, as :meth:`Backbone.extract` gives them (normalised here if the config says so).
        """
        grid_hw = item.padded.grid_hw
        result = lost(self.config.features_for_lost(features), grid_hw,
                      k_patches=self.config.k_patches, gram_bias=self.config.gram_bias)
        p = self.backbone.patch_size
        processed_hw = item.padded.image_hw
        row, col = result.seed_rc
        box = patch_box_to_pixels(result.box, p, processed_hw)
        seed_box = patch_box_to_pixels((col, row, col + 1, row + 1), p, processed_hw)
        if processed_hw != item.original_hw:
            box = rescale_box_xyxy(box, processed_hw, item.original_hw)
            seed_box = rescale_box_xyxy(seed_box, processed_hw, item.original_hw)
        return Discovery(
            image=item.name,
            width=item.original_hw[1],
            height=item.original_hw[0],
            box_xyxy=box,
            seed_rc=(row, col),
            seed_box_xyxy=seed_box,
            backbone=self.backbone.name,
            lost=result,
            processed_hw=processed_hw,
        )
