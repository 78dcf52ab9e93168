"""What every backbone gives: patch features on the image's patch grid, a trace, and its capabilities.

* :meth:`Backbone.extract_many`: what the discovery methods read (one forward, many feature sets).
* :meth:`Backbone.trace`: what the diagnostics read (:class:`~lostreg.backbones.trace.Trace`, the
  same record for every family, so no caller asks which class a backbone is).
* :attr:`Backbone.supports_forward_edits` / :meth:`Backbone.with_forward_edit`: running with extra
  tokens and edited MLP units (:mod:`lostreg.backbones.edits`; test-time registers are one).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Sequence

import torch

from lostreg.errors import ConfigError
from lostreg.backbones.registry import BackboneSpec
from lostreg.backbones.trace import Trace
from lostreg.protocol import FEATURE_CHOICES, OUTPUT_NORMS, FeatureKey, FeatureKind

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.backbones.edits import ForwardEdit


def refuse_rope_option(rope: str) -> None:
    """For builders of backbones without rotary embeddings: only the default ``rope="pre"`` applies.

    Raises:
        ValueError: one line, naming the setting.
    """
    if rope != "pre":
        raise ConfigError(f"features.rope={rope} applies only to RoPE backbones (dinov3)")


class Backbone(abc.ABC):
    """A feature extractor for LOST.

    Input is a batch of images already normalised and zero-padded to a multiple of
    :attr:`patch_size` (see :func:`lostreg.preprocess.to_padded_tensor`); output is one feature
    vector per patch, row-major over the (rows, cols) grid, prefix tokens dropped.
    """

    spec: BackboneSpec
    device: torch.device

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    @abc.abstractmethod
    def patch_size(self) -> int:
        """Patch side in pixels."""

    @property
    @abc.abstractmethod
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens (CLS + registers); 0 for weight-free backbones."""

    @property
    def num_registers(self) -> int:
        """Trained register tokens among the prefix tokens."""
        return 0

    @property
    def has_class_token(self) -> bool:
        """Whether token 0 is a CLS token."""
        return False

    @property
    def num_trailing_tokens(self) -> int:
        """Tokens after the patches (a forward edit's, e.g. a test-time register); 0 without an edit."""
        return 0

    @property
    def supports_forward_edits(self) -> bool:
        """Whether :meth:`with_forward_edit` applies: True for timm ViTs; False for DINOv3 (RoPE
        rotates every token after the prefix, so an appended token breaks it) and for ``pixels``."""
        return False

    @property
    def forward_edit(self) -> "ForwardEdit | None":
        """The forward edit this backbone runs with, or None (the plain model)."""
        return None

    def with_forward_edit(self, edit: "ForwardEdit | None") -> "Backbone":
        """This backbone running with ``edit`` (see :mod:`lostreg.backbones.edits`); None = the plain one.

        The result shares the model (never copied, its weights never modified).

        Raises:
            ConfigError: the backbone does not support forward edits, or the edit does not fit
                the model (one line, naming the backbone).
        """
        if edit is None:
            return self
        raise ConfigError(f"{self.name} cannot run forward edits (extra tokens, edited MLP units)")

    @property
    @abc.abstractmethod
    def mean(self) -> tuple[float, float, float]:
        """RGB normalisation mean for images in [0, 1]."""

    @property
    @abc.abstractmethod
    def std(self) -> tuple[float, float, float]:
        """RGB normalisation std for images in [0, 1]."""

    @property
    def is_random(self) -> bool:
        """True when the weights are random, i.e. boxes carry no meaning."""
        return False

    @property
    def has_attention(self) -> bool:
        """Whether the backbone has attention layers (q/k/v features, attention maps)."""
        return False

    @property
    def token_width(self) -> int:
        """Channels D of the tokens the blocks carry (for memory estimates)."""
        return int(getattr(getattr(self, "model", None), "embed_dim", 768))

    @property
    def feature_source(self) -> str:
        """What the patch features are, in a word (``pixels`` for the weight-free baseline)."""
        return "features"

    @property
    def has_weights(self) -> bool:
        """Whether the backbone has learned weights (``weights=`` applies); False for ``pixels``."""
        return True

    @property
    def num_layers(self) -> int:
        """Number of blocks; ``layer`` must lie in ``[-num_layers, num_layers)``. 1 without layers."""
        return 1

    def layer_index(self, layer: int) -> int:
        """Block index in ``[0, num_layers)`` of ``layer`` (negative counts from the end).

        Raises:
            ValueError: ``layer`` out of range, naming the valid range.
        """
        n = self.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ConfigError(f"{self.name} has {n} blocks; layer must be in [{-n}, {n - 1}], got {layer!r}")
        return layer % n

    @property
    def has_position_table(self) -> bool:
        """Whether the backbone adds a learned position table resized to each grid (ViTs); False for
        rotary embeddings (DINOv3) and for ``pixels`` (``features.pos_embed_antialias`` does not apply)."""
        return False

    def check_feature_key(self, key: FeatureKey, pos_antialias: bool = False) -> None:
        """Raise ``ValueError`` (one line, naming the setting) if ``key`` does not apply to this backbone,
        or (``pos_antialias``) if it has no position table to resize with antialiasing."""
        if pos_antialias and not self.has_position_table:
            raise ConfigError(f"features.pos_embed_antialias applies to backbones with a position-embedding table; "
                              f"{self.name} has none")
        if key == OUTPUT_NORMS:
            return  # every backbone has output tokens
        if key.which not in FEATURE_CHOICES:
            raise ConfigError(f"features.which must be one of {', '.join(FEATURE_CHOICES)}; got {key.which!r}")
        if not self.has_attention and key.which != "k":
            raise ConfigError(f"{self.name} has no attention layers: features.which must be k, got {key.which!r}")
        try:
            self.layer_index(key.layer)
        except ConfigError:
            n = self.num_layers
            blocks = f"{n} block" + ("s" if n != 1 else "")
            raise ConfigError(f"features.layer must be in [{-n}, {n - 1}] ({self.name} has {blocks}), "
                             f"got {key.layer!r}") from None

    def extract(self, images: torch.Tensor, which: FeatureKind = "k", layer: int = -1,
                precision: str = "fp32", *, pos_antialias: bool = False) -> torch.Tensor:
        """Patch features of a batch.

        Args:
            images: (B, 3, H, W) float32, normalised, H and W multiples of :attr:`patch_size`.
            which: ``q``, ``k`` or ``v`` of the attention's qkv projection (bias included,
                heads concatenated in head order, no scaling, no normalisation), or ``out``: the
                block's output tokens (after the model's final norm for the last block).
            layer: block index, negative counts from the end (-1 = last block).
            precision: the forward pass's numerics, ``fp32`` (exact, default), ``tf32`` or ``bf16``
                (:func:`lostreg.precision.forward_precision`).
            pos_antialias: resize the position embeddings with antialiasing
                (:attr:`~lostreg.knobs.FeatureConfig.pos_embed_antialias`).

        Returns:
            (B, rows*cols, D) float32 on :attr:`device`, rows = H / p, cols = W / p, row-major.
        """
        key = FeatureKey(which, layer)
        return self.extract_many(images, [key], precision=precision, pos_antialias=pos_antialias)[key]

    @abc.abstractmethod
    def extract_many(self, images: torch.Tensor, keys: Sequence[FeatureKey],
                     precision: str = "fp32", *, pos_antialias: bool = False) -> dict[FeatureKey, torch.Tensor]:
        """Several feature sets of a batch from ONE forward pass (a protocol sweep's features).

        Args:
            images: as for :meth:`extract`.
            keys: the feature sets wanted; each is validated by :meth:`check_feature_key` first.
            precision: as for :meth:`extract`.
            pos_antialias: as for :meth:`extract` (the forward pass of every key).

        Returns:
            ``{key: (B, rows*cols, D) float32}`` for every key given (keys as given, so ``-1`` and
            ``num_layers - 1`` are separate entries holding equal tensors). Each tensor equals
            what :meth:`extract` returns for that key alone, bit for bit. The special key
            :data:`lostreg.protocol.OUTPUT_NORMS` gives ``(B, rows*cols, 1)``: the L2 norms of the
            final output patch tokens (after the model's last norm), for the artifact rule.
        """

    @abc.abstractmethod
    def trace(self, images: torch.Tensor, layer: int = -1, *, keep_layers: bool = False,
              precision: str = "fp32", pos_antialias: bool = False) -> Trace:
        """One forward pass as the diagnostics read it (see :class:`~lostreg.backbones.trace.Trace`).

        Args:
            images: as for :meth:`extract`.
            layer: the block whose attention and features are kept (negative from the end).
            keep_layers: also keep the output of every block (:attr:`Trace.layers`).
            precision: as for :meth:`extract`; ``trace.features(which)`` equals
                ``extract_many(images, [(which, layer)], precision, pos_antialias=...)`` bit for bit.
            pos_antialias: resize the position embeddings with antialiasing
                (:attr:`~lostreg.knobs.FeatureConfig.pos_embed_antialias`).

        Raises:
            ConfigError: ``layer`` out of range.
        """

    def grid_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (rows, cols) of a padded image of size (H, W)."""
        p = self.patch_size
        return (image_hw[0] // p, image_hw[1] // p)
