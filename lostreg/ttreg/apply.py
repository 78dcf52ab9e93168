"""Running a timm ViT with one test-time register (Jiang et al. 2025).

The register is one zero token appended at the END of the sequence after the position
embedding, so tokens are ``[CLS, trained registers..., patches (row-major)..., TTR]``; it has no
position embedding and takes part in attention in every block like any other token. In each
listed block, the MLP hidden activation (input of ``fc2``) is edited before ``fc2``:

* ``mode="per_unit"`` (default; the paper's description, batch-safe): for every image and every
  listed unit separately, the entry with the largest absolute value over all of that image's
  tokens (CLS, registers, patches and the TTR itself; the sign is kept) is written into the
  TTR, and the unit is set to 0 on the image's PATCH tokens. CLS and trained registers keep
  their values. Every image of a batch is edited with its own values, so a batch gives each
  image what it would get alone.
* ``mode="published"``: what the released code does, kept only to reproduce its tables. Only
  image 0 of a batch is edited, and one value per layer (largest |value| over all tokens and
  all listed units of the layer together) goes into every listed unit of the TTR. Patches are
  the ``[P : P + rows*cols]`` slice in both modes (the released code zeroes ``[1 : -1]``, which
  on a model with trained registers would also zero those; the same on models without them).

The backbone drops the TTR before features reach LOST (:meth:`TimmViTBackbone.patch_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from lostreg.ttreg.hidden import hidden_activation_hook, mlp_hidden_dim
from lostreg.ttreg.neurons import RegisterNeurons

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.backbones.vit import TimmViTBackbone

Mode = Literal["per_unit", "published"]
MODES: tuple[str, ...] = ("per_unit", "published")


@dataclass(frozen=True)
class TestTimeRegisters:
    """One test-time register and the units it takes over; an inspectable backbone state.

    Attributes:
        neurons: which (layer, unit) pairs to move into the register.
        mode: ``per_unit`` (default) or ``published`` (see the module docstring).
    """

    __test__ = False  # not a pytest test class despite the name

    neurons: RegisterNeurons
    mode: Mode = "per_unit"
    _units: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    #: Number of appended tokens. The paper found no gain from 2-5, and the edit writes one row.
    num_tokens: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"test-time register mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "_units", self.neurons.layer_units())

    @property
    def layers(self) -> tuple[int, ...]:
        """Blocks whose MLP is edited (0-based, ascending)."""
        return tuple(self._units)

    def units(self, layer: int) -> tuple[int, ...]:
        """Units edited in block ``layer`` (ascending; empty for other blocks)."""
        return self._units.get(layer, ())

    def check_model(self, model: nn.Module, name: str = "model") -> None:
        """Structural check: every listed block exists, has a supported MLP, and every unit fits.

        Raises:
            ValueError: one line naming the first problem.
        """
        depth = len(model.blocks)
        for layer, units in self._units.items():
            if not 0 <= layer < depth:
                raise ValueError(f"{name} has {depth} blocks; a test-time register unit is in block {layer}")
            width = mlp_hidden_dim(model.blocks[layer])
            if max(units) >= width:
                raise ValueError(f"{name} block {layer} has {width} MLP hidden units; unit {max(units)} is listed")

    def append_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N + 1, D): the zero register token appended at the end."""
        batch, _, dim = tokens.shape
        return torch.cat([tokens, tokens.new_zeros(batch, self.num_tokens, dim)], dim=1)

    def edit_hidden(self, hidden: torch.Tensor, layer: int, num_prefix_tokens: int) -> torch.Tensor:
        """The edited MLP hidden activation of block ``layer`` (a new tensor; input untouched).

        Args:
            hidden: (B, P + rows*cols + 1, H) float, tokens in :meth:`TimmViTBackbone.tokens` order.
            layer: block index (0-based).
            num_prefix_tokens: P (CLS + trained registers).
        """
        units = torch.tensor(self.units(layer), device=hidden.device, dtype=torch.long)
        tokens = hidden.shape[1]
        register = tokens - self.num_tokens  # first (only) register row
        if register <= num_prefix_tokens:
            raise ValueError(f"{tokens} tokens leave no patch between {num_prefix_tokens} prefix tokens and the register")
        out = hidden.clone()
        sub = hidden.index_select(-1, units)  # (B, T, k)
        if self.mode == "per_unit":
            # Per image and unit: the signed entry of largest |value| along the tokens.
            where = sub.abs().argmax(dim=1, keepdim=True)  # (B, 1, k); first one on ties
            out[:, register:, units] = sub.gather(1, where)
            out[:, num_prefix_tokens:register, units] = 0
        else:
            # Released code: image 0 only, one value over all tokens x listed units of the layer.
            first = sub[0].reshape(-1)
            out[0, register:, units] = first[first.abs().argmax()]
            out[0, num_prefix_tokens:register, units] = 0
        return out

    def run_block(self, block: nn.Module, layer: int, x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """``block(x)`` with its MLP hidden activation edited; no hook survives the call.

        Raises:
            RuntimeError: the block never computed its MLP hidden activation through the hook
                point (an unsupported block layout), rather than silently not editing it.
        """
        with hidden_activation_hook(block, lambda h: self.edit_hidden(h, layer, num_prefix_tokens)) as calls:
            out = block(x)
        if len(calls) != 1:
            raise RuntimeError(f"block {layer}: MLP hidden activation seen {len(calls)} times, expected once")
        return out


def apply_test_time_registers(
    backbone: "TimmViTBackbone",
    neurons: RegisterNeurons,
    mode: Mode = "per_unit",
    source: str = "register neurons",
    check_weights: bool = True,
) -> "TimmViTBackbone":
    """``backbone`` running with a test-time register over ``neurons``, after checking they match.

    Args:
        backbone: a plain (or already registered) timm ViT backbone; its model is shared.
        neurons: e.g. ``RegisterNeurons.load(path)``.
        mode: ``per_unit`` or ``published``.
        source: how to name the neurons in errors (the file path).
        check_weights: compare the file's weights hash with these weights (when it has one).

    Raises:
        lostreg.ttreg.neurons.NeuronFileError: the neurons belong to another model or weights.
    """
    neurons.check_matches(backbone, source=source, check_weights=check_weights)
    return backbone.with_test_time_registers(TestTimeRegisters(neurons, mode))


__all__ = ["MODES", "Mode", "TestTimeRegisters", "apply_test_time_registers"]
