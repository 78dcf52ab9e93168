"""Running a timm ViT with one test-time register (Jiang et al. 2025): attaching it, and the edit itself.

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

:class:`TestTimeRegisters` is a :class:`~lostreg.backbones.edits.ForwardEdit`: the backbone runs it
through its generic forward-edit seam (:meth:`~lostreg.backbones.base.Backbone.with_forward_edit`)
and drops the TTR before features reach LOST (features are the patch rows ``[P : P + rows*cols]``).
:func:`attach_test_time_registers` is the one way in from a neuron file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from lostreg.backbones.base import Backbone
from lostreg.backbones.edits import mlp_hidden_dim
from lostreg.errors import ConfigError
from lostreg.ttreg.neurons import RegisterNeurons

#: What can take a test-time register, for error messages.
SUPPORTED = ("test-time registers are supported on the timm ViTs lostreg registers (DINO, DINOv2 with or "
             "without registers) and on any timm VisionTransformer; DINOv3 ships trained registers and needs none")

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
            raise ConfigError(f"test-time register mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "_units", self.neurons.layer_units())

    def __str__(self) -> str:
        units = sum(len(u) for u in self._units.values())
        return (f"one test-time register over {units} MLP unit{'s' if units != 1 else ''} in block"
                f"{'s' if len(self._units) != 1 else ''} {', '.join(map(str, self.layers))} ({self.mode})")

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
            ConfigError: one line naming the first problem.
        """
        depth = len(model.blocks)
        for layer, units in self._units.items():
            if not 0 <= layer < depth:
                raise ConfigError(f"{name} has {depth} blocks; a test-time register unit is in block {layer}")
            width = mlp_hidden_dim(model.blocks[layer])
            if max(units) >= width:
                raise ConfigError(f"{name} block {layer} has {width} MLP hidden units; unit {max(units)} is listed")

    def append_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N + 1, D): the zero register token appended at the end."""
        batch, _, dim = tokens.shape
        return torch.cat([tokens, tokens.new_zeros(batch, self.num_tokens, dim)], dim=1)

    def edit_hidden(self, hidden: torch.Tensor, layer: int, num_prefix_tokens: int) -> torch.Tensor:
        """The edited MLP hidden activation of block ``layer`` (a new tensor; input untouched).

        Args:
            hidden: (B, P + rows*cols + 1, H) float, tokens in the backbone's order ``[prefix, patches, TTR]``.
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


def require_forward_edits(backbone: Backbone) -> None:
    """Refuse a backbone that cannot take a test-time register, saying which can.

    Raises:
        ConfigError: one line, e.g. ``pixels has no transformer blocks: test-time registers are
            supported on ...``.
    """
    if backbone.supports_forward_edits:
        return
    what = "cannot run an extra token" if backbone.has_attention else "has no transformer blocks"
    raise ConfigError(f"{backbone.name} {what}: {SUPPORTED}")


def apply_test_time_registers(
    backbone: Backbone,
    neurons: RegisterNeurons,
    mode: Mode = "per_unit",
    source: str = "register neurons",
    check_weights: bool = True,
) -> Backbone:
    """``backbone`` running with a test-time register over ``neurons``, after checking they match.

    Args:
        backbone: a plain (or already registered: it is replaced) backbone that supports forward
            edits; its model is shared, never modified.
        neurons: e.g. ``RegisterNeurons.load(path)``.
        mode: ``per_unit`` or ``published``.
        source: how to name the neurons in errors (the file path).
        check_weights: compare the file's weights hash with these weights (when it has one).

    Raises:
        ConfigError: the backbone cannot take a test-time register (naming those that can).
        lostreg.ttreg.neurons.NeuronFileError: the neurons belong to another model or weights.
    """
    require_forward_edits(backbone)
    neurons.check_matches(backbone, source=source, check_weights=check_weights)
    return backbone.with_forward_edit(TestTimeRegisters(neurons, mode))


def attach_test_time_registers(backbone: Backbone, path: str | os.PathLike[str], mode: Mode = "per_unit") -> Backbone:
    """``backbone`` with one test-time register over the neurons of the file ``path`` (``lostreg calibrate``).

    The backbone is checked first, so a backbone that cannot take a register is refused whatever
    the file.

    Raises:
        ConfigError: the backbone cannot take a test-time register (naming those that can), or a bad ``mode``.
        lostreg.ttreg.neurons.NeuronFileError: the file is missing, malformed, or for another model or weights.
    """
    require_forward_edits(backbone)
    return apply_test_time_registers(backbone, RegisterNeurons.load(path), mode, source=str(path))


__all__ = ["MODES", "SUPPORTED", "Mode", "TestTimeRegisters", "apply_test_time_registers",
           "attach_test_time_registers", "require_forward_edits"]
