"""Box conventions of lostreg, in one place.

Unless a function says otherwise, a box is ``(x1, y1, x2, y2)`` ("xyxy") in integer
pixels of an image frame, with ``(x1, y1)`` the top-left corner and the maxima
**exclusive**: a box covering the whole W x H image is ``(0, 0, W, H)`` and its area is
``(x2 - x1) * (y2 - y1)`` (no "+1" pixel convention). Image sizes are given as
``(H, W)`` (``image_hw``), matching tensor layout.

Other conventions converted here:

* PASCAL VOC XML: 1-based inclusive pixel indices ``(xmin, ymin, xmax, ymax)``.
* COCO JSON: float ``[x, y, w, h]`` of the top-left corner and size.
* Patch units: ``(col1, row1, col2, row2)`` on the patch grid, max exclusive (the
  ``box`` of :class:`lostreg.lost.LostResult`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from numbers import Integral, Real

import numpy as np

__all__ = [
    "coco_xywh_to_xyxy",
    "iou_matrix",
    "iou_xyxy",
    "patch_box_to_pixels",
    "rescale_box_xyxy",
    "voc_to_xyxy",
    "xywh_to_xyxy_real",
    "xyxy_to_voc",
    "xyxy_to_xywh",
    "xyxy_to_xywh_real",
]

Box = tuple[int, int, int, int]


def _as_int(value: object, what: str = "coordinate") -> int:
    """Return ``value`` as an int, refusing anything that is not an exact integer.

    Accepts Python / numpy integers, integral floats (``3.0``) and strings of integers
    (``"3"``, as read from VOC XML). A silent truncation would shift boxes, so ``3.5``
    raises.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if isinstance(value, Real) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be an integer, got {value!r}")


def _as_box(box: Sequence[object], what: str = "box") -> Box:
    """Return a 4-sequence as an int xyxy tuple, checking ``x1 <= x2`` and ``y1 <= y2``."""
    if len(box) != 4:
        raise ValueError(f"{what} must have 4 values (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = (_as_int(v, what) for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{what} must have x1 <= x2 and y1 <= y2, got {box!r}")
    return x1, y1, x2, y2


def _as_hw(hw: Sequence[int], what: str) -> tuple[int, int]:
    if len(hw) != 2:
        raise ValueError(f"{what} must be (H, W), got {hw!r}")
    h, w = _as_int(hw[0], what), _as_int(hw[1], what)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {hw!r}")
    return h, w


def mask_box(mask: np.ndarray) -> Box:
    """The box of the True cells of a (rows, cols) bool grid, in its own units: ``(x1, y1, x2, y2)`` =
    (min col, min row, max col + 1, max row + 1), max exclusive (a method's box in patch units).

    Raises:
        ValueError: the mask has no True cell.
    """
    rows, cols = np.nonzero(np.asarray(mask))
    if rows.size == 0:
        raise ValueError("an empty mask has no box")
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def patch_box_to_pixels(
    box_patch: Sequence[int], patch_size: int, image_hw: tuple[int, int]
) -> Box:
    """Convert a patch-unit box to pixels of the original (unpadded) image.

    Multiplies every coordinate by ``patch_size``, then clips ``x2`` to the width W and
    ``y2`` to the height H: the image was padded on the bottom and right only, so the
    last patch row / column may reach past the image (spec 3.11). ``x1`` and ``y1``
    always lie inside the image and are not clipped.

    Args:
        box_patch: ``(col1, row1, col2, row2)`` in patch units, max exclusive.
        patch_size: Patch side p in pixels.
        image_hw: ``(H, W)`` of the original image.

    Returns:
        ``(x1, y1, x2, y2)`` in integer pixels, max exclusive.

    Example:
        A 500x375 (W x H) image with p=16 has a 24x32 grid; a box reaching the last
        column (col2 = 32) maps to x2 = min(512, 500) = 500.
    """
    p = _as_int(patch_size, "patch_size")
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size!r}")
    h, w = _as_hw(image_hw, "image_hw")
    x1, y1, x2, y2 = _as_box(box_patch, "box_patch")
    return x1 * p, y1 * p, min(x2 * p, w), min(y2 * p, h)


def rescale_box_xyxy(
    box: Sequence[int], from_hw: tuple[int, int], to_hw: tuple[int, int]
) -> Box:
    """Map a pixel box from one frame of an image to another frame of the same image.

    Used when a large image was downscaled (``max_size``) before LOST: the box found on
    the resized ``from_hw`` frame is mapped back to the original ``to_hw`` frame.
    Each axis is scaled by ``to / from``; then ``x1, y1`` are floored and ``x2, y2``
    ceiled, so the result covers every original pixel the scaled box touches, and
    finally clipped to ``[0, W]`` / ``[0, H]`` of ``to_hw``. The scaling is done in
    exact rational arithmetic, so a coordinate that maps to an integer is not moved
    by a rounding error.

    Args:
        box: ``(x1, y1, x2, y2)`` pixels of the ``from_hw`` frame, max exclusive.
        from_hw: ``(H, W)`` of the frame the box is in.
        to_hw: ``(H, W)`` of the target frame.

    Returns:
        ``(x1, y1, x2, y2)`` integer pixels of the ``to_hw`` frame, max exclusive.
    """
    fh, fw = _as_hw(from_hw, "from_hw")
    th, tw = _as_hw(to_hw, "to_hw")
    x1, y1, x2, y2 = _as_box(box)
    sx, sy = Fraction(tw, fw), Fraction(th, fh)

    def clip(v: int, hi: int) -> int:
        return max(0, min(v, hi))

    return (
        clip(math.floor(x1 * sx), tw),
        clip(math.floor(y1 * sy), th),
        clip(math.ceil(x2 * sx), tw),
        clip(math.ceil(y2 * sy), th),
    )


