"""Tests of the box conventions in :mod:`lostreg.boxes`."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lostreg.boxes import (
    coco_xywh_to_xyxy,
    iou_matrix,
    iou_xyxy,
    patch_box_to_pixels,
    rescale_box_xyxy,
    voc_to_xyxy,
    xyxy_to_voc,
    xyxy_to_xywh,
)

# ------------------------------------------------------------------------------ IoU


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 2, 1), (0, 0, 1, 1), 0.5),  # inter 1, union 2
        ((0, 0, 10, 10), (0, 0, 10, 5), 0.5),  # inter 50, union 100
        ((0, 0, 4, 4), (2, 0, 6, 4), 1 / 3),  # inter 8, union 24
        ((0, 0, 10, 10), (2, 2, 4, 4), 0.04),  # containment: 4 / 100
        ((2, 2, 4, 4), (0, 0, 10, 10), 0.04),  # symmetric
        ((3, 5, 9, 8), (3, 5, 9, 8), 1.0),  # identical
        ((0, 0, 1, 1), (1, 0, 2, 1), 0.0),  # touching along an edge
        ((0, 0, 1, 1), (1, 1, 2, 2), 0.0),  # touching at a corner
        ((0, 0, 1, 1), (5, 5, 6, 6), 0.0),  # disjoint
        ((1, 1, 1, 5), (0, 0, 10, 10), 0.0),  # zero-area inside a box: inter 0, union 100
        ((2, 2, 2, 2), (2, 2, 2, 2), 0.0),  # both zero-area: union 0 -> 0.0
        ((0, 0, 3, 0), (1, 0, 4, 0), 0.0),
    ],
)
def test_iou_hand_computed(a: tuple, b: tuple, expected: float) -> None:
    assert iou_xyxy(a, b) == expected  # exact: lostreg adds no epsilon
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == expected


def test_iou_no_plus_one_convention() -> None:
    # With the VOC "+1" areas this would be (2*2) / (2*2 + 2*2 - 2*1) = 4/6.
    assert iou_xyxy((0, 0, 1, 1), (0, 0, 1, 2)) == 0.5


def test_iou_exact_half_is_a_hit_without_epsilon() -> None:
    # The reference's epsilon puts this at 0.49999999..., which a ">= 0.5" test misses.
    iou = iou_xyxy((0, 0, 20, 10), (0, 0, 10, 10))
    assert iou == 0.5 and iou >= 0.5
    assert type(iou) is float


def test_iou_accepts_numpy_values_and_floats() -> None:
    a = np.array([0, 0, 2, 1], dtype=np.int64)
    assert iou_xyxy(a, (0.0, 0.0, 1.0, 1.0)) == 0.5
    assert type(iou_xyxy(a, a)) is float


def test_iou_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError):
        iou_xyxy((5, 0, 1, 1), (0, 0, 1, 1))
    with pytest.raises(ValueError):
        iou_xyxy((0, 0, 1), (0, 0, 1, 1))
    with pytest.raises(ValueError):
        iou_matrix(np.array([[0, 5, 1, 1]]), np.array([[0, 0, 1, 1]]))
    with pytest.raises(ValueError):
        iou_matrix(np.zeros((2, 3)), np.zeros((1, 4)))


def test_iou_matrix_matches_pairwise() -> None:
    rng = random.Random(7)

    def rand_box() -> tuple[int, int, int, int]:
        x1, y1 = rng.randint(0, 30), rng.randint(0, 30)
        return x1, y1, x1 + rng.randint(0, 15), y1 + rng.randint(0, 15)

    a = [rand_box() for _ in range(9)]
    b = [rand_box() for _ in range(6)] + [(0, 0, 0, 0)]
    mat = iou_matrix(np.array(a), np.array(b))
    assert mat.shape == (9, 7) and mat.dtype == np.float64
    for i, box_a in enumerate(a):
        for j, box_b in enumerate(b):
            assert mat[i, j] == iou_xyxy(box_a, box_b)
    assert np.all((mat >= 0) & (mat <= 1))
    assert np.count_nonzero(mat) > 0


def test_iou_matrix_empty_inputs() -> None:
    assert iou_matrix(np.zeros((0, 4)), np.array([[0, 0, 1, 1]])).shape == (0, 1)
    assert iou_matrix(np.array([[0, 0, 1, 1]]), np.zeros((0, 4))).shape == (1, 0)
    assert iou_matrix([], [[0, 0, 1, 1]]).shape == (0, 1)


# --------------------------------------------------------------------- VOC / COCO


def test_voc_to_xyxy_is_zero_based_exclusive() -> None:
    # A whole 500 x 375 image in VOC is (1, 1, 500, 375).
    assert voc_to_xyxy(1, 1, 500, 375) == (0, 0, 500, 375)
    assert voc_to_xyxy("48", "240", "195", "371") == (47, 239, 195, 371)
    box = voc_to_xyxy(10, 20, 10, 20)  # a single VOC pixel has area 1
    assert (box[2] - box[0]) * (box[3] - box[1]) == 1
    assert all(type(v) is int for v in voc_to_xyxy(np.int64(3), 4.0, "5", 6))


def test_voc_rejects_non_integers() -> None:
    with pytest.raises(ValueError):
        voc_to_xyxy("1.5", 1, 2, 2)
    with pytest.raises(ValueError):
        voc_to_xyxy(1.5, 1, 2, 2)


def test_voc_round_trip() -> None:
    assert xyxy_to_voc((0, 0, 500, 375)) == (1, 1, 500, 375)
    rng = random.Random(3)
    for _ in range(50):
        xmin, ymin = rng.randint(1, 400), rng.randint(1, 300)
        voc = (xmin, ymin, xmin + rng.randint(0, 90), ymin + rng.randint(0, 70))
        assert xyxy_to_voc(voc_to_xyxy(*voc)) == voc
        assert voc_to_xyxy(*xyxy_to_voc((xmin, ymin, xmin + 5, ymin + 7))) == (xmin, ymin, xmin + 5, ymin + 7)


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([0.5, 1.5, 2.0, 1.0], (0, 2, 2, 2)),  # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 2.5 -> 2
        ([2.5, 3.5, 1.0, 1.0], (2, 4, 4, 4)),  # 2.5 -> 2, 3.5 -> 4, 3.5 -> 4, 4.5 -> 4
        ([0.25, 0.4, 0.25, 0.2], (0, 0, 0, 1)),  # x + w = 0.5 -> 0; y + h = 0.6 -> 1
        ([10.7, 20.2, 30.0, 40.6], (11, 20, 41, 61)),
        ([0, 0, 640, 480], (0, 0, 640, 480)),
    ],
)
def test_coco_bankers_rounding(bbox: list, expected: tuple) -> None:
    out = coco_xywh_to_xyxy(bbox)
    assert out == expected
    assert all(type(v) is int for v in out)


def test_xyxy_to_xywh() -> None:
    assert xyxy_to_xywh((3, 4, 10, 20)) == (3, 4, 7, 16)
    assert xyxy_to_xywh((5, 5, 5, 5)) == (5, 5, 0, 0)
    with pytest.raises(ValueError):
        xyxy_to_xywh((5, 5, 4, 5))


# ------------------------------------------------------------------------ pixels


def test_patch_box_to_pixels_clips_padding() -> None:
    # 500 x 375 (W x H), p=16 -> grid 24 rows x 32 cols, padded 512 x 384.
    assert patch_box_to_pixels((0, 0, 32, 24), 16, (375, 500)) == (0, 0, 500, 375)
    assert patch_box_to_pixels((31, 23, 32, 24), 16, (375, 500)) == (496, 368, 500, 375)
    assert patch_box_to_pixels((5, 3, 10, 7), 16, (375, 500)) == (80, 48, 160, 112)
    # p=14 -> grid 27 x 36, padded 504 x 378.
    assert patch_box_to_pixels((0, 0, 36, 27), 14, (375, 500)) == (0, 0, 500, 375)
    assert patch_box_to_pixels((35, 0, 36, 1), 14, (375, 500)) == (490, 0, 500, 14)


def test_patch_box_to_pixels_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        patch_box_to_pixels((0, 0, 1, 1), 0, (10, 10))
    with pytest.raises(ValueError):
        patch_box_to_pixels((2, 0, 1, 1), 16, (10, 10))


def test_rescale_box_to_original_frame() -> None:
    # 1000 x 750 downscaled to 500 x 375: everything doubles.
    assert rescale_box_xyxy((0, 0, 500, 375), (375, 500), (750, 1000)) == (0, 0, 1000, 750)
    assert rescale_box_xyxy((1, 1, 3, 3), (375, 500), (750, 1000)) == (2, 2, 6, 6)
    # Non-integer scale 10/3: floor the minima, ceil the maxima.
    assert rescale_box_xyxy((1, 1, 2, 2), (3, 3), (10, 10)) == (3, 3, 7, 7)
    # Axes scale separately: (H, W) from (100, 200) to (300, 200).
    assert rescale_box_xyxy((10, 10, 20, 20), (100, 200), (300, 200)) == (10, 30, 20, 60)


def test_rescale_is_exact_and_clips() -> None:
    # In floats 38 * (375 / 114) = 124.99999999999999 (floor: 124) and
    # 57 * (500 / 114) = 250.00000000000003 (ceil: 251); the exact values are 125, 250.
    assert rescale_box_xyxy((38, 0, 76, 57), (114, 114), (500, 375)) == (125, 0, 250, 250)
    # Scale 1/3: minima floor (5/3 -> 1), maxima ceil (19/3 -> 7), not round.
    assert rescale_box_xyxy((5, 5, 19, 19), (30, 30), (10, 10)) == (1, 1, 7, 7)
    # An unclipped padded box (512 x 384 on a 500 x 375 frame) is clipped to the target.
    assert rescale_box_xyxy((0, 0, 512, 384), (375, 500), (750, 1000)) == (0, 0, 1000, 750)
    out = rescale_box_xyxy((7, 9, 101, 77), (123, 457), (1234, 4567))
    assert all(type(v) is int for v in out)
