"""Everything :command:`lostreg inspect` shows for one image and one backbone, from one forward pass.

:func:`inspect_image` prepares the image as ``lostreg discover`` does, runs the backbone once
(:meth:`~lostreg.backbones.base.Backbone.trace`, the same for every family), and collects the
token-norm map, outliers, prefix-token attention, PCA and the discovery method's internals (LOST's
degree and expansion maps, or TokenCut's eigenvector and bipartition) into an :class:`Inspection`
(numpy, CPU), which the figures and ``summary.json`` are made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lostreg.artifacts import OutlierRule
from lostreg.backbones.base import Backbone
from lostreg.boxes import patch_box_to_pixels
from lostreg.diagnostics.maps import (
    lost_maps,
    LostMaps,
    tokencut_maps,
    TokenCutMaps,
)
from lostreg.diagnostics.tokens import (
    find_outliers,
    NormOutliers,
    NormSource,
    patch_token_norms,
    pca_rgb,
    prefix_attention_qk,
)
from lostreg.discovery import ObjectDiscoverer
from lostreg.preprocess import ImagePreparer, downscale_to_max_size
from lostreg.lost import LostResult
from lostreg.knobs import identity_of
from lostreg.protocol import DiscoveryProtocol
from lostreg.tokencut import TokenCutResult

__all__ = ["NO_ATTENTION_NOTE", "Inspection", "inspect_image", "protocol_summary"]

#: Why a backbone without attention layers (``pixels``) has no attention maps.
NO_ATTENTION_NOTE = "no attention layers: attention maps skipped"


def protocol_summary(protocol: DiscoveryProtocol) -> dict[str, Any]:
    """The protocol as one flat JSON object: ``method``, the feature settings and the chosen method's
    knobs, e.g. ``{"method": "tokencut", "which": "k", "layer": -1, "l2_normalize": false,
    "tau": 0.2, "eps": 1e-05, "eig": "torch64"}`` (the other method's knobs play no part)."""
    # Feature settings newer than the summaries (pos_embed_antialias) appear only when set.
    return {"method": protocol.method, **identity_of(protocol.features), **protocol.knobs()}


@dataclass(frozen=True)
class Inspection:
    """All diagnostics of one image on one backbone (numpy, CPU), ready for figures and JSON.

    Attributes:
        image: the image's name.
        backbone: backbone name.
        is_random: random weights (everything shown is meaningless).
        patch_size: p in pixels.
        num_registers: R.
        picture: (H, W, 3) uint8 RGB, the processed image (after ``max_size``), what the maps cover.
        original_hw: (H, W) of the image as read.
        grid_hw: (rows, cols) of the padded patch grid; it may extend past ``picture`` by < p.
        norm_source: ``final``, ``prenorm`` or ``pixels`` (norms of the pixel features).
        norms: (rows, cols) float32 patch-token norms.
        outliers: high-norm tokens.
        cls_attention: (heads, rows, cols) float32, or None (no attention, see attention_note).
        register_attention: (R, heads, rows, cols) float32, or None.
        prefix_patch_mass: (P, heads) float32 attention mass on patches, or None.
        attention_layer: block index of the attention maps and of LOST's features, or None.
        attention_note: why attention maps are missing, else None.
        pca: (rows, cols, 3) float32 in [0, 1].
        pca_explained: (3,) float32 explained-variance ratios.
        lost: LOST's maps when ``protocol.method`` is ``lost``, else None.
        protocol: the discovery protocol used.
        box_xyxy: the method's box ``(x1, y1, x2, y2)`` in integer pixels of the original image,
            max exclusive (as ``lostreg discover`` prints it).
        processed_box_xyxy: the same box in ``picture`` pixels, same convention.
        seed_box_xyxy: the seed patch in ``picture`` pixels (unlike ``Discovery.seed_box_xyxy``,
            which is in original pixels), same convention.
        tokencut: TokenCut's maps when ``protocol.method`` is ``tokencut``, else None.
    """

    image: str
    backbone: str
    is_random: bool
    patch_size: int
    num_registers: int
    picture: np.ndarray = field(repr=False)
    original_hw: tuple[int, int]
    grid_hw: tuple[int, int]
    norm_source: str
    norms: np.ndarray = field(repr=False)
    outliers: NormOutliers = field(repr=False)
    cls_attention: np.ndarray | None = field(repr=False)
    register_attention: np.ndarray | None = field(repr=False)
    prefix_patch_mass: np.ndarray | None = field(repr=False)
    attention_layer: int | None
    attention_note: str | None
    pca: np.ndarray = field(repr=False)
    pca_explained: np.ndarray = field(repr=False)
    lost: LostMaps | None = field(repr=False)
    protocol: DiscoveryProtocol
    box_xyxy: tuple[int, int, int, int]
    processed_box_xyxy: tuple[int, int, int, int]
    seed_box_xyxy: tuple[int, int, int, int]
    tokencut: TokenCutMaps | None = field(default=None, repr=False)

    @property
    def processed_hw(self) -> tuple[int, int]:
        return int(self.picture.shape[0]), int(self.picture.shape[1])

    @property
    def method(self) -> str:
        """The discovery method, ``lost`` or ``tokencut``."""
        return self.protocol.method

    @property
    def seed_rc(self) -> tuple[int, int]:
        """(row, col) of the method's seed patch."""
        maps = self.lost if self.lost is not None else self.tokencut
        assert maps is not None
        return maps.seed_rc

    @property
    def mask(self) -> np.ndarray:
        """(rows, cols) bool: the method's object mask (the seed's component), whose box is the box."""
        maps = self.lost if self.lost is not None else self.tokencut
        assert maps is not None
        return maps.mask

    def method_summary(self) -> dict[str, Any]:
        """The method's own numbers: LOST's similars and seed test, or TokenCut's spectrum."""
        if self.tokencut is not None:
            cut = self.tokencut
            return {"degenerate": cut.degenerate, "eigenvalues": [float(v) for v in cut.eigenvalues],
                    "bipartition_patches": int(cut.bipartition.sum())}
        assert self.lost is not None
        return {"num_similars": int(self.lost.similars.sum()), "seed_in_mask": bool(self.lost.seed_in_mask)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (plain Python types)."""
        out = self.outliers
        attention = None
        if self.cls_attention is not None or self.register_attention is not None:
            assert self.prefix_patch_mass is not None
            mass = self.prefix_patch_mass
            has_cls = self.cls_attention is not None
            attention = {
                "layer": self.attention_layer,
                "num_heads": int(mass.shape[1]),
                "cls_patch_mass": [round(float(v), 6) for v in mass[0]] if has_cls else None,
                "register_patch_mass": [[round(float(v), 6) for v in row] for row in mass[int(has_cls):]],
            }
        return {
            "backbone": self.backbone,
            "random_weights": self.is_random,
            "patch_size": self.patch_size,
            "num_registers": self.num_registers,
            "processed_hw": list(self.processed_hw),
            "grid_hw": list(self.grid_hw),
            "num_patches": int(self.norms.size),
            "norm_source": self.norm_source,
            "norm_threshold": {"rule": str(out.rule), "value": float(out.threshold)},
            "median_norm": float(out.median),
            "mad_norm": float(out.mad),
            "max_norm": float(out.max_norm),
            "outlier_count": out.count,
            "outlier_share": float(out.share),
            "outliers_rc": [list(rc) for rc in out.positions_rc],
            "method": self.method,
            "seed_rc": list(self.seed_rc),
            "box_xyxy": list(self.box_xyxy),
            "seed_box_xyxy": list(self.seed_box_xyxy),
            "mask_patches": int(self.mask.sum()),
            **self.method_summary(),
            "attention": attention,
            "attention_note": self.attention_note,
            "pca_explained_variance_ratio": [round(float(v), 6) for v in self.pca_explained],
        }


def inspect_image(
    backbone: Backbone,
    image_rgb: np.ndarray,
    name: str = "<array>",
    protocol: DiscoveryProtocol = DiscoveryProtocol(),
    max_size: int | None = None,
    norm_source: NormSource = "final",
    threshold: OutlierRule = OutlierRule(),
) -> Inspection:
    """Every diagnostic of one image on one backbone, from one forward pass.

    The image is prepared as ``lostreg discover`` prepares it (optional ``max_size`` downscale,
    normalise, zero-pad), and the method runs on the same features through the same
    :class:`~lostreg.discovery.ObjectDiscoverer`, so ``box_xyxy`` and the seed are the ones
    ``discover`` reports. ``protocol.features.layer`` chooses the block of both the method's
    features and the attention maps (default: the last one).

    Args:
        backbone: any backbone. Attention maps come from the q/k its softmax sees (rotated
            for DINOv3); a backbone without attention (``pixels``) has norms of its features and
            no attention maps (with a note).
        image_rgb: (H, W, 3) uint8 RGB.
        name: how the image is reported.
        protocol: features and method.
        max_size: downscale limit (None = native resolution).
        norm_source: ``final`` or ``prenorm`` (see :mod:`lostreg.diagnostics.tokens`).
        threshold: outlier rule.

    Raises:
        lostreg.preprocess.ImageTooSmallError: image smaller than one patch.
        ValueError: a protocol value that does not apply to the backbone, or a bad ``norm_source``.
    """
    if norm_source not in ("final", "prenorm"):
        raise ValueError(f"norm_source must be 'final' or 'prenorm', got {norm_source!r}")
    discoverer = ObjectDiscoverer(backbone, protocol)  # validates the protocol against the backbone
    features_config = protocol.features
    original_hw = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
    picture = downscale_to_max_size(image_rgb, max_size)
    # The picture is already downscaled: prepare it as is, then restore the original size.
    item = ImagePreparer(backbone.patch_size, backbone.mean, backbone.std)(picture, name)
    item = replace(item, original_hw=original_hw)
    padded = item.padded
    images = padded.tensor.unsqueeze(0)
    grid_hw = padded.grid_hw

    cls_map = reg_maps = mass = None
    layer: int | None = None
    note: str | None = None
    with torch.inference_mode():
        trace = backbone.trace(images, features_config.layer, pos_antialias=features_config.pos_embed_antialias)
    tokens = trace.final if norm_source == "final" else trace.prenorm
    # Patch rows only: a test-time register token sits after the patches.
    patch_tokens = trace.patches(tokens)[0]
    output_norms = trace.patches(trace.final)[0].norm(dim=-1, keepdim=True)  # what exclude_outliers tests
    features = trace.features(features_config.which)[0]
    if trace.has_attention:
        assert trace.q_attn is not None and trace.k_attn is not None and trace.scale is not None
        with torch.inference_mode():
            att = prefix_attention_qk(trace.q_attn, trace.k_attn, trace.scale, trace.num_prefix_tokens, grid_hw,
                                      trace.has_class_token, trace.num_trailing_tokens)
        cls_map = None if att.cls is None else att.cls[0].cpu().numpy()
        # Models without registers get None, not an empty array: "no register maps" is explicit.
        reg_maps = att.registers[0].cpu().numpy() if att.registers.shape[1] else None
        mass = att.patch_mass[0].cpu().numpy()
        layer = trace.layer
        source = norm_source
    else:
        note = NO_ATTENTION_NOTE
        source = backbone.feature_source

    norms = patch_token_norms(patch_tokens[None], 0, grid_hw)[0].cpu().numpy()
    outliers = find_outliers(norms, threshold)
    rgb, explained = pca_rgb(patch_tokens, grid_hw)

    found = discoverer.locate(item, features, output_norms.float())
    result = found.result
    p = backbone.patch_size
    processed_hw = padded.image_hw
    row, col = result.seed_rc
    # The figures draw on the (downscaled) picture, so these two stay in its pixels.
    box = patch_box_to_pixels(result.box, p, processed_hw)
    seed_box = patch_box_to_pixels((col, row, col + 1, row + 1), p, processed_hw)

    return Inspection(
        image=name,
        backbone=backbone.name,
        is_random=backbone.is_random,
        patch_size=p,
        num_registers=backbone.num_registers,
        picture=np.ascontiguousarray(picture),
        original_hw=original_hw,
        grid_hw=grid_hw,
        norm_source=source,
        norms=norms.astype(np.float32),
        outliers=outliers,
        cls_attention=cls_map,
        register_attention=reg_maps,
        prefix_patch_mass=mass,
        attention_layer=layer,
        attention_note=note,
        pca=rgb,
        pca_explained=explained,
        lost=lost_maps(result, protocol.lost.k_patches) if isinstance(result, LostResult) else None,
        protocol=protocol,
        box_xyxy=found.box_xyxy,
        processed_box_xyxy=box,
        seed_box_xyxy=seed_box,
        tokencut=tokencut_maps(result) if isinstance(result, TokenCutResult) else None,
    )
