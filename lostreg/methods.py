"""The discovery methods behind one call: patch features of a batch in, one patch-level result per image out.

Every method returns results with the same fields where it matters downstream: ``seed`` (flat
row-major patch index), ``seed_rc``, ``mask`` ((rows, cols) bool) and ``box`` (patch units,
``(x1, y1, x2, y2)``, max exclusive) — :class:`lostreg.lost.LostResult` for ``lost``,
:class:`lostreg.tokencut.TokenCutResult` for ``tokencut`` (which adds ``eigenvector`` and
``degenerate``). Both run batched on the features' device with one transfer per batch.
"""

from __future__ import annotations

from typing import Union

import torch

from lostreg.artifacts import outlier_mask
from lostreg.lost import LostResult, lost_batch
from lostreg.protocol import DiscoveryProtocol
from lostreg.tokencut import TokenCutResult, tokencut_batch

__all__ = ["MethodResult", "run_method"]

MethodResult = Union[LostResult, TokenCutResult]


def run_method(protocol: DiscoveryProtocol, features: torch.Tensor, grid_hw: tuple[int, int],
               output_norms: torch.Tensor | None = None) -> list[MethodResult]:
    """Run ``protocol.method`` on a batch of same-grid images.

    Args:
        protocol: the method and its knobs (features already selected and normalised by the caller).
        features: (B, rows*cols, D) float patch features, row-major, prefix tokens dropped.
        grid_hw: ``(rows, cols)`` shared by the batch.
        output_norms: (B, rows*cols, 1) norms of the output tokens (:data:`lostreg.protocol.OUTPUT_NORMS`),
            required when ``protocol.lost.exclude_outliers``.

    Returns:
        One result per image, in batch order.
    """
    if protocol.method == "lost":
        knobs = protocol.lost
        excluded = None
        if knobs.exclude_outliers:
            if output_norms is None:
                raise ValueError("lost.exclude_outliers needs the output tokens' norms")
            excluded = outlier_mask(output_norms)
        return list(lost_batch(features, grid_hw, k_patches=knobs.k_patches, gram_bias=knobs.gram_bias,
                               excluded=excluded))
    if protocol.method == "tokencut":
        cut = protocol.tokencut
        return list(tokencut_batch(features, grid_hw, tau=cut.tau, eps=cut.eps, eig=cut.eig))  # type: ignore[arg-type]
    raise ValueError(f"unknown discovery method {protocol.method!r}")
