"""Per-batch token measurements of the artifact study: norms, outlier masks, neighbour cosines, patches.

Pure tensor code, no accumulation (:mod:`lostreg.study.run` accumulates). Conventions:

* Patch tensors are (B, n, C) with n = rows * cols, row-major over the patch grid, as
  :meth:`lostreg.backbones.timm_base.TimmBackbone.patch_tokens` gives them (prefix and trailing
  tokens dropped).
* Outliers are decided per image by :class:`lostreg.artifacts.OutlierRule` (the one rule of
  lostreg; the ``mad`` form through its batched :func:`lostreg.artifacts.outlier_mask`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lostreg.artifacts import OutlierRule, outlier_mask

__all__ = ["neighbour_cosine", "patch_pixels", "rule_mask", "token_norms"]


def token_norms(patches: torch.Tensor) -> torch.Tensor:
    """(B, n, D) tokens -> (B, n) float32 L2 norms (computed in float32 whatever the input dtype)."""
    return torch.linalg.vector_norm(patches.float(), dim=-1)


def rule_mask(norms: torch.Tensor, rule: OutlierRule) -> torch.Tensor:
    """(B, n) norms -> (B, n) bool, True where a token is an outlier of its image under ``rule``.

    ``mad``: :func:`~lostreg.artifacts.outlier_mask` (median and MAD per image, float64);
    ``absolute``: ``norm > value``; ``mean_std``: :meth:`OutlierRule.threshold` per image.
    """
    if rule.kind == "mad":
        return outlier_mask(norms, rule.value)
    if rule.kind == "absolute":
        return norms.to(torch.float64) > rule.value
    cuts = torch.tensor([rule.threshold(norms[b]) for b in range(norms.shape[0])],
                        dtype=torch.float64, device=norms.device)
    return norms.to(torch.float64) > cuts[:, None]


def neighbour_cosine(patches: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Mean cosine similarity of each patch token to its 4-neighbours on the grid.

    Neighbours are the patches above, below, left and right; border patches average over the
    ones they have (3 on an edge, 2 in a corner). A grid of one patch has no neighbour: NaN.

    Args:
        patches: (B, rows*cols, D) tokens, row-major.
        grid_hw: (rows, cols).

    Returns:
        (B, rows*cols) float32.
    """
    rows, cols = grid_hw
    batch = patches.shape[0]
    unit = F.normalize(patches.float(), dim=-1).reshape(batch, rows, cols, -1)
    total = torch.zeros(batch, rows, cols, dtype=torch.float32, device=patches.device)
    count = torch.zeros(rows, cols, dtype=torch.float32, device=patches.device)
    if cols > 1:  # each horizontal pair counts for both of its patches
        horizontal = (unit[:, :, 1:] * unit[:, :, :-1]).sum(-1)  # (B, rows, cols-1)
        total[:, :, 1:] += horizontal
        total[:, :, :-1] += horizontal
        count[:, 1:] += 1
        count[:, :-1] += 1
    if rows > 1:
        vertical = (unit[:, 1:] * unit[:, :-1]).sum(-1)  # (B, rows-1, cols)
        total[:, 1:] += vertical
        total[:, :-1] += vertical
        count[1:] += 1
        count[:-1] += 1
    return (total / count).reshape(batch, rows * cols)


def patch_pixels(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The pixels under each patch: (B, 3, H, W) -> (B, rows*cols, 3*p*p).

    Row-major patches (as the tokens); within a patch the values are in (channel, y, x) order.
    Values are those of ``images`` (the normalised model input).
    """
    p = patch_size
    batch, channels, height, width = images.shape
    rows, cols = height // p, width // p
    x = images[:, :, : rows * p, : cols * p].reshape(batch, channels, rows, p, cols, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * p * p)
