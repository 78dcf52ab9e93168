"""High-norm artifact tokens: the one outlier rule and its one parser, for an image or a batch.

Large ViTs trained without registers turn a few low-information patches into tokens of huge norm
(Darcet et al., ICLR 2024). A token is an outlier when its norm is strictly above its image's
threshold, set by an :class:`OutlierRule`:

* ``mad`` (default): ``median + k * 1.4826 * MAD`` of the image's own patch-token norms. The
  median and MAD ignore the few large values being looked for (a mean + k std rule is inflated
  by the artifacts themselves). The true median is used (the mean of the two middle values for an
  even count), in float64.
* ``absolute``: a fixed norm, such as the registers paper's 150 for its large DINOv2 models.
* ``mean_std``: ``mean + k * std`` (population std), the registers paper's suggested heuristic
  for models without a known cut; kept for the register-neuron finder.

Used by LOST's ``exclude_outliers`` (:func:`outlier_mask`, a batch), the diagnostics
(:func:`lostreg.diagnostics.tokens.find_outliers`, one image) and the finder
(:mod:`lostreg.ttreg.finder`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lostreg.errors import ConfigError

__all__ = [
    "DEFAULT_MAD_K",
    "DEFAULT_STD_K",
    "MAD_TO_SIGMA",
    "OutlierRule",
    "outlier_mask",
    "robust_threshold",
]

#: Scale that turns a median absolute deviation into a standard deviation for normal data.
MAD_TO_SIGMA = 1.4826
#: Default k of ``median + k * MAD``. Five robust standard deviations: for Gaussian-like norms a
#: false alarm is ~3e-7 per token (one token in about 3500 VOC-sized images at p=14), while the artifacts
#: of the registers paper sit at several times the typical norm, far beyond 5 sigma. k=3 would flag
#: about one ordinary token per VOC image (0.13% of ~1000) and blur the "share" it reports.
DEFAULT_MAD_K = 5.0
#: k of ``mean3std`` (the registers paper's suggested heuristic).
DEFAULT_STD_K = 3.0

_FORMS = "'mad', 'mad:K' (K >= 0), 'mean3std', 'meanstd:K' or a positive norm such as 150"


def _non_negative(text: str | None, default: float) -> float:
    """``float(text)`` if finite and >= 0 (``default`` for None); ValueError otherwise."""
    if text is None:
        return default
    k = float(text)  # ValueError for non-numbers
    if not math.isfinite(k) or k < 0:
        raise ValueError(text)
    return k


@dataclass(frozen=True)
class OutlierRule:
    """How an image's outlier threshold on token norms is chosen (see the module docstring).

    Attributes:
        kind: ``mad``, ``mean_std`` or ``absolute``.
        value: k for ``mad`` and ``mean_std``; the norm for ``absolute``.
    """

    kind: Literal["mad", "mean_std", "absolute"] = "mad"
    value: float = DEFAULT_MAD_K

    @classmethod
    def parse(cls, text: "str | OutlierRule", setting: str = "threshold") -> "OutlierRule":
        """``mad``, ``mad:K``, ``mean3std``, ``meanstd:K`` or a positive number such as ``150``.

        Args:
            text: the rule as written.
            setting: how the error names the setting (``"norm threshold (--norm-threshold)"``).

        Raises:
            ConfigError: one line, naming ``setting`` and listing the accepted forms.
        """
        if isinstance(text, OutlierRule):
            return text
        clean = str(text).strip().lower()
        try:
            if clean == "mean3std":
                return cls("mean_std", DEFAULT_STD_K)
            match = re.fullmatch(r"meanstd:(.+)", clean)
            if match:
                return cls("mean_std", _non_negative(match.group(1), DEFAULT_STD_K))
            match = re.fullmatch(r"mad(?::(.+))?", clean)
            if match:
                return cls("mad", _non_negative(match.group(1), DEFAULT_MAD_K))
            value = float(clean)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(clean)
        except ValueError:
            raise ConfigError(f"{setting} must be {_FORMS}, got {str(text)!r}") from None
        return cls("absolute", value)

    def __str__(self) -> str:
        if self.kind == "mean_std":
            return "mean3std" if self.value == DEFAULT_STD_K else f"meanstd:{self.value:g}"
        return f"mad:{self.value:g}" if self.kind == "mad" else f"{self.value:g}"

    def describe(self) -> str:
        """Human-readable rule, e.g. ``median + 5·1.4826·MAD``, ``mean + 3·std`` or ``fixed 150``."""
        if self.kind == "absolute":
            return f"fixed {self.value:g}"
        if self.kind == "mean_std":
            return f"mean + {self.value:g}·std"
        return f"median + {self.value:g}·1.4826·MAD"

    def threshold(self, norms: torch.Tensor | np.ndarray) -> float:
        """The threshold of one image's norms (any shape, flattened); norms above it are outliers."""
        if self.kind == "absolute":
            return float(self.value)
        if self.kind == "mad":
            return robust_threshold(norms, self.value)[0]
        v = torch.as_tensor(norms).detach().to("cpu", torch.float64).flatten()
        return float(v.mean() + self.value * v.std(correction=0))


def robust_threshold(values: torch.Tensor | np.ndarray, k: float = DEFAULT_MAD_K) -> tuple[float, float, float]:
    """``median + k * 1.4826 * MAD`` of ``values`` (any shape, flattened).

    If MAD is 0 (at least half the values equal), the threshold is the median.

    Returns:
        (threshold, median, mad), mad unscaled; float64 arithmetic.
    """
    v = torch.as_tensor(values).detach().to("cpu", torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("no values")
    median = float(torch.quantile(v, 0.5))
    mad = float(torch.quantile((v - median).abs(), 0.5))
    return median + float(k) * MAD_TO_SIGMA * mad, median, mad


def outlier_mask(norms: torch.Tensor, k: float = DEFAULT_MAD_K) -> torch.Tensor:
    """High-norm tokens of each image of a batch under the ``mad`` rule, on the norms' device.

    The batched form of ``OutlierRule("mad", k)``: the same median, MAD and comparison per image
    as :func:`robust_threshold`, without a loop over images.

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
