"""Tests for lostreg.preprocess (spec section 1: normalise, then pad bottom/right)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from lostreg.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTooSmallError,
    PaddedImage,
    downscale_to_max_size,
    to_padded_tensor,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_PHOTO = SHARED / "data" / "VOC07_000236.jpg"


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _expected(image: np.ndarray) -> np.ndarray:
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    chw = image.transpose(2, 0, 1).astype(np.float32)
    return (chw / np.float32(255) - mean) / std


def test_constants() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    ("patch", "padded_hw", "grid_hw"),
    [(16, (384, 512), (24, 32)), (14, (378, 504), (27, 36))],
)
def test_spec_padding_example(
    patch: int, padded_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> None:
    image = _image(375, 500)  # 500 wide x 375 high
    out = to_padded_tensor(image, patch)
    assert isinstance(out, PaddedImage)
    assert out.tensor.shape == (3, *padded_hw)
    assert out.tensor.dtype == torch.float32 and out.tensor.device.type == "cpu"
    assert out.image_hw == (375, 500)
    assert out.grid_hw == grid_hw
    assert out.padded_hw == padded_hw

    tensor = out.tensor.numpy()
    # Padding is bottom and right only, exactly zero (= the mean colour).
    assert (tensor[:, 375:, :] == 0).all()
    assert (tensor[:, :, 500:] == 0).all()
    np.testing.assert_allclose(tensor[:, :375, :500], _expected(image), rtol=0, atol=1e-6)


def test_matches_torchvision_bit_for_bit() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    image = _image(30, 45, seed=3)
    reference = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )(image)
    out = to_padded_tensor(image, 16).tensor
    assert torch.equal(out[:, :30, :45], reference)


def test_exact_multiple_gets_no_padding() -> None:
    image = _image(32, 48)
    out = to_padded_tensor(image, 16)
    assert out.tensor.shape == (3, 32, 48)
    assert out.grid_hw == (2, 3)
    np.testing.assert_allclose(out.tensor.numpy(), _expected(image), rtol=0, atol=1e-6)


def test_non_square_tall_image() -> None:
    image = _image(50, 17)
    out = to_padded_tensor(image, 8)
    assert out.tensor.shape == (3, 56, 24)
    assert out.grid_hw == (7, 3)
    assert out.image_hw == (50, 17)
    assert (out.tensor[:, 50:, :] == 0).all() and (out.tensor[:, :, 17:] == 0).all()


def test_custom_mean_std_and_mean_colour_maps_to_zero() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    image[...] = (51, 102, 204)  # 0.2, 0.4, 0.8
    out = to_padded_tensor(image, 16, mean=(0.2, 0.4, 0.8), std=(1.0, 1.0, 1.0))
    assert out.tensor.abs().max() < 1e-6


@pytest.mark.parametrize(("h", "w"), [(15, 100), (100, 15), (1, 1)])
def test_image_smaller_than_a_patch(h: int, w: int) -> None:
    with pytest.raises(ImageTooSmallError) as info:
        to_padded_tensor(_image(h, w), 16)
    assert str(info.value) == f"image is {w}x{h} pixels, smaller than one 16-pixel patch"
    assert isinstance(info.value, ValueError)


def test_exactly_one_patch() -> None:
    out = to_padded_tensor(_image(14, 14), 14)
    assert out.tensor.shape == (3, 14, 14) and out.grid_hw == (1, 1)


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        to_padded_tensor(_image(20, 20).astype(np.float32), 16)
    with pytest.raises(ValueError):
        to_padded_tensor(np.zeros((20, 20), np.uint8), 16)
    with pytest.raises(ValueError):
        to_padded_tensor(_image(20, 20), 0)


def test_read_only_input_and_input_untouched() -> None:
    image = _image(20, 20)
    before = image.copy()
    image.flags.writeable = False
    out = to_padded_tensor(image, 16)
    np.testing.assert_array_equal(image, before)
    out.tensor.add_(1)  # the tensor owns its memory
    np.testing.assert_array_equal(image, before)


def test_padded_image_is_frozen() -> None:
    out = to_padded_tensor(_image(16, 16), 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.grid_hw = (2, 2)  # type: ignore[misc]


# ------------------------------------------------------------------------- downscale


def test_downscale_keeps_aspect_landscape() -> None:
    image = _image(375, 500)
    out = downscale_to_max_size(image, 200)
    assert out.shape == (150, 200, 3) and out.dtype == np.uint8


def test_downscale_keeps_aspect_portrait_and_rounds() -> None:
    image = _image(1000, 333)
    out = downscale_to_max_size(image, 100)
    assert out.shape == (100, 33, 3)  # 33.3 -> 33
    out = downscale_to_max_size(_image(1000, 335), 100)
    assert out.shape == (100, 34, 3)  # 33.5 -> 34 (half up)


def test_downscale_extreme_aspect_keeps_at_least_one_pixel() -> None:
    out = downscale_to_max_size(_image(2, 1000), 100)
    assert out.shape == (1, 100, 3)


def test_downscale_leaves_small_images_unchanged() -> None:
    image = _image(40, 60)
    assert downscale_to_max_size(image, 60) is image
    assert downscale_to_max_size(image, 1000) is image
    assert downscale_to_max_size(image, None) is image


def test_downscale_is_antialiased() -> None:
    # A one-pixel checkerboard averages to mid-grey when antialiased; nearest-neighbour
    # sampling would keep pure black or white pixels.
    board = (np.indices((200, 200)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)
    out = downscale_to_max_size(image, 50)
    assert out.shape == (50, 50, 3)
    assert np.abs(out.astype(int) - 127.5).max() < 8


def test_downscale_preserves_flat_colour() -> None:
    image = np.zeros((300, 200, 3), np.uint8)
    image[...] = (10, 128, 250)
    out = downscale_to_max_size(image, 90)
    assert out.shape == (90, 60, 3)
    assert (out == (10, 128, 250)).all()


def test_downscale_rejects_bad_max_size() -> None:
    with pytest.raises(ValueError):
        downscale_to_max_size(_image(10, 10), 0)


@pytest.mark.skipif(not VOC_PHOTO.is_file(), reason=f"{VOC_PHOTO} absent (no ../shared)")
def test_real_photo_end_to_end() -> None:
    from lostreg.io.images import load_image_rgb

    image = load_image_rgb(VOC_PHOTO)
    assert image.shape == (381, 500, 3) and image.dtype == np.uint8
    out = to_padded_tensor(image, 16)
    assert out.tensor.shape == (3, 384, 512) and out.grid_hw == (24, 32)
    out14 = to_padded_tensor(image, 14)
    assert out14.tensor.shape == (3, 392, 504) and out14.grid_hw == (28, 36)
    small = downscale_to_max_size(image, 250)
    assert small.shape == (191, 250, 3)  # 381 * 250 / 500 = 190.5 -> 191


def test_downscaled_hw_predicts_the_resize_without_decoding() -> None:
    """The size the loader groups batches by is the size the resize produces."""
    from lostreg.preprocess import downscaled_hw

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 300, size=2))
        max_size = int(rng.integers(1, 250))
        image = np.zeros((h, w, 3), np.uint8)
        assert downscale_to_max_size(image, max_size).shape[:2] == downscaled_hw((h, w), max_size)
    assert downscaled_hw((375, 500), None) == (375, 500)
