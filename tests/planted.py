"""A random ViT with a planted register neuron (spec A8, as tests/test_ttreg.py sets it up).

``vit_small_patch14_dinov2`` with random weights (seed 0) and LayerScale 1.0 (with timm's default
1e-5 every block is nearly the identity and no unit can change a token's norm). In block
``LAYER`` hidden unit ``UNIT`` is made to fire only on flat (mean-colour) patches: its ``fc1`` row is
the direction separating those patches' ``norm2`` features from every other token, scaled so that
it fires at ~43 on them, bias at the midpoint; its ``fc2`` column is a random unit vector x 3.26.
The flat patches' block outputs jump from ~10 to ~140 at block ``LAYER`` and stay high: high-norm
artifacts, at known places, from a known block on.
"""

from __future__ import annotations

import copy

import numpy as np
import timm
import torch
import torch.nn.functional as F

from lostreg.backbones import resolve_backbone
from lostreg.backbones.vit import TimmViTBackbone
from lostreg.preprocess import to_padded_tensor

PATCH = 14
LAYER, UNIT = 8, 777
MEAN_RGB = (124, 116, 104)  # ImageNet mean x 255, rounded: normalises to ~0


def layerscale_one_vit() -> TimmViTBackbone:
    """Random ``dinov2_vits14`` (12 blocks) with LayerScale 1.0, on CPU."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                  dynamic_img_size=True, init_values=1.0)
    return TimmViTBackbone(resolve_backbone("dinov2"), model, torch.device("cpu"), random_weights=True)


def noise_images(n: int, seed: int, size: int, flat_rc: list[tuple[int, int]]) -> list[np.ndarray]:
    """``n`` (size, size, 3) uint8 noise images with mean-colour patches at grid cells ``flat_rc``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        for r, c in flat_rc:
            image[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = MEAN_RGB
        out.append(image)
    return out


def prepare(backbone: TimmViTBackbone, images: list[np.ndarray]) -> torch.Tensor:
    """(B, 3, H, W) normalised float32, as the study's loader prepares images already of its size."""
    return torch.stack([to_padded_tensor(image, backbone.patch_size, backbone.mean, backbone.std).tensor
                        for image in images])


def planted_twin(base: TimmViTBackbone, x: torch.Tensor, flat: torch.Tensor, target: float = 43.0,
                 out_norm: float = 3.26, seed: int = 5) -> TimmViTBackbone:
    """A copy of ``base`` whose unit ``UNIT`` of block ``LAYER`` fires only on the ``flat`` patches of ``x``.

    Args:
        base: the plain model (never modified).
        x: (B, 3, H, W) images the direction is fitted on.
        flat: (B, rows*cols) bool, True at each image's flat patches (row-major), where the unit must fire.
    """
    planted = TimmViTBackbone(base.spec, copy.deepcopy(base.model), base.device, random_weights=True)
    block = planted.model.blocks[LAYER]
    prefix = planted.num_prefix_tokens
    with torch.no_grad():
        h = planted.block_input(x, LAYER)
        features = block.norm2(h + block.ls1(block.attn(block.norm1(h))))
        chosen = torch.zeros(features.shape[:2], dtype=torch.bool)  # (B, T)
        chosen[:, prefix:prefix + flat.shape[1]] = flat
        on, off = features[chosen], features[~chosen]
        direction = on.mean(0) - off.mean(0)
        # Orthogonal to CLS's offset from the other patches, else CLS sits close to the flat patches.
        others = features[:, prefix:][~chosen[:, prefix:]]
        cls_offset = F.normalize(features[:, 0].mean(0) - others.mean(0), dim=0)
        direction = F.normalize(direction - (direction @ cls_offset) * cls_offset, dim=0)
        low, high = float((off @ direction).max()), float((on @ direction).min())
        assert high - low > 5, "the flat patches must be separable for the plant to be clean"
        mid = (low + high) / 2
        scale = target / (float((on @ direction).mean()) - mid)
        block.mlp.fc1.weight[UNIT] = direction * scale
        block.mlp.fc1.bias[UNIT] = -mid * scale
        column = torch.randn(block.mlp.fc2.weight.shape[0], generator=torch.Generator().manual_seed(seed))
        block.mlp.fc2.weight[:, UNIT] = F.normalize(column, dim=0) * out_norm
    return planted
