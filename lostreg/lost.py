"""LOST: seed selection, seed expansion and box extraction on patch features.

Pure and I/O-free: features in, patch-unit box out. Converting the box to pixels of the
original image is :func:`lostreg.boxes.patch_box_to_pixels`. :func:`lost` takes one image,
:func:`lost_batch` a batch of images that share a grid; both run in memory linear in the
number of patches (the Gram matrix is never held whole, see :mod:`lostreg.lost_tiles`,
which also states exactly which results are bitwise reproducible).

The behaviour follows the lostreg LOST specification, section 3 (reference: valeoai/LOST,
``object_discovery.py``) step by step, with these documented lostreg rules:

* Degree ties are broken by the lowest flat patch index (stable sort). The reference
  uses an unstable sort, so on ties it may pick another seed.
* ``gram_bias`` (default 0) is added to every entry of the Gram matrix, the diagonal
  included. With ``gram_bias=0`` the result is the reference's.
* Where the reference raises ("the seed is in the background component"), lostreg
  returns the seed patch alone as mask and box, with ``seed_in_mask=False``.
* ``excluded`` (lostreg extension, off by default): patches that may be neither seed nor
  potential, e.g. high-norm artifact tokens. They are skipped in the ascending-degree
  order; degrees still count them and the expansion map still covers them.

Confidence (lostreg extension): each result has a ``score``, how far the seed's degree lies
below the image's mean degree (:func:`seed_confidence`).

Several objects (lostreg extension, :func:`lost_objects`): the first object is the plain
LOST result; after each object, the patches of its mask join the excluded patches (they can
no longer seed nor expand: they are never potentials, so never similars) and the next seed
is the lowest-degree patch among the rest, with the degrees of the whole image. The next
mask is the seed's 4-connected component of positive expansion among the patches not taken
yet. It stops at ``objects`` objects, when no patch is left, or when the new seed is not in
its own positive expansion (the case where the reference raises: no object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import scipy.ndimage
import torch

from lostreg.artifacts import outlier_mask
from lostreg.boxes import mask_box
from lostreg.knobs import OUTPUT_NORMS, FeatureKey
from lostreg.lost_tiles import auto_chunk_rows, lost_degrees, lost_expansion
from lostreg.methods.lost import LostConfig

__all__ = ["LostResult", "lost", "lost_batch", "lost_objects", "run_lost", "run_lost_objects", "seed_confidence"]


@dataclass(frozen=True, eq=False)
class LostResult:
    """Output of :func:`lost` (or one image of :func:`lost_batch`). Tensors are on the CPU.

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
        score: LOST's confidence in this object, in [0, 1] (:func:`seed_confidence`).
    """

    seed: int
    similars: torch.Tensor
    mask: torch.Tensor
    box: tuple[int, int, int, int]
    seed_in_mask: bool
    degree: torch.Tensor
    expansion: torch.Tensor
    score: float = 0.0

    @property
    def seed_rc(self) -> tuple[int, int]:
        """The seed as ``(row, col)`` in the patch grid."""
        row, col = divmod(self.seed, int(self.mask.shape[1]))
        return int(row), int(col)


def _check_features(features: torch.Tensor, ndim: int, layout: str) -> torch.Tensor:
    """Validate the type and rank of ``features``; return them detached."""
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    features = features.detach()
    if features.dim() != ndim:
        raise ValueError(f"features must be {ndim}-D {layout}, got shape {tuple(features.shape)}")
    if features.dtype == torch.bool or features.is_complex():
        raise ValueError(f"features must be real numbers, got dtype {features.dtype}")
    return features


def _check_arguments(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    k_patches: int,
    gram_bias: float,
    chunk_size: int | None,
) -> tuple[torch.Tensor, int, int]:
    """Validate (B, N, d) features and the scalar arguments; return contiguous fp32
    features and the grid."""
    if len(grid_hw) != 2:
        raise ValueError(f"grid_hw must be (rows, cols), got {grid_hw!r}")
    rows, cols = (int(v) for v in grid_hw)
    if (rows, cols) != tuple(grid_hw) or rows < 1 or cols < 1:
        raise ValueError(f"grid_hw must be two positive integers, got {grid_hw!r}")
    if rows * cols != features.shape[1]:
        raise ValueError(
            f"grid {rows}x{cols} has {rows * cols} patches but features has "
            f"{features.shape[1]} rows"
        )
    if isinstance(k_patches, bool) or int(k_patches) != k_patches or k_patches < 1:
        raise ValueError(f"k_patches must be an integer >= 1, got {k_patches!r}")
    if not np.isfinite(float(gram_bias)):
        raise ValueError(f"gram_bias must be finite, got {gram_bias!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    # Cast before the finiteness check: float64 values beyond fp32 range become inf.
    features = features.to(torch.float32).contiguous()
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinite values (in float32)")
    return features, rows, cols


def _check_excluded(excluded: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Validate an ``excluded`` mask of the given shape; return it as bool on ``device``."""
    if isinstance(excluded, np.ndarray):
        excluded = torch.from_numpy(excluded)
    if not isinstance(excluded, torch.Tensor):
        raise TypeError(f"excluded must be a bool torch.Tensor, got {type(excluded).__name__}")
    if excluded.dtype != torch.bool:
        raise ValueError(f"excluded must have dtype bool, got {excluded.dtype}")
    if tuple(excluded.shape) != shape:
        raise ValueError(f"excluded must have shape {shape}, got {tuple(excluded.shape)}")
    return excluded.detach().to(device)


