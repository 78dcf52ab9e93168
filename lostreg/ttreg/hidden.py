"""Where a timm ViT block's MLP hidden activation lives, and a scoped hook on it.

The "hidden activation" of a block is the input of its MLP's second linear layer ``fc2``:
``act(fc1(x))`` for timm's GELU :class:`~timm.layers.Mlp` (DINO, DINOv2 S/B/L) and the gated
product ``act(x1) * x2`` for :class:`~timm.layers.GluMlp` (``SwiGLUPacked``, DINOv2 g/14) and
:class:`~timm.layers.SwiGLU`. All three produce it as the output of their ``drop1`` module (a
no-op at inference), which is therefore the one hook point used here; ``mlp.act`` would only see
the gate half of a GluMlp. Other MLPs (e.g. ``GatedMlp``, whose ``drop1`` precedes the gate) are
refused rather than silently hooked at the wrong place.

Hooks exist only inside :func:`hidden_activation_hook`'s ``with`` block, removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

#: ``fn(hidden) -> replacement or None``; hidden is (B, T, H) float, the input of ``fc2``.
HiddenFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _supported_mlp_types() -> tuple[type, ...]:
    # timm is imported lazily: listing commands must not import it.
    from timm.layers import GluMlp, Mlp, SwiGLU

    return (Mlp, GluMlp, SwiGLU)


def mlp_kind(block: nn.Module) -> str:
    """``"gelu"`` (timm ``Mlp``), ``"glu"`` (``GluMlp``/``SwiGLUPacked``) or ``"swiglu"`` (``SwiGLU``).

    Raises:
        ValueError: the block has no MLP of a supported type.
    """
    from timm.layers import GluMlp, Mlp, SwiGLU

    mlp = getattr(block, "mlp", None)
    # Exact types: a subclass may compute its hidden activation elsewhere than drop1.
    kinds = {Mlp: "gelu", GluMlp: "glu", SwiGLU: "swiglu"}
    kind = kinds.get(type(mlp))  # type: ignore[arg-type]
    if kind is None or not isinstance(getattr(mlp, "drop1", None), nn.Module):
        raise ValueError(
            f"block MLP {type(mlp).__name__} is not supported for test-time registers "
            f"(supported: timm {', '.join(t.__name__ for t in _supported_mlp_types())})"
        )
    return kind


def mlp_hidden_dim(block: nn.Module) -> int:
    """Width H of block's MLP hidden activation (the input width of ``fc2``)."""
    mlp_kind(block)
    return int(block.mlp.fc2.in_features)


@contextlib.contextmanager
def hidden_activation_hook(block: nn.Module, fn: HiddenFn) -> Iterator[list[int]]:
    """Call ``fn`` on block's MLP hidden activation during the ``with`` block.

    ``fn`` may return a tensor of the same shape to replace the activation (it then flows
    into ``fc2``), or None to only read it. The hook is removed on exit, also on errors.

    Yields:
        A list that receives one entry per hook call, so callers can assert the hook fired.
    """
    mlp_kind(block)
    calls: list[int] = []

    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        calls.append(1)
        return fn(output)

    handle = block.mlp.drop1.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


__all__ = ["HiddenFn", "hidden_activation_hook", "mlp_hidden_dim", "mlp_kind"]
