"""High-norm artifact tokens: the one outlier rule, for one image (diagnostics) or a batch (LOST).

Large ViTs trained without registers turn a few low-information patches into tokens of huge norm
(Darcet et al., ICLR 2024). A token is an outlier when its norm exceeds ``median + k * 1.4826 *
MAD`` of its image's patch-token norms: the median and MAD ignore the few large values being
looked for (a mean + k std rule is inflated by the artifacts themselves). The true median is used
(the mean of the two middle values for an even count), in float64.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_MAD_K", "MAD_TO_SIGMA", "outlier_mask"]

#: Scale that turns a median absolute deviation into a standard deviation for normal data.
MAD_TO_SIGMA = 1.4826
#: Default k of ``median + k * MAD``. Five robust standard deviations: for Gaussian-like norms a
#: false alarm is ~3e-7 per token (one token in about 3500 VOC-sized images at p=14), while the artifacts
#: of the registers paper sit at several times the typical norm, far beyond 5 sigma. k=3 would flag
#: about one ordinary token per VOC image (0.13% of ~1000) and blur the "share" it reports.
DEFAULT_MAD_K = 5.0


def outlier_mask(norms: torch.Tensor, k: float = DEFAULT_MAD_K) -> torch.Tensor:
    """High-norm tokens of each image of a batch, on the norms' device.

    Args:
        norms: (B, N) or (B, N, 1) patch-token norms (row-major patches of each image).
        k: robust standard deviations above the median.

    Returns:
        (B, N) bool, True where ``norm > median + k * 1.4826 * MAD`` of that image (float64).
    """
    values = norms.detach().reshape(norms.shape[0], -1).to(torch.float64)
    median = torch.quantile(values, 0.5, dim=1, keepdim=True)
    mad = torch.quantile((values - median).abs(), 0.5, dim=1, keepdim=True)
    return values > median + float(k) * MAD_TO_SIGMA * mad
