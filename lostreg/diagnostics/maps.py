"""The discovery methods' internals as maps on the patch grid, for figures and summaries.

:class:`LostMaps` (degree, inverse degree, potentials, similars, expansion, mask) and
:class:`TokenCutMaps` (the Fiedler vector, its split, the seed's component) from a method's
result; numpy, CPU, (rows, cols) row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lostreg.lost import LostResult
from lostreg.tokencut import TokenCutResult

__all__ = ["LostMaps", "TokenCutMaps", "lost_maps", "tokencut_maps"]


@dataclass(frozen=True)
class LostMaps:
    """LOST's intermediate results on the patch grid (numpy, CPU).

    Attributes:
        degree: (rows, cols) int64, positive similarities of each patch.
        inverse_degree: (rows, cols) float32, ``1 / (1 + degree)``: finite for isolated patches
            and ordered exactly as LOST's seed order (higher = earlier).
        potentials: (rows, cols) bool, the ``k_patches`` lowest-degree patches (stable order).
        similars: (rows, cols) bool, the potentials positively correlated with the seed.
        expansion: (rows, cols) float32, the signed expansion map.
        mask: (rows, cols) bool, the seed's 4-connected component of ``expansion > 0``.
        seed_rc: (row, col) of the seed.
        box: (x1, y1, x2, y2) in patch units, max exclusive.
        seed_in_mask: False in the degenerate case (see :func:`lostreg.lost.lost`).
    """

    degree: np.ndarray
    inverse_degree: np.ndarray
    potentials: np.ndarray
    similars: np.ndarray
    expansion: np.ndarray
    mask: np.ndarray
    seed_rc: tuple[int, int]
    box: tuple[int, int, int, int]
    seed_in_mask: bool


def lost_maps(result: LostResult, k_patches: int) -> LostMaps:
    """Grid maps of a :class:`LostResult` (``k_patches`` as given to :func:`lostreg.lost.lost`)."""
    rows, cols = (int(v) for v in result.mask.shape)
    degree = result.degree.reshape(rows, cols).numpy()
    order = torch.sort(result.degree, stable=True).indices[: min(int(k_patches), rows * cols)]
    potentials = np.zeros(rows * cols, dtype=bool)
    potentials[order.numpy()] = True
    similars = np.zeros(rows * cols, dtype=bool)
    similars[result.similars.numpy()] = True
    return LostMaps(
        degree=degree,
        inverse_degree=(1.0 / (1.0 + degree)).astype(np.float32),
        potentials=potentials.reshape(rows, cols),
        similars=similars.reshape(rows, cols),
        expansion=result.expansion.numpy(),
        mask=result.mask.numpy().astype(bool),
        seed_rc=result.seed_rc,
        box=result.box,
        seed_in_mask=result.seed_in_mask,
    )


# --- TokenCut internals ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenCutMaps:
    """TokenCut's intermediate results on the patch grid (numpy, CPU).

    Attributes:
        eigenvector: (rows, cols) float64, the Fiedler vector ``x`` of ``(D - W) x = λ D x``,
            D-normalised and signed as the reference returns it (the seed's side is ``x > mean``);
            all zeros when ``degenerate``.
        threshold: ``mean(x)``, the split point of the bipartition (0.0 when ``degenerate``).
        bipartition: (rows, cols) bool, the seed's side of the split (every component of it).
        mask: (rows, cols) bool, the 4-connected component of ``bipartition`` holding the seed.
        seed_rc: (row, col) of the seed (first index of ``max |x|``).
        box: (x1, y1, x2, y2) in patch units, max exclusive.
        degenerate: the spectrum gave no unique Fiedler vector (see :mod:`lostreg.tokencut`):
            the fixed whole-grid result was returned.
        eigenvalues: ``(λ2, λ3)`` of the normalised problem, ascending.
    """

    eigenvector: np.ndarray
    threshold: float
    bipartition: np.ndarray
    mask: np.ndarray
    seed_rc: tuple[int, int]
    box: tuple[int, int, int, int]
    degenerate: bool
    eigenvalues: tuple[float, float]

    @property
    def spectral_gap(self) -> float:
        """``λ3 - λ2``: how well separated the Fiedler vector is (the degeneracy test reads it)."""
        return self.eigenvalues[1] - self.eigenvalues[0]


def tokencut_maps(result: TokenCutResult) -> TokenCutMaps:
    """Grid maps of a :class:`~lostreg.tokencut.TokenCutResult` (numpy, CPU)."""
    eigenvector = result.eigenvector.detach().to("cpu", torch.float64).numpy()
    return TokenCutMaps(
        eigenvector=eigenvector,
        threshold=float(eigenvector.mean()),
        bipartition=result.bipartition.detach().cpu().numpy().astype(bool),
        mask=result.mask.detach().cpu().numpy().astype(bool),
        seed_rc=result.seed_rc,
        box=tuple(int(v) for v in result.box),  # type: ignore[arg-type]
        degenerate=bool(result.degenerate),
        eigenvalues=(float(result.eigenvalues[0]), float(result.eigenvalues[1])),
    )
