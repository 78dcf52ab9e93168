"""timm Vision Transformers as LOST feature extractors (DINO, DINOv2, DINOv2+reg, DeiT-III, CLIP, any timm ViT).

The family's steps of :class:`~lostreg.backbones.timm_base.TimmBackbone`: the token sequence is
assembled here so that each family's official position-embedding interpolation applies (timm's
differs for DINO and plain DINOv2), and q/k/v are slices of each block's fused ``attn.qkv``.

ViTs support forward edits (:mod:`lostreg.backbones.edits`): a test-time register
(:mod:`lostreg.ttreg`) is one extra token appended at the END of the sequence,
``[CLS, registers..., patches..., TTR]``, and an edit of the listed MLP units; patch features are
sliced ``[P : P + rows*cols]``, so the extra token never reaches LOST.
"""

from __future__ import annotations

from typing import Any, Collection

import torch
from torch import nn

from lostreg.backbones.base import FeatureKind, refuse_rope_option
from lostreg.backbones.edits import ForwardEdit
from lostreg.backbones.pos_embed import PosEmbedInterp, resize_patch_pos_embed
from lostreg.backbones.registry import BackboneSpec, register_builder
from lostreg.backbones.timm_base import AttentionTensors, TimmBackbone, create_timm_model
from lostreg.backbones.weights import WeightsError
from lostreg.errors import ConfigError

#: Position of q, k and v in the qkv projection's output channels.
FEATURE_SLICE = {"q": 0, "k": 1, "v": 2}


