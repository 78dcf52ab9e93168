"""Why discovery works or fails on an image: token norms, attention, PCA and the method's internals.

* :mod:`lostreg.diagnostics.tokens`: the numbers (pure tensor code): norms, outliers, prefix
  attention, PCA; :mod:`lostreg.diagnostics.maps`: LOST and TokenCut maps. The forward pass they
  read is :meth:`lostreg.backbones.base.Backbone.trace`.
* :mod:`lostreg.diagnostics.inspection`: :func:`inspect_image` runs everything for one image and
  backbone and returns an :class:`Inspection`.
* :mod:`lostreg.diagnostics.figures`: matplotlib figures of inspections, one backbone or several
  side by side.

``lostreg inspect`` is the command-line front end.
"""

from lostreg.diagnostics.inspection import Inspection, inspect_image
from lostreg.diagnostics.maps import (
    lost_maps,
    LostMaps,
    tokencut_maps,
    TokenCutMaps,
)
from lostreg.diagnostics.tokens import (
    DEFAULT_MAD_K,
    find_outliers,
    MAD_TO_SIGMA,
    NormOutliers,
    NormSource,
    NormThreshold,
    PAPER_NORM_THRESHOLD,
    patch_token_norms,
    pca_project,
    pca_rgb,
    prefix_attention,
    prefix_attention_qk,
    PrefixAttention,
    robust_threshold,
)

__all__ = [
    "DEFAULT_MAD_K",
    "MAD_TO_SIGMA",
    "PAPER_NORM_THRESHOLD",
    "Inspection",
    "LostMaps",
    "NormOutliers",
    "NormSource",
    "NormThreshold",
    "PrefixAttention",
    "TokenCutMaps",
    "find_outliers",
    "inspect_image",
    "lost_maps",
    "patch_token_norms",
    "pca_project",
    "pca_rgb",
    "prefix_attention",
    "prefix_attention_qk",
    "robust_threshold",
    "tokencut_maps",
]