def _pack_to_host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copy (B, ...) tensors to the CPU as one packed byte tensor: one transfer, one wait."""
    flat = [t.contiguous().reshape(t.shape[0], -1).view(torch.uint8) for t in tensors]
    packed = torch.cat(flat, dim=1).cpu()
    out, start = [], 0
    for t, f in zip(tensors, flat):
        part = packed[:, start : start + f.shape[1]].contiguous()
        out.append(part.view(t.dtype).reshape(t.shape))
        start += f.shape[1]
    return out


def _to_host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors on the CPU: as they are if already there, else by :func:`_pack_to_host`."""
    if all(t.device.type == "cpu" for t in tensors):
        return tensors
    return _pack_to_host(tensors)


def seed_confidence(degree: torch.Tensor, seed: int) -> float:
    """LOST's confidence in the object grown from ``seed``: ``max(0, 1 - degree[seed] / mean(degree))``.

    LOST's premise is that an object patch correlates positively with fewer patches than the
    background does, so the further the seed's degree lies below the image's mean degree, the
    more the seed stands out: 1 when it correlates with no other patch, 0 when it is as
    connected as the average patch (or more: a later seed of several-object LOST that is
    background-like). An image whose degrees are all 0 has no structure: 0. Measured on
    generated scenes, ranking boxes by it gives a higher class-agnostic AP50 than image order
    (docs/methods.md).

    Args:
        degree: (rows*cols,) int64 degrees of the whole image (:attr:`LostResult.degree`).
        seed: flat index of the seed.

    Returns:
        A float in [0, 1], computed in float64 on the CPU (deterministic).
    """
    mean = float(degree.to(torch.float64).mean())
    if mean <= 0:
        return 0.0
    return max(0.0, 1.0 - float(degree[seed]) / mean)


