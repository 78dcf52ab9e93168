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

from lostreg.errors import LostregError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImagePreparer",
    "ImageTooSmallError",
    "PaddedImage",
    "PreparedImage",
    "batch_images",
    "chw_uint8",
    "downscale_to_max_size",
    "normalize_packed",
    "pack_uint8",
    "downscaled_hw",
    "to_padded_tensor",
]

#: Per-channel RGB mean of ImageNet, for inputs scaled to [0, 1] (DINO, DINOv2, +reg).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet, for inputs scaled to [0, 1].
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageTooSmallError(LostregError, ValueError):
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
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    pixels = chw_uint8(image_rgb)
    packed = pack_uint8([pixels], (rows * patch_size, cols * patch_size))
    padded = normalize_packed(packed, [(height, width)], mean, std)[0]
    return PaddedImage(tensor=padded, image_hw=(height, width), grid_hw=(rows, cols))


def chw_uint8(image_rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> (3, H, W) uint8 contiguous CPU tensor (a copy)."""
    return torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))


def pack_uint8(pixels: Sequence[torch.Tensor], padded_hw: tuple[int, int]) -> torch.Tensor:
    """Images of one padded size in one (B, 3, H_pad, W_pad) uint8 CPU tensor, top-left aligned.

    The padding holds 0 here; :func:`normalize_packed` sets it to exactly 0 *after*
    normalisation, as the spec requires (the mean colour), so a uint8 buffer (a quarter of the
    float32 bytes) is what crosses process and device boundaries.

    Args:
        pixels: (3, h_i, w_i) uint8 tensors with ``h_i <= H_pad`` and ``w_i <= W_pad``.
        padded_hw: (H_pad, W_pad).
    """
    height, width = padded_hw
    packed = torch.zeros((len(pixels), 3, height, width), dtype=torch.uint8)
    for i, image in enumerate(pixels):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected (3, H, W) uint8 pixels, got {tuple(image.shape)} {image.dtype}")
        h, w = int(image.shape[1]), int(image.shape[2])
        if h > height or w > width:
            raise ValueError(f"image {h}x{w} does not fit the padded size {height}x{width}")
        packed[i, :, :h, :w] = image
    return packed


def normalize_packed(
    packed: torch.Tensor,
    image_hws: Sequence[tuple[int, int]],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalise a packed uint8 batch where it lives (CPU or device) and zero its padding.

    The arithmetic is float32 in the order ``x / 255``, then ``(x - mean) / std``, as
    torchvision's ``ToTensor`` + ``Normalize`` do: each step is one correctly rounded IEEE
    operation per element, so the result is the same bits on a CPU and on a GPU.

    Args:
        packed: (B, 3, H_pad, W_pad) uint8 from :func:`pack_uint8` (any device).
        image_hws: (h_i, w_i) of each image before padding.
        mean, std: per-channel RGB normalisation for values in [0, 1].

    Returns:
        (B, 3, H_pad, W_pad) float32 on ``packed``'s device; exactly 0 outside each image.
    """
    device = packed.device
    x = packed.to(torch.float32).div_(255)
    x.sub_(torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1))
    x.div_(torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1))
    hws = torch.as_tensor(list(image_hws), dtype=torch.int64, device=device).view(-1, 2)
    rows = torch.arange(x.shape[-2], device=device).view(1, -1, 1) < hws[:, 0].view(-1, 1, 1)
    cols = torch.arange(x.shape[-1], device=device).view(1, 1, -1) < hws[:, 1].view(-1, 1, 1)
    # where() writes +0.0 (a product with 0 would leave -0.0 for negative values).
    return torch.where((rows & cols).unsqueeze(1), x, torch.zeros((), dtype=x.dtype, device=device))


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


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One image ready for the backbone: decoded, downscaled if asked, still uint8.

    Normalisation and padding happen on the backbone's device, for a whole batch at once
    (:func:`pack_uint8` then :func:`normalize_packed`): only uint8 crosses process and device
    boundaries.

    Attributes:
        name: how the image is reported (a path, or ``skimage:astronaut``).
        original_hw: (H, W) of the decoded image after EXIF orientation.
        pixels: (3, h, w) uint8 CPU tensor of the processed image (after ``max_size``): the size
            boxes are clipped to.
        patch_size: the backbone's patch side p.
        mean, std: the backbone's normalisation.
    """

    name: str
    original_hw: tuple[int, int]
    pixels: torch.Tensor
    patch_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def image_hw(self) -> tuple[int, int]:
        """(h, w) of the processed image, before padding."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid: ``ceil(h / p)``, ``ceil(w / p)``."""
        h, w = self.image_hw
        p = self.patch_size
        return -(-h // p), -(-w // p)

    @property
    def padded_hw(self) -> tuple[int, int]:
        """(H_pad, W_pad) = (rows * p, cols * p)."""
        rows, cols = self.grid_hw
        return rows * self.patch_size, cols * self.patch_size

    @property
    def padded(self) -> PaddedImage:
        """The normalised, zero-padded float image on the CPU (what one-image tools draw on)."""
        tensor = normalize_packed(pack_uint8([self.pixels], self.padded_hw), [self.image_hw], self.mean, self.std)[0]
        return PaddedImage(tensor=tensor, image_hw=self.image_hw, grid_hw=self.grid_hw)


def batch_images(items: Sequence[PreparedImage], device: torch.device | str = "cpu",
                 packed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H_pad, W_pad) float32 normalised batch on ``device`` for images of one padded size.

    Args:
        items: the images (one padded size, one normalisation).
        device: where to normalise (the backbone's device).
        packed: their :func:`pack_uint8` buffer if already made (e.g. by a loader worker, pinned);
            copied to ``device`` without blocking.

    Raises:
        ValueError: the images have different padded sizes.
    """
    sizes = {it.padded_hw for it in items}
    if len(sizes) != 1:
        raise ValueError(f"a batch needs one padded size, got {sorted(sizes)}")
    if packed is None:
        packed = pack_uint8([it.pixels for it in items], items[0].padded_hw)
    packed = packed.to(device, non_blocking=True)
    return normalize_packed(packed, [it.image_hw for it in items], items[0].mean, items[0].std)


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
        _check_rgb_uint8(image_rgb)
        original_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
        resized = downscale_to_max_size(image_rgb, self.max_size)
        height, width = int(resized.shape[0]), int(resized.shape[1])
        if height < self.patch_size or width < self.patch_size:
            raise ImageTooSmallError(
                f"image is {width}x{height} pixels, smaller than one {self.patch_size}-pixel patch"
            )
        return PreparedImage(name=name, original_hw=original_hw, pixels=chw_uint8(resized),
                             patch_size=self.patch_size, mean=self.mean, std=self.std)

    def padded_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the padded tensor for an image of size ``image_hw``, without decoding it."""
        h, w = downscaled_hw(image_hw, self.max_size)
        p = self.patch_size
        return (-(-h // p) * p, -(-w // p) * p)
