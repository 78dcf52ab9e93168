"""What every backbone gives the discovery stage: patch features on the image's patch grid."""

from __future__ import annotations

import abc
from typing import Literal

import torch

from lostreg.backbones.registry import BackboneSpec

FeatureKind = Literal["q", "k", "v"]


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
        return 0

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

    @abc.abstractmethod
    def extract(self, images: torch.Tensor, which: FeatureKind = "k", layer: int = -1) -> torch.Tensor:
        """Patch features of a batch.

        Args:
            images: (B, 3, H, W) float32, normalised, H and W multiples of :attr:`patch_size`.
            which: ``q``, ``k`` or ``v`` of the attention's qkv projection (bias included,
                heads concatenated in head order, no scaling, no normalisation).
            layer: block index, negative counts from the end (-1 = last block).

        Returns:
            (B, rows*cols, D) float32 on :attr:`device`, rows = H / p, cols = W / p, row-major.
        """

    def grid_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Patch grid (rows, cols) of a padded image of size (H, W)."""
        p = self.patch_size
        return (image_hw[0] // p, image_hw[1] // p)