class TimmViTBackbone(TimmBackbone):
    """LOST features from a timm ``VisionTransformer`` (fused ``blocks[i].attn.qkv``).

    Args: as :class:`~lostreg.backbones.timm_base.TimmBackbone`; ``spec.pos_embed_interp`` picks
    the official position-embedding interpolation.
    """

    @classmethod
    def _check_model(cls, model: nn.Module, name: str) -> None:
        needed = ("patch_embed", "blocks", "num_prefix_tokens", "cls_token", "reg_token", "pos_embed")
        if not all(hasattr(model, a) for a in needed) or not all(
            hasattr(b, "norm1") and hasattr(getattr(b, "attn", None), "qkv") for b in model.blocks
        ):
            raise ConfigError(
                f"{name}: not a timm VisionTransformer with a fused qkv projection in every block; "
                "LOST needs blocks[i].attn.qkv"
            )
        # _embed assembles [CLS, registers, patches]: a model with other prefix tokens (DeiT's
        # distillation token) would lose them.
        assembled = int(model.cls_token is not None) + (0 if model.reg_token is None else int(model.reg_token.shape[1]))
        if model.num_prefix_tokens != assembled:
            raise ConfigError(
                f"{name}: {model.num_prefix_tokens} prefix tokens, of which lostreg assembles only the class "
                f"token and registers ({assembled}); distilled DeiT models are not supported"
            )

    @property
    def supports_forward_edits(self) -> bool:
        return True

    # Earlier names of the forward-edit API, kept for callers written against them.
    @property
    def test_time_registers(self) -> ForwardEdit | None:
        """The edit (test-time register) this backbone runs with, or None: :attr:`forward_edit`."""
        return self.forward_edit

    def with_test_time_registers(self, registers: ForwardEdit | None) -> "TimmViTBackbone":
        """:meth:`with_forward_edit`; see :func:`lostreg.ttreg.apply_test_time_registers` for the
        variant that also checks a neuron file against these weights."""
        return self.with_forward_edit(registers)  # type: ignore[return-value]

    @property
    def has_position_table(self) -> bool:
        return self.model.pos_embed is not None

    def _embed(self, images: torch.Tensor, pos_antialias: bool = False) -> tuple[torch.Tensor, Any]:
        model = self.model
        x = model.patch_embed(images)  # (B, rows, cols, D) with dynamic_img_size
        batch, rows, cols, dim = x.shape
        x = x.reshape(batch, rows * cols, dim)

        prefix = self.prefix_tokens(batch)

        if model.pos_embed is not None:
            # no_embed_class: position embeddings cover patches only (DINOv2+reg in timm);
            # otherwise the first entries belong to the prefix tokens (DINO, DINOv2).
            n_pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
            pos_prefix = model.pos_embed[:, :n_pos_prefix]
            pos_patch = resize_patch_pos_embed(
                model.pos_embed[:, n_pos_prefix:],
                grid_hw=(rows, cols),
                pretrained_grid_hw=tuple(model.patch_embed.grid_size),
                # Antialiased: the exact-size bicubic resize with antialias of the DINOv2+reg code.
                mode=PosEmbedInterp.TIMM if pos_antialias else self.spec.pos_embed_interp,
            )
            if model.no_embed_class:
                x = torch.cat(prefix + [x + pos_patch], dim=1)
            else:
                x = torch.cat(prefix + [x], dim=1) + torch.cat([pos_prefix, pos_patch], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
        return x, None

    def _features(self, block: nn.Module, x: torch.Tensor, context: Any,
                  kinds: Collection[str]) -> dict[str, torch.Tensor]:
        qkv = block.attn.qkv(block.norm1(x))  # one projection serves every kind
        return {kind: select_features(qkv, kind) for kind in kinds}  # type: ignore[arg-type]

    def _attention(self, block: nn.Module, x: torch.Tensor, context: Any) -> AttentionTensors:
        attn = block.attn
        qkv = attn.qkv(block.norm1(x))
        batch, tokens, _ = qkv.shape
        q, k, v = qkv.reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return AttentionTensors(q, k, v, q, k)

    # --- the forward in pieces (for tests and experiments) ------------------------------------

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Input tokens of block 0: (B, num_prefix_tokens + rows*cols + num_trailing_tokens, D).

        Order is [CLS, registers, patches row-major, edit tokens if any], position embeddings added
        the family's way (an edit's tokens get none).
        """
        return self.begin(images).tokens

    def block_input(self, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Tokens entering block ``layer``: (B, num_prefix_tokens + rows*cols + num_trailing_tokens, D)."""
        return self.advance(self.begin(images), self.layer_index(layer)).tokens

    def qkv(self, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Output of block ``layer``'s attention qkv linear (bias included), all tokens.

        Returns:
            (B, num_prefix_tokens + rows*cols + num_trailing_tokens, 3*D): channels [0:D] = q,
            [D:2D] = k, [2D:3D] = v, heads concatenated in head order within each.
        """
        block = self.model.blocks[self.layer_index(layer)]
        return block.attn.qkv(block.norm1(self.block_input(images, layer)))


def select_features(qkv: torch.Tensor, which: FeatureKind) -> torch.Tensor:
    """The q, k or v channels of a qkv projection output (..., 3*D) -> (..., D), all tokens."""
    if which not in FEATURE_SLICE:
        raise ConfigError(f"features.which must be one of q, k, v; got {which!r}")
    dim = qkv.shape[-1] // 3
    start = FEATURE_SLICE[which] * dim
    return qkv[..., start:start + dim]


@register_builder("timm_vit")
def build_timm_vit(
    spec: BackboneSpec, weights: str | None, device: torch.device, *, rope: str = "pre"
) -> TimmViTBackbone:
    """Build ``spec.timm_name`` with ``weights``: None/"pretrained" (hub), "random", or a file path.

    ``rope`` must be ``"pre"``: these ViTs have absolute position embeddings, no rotation.
    """
    refuse_rope_option(rope)
    model, random_weights = create_timm_model(spec, weights)
    return TimmViTBackbone(spec, model, device, random_weights=random_weights)


__all__ = ["FEATURE_SLICE", "TimmViTBackbone", "WeightsError", "build_timm_vit", "select_features"]
