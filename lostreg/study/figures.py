"""Figures of the artifact study (matplotlib, without pyplot, as :mod:`lostreg.diagnostics.figures`).

* :func:`norms_by_layer_figure`: norm quantiles and outlier shares along the blocks (the registers
  paper's norm-along-layers figure), from a study record alone.
* :func:`norm_histogram_figure`: the study block's norm distribution, normal and outlier tokens
  stacked, on log-spaced bins (the paper's bimodal histogram).
* :func:`neighbour_cosine_figure`: cosine to the 4 neighbours, outliers vs normal tokens, at the
  study block and at the input of block 0.
* :func:`share_by_size_figure`: outlier share against model size, one line per register kind (the
  paper's "artifacts appear from ViT-L up" figure), and :func:`share_by_layer_figure`: the share
  along relative depth, one line per model.

Every figure says in its title on how many images and tokens it rests; a figure with nothing to
draw (no outlier token) says so in the panel instead of drawing an empty axis silently.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, ScalarFormatter

from lostreg.study.sketch import Histogram

__all__ = [
    "neighbour_cosine_figure",
    "norm_histogram_figure",
    "norms_by_layer_figure",
    "register_kind",
    "share_by_layer_figure",
    "share_by_size_figure",
]

NORMAL_COLOUR = "#1f77b4"
OUTLIER_COLOUR = "#d62728"
TITLE_SIZE = 9
RANDOM_NOTE = " — RANDOM weights"


def _title(record: Mapping[str, Any]) -> str:
    name = record.get("label") or record["backbone"]
    random = RANDOM_NOTE if record.get("random_weights") else ""
    return (f"{name}{random}: {record['images']} images x {record['tokens_per_image']} patch tokens, "
            f"{record['norm_source']} norms")


def _plain_ticks(axis: Any) -> None:
    """Tick labels 20, 50, 100 on a log axis instead of 2x10^1 (norms are read as plain numbers)."""
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)

    def minor(value: float, _position: object) -> str:
        # Only 2x and 5x a power of ten among the minor ticks: all of them would overlap.
        if value <= 0:
            return ""
        leading = round(value / 10 ** math.floor(math.log10(value)), 6)
        return f"{value:g}" if leading in (2.0, 5.0) else ""

    axis.set_minor_formatter(FuncFormatter(minor))


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, wrap=True)


def norms_by_layer_figure(record: Mapping[str, Any]) -> Figure:
    """Median / p90 / p99 / max patch-token norm per block (log scale) and the outlier shares (%)."""
    rows = record["layers"]
    layers = [row["layer"] for row in rows]
    fig = Figure(figsize=(7.0, 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for key, label, style, colour in (("max_norm", "max", ":", "black"), ("p99_norm", "p99", "-", "#ff7f0e"),
                                      ("p90_norm", "p90", "--", "#2ca02c"), ("median_norm", "median", "-", NORMAL_COLOUR)):
        top.plot(layers, [row[key] for row in rows], style, color=colour, marker=".", label=label)
    top.axhline(record["norm_threshold"], color="grey", lw=0.8, ls="-.", label=f"{record['norm_threshold']:g}")
    top.set_yscale("log")
    _plain_ticks(top.yaxis)
    top.set_ylabel("patch-token L2 norm")
    top.legend(fontsize=7, ncol=5, loc="upper left")
    top.set_title(_title(record), fontsize=TITLE_SIZE)
    bottom.plot(layers, [100 * row["outlier_share"] for row in rows], marker="o", color=OUTLIER_COLOUR,
                label=f"outliers ({record['outlier_rule_text']})")
    bottom.plot(layers, [100 * row["absolute_share"] for row in rows], marker="s", ms=3, color="grey",
                label=f"norm > {record['norm_threshold']:g}")
    bottom.set_ylabel("share of patch tokens (%)")
    bottom.set_xlabel("block (0 = first)")
    bottom.legend(fontsize=7, loc="upper left")
    bottom.set_ylim(bottom=0)
    return fig


def _display_bins(fine: Sequence[Histogram], bins: int, log: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Regroup fine histograms (same edges) onto ``bins`` display bins over their joint data range."""
    low = min(h.min for h in fine if h.total)
    high = max(h.max for h in fine if h.total)
    if high <= low:
        high = low * 1.01 + 1e-6
    edges = np.geomspace(low, high, bins + 1) if log and low > 0 else np.linspace(low, high, bins + 1)
    first = fine[0]
    # A fine bin's count goes to the display bin of its centre (under/overflow to the ends).
    centres = np.sqrt(first.edges[:-1] * first.edges[1:]) if first.log else (first.edges[:-1] + first.edges[1:]) / 2
    centres = np.concatenate([[low], centres, [high]])
    grouped = [np.histogram(np.clip(centres, low, high), bins=edges, weights=h.counts)[0] for h in fine]
    return edges, grouped


