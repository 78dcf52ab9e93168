"""LOST: seed selection, seed expansion and box extraction on one image's patch features.

Pure and I/O-free: features in, patch-unit box out. Converting the box to pixels of the
original image is :func:`lostreg.boxes.patch_box_to_pixels`.

The behaviour follows the lostreg LOST specification, section 3 (reference: valeoai/LOST,
``object_discovery.py``) step by step, with these documented lostreg rules:

* Degree ties are broken by the lowest flat patch index (stable sort). The reference
  uses an unstable sort, so on ties it may pick another seed.
* ``gram_bias`` (default 0) is added to every entry of the Gram matrix, the diagonal
  included. With ``gram_bias=0`` the result is the reference's.
* Where the reference raises ("the seed is in the background component"), lostreg
  returns the seed patch alone as mask and box, with ``seed_in_mask=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import torch

from lostreg.precision import strict_fp32

__all__ = ["LostResult", "lost"]


@dataclass(frozen=True, eq=False)
class LostResult:
    """Output of :func:`lost` for one image. All tensors are on the CPU.

    Attributes:
        seed: Flat row-major index of the seed patch, in ``[0, rows*cols)``.
        similars: (S,) int64. Patches used for the expansion, in ascending-degree
            order (the order of the potentials). May be empty only in degenerate cases.
        mask: (rows, cols) bool. The 4-connected component of ``expansion > 0`` that
            contains the seed; the seed patch alone when ``seed_in_mask`` is False.
        box: ``(x1, y1, x2, y2)`` in patch units: columns then rows, max exclusive,
            i.e. ``(min col, min row, max col + 1, max row + 1)`` of ``mask``.
        seed_in_mask: False in the degenerate case where the seed is not in
            ``expansion > 0`` (the reference raises there).
        degree: (rows*cols,) int64. Per patch, the number of other patches with a
            strictly positive (biased) dot product.
        expansion: (rows, cols) float32. The expansion map M (signed sum of the
            similars' Gram rows), row-major.
    """

    seed: int
    similars: torch.Tensor
    mask: torch.Tensor
    box: tuple[int, int, int, int]
    seed_in_mask: bool
    degree: torch.Tensor
    expansion: torch.Tensor

    @property
    def seed_rc(self) -> tuple[int, int]:
        """The seed as ``(row, col)`` in the patch grid."""
        row, col = divmod(self.seed, int(self.mask.shape[1]))
        return int(row), int(col)


def _check_inputs(
    features: torch.Tensor, grid_hw: tuple[int, int], k_patches: int, gram_bias: float
) -> tuple[torch.Tensor, int, int]:
    """Validate the arguments of :func:`lost`; return fp32 features and the grid."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    features = features.detach()
    if features.dim() != 2:
        raise ValueError(
            f"features must be 2-D (rows*cols, d), got shape {tuple(features.shape)}"
        )
    if features.dtype == torch.bool or features.is_complex():
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    if len(grid_hw) != 2:
        raise ValueError(f"grid_hw must be (rows, cols), got {grid_hw!r}")
    rows, cols = (int(v) for v in grid_hw)
    if (rows, cols) != tuple(grid_hw) or rows < 1 or cols < 1:
        raise ValueError(f"grid_hw must be two positive integers, got {grid_hw!r}")
    if rows * cols != features.shape[0]:
        raise ValueError(
            f"grid {rows}x{cols} has {rows * cols} patches but features has "
            f"{features.shape[0]} rows"
        )
    if isinstance(k_patches, bool) or int(k_patches) != k_patches or k_patches < 1:
        raise ValueError(f"k_patches must be an integer >= 1, got {k_patches!r}")
    if not np.isfinite(float(gram_bias)):
        raise ValueError(f"gram_bias must be finite, got {gram_bias!r}")
    # Cast before the finiteness check: float64 values beyond fp32 range become inf.
    features = features.to(torch.float32)
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values (in float32)")
    return features, rows, cols


def lost(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    k_patches: int = 100,
    gram_bias: float = 0.0,
) -> LostResult:
    """Localise one object with LOST.

    Args:
        features: (rows*cols, d) real tensor of patch features in row-major grid order
            (prefix tokens already dropped). Any device; computed there in float32 with
            TF32 disabled. A numpy array is accepted too.
        grid_hw: ``(rows, cols)`` of the patch grid.
        k_patches: Number of lowest-degree patches that may join the seed's similars;
            ``min(k_patches, rows*cols)`` are used.
        gram_bias: Added to every entry of the Gram matrix ``F Fᵀ`` (diagonal included)
            before any threshold. 0 reproduces the reference.

    Returns:
        A :class:`LostResult`. ``box`` is in patch units, ``(x1, y1, x2, y2)``, max
        exclusive.

    Degenerate case (lostreg rule): when the seed's own expansion value is not
    strictly positive (possible only with ``gram_bias < 0`` or degenerate features, e.g.
    an all-zero seed vector), the reference crashes. lostreg then returns the seed patch
    alone as ``mask`` and ``box`` and sets ``seed_in_mask=False``.

    Raises:
        TypeError: ``features`` is not a tensor or numpy array.
        ValueError: ``features`` is not 2-D or not real, ``rows*cols`` differs from its
            number of rows, ``k_patches < 1``, or features / bias are not finite.
    """
    feats, rows, cols = _check_inputs(features, grid_hw, k_patches, gram_bias)
    n = rows * cols

    with strict_fp32():
        gram = feats @ feats.T
    if gram_bias != 0:
        gram = gram + float(gram_bias)

    off_diag = gram.clone()
    off_diag.fill_diagonal_(0)
    degree = (off_diag > 0).sum(dim=1)

    # Stable: equal degrees keep ascending flat index, so the lowest index wins ties.
    _, order = torch.sort(degree, stable=True)
    seed = int(order[0])

    potentials = order[: min(int(k_patches), n)]
    similars = potentials[gram[seed, potentials] > 0]
    # Rows of the Gram with its diagonal intact; signed sum (an empty set sums to 0).
    expansion = gram[similars].sum(dim=0).reshape(rows, cols)

    positive = (expansion > 0).cpu().numpy()
    seed_row, seed_col = divmod(seed, cols)
    # scipy's default structuring element in 2-D is the 4-neighbourhood cross.
    labels, _ = scipy.ndimage.label(positive)
    seed_label = labels[seed_row, seed_col]
    seed_in_mask = bool(seed_label != 0)
    if seed_in_mask:
        component = labels == seed_label
    else:
        component = np.zeros((rows, cols), dtype=bool)
        component[seed_row, seed_col] = True

    mask_rows, mask_cols = np.nonzero(component)
    box = (
        int(mask_cols.min()),
        int(mask_rows.min()),
        int(mask_cols.max()) + 1,
        int(mask_rows.max()) + 1,
    )

    return LostResult(
        seed=seed,
        similars=similars.detach().to("cpu", torch.int64),
        mask=torch.from_numpy(component),
        box=box,
        seed_in_mask=seed_in_mask,
        degree=degree.detach().to("cpu", torch.int64),
        expansion=expansion.detach().to("cpu", torch.float32).contiguous(),
    )
