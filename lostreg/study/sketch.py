"""Bounded-memory summaries of a token stream: fixed-bin histograms and bottom-k samples.

The artifact study reads every patch token of every image at every block, so it never keeps the
tokens: what it keeps has a size fixed before the first image.

* :class:`Histogram`: counts in fixed bins, plus the exact count, sum, min and max. The norm
  histograms use bins equally spaced in log10 norm (:meth:`Histogram.log_spaced`; the default
  5000 bins over 1e-4..1e6 make each bin 0.46% wide, so a quantile read from them is within 0.46%
  of the exact one); the cosine histograms use linear bins over [-1, 1].
  Why histograms and not a quantile sketch (t-digest, KLL): norms are positive and their range is
  known to a few decades, so fixed log bins give a stated relative error, merge by addition, and
  are deterministic; the histogram is also the figure.
* :class:`BottomKSample`: a uniform sample without replacement of at most ``capacity`` rows from
  a stream (every row gets a random key; the ``capacity`` smallest keys are kept). The keys come
  from the caller (the study derives them from the image's index), so the sample does not depend
  on how the stream is cut into batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["BottomKSample", "Histogram"]


@dataclass
class Histogram:
    """Counts of values in fixed bins, with underflow and overflow bins, and exact moments.

    Attributes:
        edges: (bins + 1,) float64 bin edges, increasing, in value space (for log bins, the
            values themselves, not their logarithms). Bin i holds ``edges[i] <= v < edges[i+1]``.
        log: whether the bins are equally spaced in log10 (quantiles interpolate in log space).
        counts: (bins + 2,) int64: ``[underflow, bin 0 .. bin bins-1, overflow]``.
        total: values seen.
        sum: their float64 sum (for the exact mean).
        min, max: exact extremes (``inf`` / ``-inf`` while empty).
    """

    edges: np.ndarray
    log: bool = False
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size < 2 or not np.all(np.diff(self.edges) > 0):
            raise ValueError("edges must be an increasing 1-D array of at least 2 values")
        if self.counts is None:
            self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self._torch_edges: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def log_spaced(cls, low: float = 1e-4, high: float = 1e6, bins: int = 5000) -> "Histogram":
        """Bins equally spaced in log10 between ``low`` and ``high`` (both > 0)."""
        return cls(np.logspace(math.log10(low), math.log10(high), bins + 1), log=True)

    @classmethod
    def linear(cls, low: float, high: float, bins: int) -> "Histogram":
        """Bins equally spaced between ``low`` and ``high``; ``high`` itself counts in the last bin."""
        edges = np.linspace(low, high, bins + 1)
        edges[-1] = np.nextafter(high, math.inf)  # so that a cosine of exactly 1 is not overflow
        return cls(edges)

    @property
    def bins(self) -> int:
        return int(self.edges.size - 1)

    def add(self, values: torch.Tensor) -> None:
        """Count ``values`` (any shape, any float dtype, any device; flattened). NaNs are refused."""
        v = values.detach().reshape(-1)
        if v.numel() == 0:
            return
        if torch.isnan(v).any():
            raise ValueError("NaN in a histogram's values")
        edges = self._torch_edges.get(v.device)
        if edges is None:
            edges = self._torch_edges[v.device] = torch.as_tensor(self.edges, dtype=torch.float64, device=v.device)
        v64 = v.to(torch.float64)
        # bucketize(right=True) gives i with edges[i-1] <= v < edges[i]: 0 = underflow, bins+1 = overflow.
        index = torch.bucketize(v64, edges, right=True)
        self.counts += torch.bincount(index, minlength=self.counts.size).cpu().numpy()
        self.total += int(v.numel())
        self.sum += float(v64.sum())
        self.min = min(self.min, float(v64.min()))
        self.max = max(self.max, float(v64.max()))

    def merge(self, other: "Histogram") -> None:
        """Add ``other``'s counts (same edges) into this one."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("histograms with different bins cannot be merged")
        self.counts += other.counts
        self.total += other.total
        self.sum += other.sum
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    @property
    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def quantile(self, q: float) -> float | None:
        """The value below which a fraction ``q`` of the values lie, read from the bins.

        Interpolated inside the bin that holds it (in log10 space for log bins) and clamped to the
        exact [min, max]; within one bin width of the exact quantile. None when empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.total == 0:
            return None
        if q == 0.0:
            return self.min
        if q == 1.0:
            return self.max
        target = q * self.total
        cumulative = np.cumsum(self.counts)
        slot = int(np.searchsorted(cumulative, target, side="left"))
        if slot == 0:  # underflow: below the first edge, only min is known
            return self.min
        if slot == self.counts.size - 1:  # overflow
            return self.max
        before = cumulative[slot - 1]
        inside = self.counts[slot]
        fraction = (target - before) / inside if inside else 0.0
        lo, hi = self.edges[slot - 1], self.edges[slot]
        if self.log:
            value = 10 ** (math.log10(lo) + fraction * (math.log10(hi) - math.log10(lo)))
        else:
            value = lo + fraction * (hi - lo)
        return float(min(max(value, self.min), self.max))

    def share_above(self, threshold: float) -> float | None:
        """Fraction of the values strictly above ``threshold``, to the nearest bin edge (None when
        empty). The study counts its shares exactly instead; this is for figures."""
        if self.total == 0:
            return None
        first = int(np.searchsorted(self.edges, threshold, side="right"))
        return float(self.counts[first:].sum()) / self.total

    def to_json(self) -> dict[str, object]:
        """The non-empty bins as ``{"edges": [lo, hi], "count": n}`` rows, plus the exact moments."""
        rows = []
        for slot in np.nonzero(self.counts)[0]:
            lo = -math.inf if slot == 0 else float(self.edges[slot - 1])
            hi = math.inf if slot == self.counts.size - 1 else float(self.edges[slot])
            rows.append({"low": None if math.isinf(lo) else lo, "high": None if math.isinf(hi) else hi,
                         "count": int(self.counts[slot])})
        return {"total": self.total, "min": None if self.total == 0 else self.min,
                "max": None if self.total == 0 else self.max, "mean": self.mean, "log_bins": self.log,
                "bins": rows}


class BottomKSample:
    """A uniform random sample without replacement of at most ``capacity`` rows of a stream.

    Each row arrives with a key drawn uniformly in [0, 1); the rows of the ``capacity`` smallest
    keys seen so far are kept (ties cannot happen in practice with float64 keys). Any set of rows
    is equally likely to be kept, whatever the order or the batching of the stream.

    Args:
        capacity: most rows kept.

    Attributes:
        seen: rows offered so far.
        columns: name -> (kept, ...) array of each column, in key order; None until the first add.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seen = 0
        self.keys = np.zeros(0, dtype=np.float64)
        self.columns: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.keys.size)

    def add(self, keys: np.ndarray, **columns: np.ndarray) -> None:
        """Offer rows: ``keys`` (n,) float64 in [0, 1), each column an (n, ...) array.

        Every call must give the same column names, dtypes and trailing shapes.
        """
        keys = np.asarray(keys, dtype=np.float64).reshape(-1)
        n = keys.size
        if any(np.asarray(c).shape[0] != n for c in columns.values()):
            raise ValueError("every column needs one row per key")
        self.seen += n
        if n == 0:
            return
        if self.columns is None:
            self.columns = {name: np.asarray(c)[:0].copy() for name, c in columns.items()}
        elif set(columns) != set(self.columns):
            raise ValueError(f"columns {sorted(columns)} differ from {sorted(self.columns)}")
        # Only candidates that can still enter the sample are concatenated (bounded work per call).
        if self.keys.size == self.capacity:
            entering = keys < self.keys[-1]
            if not entering.any():
                return
            keys = keys[entering]
            columns = {name: np.asarray(c)[entering] for name, c in columns.items()}
        all_keys = np.concatenate([self.keys, keys])
        order = np.argsort(all_keys, kind="stable")[: self.capacity]
        self.keys = all_keys[order]
        self.columns = {name: np.concatenate([self.columns[name], np.asarray(columns[name])])[order]
                        for name in self.columns}

    def column(self, name: str) -> np.ndarray:
        """The kept rows of one column (empty when nothing was added)."""
        if self.columns is None:
            raise KeyError(name)
        return self.columns[name]
