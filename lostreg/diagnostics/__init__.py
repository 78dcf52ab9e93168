"""Why discovery works or fails on an image: token norms, attention, PCA and the method's internals.

* :mod:`lostreg.diagnostics.tokens`: the numbers (pure tensor code): norms, outliers, prefix
  attention, PCA, LOST maps, TokenCut maps.
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
from lostreg.diagnostics.trace import (
    DinoV3Trace,
    trace_dinov3,
    trace_vit,
    ViTTrace,
)

__all__ = [
    "DEFAULT_MAD_K",
    "DinoV3Trace",
    "MAD_TO_SIGMA",
    "PAPER_NORM_THRESHOLD",
    "Inspection",
    "LostMaps",
    "NormOutliers",
    "NormSource",
    "NormThreshold",
    "PrefixAttention",
    "TokenCutMaps",
    "ViTTrace",
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
    "trace_dinov3",
    "trace_vit",
]
