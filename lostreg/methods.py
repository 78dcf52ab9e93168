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

from lostreg.lost import LostResult, lost_batch
from lostreg.protocol import DiscoveryProtocol
from lostreg.tokencut import TokenCutResult, tokencut_batch

__all__ = ["MethodResult", "run_method"]

MethodResult = Union[LostResult, TokenCutResult]


def run_method(protocol: DiscoveryProtocol, features: torch.Tensor, grid_hw: tuple[int, int]) -> list[MethodResult]:
    """Run ``protocol.method`` on a batch of same-grid images.

    Args:
        protocol: the method and its knobs (features already selected and normalised by the caller).
        features: (B, rows*cols, D) float patch features, row-major, prefix tokens dropped.
        grid_hw: ``(rows, cols)`` shared by the batch.

    Returns:
        One result per image, in batch order.
    """
    if protocol.method == "lost":
        knobs = protocol.lost
        return list(lost_batch(features, grid_hw, k_patches=knobs.k_patches, gram_bias=knobs.gram_bias))
    if protocol.method == "tokencut":
        cut = protocol.tokencut
        return list(tokencut_batch(features, grid_hw, tau=cut.tau, eps=cut.eps, eig=cut.eig))  # type: ignore[arg-type]
    raise ValueError(f"unknown discovery method {protocol.method!r}")
