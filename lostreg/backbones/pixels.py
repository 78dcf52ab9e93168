"""``pixels``: a weight-free baseline backbone (LOST on raw pixels).

Each patch's feature is its normalised pixels, flattened (3 * 16 * 16 = 768 values). The
padding is zero after normalisation, as for the ViTs, so padded patches are all-zero
features, orthogonal to everything. This is a real, if weak, baseline and it lets end-to-end
tests exercise the whole pipeline without downloaded weights.

Its :meth:`~PixelBackbone.trace` gives what applies to a backbone with one "layer" and no
attention: the tokens are the pixel features (no prefix tokens), and the attention fields are None.
It takes no forward edits (no blocks, no MLP).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from lostreg.errors import ConfigError
from lostreg.backbones.base import Backbone, FeatureKey, refuse_rope_option
from lostreg.backbones.registry import BackboneSpec, register_builder
from lostreg.backbones.trace import Trace
from lostreg.precision import check_precision
from lostreg.protocol import OUTPUT_NORMS
from lostreg.preprocess import IMAGENET_MEAN, IMAGENET_STD


class PixelBackbone(Backbone):
    """Patch features = normalised pixels of the patch. No weights, no layers."""

    def __init__(self, spec: BackboneSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        self._patch_size = spec.patch_size or 16

    @property
    def patch_size(self) -> int:
        return self._patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def mean(self) -> tuple[float, float, float]:
        return IMAGENET_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return IMAGENET_STD

    @property
    def has_weights(self) -> bool:
        return False

    @property
    def feature_source(self) -> str:
        return "pixels"

    @property
    def token_width(self) -> int:
        return 3 * self.patch_size * self.patch_size

    def extract_many(self, images: torch.Tensor, keys: Sequence[FeatureKey],
                     precision: str = "fp32", *, pos_antialias: bool = False) -> dict[FeatureKey, torch.Tensor]:
        """(B, 3, H, W) normalised -> ``{key: (B, rows*cols, 3*p*p)}``; only ``which='k'`` applies (one layer).

        ``precision`` is accepted for a uniform interface: pixels involve no matrix product.
        """
        check_precision(precision)
        keys = [FeatureKey(*key) for key in keys]
        for key in keys:
            self.check_feature_key(key, pos_antialias)
        p = self.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        # unfold gives (B, 3*p*p, L) with L patches in row-major order.
        features = F.unfold(images.to(self.device, torch.float32), kernel_size=p, stride=p).transpose(1, 2)
        # Output norms of a weight-free backbone: those of its features (the pixels).
        return {key: features.norm(dim=-1, keepdim=True) if key == OUTPUT_NORMS else features for key in keys}

    def trace(self, images: torch.Tensor, layer: int = -1, *, keep_layers: bool = False,
              precision: str = "fp32", pos_antialias: bool = False) -> Trace:
        """What applies without weights: ``final``, ``prenorm`` and the one kept layer are the pixel
        features (B, rows*cols, 3*p*p) float32, ``features("k")`` is them too; no attention (q/k/v None).

        Raises:
            ConfigError: ``layer`` is not 0 or -1; ``pos_antialias`` (pixels have no position table).
        """
        index = self.layer_index(layer)
        key = FeatureKey("k", layer)
        features = self.extract_many(images, [key], precision, pos_antialias=pos_antialias)[key]
        return Trace(
            final=features, prenorm=features, feature_tokens={"k": features}, layer=index, num_prefix_tokens=0,
            num_registers=0, has_class_token=False, grid_hw=self.grid_hw((int(images.shape[-2]), int(images.shape[-1]))),
            layers=(features,) if keep_layers else None,
        )


@register_builder("pixels")
def build_pixels(
    spec: BackboneSpec, weights: str | None, device: torch.device, *, rope: str = "pre"
) -> PixelBackbone:
    """The weight-free baseline; ``weights`` must not name a file and ``rope`` must be ``"pre"``."""
    refuse_rope_option(rope)
    if weights not in (None, "pretrained", "random"):
        raise ConfigError("the pixels backbone has no weights: do not pass --weights")
    return PixelBackbone(spec, device)