def iou_xyxy(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (spec section 4).

    ``inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))``,
    ``union = area(a) + area(b) - inter``, ``area = (x2 - x1) * (y2 - y1)``: no "+1"
    pixel convention. Unlike the reference, which adds an epsilon of 1e-7 to a height
    and to the union, lostreg adds **no epsilon**; it returns 0.0 when the union is 0
    (two zero-area boxes). Boxes that only touch have IoU 0.

    Args:
        a: ``(x1, y1, x2, y2)`` with ``x1 <= x2``, ``y1 <= y2``.
        b: Same.

    Returns:
        IoU in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: A box does not have 4 values or has ``x2 < x1`` or ``y2 < y1``.
    """
    ax1, ay1, ax2, ay2 = _check_real_box(a)
    bx1, by1, bx2, by2 = _check_real_box(b)
    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if union == 0:
        return 0.0
    return float(inter / union)


def _check_real_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"box must have 4 values (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = (v.item() if isinstance(v, np.generic) else v for v in box)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box must have x1 <= x2 and y1 <= y2, got {box!r}")
    return x1, y1, x2, y2


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two sets of xyxy boxes, same formula as :func:`iou_xyxy`.

    Args:
        boxes_a: (N, 4) array-like of ``(x1, y1, x2, y2)``.
        boxes_b: (M, 4) array-like of ``(x1, y1, x2, y2)``.

    Returns:
        (N, M) float64 array; entry ``[i, j]`` equals ``iou_xyxy(boxes_a[i], boxes_b[j])``
        (0.0 where the union is 0). N or M may be 0.

    Raises:
        ValueError: An input is not (K, 4), or a box has ``x2 < x1`` or ``y2 < y1``.
    """
    a = _as_box_array(boxes_a, "boxes_a")
    b = _as_box_array(boxes_b, "boxes_b")
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros(union.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union != 0)
    return out


def _as_box_array(boxes: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must have shape (K, 4), got {arr.shape}")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ValueError(f"{what} has a box with x2 < x1 or y2 < y1")
    return arr


def voc_to_xyxy(xmin: int | str, ymin: int | str, xmax: int | str, ymax: int | str) -> Box:
    """Convert PASCAL VOC corners to a lostreg xyxy box.

    VOC stores 1-based, inclusive pixel indices: ``xmin=1, xmax=W`` spans the whole
    width. In lostreg's 0-based, max-exclusive frame that is ``(0, W)``, hence
    ``(xmin - 1, ymin - 1, xmax, ymax)``. Values may be ints or the integer strings of
    the XML; non-integers raise ValueError.
    """
    return (
        _as_int(xmin, "xmin") - 1,
        _as_int(ymin, "ymin") - 1,
        _as_int(xmax, "xmax"),
        _as_int(ymax, "ymax"),
    )


def xyxy_to_voc(box: Sequence[int]) -> Box:
    """Inverse of :func:`voc_to_xyxy`: ``(x1 + 1, y1 + 1, x2, y2)``, VOC 1-based inclusive."""
    x1, y1, x2, y2 = _as_box(box)
    return x1 + 1, y1 + 1, x2, y2


def coco_xywh_to_xyxy(bbox: Sequence[float]) -> Box:
    """Convert a COCO ``[x, y, w, h]`` (floats) to an integer xyxy box.

    ``(round(x), round(y), round(x + w), round(y + h))`` with Python's ``round``, which
    rounds halves to even (banker's rounding: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2), exactly as
    the reference. The sums are taken in float before rounding.
    """
    if len(bbox) != 4:
        raise ValueError(f"COCO bbox must have 4 values (x, y, w, h), got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    return round(x), round(y), round(x + w), round(y + h)


def xyxy_to_xywh(box: Sequence[int]) -> Box:
    """Convert an integer xyxy box to ``(x, y, w, h)``: ``(x1, y1, x2 - x1, y2 - y1)``."""
    x1, y1, x2, y2 = _as_box(box)
    return x1, y1, x2 - x1, y2 - y1


def xyxy_to_xywh_real(box: Sequence[float]) -> tuple[float, float, float, float]:
    """:func:`xyxy_to_xywh` for boxes of real numbers (a detector's): ``(x1, y1, x2 - x1, y2 - y1)`` as floats.

    Raises:
        ValueError: not 4 values, or ``x2 < x1`` or ``y2 < y1``.
    """
    x1, y1, x2, y2 = (float(v) for v in _check_real_box(box))
    return x1, y1, x2 - x1, y2 - y1


def xywh_to_xyxy_real(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]`` of real numbers (a detector's results) to ``(x, y, x + w, y + h)``, not rounded.

    Ground truth is rounded to integer pixels (:func:`coco_xywh_to_xyxy`, as the reference); a
    detector's boxes are scored as they are, as the reference's CorLoc evaluation of LOST+CAD does.

    Raises:
        ValueError: not 4 finite values, or a negative width or height.
    """
    if len(bbox) != 4:
        raise ValueError(f"COCO bbox must have 4 values (x, y, w, h), got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise ValueError(f"COCO bbox must be 4 finite numbers with w, h >= 0, got {bbox!r}")
    return x, y, x + w, y + h
