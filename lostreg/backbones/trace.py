"""One forward pass of a backbone as the diagnostics read it: :class:`Trace`.

Every backbone gives the same record (:meth:`lostreg.backbones.base.Backbone.trace`), so token
norms, attention maps, PCA and the register-neuron finder never ask which family a backbone is.

Conventions of every tensor in a trace:

* Token axis T = ``num_prefix_tokens + rows*cols + num_trailing_tokens`` in the order
  ``[CLS, registers..., patches row-major..., trailing tokens]``. Trailing tokens are tokens a
  forward edit appended (a test-time register); they take part in the forward pass and the
  attention softmax, and are never patches.
* Per-head tensors are (B, heads, T, head_dim); token tensors (B, T, C). float32 under the
  default ``precision="fp32"`` (bfloat16 values widened to float32 under ``precision="bf16"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from lostreg.errors import ConfigError

__all__ = ["Trace"]


@dataclass(frozen=True)
class Trace:
    """What one forward pass of a backbone gives the diagnostics (tensors on the backbone's device).

    Attributes:
        final: (B, T, D) tokens after the model's final norm (timm ``forward_features``).
        prenorm: (B, T, D) output of the last block, before the final norm.
        feature_tokens: ``{kind: (B, T, C)}`` for the feature kinds of the traced block, every
            token: the very channels :meth:`~lostreg.backbones.base.Backbone.extract_many` takes
            the patch rows of (ViT: slices of the qkv projection; DINOv3: heads concatenated,
            q/k rotated when built with ``rope="post"``; pixels: only ``k``, the pixels), and
            ``out``: the block's output tokens (after the final norm for the last block).
        layer: non-negative index of the traced block.
        num_prefix_tokens: P, CLS (if any) + trained registers at the start of T.
        num_registers: trained registers R among the prefix tokens.
        has_class_token: whether token 0 is a CLS token.
        grid_hw: (rows, cols) of the padded image's patch grid.
        num_trailing_tokens: tokens after the patches (1 with a test-time register, else 0).
        q: (B, heads, T, head_dim) block ``layer``'s queries as projected, after the block's
            ``q_norm``, before any rotation; None without attention (pixels).
        k: keys, likewise (after ``k_norm``).
        v: values (never normalised or rotated).
        q_attn: the queries the block's softmax sees: ``q`` for ViTs; for DINOv3 the patch rows
            rotated by the block's RoPE, prefix rows equal to ``q``'s.
        k_attn: the keys the softmax sees, likewise.
        scale: the factor the block multiplies ``q_attn @ k_attnᵀ`` by before the softmax.
        layers: with ``keep_layers=True``, the output of every block (B, T, D) float32, block 0
            first (the last equals :attr:`prenorm`); else None.
    """

    final: torch.Tensor
    prenorm: torch.Tensor
    feature_tokens: Mapping[str, torch.Tensor]
    layer: int
    num_prefix_tokens: int
    num_registers: int
    has_class_token: bool
    grid_hw: tuple[int, int]
    num_trailing_tokens: int = 0
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    q_attn: torch.Tensor | None = None
    k_attn: torch.Tensor | None = None
    scale: float | None = None
    layers: tuple[torch.Tensor, ...] | None = None

    @property
    def has_attention(self) -> bool:
        """Whether the trace carries attention tensors (False for weight-free backbones)."""
        return self.q_attn is not None and self.k_attn is not None

    @property
    def num_patches(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    def patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch rows ``[P : P + rows*cols]`` of a (B, T, C) token tensor -> (B, rows*cols, C).

        Raises:
            ValueError: ``tokens`` does not have this trace's T tokens (a bug, not a user error).
        """
        start, n = self.num_prefix_tokens, self.num_patches
        if tokens.shape[1] != start + n + self.num_trailing_tokens:
            raise ValueError(f"{tokens.shape[1]} tokens != {start} prefix + {n} patches"
                             f" + {self.num_trailing_tokens} trailing")
        return tokens[:, start:start + n]

    def features(self, which: str) -> torch.Tensor:
        """The method's patch features (B, rows*cols, C) float32.

        Equal bit for bit to ``backbone.extract(images, which, layer)`` of the traced backbone
        (same images, device and precision).

        Raises:
            ConfigError: ``which`` is not a feature of this backbone (pixels has only ``k``).
        """
        if which not in self.feature_tokens:
            raise ConfigError(f"features.which must be one of {', '.join(self.feature_tokens)}; got {which!r}")
        return self.patches(self.feature_tokens[which]).float()

    @property
    def qkv(self) -> torch.Tensor:
        """(B, T, 3*C): the q | k | v feature channels of every token side by side.

        For a timm ViT this is the block's qkv-linear output bit for bit (the input of
        :func:`lostreg.diagnostics.tokens.prefix_attention`).

        Raises:
            ConfigError: the backbone has no attention (pixels).
        """
        if not all(kind in self.feature_tokens for kind in "qkv"):
            raise ConfigError("this backbone has no attention layers: its trace has no q/k/v")
        return torch.cat([self.feature_tokens[kind] for kind in "qkv"], dim=-1)

    # The names DINOv3's own trace used for the softmax's q/k.
    @property
    def q_rot(self) -> torch.Tensor | None:
        """Alias of :attr:`q_attn`."""
        return self.q_attn

    @property
    def k_rot(self) -> torch.Tensor | None:
        """Alias of :attr:`k_attn`."""
        return self.k_attn