def norm_histogram_figure(record: Mapping[str, Any], histograms: Mapping[str, Histogram], bins: int = 80) -> Figure:
    """The study block's patch-token norms, normal and outlier tokens stacked, log x and log counts."""
    fig = Figure(figsize=(6.5, 3.4), layout="constrained")
    ax = fig.subplots()
    normal, outlier = histograms["normal"], histograms["outlier"]
    ax.set_title(f"block {record['study_layer']}: " + _title(record), fontsize=TITLE_SIZE)
    if normal.total + outlier.total == 0:
        _empty(ax, "no tokens")
        return fig
    present = [h for h in (normal, outlier) if h.total]
    edges, grouped = _display_bins(present, bins, log=True)
    counts = dict(zip([id(h) for h in present], grouped))
    widths = np.diff(edges)
    bottom = np.zeros(bins)
    for h, colour, label in ((normal, NORMAL_COLOUR, "normal"), (outlier, OUTLIER_COLOUR, "outlier")):
        if h.total:
            ax.bar(edges[:-1], counts[id(h)], width=widths, align="edge", bottom=bottom, color=colour,
                   label=f"{label} ({h.total} tokens)")
            bottom = bottom + counts[id(h)]
    if not outlier.total:
        ax.text(0.98, 0.9, f"no outlier ({record['outlier_rule_text']})", transform=ax.transAxes, ha="right",
                fontsize=7)
    ax.axvline(record["norm_threshold"], color="grey", lw=0.8, ls="-.", label=f"norm {record['norm_threshold']:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("patch-token L2 norm")
    ax.set_ylabel("tokens")
    ax.legend(fontsize=7)
    return fig


def neighbour_cosine_figure(record: Mapping[str, Any], histograms: Mapping[str, Mapping[str, Histogram]]) -> Figure:
    """Density of the mean cosine to the 4 neighbours, outliers vs normal tokens; one panel per place."""
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    fig.suptitle(_title(record), fontsize=TITLE_SIZE)
    places = (("layer", f"block {record['study_layer']} output"), ("input", "input of block 0"))
    for ax, (where, name) in zip(axes, places):
        ax.set_title(name, fontsize=TITLE_SIZE)
        ax.set_xlabel("mean cosine to the 4 neighbours")
        for kind, colour in (("normal", NORMAL_COLOUR), ("outlier", OUTLIER_COLOUR)):
            h = histograms[where][kind]
            if not h.total:
                ax.text(0.02, 0.92, f"no {kind} token", transform=ax.transAxes, fontsize=7)
                continue
            inner = h.counts[1:-1].astype(float)
            density = inner / (inner.sum() * np.diff(h.edges)) if inner.sum() else inner
            ax.stairs(density, h.edges, color=colour, fill=kind == "outlier", alpha=0.5 if kind == "outlier" else 1,
                      label=f"{kind}: mean {h.mean:.3f} ({h.total} tokens)")
        ax.set_xlim(-1, 1)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    return fig


def register_kind(record: Mapping[str, Any]) -> str:
    """``test-time register``, ``N trained registers`` or ``no registers``."""
    if record.get("test_time_register"):
        return "test-time register"
    count = int(record.get("num_registers") or 0)
    return f"{count} trained registers" if count else "no registers"


def share_by_size_figure(records: Sequence[Mapping[str, Any]]) -> Figure:
    """Outlier share (%) at each model's study block against its parameter count, per register kind."""
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        kinds.setdefault(f"{record['family']}, {register_kind(record)}", []).append(record)
    for kind, group in sorted(kinds.items()):
        group = sorted(group, key=lambda r: r["parameters"])
        xs = [r["parameters"] / 1e6 for r in group]
        ys = [100 * (r["outlier_share"] or 0.0) for r in group]
        ax.plot(xs, ys, marker="o", label=kind)
        for r, x, y in zip(group, xs, ys):
            ax.annotate(r.get("label") or r["backbone"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("outlier share at the study block (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    images = sorted({r["images"] for r in records})
    ax.set_title(f"outliers by model size ({', '.join(map(str, images))} images per model)", fontsize=TITLE_SIZE)
    return fig


def share_by_layer_figure(records: Sequence[Mapping[str, Any]]) -> Figure:
    """Outlier share (%) along relative depth (block / (blocks - 1)), one line per model."""
    fig = Figure(figsize=(6.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for record in records:
        rows = record["layers"]
        depth = max(1, len(rows) - 1)
        ax.plot([row["layer"] / depth for row in rows], [100 * row["outlier_share"] for row in rows], marker=".",
                label=record.get("label") or record["backbone"])
    ax.set_xlabel("relative depth (block / last block)")
    ax.set_ylabel("outlier share (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("outlier share along the layers", fontsize=TITLE_SIZE)
    if not records or all(math.isclose(0.0, row["outlier_share"]) for r in records for row in r["layers"]):
        _empty(ax, "no outlier token in any model")
    return fig
