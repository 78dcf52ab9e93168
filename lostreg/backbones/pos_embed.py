"""Position-embedding interpolation, the way each backbone family's official code does it.

LOST runs at the image's native resolution, so the pretrained position embeddings (a square
grid ``g x g``) must be resized to the image's patch grid ``rows x cols``. The official
repositories do this differently, and the boxes depend on it:

* DINO (v1) and plain DINOv2 call ``F.interpolate(..., mode="bicubic")`` with a *scale factor*
  ``((rows + 0.1) / g, (cols + 0.1) / g)`` and no antialias. Because a scale factor (not an
  output size) is given, PyTorch samples the source at ``g / (rows + 0.1)`` steps, which is
  not the ``g / rows`` that a size-based resize uses.
* DINOv2 with registers is built with ``interpolate_offset=0`` and ``interpolate_antialias=True``:
  a size-based bicubic resize with antialias, which is exactly timm's
  :func:`timm.layers.resample_abs_pos_embed`.

Both official versions return the embedding untouched when the grid already is ``g x g``.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch.nn.functional as F


class PosEmbedInterp(str, Enum):
    """How a backbone family resizes its patch position embeddings."""

    #: Official DINO v1 / DINOv2 (no registers): bicubic, scale factor (n + 0.1) / g, no antialias.
    OFFSET_0_1 = "offset_0.1"
    #: timm's resize (bicubic, exact size, antialias); equals the official DINOv2+reg one.
    TIMM = "timm"
    #: No absolute position table to resize: rotary embeddings (DINOv3) are recomputed per grid.
    NONE_ROPE = "none (rope)"


def interpolate_with_offset(
    patch_pos_embed: torch.Tensor, grid_hw: tuple[int, int], offset: float = 0.1
) -> torch.Tensor:
    """Resize patch position embeddings with the official DINO / DINOv2 scale-factor formula.

    Args:
        patch_pos_embed: (1, g*g, D) position embeddings of the patch tokens only (no prefix),
            for a square pretrained grid g x g, row-major.
        grid_hw: target grid (rows, cols).
        offset: added to rows and cols before dividing by g (0.1 in both official repos).

    Returns:
        (1, rows*cols, D) embeddings in the input's dtype, row-major.
    """
    _, num_patches, dim = patch_pos_embed.shape
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise ValueError(f"pretrained position grid is not square: {num_patches} patch positions")
    rows, cols = grid_hw
    if (rows, cols) == (g, g):
        # The official code returns the table untouched at the pretrained grid size.
        return patch_pos_embed
    grid = patch_pos_embed.float().reshape(1, g, g, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(
        grid,
        scale_factor=((rows + offset) / g, (cols + offset) / g),
        mode="bicubic",
        align_corners=False,
        antialias=False,
    )
    if resized.shape[-2:] != (rows, cols):
        # floor(g * (n + 0.1) / g) == n for every n in practice; fail loudly if not.
        raise RuntimeError(f"offset interpolation gave {tuple(resized.shape[-2:])}, expected {(rows, cols)}")
    return resized.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(patch_pos_embed.dtype)


def resize_patch_pos_embed(
    patch_pos_embed: torch.Tensor,
    grid_hw: tuple[int, int],
    pretrained_grid_hw: tuple[int, int],
    mode: PosEmbedInterp,
) -> torch.Tensor:
    """Resize (1, g_h*g_w, D) patch position embeddings to (1, rows*cols, D) with ``mode``."""
    if mode is PosEmbedInterp.OFFSET_0_1:
        if pretrained_grid_hw[0] != pretrained_grid_hw[1]:
            raise ValueError(f"offset interpolation needs a square pretrained grid, got {pretrained_grid_hw}")
        return interpolate_with_offset(patch_pos_embed, grid_hw, offset=0.1)
    # Imported here: the registry imports this module, and listing backbones must not import timm.
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(
        patch_pos_embed,
        new_size=list(grid_hw),
        old_size=list(pretrained_grid_hw),
        num_prefix_tokens=0,
        interpolation="bicubic",
        antialias=True,
    )
