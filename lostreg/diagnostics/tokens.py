"""Token diagnostics: output-token norms, high-norm outliers, prefix-token attention, PCA.

Pure computations, no plotting (:mod:`lostreg.diagnostics.figures` draws them). The forward pass
they read is :meth:`lostreg.backbones.base.Backbone.trace`, the methods' internals :mod:`lostreg.diagnostics.maps`,
and the inspection of one image that combines them :mod:`lostreg.diagnostics.inspection`. Conventions:

* Token order is ``[CLS, register_1..register_R, patches row-major]`` (timm's), so a patch
  tensor reshapes to ``(rows, cols)`` of the padded image's patch grid; padded patches are
  included, as they are in LOST. A backbone running a test-time register
  (:mod:`lostreg.ttreg`) has one more token after the patches; it takes part in the forward
  pass and in the attention softmax, and is left out of every patch map.
* **Output-token norms** are L2 norms of the patch tokens. ``norm_source="final"`` (default) takes
  them after the model's final LayerNorm, i.e. what timm's ``forward_features`` returns and
  DINOv2's ``x_norm_patchtokens``, the features users take from these models; ``"prenorm"``
  takes the raw output of the last block, before that LayerNorm (the LayerNorm rescales every
  token, so how far the artifacts stand out can differ between the two; both are offered). The
  registers paper's absolute threshold of 150 was stated for the output tokens of its own large
  DINOv2 models; norms depend on width, depth, weights and the norm source, so 150 need not mean
  anything for ViT-S, for ``prenorm`` or for random weights. The default rule is therefore
  relative to the image's own norms (:class:`lostreg.artifacts.OutlierRule`, the one rule LOST's
  ``exclude_outliers`` and the register-neuron finder use too).
* **Attention maps** are recomputed from block ``layer``'s q and k exactly as the model does
  (q and k norm layers, ``scale = head_dim ** -0.5``, softmax over **all** tokens, prefix tokens
  included); the patch columns of the CLS and register rows are then reshaped to the grid. A
  map therefore sums to the query's attention mass on patches, not to 1. q and k are the ones the
  block's softmax sees (:attr:`lostreg.backbones.trace.Trace.q_attn`): for DINOv3 the patch rows
  rotated by the block's RoPE, the prefix rows (CLS, registers) as projected, never rotated.
* **PCA** runs on the same tokens as the norms, in float64, via ``eigh`` of the smaller Gram
  matrix of the centred tokens (deterministic, unlike ``torch.pca_lowrank``'s random
  projections), with the sign of each component fixed so that its largest-magnitude score is
  positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from lostreg.artifacts import DEFAULT_MAD_K, MAD_TO_SIGMA, OutlierRule, robust_threshold
from lostreg.precision import strict_fp32

__all__ = [
    "DEFAULT_MAD_K",
    "MAD_TO_SIGMA",
    "PAPER_NORM_THRESHOLD",
    "NormOutliers",
    "NormSource",
    "NormThreshold",
    "OutlierRule",
    "PrefixAttention",
    "find_outliers",
    "patch_token_norms",
    "pca_project",
    "pca_rgb",
    "prefix_attention",
    "prefix_attention_qk",
    "robust_threshold",
]

NormSource = Literal["final", "prenorm"]

#: The registers paper's absolute cut ("norm > 150"), stated for its own large DINOv2 models.
PAPER_NORM_THRESHOLD = 150.0


def patch_token_norms(
    tokens: torch.Tensor, num_prefix_tokens: int, grid_hw: tuple[int, int], num_trailing_tokens: int = 0
) -> torch.Tensor:
    """L2 norms of the patch tokens on the grid.

    Args:
        tokens: (B, num_prefix_tokens + rows*cols + num_trailing_tokens, D).
        num_prefix_tokens: leading tokens to drop.
        grid_hw: (rows, cols).
        num_trailing_tokens: tokens after the patches to drop (a test-time register).

    Returns:
        (B, rows, cols) float32.
    """
    rows, cols = grid_hw
    patches = tokens[:, num_prefix_tokens:tokens.shape[1] - num_trailing_tokens]
    if patches.shape[1] != rows * cols:
        raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {rows}x{cols} grid")
    return torch.linalg.vector_norm(patches.float(), dim=-1).reshape(-1, rows, cols)


# --- high-norm outliers ------------------------------------------------------------------------

#: The outlier rule of :mod:`lostreg.artifacts` under the name the diagnostics first gave it.
NormThreshold = OutlierRule


@dataclass(frozen=True)
class NormOutliers:
    """High-norm tokens of one image.

    Attributes:
        threshold: norms strictly above it are outliers.
        rule: the rule that gave :attr:`threshold`.
        median: median norm.
        mad: median absolute deviation (unscaled).
        mask: (rows, cols) bool numpy array, True at outliers.
        max_norm: largest norm.
    """

    threshold: float
    rule: OutlierRule
    median: float
    mad: float
    mask: np.ndarray
    max_norm: float

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def share(self) -> float:
        """Outliers / patches, in [0, 1]."""
        return self.count / max(1, self.mask.size)

    @property
    def positions_rc(self) -> list[tuple[int, int]]:
        """(row, col) of each outlier, row-major."""
        return [(int(r), int(c)) for r, c in zip(*np.nonzero(self.mask))]


def find_outliers(norms: torch.Tensor | np.ndarray, rule: OutlierRule = OutlierRule()) -> NormOutliers:
    """Flag high-norm tokens of one image.

    Args:
        norms: (rows, cols) norms of one image.
        rule: :class:`~lostreg.artifacts.OutlierRule` (default: ``mad``, k = 5).
    """
    arr = torch.as_tensor(norms).detach().to("cpu", torch.float64).numpy()
    threshold, median, mad = robust_threshold(arr, rule.value if rule.kind == "mad" else 0.0)
    if rule.kind != "mad":
        threshold = rule.threshold(arr)
    return NormOutliers(threshold=threshold, rule=rule, median=median, mad=mad,
                        mask=arr > threshold, max_norm=float(arr.max()))


# --- attention of the prefix tokens ------------------------------------------------------------


@dataclass(frozen=True)
class PrefixAttention:
    """Attention of the CLS and register queries over the patches, per head.

    Attributes:
        cls: (B, H, rows, cols) float32, or None for a model without CLS token.
        registers: (B, R, H, rows, cols) float32 (R may be 0): the trained registers, then a
            test-time register (the token after the patches) when the backbone has one.
        patch_mass: (B, Q, H) float32: each of these queries' total attention on patches (the sum
            of its map), CLS first; 1 - patch_mass went to the other tokens.
    """

    cls: torch.Tensor | None
    registers: torch.Tensor
    patch_mass: torch.Tensor


def prefix_attention(
    qkv: torch.Tensor,
    attn: nn.Module,
    num_prefix_tokens: int,
    grid_hw: tuple[int, int],
    has_class_token: bool = True,
    num_trailing_tokens: int = 0,
) -> PrefixAttention:
    """Attention maps of the prefix queries, recomputed from one block's qkv as the model does.

    Args:
        qkv: (B, T, 3*D) output of ``attn.qkv`` (channels q | k | v, heads in order within each).
        attn: that block's timm ``Attention`` (gives ``num_heads``, ``scale``, ``q_norm``, ``k_norm``).
        num_prefix_tokens: P = CLS (if any) + registers.
        grid_hw: (rows, cols), with T = P + rows*cols.
        has_class_token: whether token 0 is CLS (else all prefix tokens are registers).
        num_trailing_tokens: tokens after the patches (a test-time register): keys in the
            softmax, not columns of the maps; as queries they are registers too (their maps
            follow the trained registers').

    Returns:
        :class:`PrefixAttention`. Only the rows of the prefix (and trailing) queries of the (T, T)
        matrix are formed.
    """
    batch, tokens, channels = qkv.shape
    heads = int(attn.num_heads)
    head_dim = channels // (3 * heads)
    q, k, _ = qkv.float().reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scale = float(getattr(attn, "scale", head_dim ** -0.5))
    return prefix_attention_qk(q, k, scale, num_prefix_tokens, grid_hw, has_class_token, num_trailing_tokens)


def prefix_attention_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    num_prefix_tokens: int,
    grid_hw: tuple[int, int],
    has_class_token: bool = True,
    num_trailing_tokens: int = 0,
) -> PrefixAttention:
    """Attention maps of the prefix queries from the q and k a block's softmax sees.

    ``softmax(scale * q_P @ kᵀ)`` over all T keys, for the P prefix queries only; the patch
    columns are reshaped to the grid.

    Args:
        q: (B, heads, T, head_dim) queries, after any q norm and rotation the block applies.
        k: (B, heads, T, head_dim) keys, likewise.
        scale: the block's logit scale (``head_dim ** -0.5`` in these models).
        num_prefix_tokens: P = CLS (if any) + registers, the first P tokens.
        grid_hw: (rows, cols), with T = P + rows*cols + num_trailing_tokens.
        has_class_token: whether token 0 is CLS (else all prefix tokens are registers).
        num_trailing_tokens: tokens after the patches (a test-time register): keys in the softmax,
            not columns of the maps; as queries they count as registers, after the trained ones.

    Returns:
        :class:`PrefixAttention`.
    """
    batch, heads, tokens, _ = q.shape
    rows, cols = grid_hw
    if tokens != num_prefix_tokens + rows * cols + num_trailing_tokens:
        raise ValueError(f"{tokens} tokens != {num_prefix_tokens} prefix + {rows}x{cols} patches"
                         f" + {num_trailing_tokens} trailing")
    q, k = q.float(), k.float()
    queries = torch.cat([q[:, :, :num_prefix_tokens], q[:, :, tokens - num_trailing_tokens:]], dim=2)
    n_queries = queries.shape[2]
    with strict_fp32():
        logits = (queries * scale) @ k.transpose(-2, -1)  # (B, H, P + trailing, T)
    probs = logits.softmax(dim=-1)
    patch = probs[..., num_prefix_tokens:num_prefix_tokens + rows * cols]  # (B, H, Q, rows*cols)
    mass = patch.sum(dim=-1).permute(0, 2, 1)  # (B, Q, H)
    maps = patch.reshape(batch, heads, n_queries, rows, cols).permute(0, 2, 1, 3, 4)  # (B, Q, H, r, c)
    first_register = 1 if has_class_token else 0
    return PrefixAttention(
        cls=maps[:, 0].contiguous() if has_class_token else None,
        registers=maps[:, first_register:].contiguous(),
        patch_mass=mass.contiguous(),
    )


# --- PCA ---------------------------------------------------------------------------------------


def pca_project(features: torch.Tensor, n_components: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the first principal components of ``features``.

    Args:
        features: (N, D) real.
        n_components: how many components (missing ones, when N or D is smaller, are zeros).

    Returns:
        scores (N, n_components) float32 (projections of the centred features on the principal
        axes) and explained-variance ratios (n_components,) float32. Sign convention: each
        component's largest-magnitude score is positive.
    """
    x = features.detach().to("cpu", torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    # eigh (deterministic LAPACK) of the smaller of the two Gram matrices: N x N for a small
    # image (N < D, milliseconds), D x D for a large one (a 60k-patch image stays cheap).
    n_rows, dim = x.shape
    scores = torch.zeros(n_rows, n_components, dtype=torch.float64)
    if n_rows <= dim:
        evals, evecs = torch.linalg.eigh(x @ x.T)  # ascending
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        n = min(n_components, n_rows)
        scores[:, :n] = evecs[:, :n] * evals[:n].sqrt()  # = x @ (principal axis), up to sign
    else:
        evals, evecs = torch.linalg.eigh(x.T @ x)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        n = min(n_components, dim)
        scores[:, :n] = x @ evecs[:, :n]
    ratios = torch.zeros(n_components, dtype=torch.float64)
    total = float(evals.sum())
    if total > 0:
        ratios[:n] = evals[:n] / total
    for j in range(n_components):
        column = scores[:, j]
        if column.numel() and float(column[column.abs().argmax()]) < 0:
            scores[:, j] = -column
    return scores.float(), ratios.float()


def pca_rgb(features: torch.Tensor, grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """First three principal components of patch features as an RGB image on the grid.

    Each component is min-max scaled to [0, 1] over the image's patches (a constant component
    becomes 0.5), as in the DINOv2 PCA pictures.

    Args:
        features: (rows*cols, D), row-major.
        grid_hw: (rows, cols).

    Returns:
        rgb (rows, cols, 3) float32 in [0, 1] and the explained-variance ratios (3,) float32.
    """
    rows, cols = grid_hw
    scores, ratios = pca_project(features, 3)
    lo, hi = scores.min(dim=0).values, scores.max(dim=0).values
    span = hi - lo
    scaled = torch.where(span > 0, (scores - lo) / torch.where(span > 0, span, 1), torch.full_like(scores, 0.5))
    return scaled.clamp(0, 1).reshape(rows, cols, 3).numpy(), ratios.numpy()
