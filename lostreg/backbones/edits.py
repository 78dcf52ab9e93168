"""The backbone's seam for editing its forward pass: extra tokens and MLP hidden activations.

A :class:`ForwardEdit` changes how a timm backbone runs without touching its weights:

* **Extra tokens** appended after the patches, once, after the position information and before
  the first block (``[CLS, registers..., patches..., extra...]``). They take part in attention in
  every block and are never patch features (the backbone slices ``[P : P + rows*cols]``).
* **Edits of the MLP hidden activation** in the blocks it lists: the input of the MLP's second
  linear layer ``fc2``, i.e. ``act(fc1(x))`` for timm's GELU :class:`~timm.layers.Mlp` (DINO,
  DINOv2 S/B/L) and the gated product ``act(x1) * x2`` for :class:`~timm.layers.GluMlp`
  (``SwiGLUPacked``, DINOv2 g/14) and :class:`~timm.layers.SwiGLU`. All three produce it as the
  output of their ``drop1`` module (a no-op at inference), the one hook point used here;
  ``mlp.act`` would only see the gate half of a GluMlp. Other MLPs (e.g. ``GatedMlp``, whose
  ``drop1`` precedes the gate) are refused rather than silently hooked at the wrong place.

Test-time registers (:mod:`lostreg.ttreg`) are one such edit; this module knows nothing of them.
A backbone says whether it can run edits (:attr:`~lostreg.backbones.base.Backbone.supports_forward_edits`)
and returns an edited view of itself with
:meth:`~lostreg.backbones.base.Backbone.with_forward_edit`.

Hooks exist only inside :func:`hidden_activation_hook`'s ``with`` block (removed in ``finally``),
and :func:`run_with_hidden` checks the hook fired exactly once, so an edit can neither outlive
its call nor be silently skipped.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Collection, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from lostreg.errors import ConfigError

__all__ = [
    "ForwardEdit",
    "HiddenFn",
    "hidden_activation_hook",
    "mlp_hidden_dim",
    "mlp_kind",
    "run_with_hidden",
]

#: ``fn(hidden) -> replacement or None``; hidden is (B, T, H) float, the input of ``fc2``.
HiddenFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@runtime_checkable
class ForwardEdit(Protocol):
    """An edit of a backbone's forward pass (see the module docstring). Never modifies weights.

    Attributes:
        num_tokens: tokens appended after the patches (0 for none).
        layers: blocks (0-based) whose MLP hidden activation :meth:`edit_hidden` edits.
    """

    @property
    def num_tokens(self) -> int: ...

    @property
    def layers(self) -> Collection[int]: ...

    def check_model(self, model: nn.Module, name: str) -> None:
        """Raise (one line, naming ``name``) if ``model`` cannot run this edit (missing blocks,
        an MLP without a supported hidden activation, units beyond its width)."""

    def append_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens after the position information -> (B, N + num_tokens, D)."""

    def edit_hidden(self, hidden: torch.Tensor, layer: int, num_prefix_tokens: int) -> torch.Tensor:
        """The edited MLP hidden activation of block ``layer`` (a new tensor; input untouched).

        Args:
            hidden: (B, P + rows*cols + num_tokens, H) float, tokens in the backbone's order.
            layer: block index (0-based), one of :attr:`layers`.
            num_prefix_tokens: P (CLS + trained registers).
        """


def _supported_mlp_types() -> dict[type, str]:
    # timm is imported lazily: listing commands must not import it.
    from timm.layers import GluMlp, Mlp, SwiGLU

    return {Mlp: "gelu", GluMlp: "glu", SwiGLU: "swiglu"}


def mlp_kind(block: nn.Module) -> str:
    """``"gelu"`` (timm ``Mlp``), ``"glu"`` (``GluMlp``/``SwiGLUPacked``) or ``"swiglu"`` (``SwiGLU``).

    Raises:
        ConfigError: the block has no MLP of a supported type (one line, listing the supported ones).
    """
    kinds = _supported_mlp_types()
    mlp = getattr(block, "mlp", None)
    # Exact types: a subclass may compute its hidden activation elsewhere than drop1.
    kind = kinds.get(type(mlp))
    if kind is None or not isinstance(getattr(mlp, "drop1", None), nn.Module):
        raise ConfigError(
            f"block MLP {type(mlp).__name__} is not supported for test-time registers "
            f"(supported: timm {', '.join(t.__name__ for t in kinds)})"
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


def run_with_hidden(block: nn.Module, fn: HiddenFn, forward: Callable[[], torch.Tensor], what: str) -> torch.Tensor:
    """``forward()`` (a call of ``block``) with ``fn`` on the block's MLP hidden activation.

    Args:
        block: the block ``forward`` runs.
        fn: as for :func:`hidden_activation_hook`.
        forward: runs the block once and returns its output.
        what: names the block in the error (``"dinov2_vits14 block 8"``).

    Raises:
        RuntimeError: the hook fired other than once: the block did not compute its hidden
            activation through the hook point (an unsupported layout). A bug, not a user error:
            an edit silently skipped would change results without a word.
    """
    with hidden_activation_hook(block, fn) as calls:
        out = forward()
    if len(calls) != 1:
        raise RuntimeError(f"{what}: MLP hidden activation seen {len(calls)} times, expected once")
    return out