def _seed_component(expansion: np.ndarray, seed: int,
                    allowed: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """The 4-connected component of ``expansion > 0`` (within ``allowed`` patches, if given)
    holding the seed, or the seed alone."""
    rows, cols = expansion.shape
    seed_row, seed_col = divmod(seed, cols)
    positive = expansion > 0 if allowed is None else (expansion > 0) & allowed
    # scipy's default structuring element in 2-D is the 4-neighbourhood cross.
    labels, _ = scipy.ndimage.label(positive)
    seed_label = labels[seed_row, seed_col]
    if seed_label != 0:
        return labels == seed_label, True
    component = np.zeros((rows, cols), dtype=bool)
    component[seed_row, seed_col] = True
    return component, False


def lost_batch(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    k_patches: int = LostConfig.k_patches,
    gram_bias: float = LostConfig.gram_bias,
    *,
    chunk_size: int | None = None,
    excluded: torch.Tensor | None = None,
) -> list[LostResult]:
    """Localise one object per image with LOST, for a batch of images on one grid.

    Steps 1-8 of spec section 3 (degrees, order, seed, potentials, similars, expansion
    map) run as batched tensor operations on the features' device, never holding the
    ``N x N`` Gram matrix and never waiting for the device per image (the input checks wait
    once per batch: finiteness, and ``excluded`` when given). Degrees, potentials, similar
    flags and expansion maps then come to the CPU in one packed transfer; the masks are
    ``expansion > 0`` there, and ``scipy.ndimage.label`` finds each seed's component.
    Each result is the one :func:`lost` gives for that image alone (bitwise on CPU; see
    :mod:`lostreg.lost_tiles` for what holds on CUDA).

    Args:
        features: (B, rows*cols, d) real tensor (or numpy array): per image, patch features
            in row-major grid order, prefix tokens dropped. Computed on its device in
            float32 with TF32 disabled.
        grid_hw: ``(rows, cols)`` of the patch grid, shared by the batch.
        k_patches: Number of lowest-degree patches that may join the seed's similars;
            ``min(k_patches, allowed patches)`` are used.
        gram_bias: Added to every entry of the Gram matrix ``F Fᵀ`` (diagonal included)
            before any threshold. 0 reproduces the reference.
        chunk_size: Gram rows per image held at once (peak extra memory about
            ``4 * B * rows*cols * chunk_size`` bytes). Rounded down to whole tiles of
            ``min(rows*cols, 128)`` rows, at least one. None: chosen from the memory
            available on the device (an eighth of it, at most 256 MiB per step). It never
            changes a result on CPU; see :mod:`lostreg.lost_tiles` for CUDA.
        excluded: Optional (B, rows*cols) bool: patches that may be neither the seed nor a
            potential (e.g. high-norm artifact tokens). Degrees still count them and the
            expansion map still covers them. None or all False: the plain LOST result.

    Returns:
        One :class:`LostResult` per image, in batch order, tensors on the CPU. ``box`` is in
        patch units, ``(x1, y1, x2, y2)``, max exclusive. An empty batch gives ``[]``.

    Raises:
        TypeError: ``features`` or ``excluded`` is not a tensor or numpy array.
        ValueError: ``features`` is not 3-D or not real, ``rows*cols`` differs from its
            second dimension, ``k_patches < 1``, features / bias are not finite,
            ``chunk_size < 1``, ``excluded`` has the wrong dtype or shape, or excludes every
            patch of an image.
    """
    features = _check_features(features, 3, "(batch, rows*cols, d)")
    return [objects[0] for objects in _lost_rounds(features, grid_hw, k_patches, gram_bias, 1, chunk_size, excluded)]


def lost_objects(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    k_patches: int = LostConfig.k_patches,
    gram_bias: float = LostConfig.gram_bias,
    objects: int = 1,
    *,
    chunk_size: int | None = None,
    excluded: torch.Tensor | None = None,
) -> list[list[LostResult]]:
    """Up to ``objects`` objects per image with LOST, for a batch of images on one grid.

    The first object of each image is exactly :func:`lost_batch`'s result. Each further object
    follows the rule of the module docstring: the patches of the masks found so far can no
    longer seed nor expand; the degrees (computed once, on the whole image) are not recomputed.
    Each round is batched on the device (one ``K x N`` Gram pass per round, no new degree pass);
    the components run per image on the CPU.

    Args:
        features, grid_hw, k_patches, gram_bias, chunk_size, excluded: as in :func:`lost_batch`.
        objects: the most objects per image (>= 1).

    Returns:
        Per image, in batch order, 1 to ``objects`` :class:`LostResult` in discovery order
        (``box`` in patch units, ``(x1, y1, x2, y2)``, max exclusive; masks disjoint). An image
        stops early when no patch is left or when its next seed is not in its own positive
        expansion.

    Raises:
        ValueError: as :func:`lost_batch`, or ``objects < 1``.
    """
    if isinstance(objects, bool) or int(objects) != objects or objects < 1:
        raise ValueError(f"objects must be an integer >= 1, got {objects!r}")
    features = _check_features(features, 3, "(batch, rows*cols, d)")
    return _lost_rounds(features, grid_hw, k_patches, gram_bias, int(objects), chunk_size, excluded)


def _lost_rounds(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    k_patches: int,
    gram_bias: float,
    objects: int,
    chunk_size: int | None,
    excluded: torch.Tensor | None,
) -> list[list[LostResult]]:
    """:func:`lost_objects` on checked (B, N, d) features; ``objects == 1`` is :func:`lost_batch`."""
    feats, rows, cols = _check_arguments(features, grid_hw, k_patches, gram_bias, chunk_size)
    batch, n = feats.shape[0], rows * cols
    if excluded is not None:
        excluded = _check_excluded(excluded, (batch, n), feats.device)
        full = excluded.all(dim=1)
        if bool(full.any()):
            first = int(full.nonzero()[0, 0])
            raise ValueError(f"excluded covers every patch of image {first}: no seed is possible")
        if not bool(excluded.any()):
            excluded = None  # all False: exactly the plain path
    if batch == 0:
        return []
    chunk = chunk_size if chunk_size is not None else auto_chunk_rows(feats.device, batch, n)
    k, bias = int(k_patches), float(gram_bias)

    degree_dev = lost_degrees(feats, bias, int(chunk))
    out = lost_expansion(feats, degree_dev, k, bias, int(chunk), excluded)
    degree, potentials, similar, expansion = _to_host(
        [out.degree, out.potentials, out.similar, out.expansion]
    )
    found = [[_assemble(degree[b], potentials[b], similar[b], expansion[b], rows, cols)]
             for b in range(batch)]
    if objects == 1:
        return found

    # Several objects: the patches taken so far (CPU) join the excluded ones for the next round.
    blocked_base = torch.zeros(batch, n, dtype=torch.bool) if excluded is None else excluded.cpu()
    taken = torch.stack([objs[0].mask.reshape(-1) for objs in found])
    active = [True] * batch
    for _ in range(1, objects):
        blocked = blocked_base | taken
        active = [a and not bool(blocked[b].all()) for b, a in enumerate(active)]  # no patch left
        if not any(active):
            break
        out = lost_expansion(feats, degree_dev, k, bias, int(chunk), blocked.to(feats.device))
        potentials, similar, expansion = _to_host([out.potentials, out.similar, out.expansion])
        for b in range(batch):
            if not active[b]:
                continue
            result = _assemble(degree[b], potentials[b], similar[b], expansion[b], rows, cols,
                               allowed=~taken[b].reshape(rows, cols).numpy())
            if not result.seed_in_mask:
                active[b] = False  # the seed is not in its own positive expansion: no object
                continue
            found[b].append(result)
            taken[b] |= result.mask.reshape(-1)
    return found


def _assemble(degree: torch.Tensor, potentials: torch.Tensor, similar: torch.Tensor, expansion: torch.Tensor,
              rows: int, cols: int, allowed: np.ndarray | None = None) -> LostResult:
    """One image's :class:`LostResult` from its host tensors (degree (N,), potentials (K,), similar (K,),
    expansion (N,)); the mask is restricted to ``allowed`` (rows, cols) patches when given."""
    seed = int(potentials[0])
    exp_map = expansion.reshape(rows, cols).clone()
    component, seed_in_mask = _seed_component(exp_map.numpy(), seed, allowed)
    box = mask_box(component)
    return LostResult(
        seed=seed,
        similars=potentials[similar].clone(),
        mask=torch.from_numpy(component),
        box=box,
        seed_in_mask=seed_in_mask,
        degree=degree.clone(),
        expansion=exp_map,
        score=seed_confidence(degree, seed),
    )


def lost(
    features: torch.Tensor,
    grid_hw: tuple[int, int],
    k_patches: int = LostConfig.k_patches,
    gram_bias: float = LostConfig.gram_bias,
    *,
    chunk_size: int | None = None,
    excluded: torch.Tensor | None = None,
) -> LostResult:
    """Localise one object with LOST.

    Runs in memory linear in ``rows*cols`` (the Gram matrix is computed in row blocks and
    never held whole), through the same code as :func:`lost_batch`.

    Args:
        features: (rows*cols, d) real tensor of patch features in row-major grid order
            (prefix tokens already dropped). Any device; computed there in float32 with
            TF32 disabled. A numpy array is accepted too.
        grid_hw: ``(rows, cols)`` of the patch grid.
        k_patches: Number of lowest-degree patches that may join the seed's similars;
            ``min(k_patches, rows*cols)`` are used (not counting excluded patches).
        gram_bias: Added to every entry of the Gram matrix ``F Fᵀ`` (diagonal included)
            before any threshold. 0 reproduces the reference.
        chunk_size: Gram rows held at once, as in :func:`lost_batch`; None picks it from
            the available memory. Never changes a result on CPU.
        excluded: Optional (rows*cols,) bool: patches that may be neither the seed nor a
            potential; see :func:`lost_batch`. None or all False: plain LOST.

    Returns:
        A :class:`LostResult`. ``box`` is in patch units, ``(x1, y1, x2, y2)``, max
        exclusive.

    Degenerate case (lostreg rule): when the seed's own expansion value is not
    strictly positive (possible only with ``gram_bias < 0`` or degenerate features, e.g.
    an all-zero seed vector), the reference crashes. lostreg then returns the seed patch
    alone as ``mask`` and ``box`` and sets ``seed_in_mask=False``.

    Raises:
        TypeError: ``features`` (or ``excluded``) is not a tensor or numpy array.
        ValueError: ``features`` is not 2-D or not real, ``rows*cols`` differs from its
            number of rows, ``k_patches < 1``, features / bias are not finite,
            ``chunk_size < 1``, or ``excluded`` is malformed or excludes every patch.
    """
    features = _check_features(features, 2, "(rows*cols, d)")
    if excluded is not None:
        excluded = _check_excluded(excluded, (features.shape[0],), features.device).unsqueeze(0)
    return lost_batch(
        features.unsqueeze(0),
        grid_hw,
        k_patches,
        gram_bias,
        chunk_size=chunk_size,
        excluded=excluded,
    )[0]


def run_lost(config: LostConfig, features: torch.Tensor, grid_hw: tuple[int, int],
             extras: Mapping[FeatureKey, torch.Tensor]) -> list[LostResult]:
    """LOST as a registered method (:mod:`lostreg.methods.lost`): :func:`lost_batch` with ``config``.

    Args:
        config: k, the Gram bias, and whether high-norm outliers are excluded.
        features: (B, rows*cols, D) float patch features of same-grid images, row-major.
        grid_hw: ``(rows, cols)``.
        extras: with ``config.exclude_outliers``, :data:`~lostreg.knobs.OUTPUT_NORMS`: (B, rows*cols, 1)
            norms of the output tokens, whose outliers (:func:`lostreg.artifacts.outlier_mask`) are excluded.
    """
    return lost_batch(features, grid_hw, k_patches=config.k_patches, gram_bias=config.gram_bias,
                      excluded=_outliers(config, extras))


def _outliers(config: LostConfig, extras: Mapping[FeatureKey, torch.Tensor]) -> torch.Tensor | None:
    """(B, rows*cols) bool high-norm outliers when ``config.exclude_outliers``, else None."""
    if not config.exclude_outliers:
        return None
    if OUTPUT_NORMS not in extras:
        raise ValueError("lost.exclude_outliers needs the output tokens' norms")
    return outlier_mask(extras[OUTPUT_NORMS])


def run_lost_objects(config: LostConfig, features: torch.Tensor, grid_hw: tuple[int, int],
                     extras: Mapping[FeatureKey, torch.Tensor], objects: int) -> list[list[LostResult]]:
    """Several-object LOST as a registered method: :func:`lost_objects` with ``config``.

    Args:
        config, features, grid_hw, extras: as :func:`run_lost`.
        objects: the most objects per image (>= 1).

    Returns:
        Per image, its objects in discovery order (the first is :func:`run_lost`'s result).
    """
    excluded = _outliers(config, extras)
    return lost_objects(features, grid_hw, k_patches=config.k_patches, gram_bias=config.gram_bias,
                        objects=objects, excluded=excluded)
