"""One forward pass of a backbone for the diagnostics: the final and pre-norm tokens and one block's q/k/v.

Written out over the models' own modules (no hooks), with the same calls in the same order as
the backbones' :meth:`~lostreg.backbones.base.Backbone.extract_many`, so the features a trace
gives equal the ones discovery uses, bit for bit. Token order and the test-time register are as
in :mod:`lostreg.diagnostics.tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lostreg.backbones.dinov3 import DinoV3Backbone, merge_heads, project_qkv, rotate_patch_tokens
from lostreg.backbones.vit import TimmViTBackbone
from lostreg.precision import strict_fp32

__all__ = ["DinoV3Trace", "ViTTrace", "trace_dinov3", "trace_vit"]


@dataclass(frozen=True)
class ViTTrace:
    """What one forward pass of a timm ViT gives the diagnostics (tensors on the backbone's device).

    Attributes:
        final: (B, T, D) float32, tokens after the final norm (timm ``forward_features``).
        prenorm: (B, T, D) float32, output of the last block, before the final norm.
        qkv: (B, T, 3*D) float32, block ``layer``'s qkv-linear output (LOST's features come from it).
        layer: Non-negative index of the block whose qkv is kept.
        num_prefix_tokens: CLS + registers at the start of T.
        num_registers: R (0 without registers).
        has_class_token: Whether token 0 is a CLS token.
        grid_hw: (rows, cols); T = num_prefix_tokens + rows * cols + num_trailing_tokens.
        num_trailing_tokens: tokens after the patches (1 with a test-time register, else 0).
    """

    final: torch.Tensor
    prenorm: torch.Tensor
    qkv: torch.Tensor
    layer: int
    num_prefix_tokens: int
    num_registers: int
    has_class_token: bool
    grid_hw: tuple[int, int]
    num_trailing_tokens: int = 0


def trace_vit(backbone: TimmViTBackbone, images: torch.Tensor, layer: int = -1) -> ViTTrace:
    """Run all blocks once, keeping the final tokens and block ``layer``'s qkv.

    The block calls are those of :meth:`TimmViTBackbone.extract` (same modules, same order, fp32
    without TF32, the backbone's test-time register if it has one), so the k slice of
    :attr:`ViTTrace.qkv` equals ``extract(images, "k", layer)`` bit for bit on the same device
    and batch.

    Args:
        backbone: a built ViT backbone.
        images: (B, 3, H, W) normalised and padded (H, W multiples of the patch size).
        layer: block whose qkv is kept, negative from the end.
    """
    model = backbone.model
    index = backbone.layer_index(layer)
    p = backbone.patch_size
    images = images.to(backbone.device, torch.float32)
    grid_hw = (int(images.shape[-2]) // p, int(images.shape[-1]) // p)
    with torch.inference_mode(), strict_fp32():
        x = backbone.tokens(images)
        qkv = None
        for i, block in enumerate(model.blocks):
            if i == index:
                qkv = block.attn.qkv(block.norm1(x))
            x = backbone.run_block(i, x)
        final = model.norm(x)
    assert qkv is not None
    return ViTTrace(
        final=final.float(),
        prenorm=x.float(),
        qkv=qkv.float(),
        layer=index,
        num_prefix_tokens=backbone.num_prefix_tokens,
        num_registers=backbone.num_registers,
        has_class_token=getattr(model, "cls_token", None) is not None,
        grid_hw=grid_hw,
        num_trailing_tokens=backbone.num_trailing_tokens,
    )


@dataclass(frozen=True)
class DinoV3Trace:
    """What one forward pass of a DINOv3 (timm ``Eva``) gives the diagnostics (backbone's device).

    Token order is ``[CLS, 4 registers, patches row-major]``; T = num_prefix_tokens + rows*cols.

    Attributes:
        final: (B, T, D) float32, tokens after the final LayerNorm (timm ``forward_features``).
        prenorm: (B, T, D) float32, output of the last block, before the final norm.
        q: (B, heads, T, head_dim) float32, block ``layer``'s queries before RoPE (after ``q_norm``).
        k: (B, heads, T, head_dim) float32, keys before RoPE (after ``k_norm``).
        v: (B, heads, T, head_dim) float32, values (never rotated).
        q_rot: (B, heads, T, head_dim) float32, the queries the block's softmax sees: patch rows
            rotated by RoPE, prefix rows equal to ``q``'s.
        k_rot: likewise for the keys.
        scale: the factor the block's attention multiplies ``q_rot @ k_rotᵀ`` by.
        layer: non-negative index of the traced block.
        num_prefix_tokens: CLS + registers (5 for DINOv3).
        num_registers: R.
        has_class_token: whether token 0 is a CLS token.
        grid_hw: (rows, cols).
        rope: ``"pre"`` or ``"post"``: which q/k :meth:`features` returns (the backbone's setting).
    """

    final: torch.Tensor
    prenorm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_rot: torch.Tensor
    k_rot: torch.Tensor
    scale: float
    layer: int
    num_prefix_tokens: int
    num_registers: int
    has_class_token: bool
    grid_hw: tuple[int, int]
    rope: str = "pre"

    def features(self, which: str) -> torch.Tensor:
        """The method's patch features: (B, rows*cols, heads*head_dim) float32, heads concatenated.

        Equal bit for bit to ``backbone.extract(images, which, layer)`` of the traced backbone
        (q/k before or after RoPE as the backbone was built; v is never rotated).
        """
        if which not in ("q", "k", "v"):
            raise ValueError(f"features.which must be one of q, k, v; got {which!r}")
        rotated = self.rope == "post" and which != "v"
        heads = getattr(self, f"{which}_rot" if rotated else which)
        return merge_heads(heads[:, :, self.num_prefix_tokens:]).float()


def trace_dinov3(backbone: DinoV3Backbone, images: torch.Tensor, layer: int = -1) -> DinoV3Trace:
    """Run all blocks of a DINOv3 once, keeping the final tokens and block ``layer``'s q/k/v.

    The same module calls as :meth:`DinoV3Backbone.extract_many` (same token assembly, same
    q/k/v projection and rotation, fp32 without TF32), written out over the model's modules: no
    hook is registered, so none can be left behind.

    Args:
        backbone: a built DINOv3 backbone.
        images: (B, 3, H, W) normalised and padded (H, W multiples of 16).
        layer: block to trace, negative from the end.
    """
    model = backbone.model
    index = backbone.layer_index(layer)
    npt = backbone.num_prefix_tokens
    images = images.to(backbone.device, torch.float32)
    traced: tuple[torch.Tensor, ...] | None = None
    scale = 0.0
    with torch.inference_mode(), strict_fp32():
        x, rope = backbone.tokens(images)
        grid_hw = (int(images.shape[-2]) // backbone.patch_size, int(images.shape[-1]) // backbone.patch_size)
        for i, block in enumerate(model.blocks):
            if i == index:
                attn = block.attn
                q, k, v = project_qkv(attn, block.norm1(x))
                traced = (q, k, v, rotate_patch_tokens(q, rope, npt, attn.rotate_half),
                          rotate_patch_tokens(k, rope, npt, attn.rotate_half))
                # timm's fused path calls scaled_dot_product_attention without a scale, i.e.
                # 1/sqrt(head_dim), whatever attn.scale says; the unfused path uses attn.scale.
                scale = float(q.shape[-1] ** -0.5) if getattr(attn, "fused_attn", False) else float(attn.scale)
            x = block(x, rope=rope)
        final = model.norm(x)
    assert traced is not None
    q, k, v, q_rot, k_rot = traced
    return DinoV3Trace(
        final=final.float(), prenorm=x.float(), q=q, k=k, v=v, q_rot=q_rot, k_rot=k_rot, scale=scale,
        layer=index, num_prefix_tokens=npt, num_registers=backbone.num_registers,
        has_class_token=model.cls_token is not None, grid_hw=grid_hw, rope=backbone.rope,
    )
