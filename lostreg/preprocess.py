"""From an RGB uint8 array to the normalised, patch-padded tensor a ViT consumes.

This is section 1 of the LOST spec: no resizing, normalise first, then pad with zeros
(which, after normalisation, is the mean colour) on the bottom and right only, up to the
next multiple of the patch size. :func:`downscale_to_max_size` is the optional lostreg
extension for very large user images; it is off for dataset evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImagePreparer",
    "ImageTooSmallError",
    "PaddedImage",
    "PreparedImage",
    "downscale_to_max_size",
    "downscaled_hw",
    "to_padded_tensor",
]

#: Per-channel RGB mean of ImageNet, for inputs scaled to [0, 1] (DINO, DINOv2, +reg).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet, for inputs scaled to [0, 1].
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageTooSmallError(ValueError):
    """The image is smaller than one patch in height or width, so it has no patch grid."""


@dataclass(frozen=True)
class PaddedImage:
    """A normalised image padded to the patch grid.

    Attributes:
        tensor: ``(3, H_pad, W_pad)`` float32 on CPU, normalised RGB; the padded bottom
            rows and right columns are exactly 0. ``H_pad = rows * p``, ``W_pad = cols * p``.
        image_hw: ``(H, W)`` of the image before padding, in pixels.
        grid_hw: ``(rows, cols)`` of the patch grid, ``ceil(H / p)`` and ``ceil(W / p)``.
    """

    tensor: torch.Tensor
    image_hw: tuple[int, int]
    grid_hw: tuple[int, int]

    @property
    def padded_hw(self) -> tuple[int, int]:
        """``(H_pad, W_pad)`` of :attr:`tensor`, in pixels."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])


def _check_rgb_uint8(image_rgb: np.ndarray) -> None:
    if not isinstance(image_rgb, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image_rgb).__name__}")
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image_rgb.shape}")
    if image_rgb.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {image_rgb.dtype}")


def to_padded_tensor(
    image_rgb: np.ndarray,
    patch_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> PaddedImage:
    """Normalise an RGB image and zero-pad it to whole patches, at native resolution.

    The arithmetic is float32 in the order ``x / 255``, then ``(x - mean) / std``, as
    torchvision's ``ToTensor`` + ``Normalize`` do, so the values match the reference
    bit for bit. Padding comes after normalisation, on the bottom and right only; an
    image whose sides are already multiples of ``patch_size`` is not padded.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB array, values in [0, 255].
        patch_size: Side ``p`` of a square ViT patch, in pixels.
        mean: Per-channel RGB mean for values in [0, 1].
        std: Per-channel RGB standard deviation for values in [0, 1].

    Returns:
        A :class:`PaddedImage` with a ``(3, ceil(H/p)*p, ceil(W/p)*p)`` float32 CPU tensor.

    Raises:
        ImageTooSmallError: ``H < p`` or ``W < p``.
        ValueError: The array is not ``(H, W, 3)`` uint8, or ``patch_size < 1``.
    """
    _check_rgb_uint8(image_rgb)
    if patch_size < 1:
        raise ValueError(f"patch_size must be at least 1, got {patch_size}")
    height, width = int(image_rgb.shape[0]), int(image_rgb.shape[1])
    if height < patch_size or width < patch_size:
        raise ImageTooSmallError(
            f"image is {width}x{height} pixels, smaller than one {patch_size}-pixel patch"
        )

    # astype gives a fresh writable float32 copy (from_numpy warns on read-only arrays);
    # uint8 -> float32 is exact, so this equals ToTensor's convert-then-divide.
    chw = np.ascontiguousarray(image_rgb.transpose(2, 0, 1)).astype(np.float32)
    normalised = torch.from_numpy(chw).div_(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    normalised = normalised.sub_(mean_t).div_(std_t)

    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    padded = torch.zeros((3, rows * patch_size, cols * patch_size), dtype=torch.float32)
    padded[:, :height, :width] = normalised
    return PaddedImage(tensor=padded, image_hw=(height, width), grid_hw=(rows, cols))


def downscaled_hw(image_hw: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """(H, W) that :func:`downscale_to_max_size` gives an image of size ``image_hw``.

    Lets callers know the processed size from annotation sizes, without decoding the image.
    """
    height, width = image_hw
    longer = max(height, width)
    if max_size is None or longer <= max_size:
        return height, width
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1 or None, got {max_size}")

    def scaled(side: int) -> int:
        # round(side * max_size / longer), half up, in exact integer arithmetic.
        return max(1, (2 * side * max_size + longer) // (2 * longer))

    return (max_size if height == longer else scaled(height), max_size if width == longer else scaled(width))


def downscale_to_max_size(image_rgb: np.ndarray, max_size: int | None) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_size`` pixels.

    The longer side becomes exactly ``max_size``; the shorter one keeps the aspect ratio,
    rounded half up to an integer, and is at least 1. Resampling is PIL's bicubic, which
    widens its kernel with the reduction factor and is therefore antialiased (as
    torchvision's ``antialias=True`` resize used by the DINO family), keeping edges
    sharper than OpenCV's box-averaging ``INTER_AREA``; ``reducing_gap=3.0`` lets PIL
    box-reduce by whole factors first for speed, which its docs describe as
    indistinguishable from the full filter. Images are never enlarged.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB array, values in [0, 255].
        max_size: Largest allowed side in pixels, or ``None`` for no limit.

    Returns:
        ``(H', W', 3)`` uint8 RGB array: the input object itself when no resizing is
        needed, otherwise a new array.

    Raises:
        ValueError: ``max_size < 1``, or the array is not ``(H, W, 3)`` uint8.
    """
    _check_rgb_uint8(image_rgb)
    if max_size is None:
        return image_rgb
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1 or None, got {max_size}")
    height, width = int(image_rgb.shape[0]), int(image_rgb.shape[1])
    new_h, new_w = downscaled_hw((height, width), max_size)
    if (new_h, new_w) == (height, width):
        return image_rgb
    resized = Image.fromarray(np.ascontiguousarray(image_rgb)).resize(
        (new_w, new_h), resample=Image.Resampling.BICUBIC, reducing_gap=3.0
    )
    return np.array(resized, dtype=np.uint8)


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the backbone.

    Attributes:
        name: how the image is reported (a path, or ``skimage:astronaut``).
        original_hw: (H, W) of the decoded image after EXIF orientation.
        padded: the (possibly downscaled) image, normalised and zero-padded; its ``image_hw`` is
            the processed (unpadded) size that boxes are clipped to.
    """

    name: str
    original_hw: tuple[int, int]
    padded: PaddedImage


@dataclass(frozen=True)
class ImagePreparer:
    """CPU preprocessing for one backbone: optional downscale, normalise, pad.

    Small and picklable, so data-loader worker processes can run it without the model.

    Attributes:
        patch_size: the backbone's patch side p in pixels.
        mean, std: the backbone's RGB normalisation for values in [0, 1].
        max_size: longer-side limit in pixels (None = native resolution, the published protocol).
    """

    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_size: int | None = None

    def __call__(self, image_rgb: np.ndarray, name: str) -> PreparedImage:
        """(H, W, 3) uint8 RGB -> :class:`PreparedImage`.

        Raises:
            ImageTooSmallError: image smaller than one patch.
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
