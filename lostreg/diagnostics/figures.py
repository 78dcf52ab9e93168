"""Diagnostic figures (matplotlib) from :class:`lostreg.diagnostics.tokens.Inspection` results.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot: nothing is
registered with a GUI backend or kept alive by pyplot, so any number of figures can be made in a
server process; ``fig.savefig("x.png")`` renders with Agg, and Jupyter displays them inline.

Coordinates: pictures are drawn with pixel edges at integers (``extent=(0, W, H, 0)``), so boxes
in lostreg's max-exclusive pixel convention land exactly; patch maps are drawn over the padded
grid (``cols*p`` x ``rows*p``) and the axes are cropped to the picture, as LOST sees it.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from lostreg.diagnostics.inspection import Inspection
from lostreg.methods import method_label

__all__ = [
    "attention_figure",
    "comparison_figure",
    "lost_figure",
    "method_figure",
    "norms_figure",
    "pca_figure",
    "save_figure",
    "tokencut_figure",
]

PANEL_IN = 3.0  # width of one image panel, inches
BOX_COLOUR = "#ff2828"
SEED_COLOUR = "#ffdc00"
OUTLIER_COLOUR = "#00e5ff"
SIMILAR_COLOUR = "#ff8c00"
BIPARTITION_COLOUR = "#1f77b4"
TITLE_SIZE = 9
MASK_CMAP = ListedColormap(["#2ca02c"])
BIPARTITION_CMAP = ListedColormap([BIPARTITION_COLOUR])
RANDOM_NOTE = "RANDOM weights: these maps are meaningless (pipeline test)"
DEGENERATE_NOTE = ("DEGENERATE spectrum: no unique Fiedler vector (λ3 - λ2 at most 1e-6 λ3, or a graph "
                   "without structure); the whole image is returned as the box")


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG (Agg), creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The constrained layout already fits the margins; bbox_inches="tight" would draw twice.
    fig.savefig(path, dpi=dpi, format="png")
    return path


# --- drawing helpers ---------------------------------------------------------------------------


def _aspect(insp: Inspection) -> float:
    h, w = insp.processed_hw
    return h / w


def _new_figure(n_rows: int, n_cols: int, aspect: float, extra_h: float = 0.6) -> tuple[Figure, np.ndarray]:
    # Row height from the width an image keeps beside its colour bar (~0.7 in), plus a title line:
    # taller rows would only add white space around aspect-locked images.
    row_h = (PANEL_IN - 0.7) * aspect + 0.55
    fig = Figure(figsize=(PANEL_IN * n_cols + 0.4, row_h * n_rows + extra_h), layout="constrained")
    return fig, fig.subplots(n_rows, n_cols, squeeze=False)  # always a 2-D array of Axes


def _title(fig: Figure, text: str, insp: Inspection | Sequence[Inspection]) -> None:
    items = [insp] if isinstance(insp, Inspection) else list(insp)
    random = any(i.is_random for i in items)
    if random:
        text += "\n" + RANDOM_NOTE
    fig.suptitle(text, fontsize=10, color="#b00000" if random else "black")


def _label(insp: Inspection) -> str:
    return insp.backbone + (" (RANDOM)" if insp.is_random else "")


def _frame(ax: Axes, insp: Inspection) -> None:
    h, w = insp.processed_hw
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _picture(ax: Axes, insp: Inspection, alpha: float = 1.0) -> None:
    h, w = insp.processed_hw
    ax.imshow(insp.picture, extent=(0, w, h, 0), alpha=alpha, interpolation="antialiased")
    _frame(ax, insp)


def _grid_map(ax: Axes, insp: Inspection, values: np.ndarray, **kwargs: object):
    rows, cols = insp.grid_hw
    p = insp.patch_size
    image = ax.imshow(values, extent=(0, cols * p, rows * p, 0), interpolation="nearest", **kwargs)
    _frame(ax, insp)
    return image


def _outline_patches(ax: Axes, insp: Inspection, mask: np.ndarray, colour: str, width: float = 1.5) -> None:
    p = insp.patch_size
    rects = [Rectangle((c * p, r * p), p, p) for r, c in zip(*np.nonzero(mask))]
    if rects:
        ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor=colour, linewidth=width))


def _mask_outline(ax: Axes, insp: Inspection, mask: np.ndarray, colour: str = "black", width: float = 1.5) -> None:
    """Draw the boundary of a patch mask along patch edges (exact, unlike a smoothed contour)."""
    p = insp.patch_size
    padded = np.pad(mask.astype(bool), 1)
    segments = []
    for r, c in zip(*np.nonzero(mask)):
        x, y = c * p, r * p
        if not padded[r, c + 1]:  # above
            segments.append([(x, y), (x + p, y)])
        if not padded[r + 2, c + 1]:  # below
            segments.append([(x, y + p), (x + p, y + p)])
        if not padded[r + 1, c]:  # left
            segments.append([(x, y), (x, y + p)])
        if not padded[r + 1, c + 2]:  # right
            segments.append([(x + p, y), (x + p, y + p)])
    if segments:
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=width))


def _box(ax: Axes, box: Sequence[int], colour: str = BOX_COLOUR, width: float = 2.0) -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=width))


def _seed(ax: Axes, insp: Inspection, filled: bool = True) -> None:
    x1, y1, x2, y2 = insp.seed_box_xyxy
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, facecolor=SEED_COLOUR if filled else "none",
                           alpha=0.55 if filled else 1.0, edgecolor=SEED_COLOUR, linewidth=1.5))


def _colorbar(fig: Figure, ax: Axes, image: object, label: str | None = None) -> None:
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    # No "+1.959e1" offset text: it is easy to misread and it crowds the neighbouring panel.
    bar.formatter = ScalarFormatter(useOffset=False)
    bar.update_ticks()
    if label:
        bar.set_label(label, fontsize=7)


def _note(ax: Axes, text: str) -> None:
    # Kept out of the layout: a long note must not shrink the image panels around it.
    note = ax.text(0.5, 0.5, textwrap.fill(text, 26), ha="center", va="center", fontsize=8,
                   transform=ax.transAxes, clip_on=True)
    note.set_in_layout(False)
    ax.set_xticks([])
    ax.set_yticks([])


# --- panels shared by the per-backbone and comparison figures ---------------------------------


def _panel_detection(ax: Axes, insp: Inspection) -> None:
    _picture(ax, insp)
    _box(ax, insp.processed_box_xyxy)
    _seed(ax, insp)


def _panel_norm_map(fig: Figure, ax: Axes, insp: Inspection) -> None:
    image = _grid_map(ax, insp, insp.norms, cmap="viridis")
    _outline_patches(ax, insp, insp.outliers.mask, OUTLIER_COLOUR)
    _colorbar(fig, ax, image, f"token norm ({insp.norm_source})")


def _panel_histogram(ax: Axes, insp: Inspection) -> None:
    norms = insp.norms.ravel()
    out = insp.outliers
    hi = max(float(norms.max()), out.threshold)
    lo = min(float(norms.min()), out.threshold)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, max(10, min(60, norms.size // 4)) + 1)
    counts, _, _ = ax.hist(norms[norms <= out.threshold], bins=bins, color="#4c72b0", log=True, label="tokens")
    if out.count:
        ax.hist(norms[norms > out.threshold], bins=bins, color=OUTLIER_COLOUR, log=True,
                edgecolor="black", linewidth=0.5, label="outliers")
    ax.axvline(out.threshold, color="black", linestyle="--", linewidth=1)
    # Head-room above the tallest bar (log axis) for the text box, so it never hides a bar.
    ax.set_ylim(0.5, max(float(np.max(counts, initial=1.0)), float(out.count), 1.0) * 40)
    ax.set_xlabel("token norm", fontsize=8)
    ax.set_ylabel("patches (log)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.xaxis.set_major_locator(MaxNLocator(3))
    ax.text(0.98, 0.97, f"threshold {out.threshold:.3g}\n({out.rule.describe()})\n"
                        f"outliers {out.count}/{norms.size} = {100 * out.share:.1f}%\nmax {out.max_norm:.3g}",
            transform=ax.transAxes, ha="right", va="top", fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}).set_in_layout(False)


def _panel_pca(ax: Axes, insp: Inspection) -> None:
    _grid_map(ax, insp, insp.pca)


def _panel_inverse_degree(fig: Figure, ax: Axes, insp: Inspection) -> None:
    assert insp.lost is not None
    image = _grid_map(ax, insp, insp.lost.inverse_degree, cmap="magma")
    _seed(ax, insp, filled=False)
    _colorbar(fig, ax, image, "1 / (1 + degree)")


def _panel_expansion(fig: Figure, ax: Axes, insp: Inspection) -> None:
    assert insp.lost is not None
    expansion = insp.lost.expansion
    vmax = float(np.abs(expansion).max()) or 1.0
    image = _grid_map(ax, insp, expansion, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -vmax, vmax))
    _mask_outline(ax, insp, insp.lost.mask)
    _box(ax, insp.processed_box_xyxy)
    _seed(ax, insp, filled=False)
    _colorbar(fig, ax, image, "expansion (signed)")


def _panel_eigenvector(fig: Figure, ax: Axes, insp: Inspection) -> None:
    """TokenCut's Fiedler vector, diverging around its mean (the split): the seed's side is red."""
    cut = insp.tokencut
    assert cut is not None
    x = cut.eigenvector
    lo, hi = float(x.min()), float(x.max())
    if cut.degenerate or not lo < cut.threshold < hi:
        _picture(ax, insp, alpha=0.35)
        _note(ax, "degenerate: no Fiedler vector" if cut.degenerate else "constant eigenvector")
        return
    image = _grid_map(ax, insp, x, cmap="RdBu_r", norm=TwoSlopeNorm(cut.threshold, lo, hi))
    _seed(ax, insp, filled=False)
    _colorbar(fig, ax, image, "Fiedler vector (centre: its mean)")


def _panel_cut(ax: Axes, insp: Inspection) -> None:
    """The bipartition (blue), the seed's component (green, outlined), box and seed."""
    cut = insp.tokencut
    assert cut is not None
    _picture(ax, insp, alpha=0.35)
    other = cut.bipartition & ~cut.mask
    _grid_map(ax, insp, np.ma.masked_where(~other, other.astype(float)), cmap=BIPARTITION_CMAP,
              alpha=0.45, vmin=0, vmax=1)
    _grid_map(ax, insp, np.ma.masked_where(~cut.mask, cut.mask.astype(float)), cmap=MASK_CMAP,
              alpha=0.6, vmin=0, vmax=1)
    _mask_outline(ax, insp, cut.mask)
    _box(ax, insp.processed_box_xyxy)
    _seed(ax, insp, filled=False)


def _cls_mean(insp: Inspection) -> np.ndarray | None:
    return None if insp.cls_attention is None else insp.cls_attention.mean(axis=0)


# --- per-backbone figures ----------------------------------------------------------------------


def norms_figure(insp: Inspection) -> Figure:
    """Picture with LOST's box, the token-norm map with outliers outlined, and the norm histogram."""
    fig, axes = _new_figure(1, 3, _aspect(insp))
    ax_pic, ax_map, ax_hist = axes[0]
    _panel_detection(ax_pic, insp)
    ax_pic.set_title(f"{insp.image}\n{insp.processed_hw[1]}x{insp.processed_hw[0]} px, grid "
                     f"{insp.grid_hw[0]}x{insp.grid_hw[1]}", fontsize=TITLE_SIZE)
    _panel_norm_map(fig, ax_map, insp)
    ax_map.set_title(f"patch-token norms, outliers outlined ({insp.outliers.count})", fontsize=TITLE_SIZE)
    _panel_histogram(ax_hist, insp)
    ax_hist.set_title("norm histogram", fontsize=TITLE_SIZE)
    what = "output-token norms" if insp.norm_source in ("final", "prenorm") else "patch-feature norms"
    _title(fig, f"{_label(insp)}: {what} ({insp.norm_source})", insp)
    return fig


def attention_figure(insp: Inspection, max_cols: int = 6) -> Figure:
    """CLS attention of every head of the chosen layer, then each register's map (mean of heads).

    Each map has its own colour scale, min to max (its colour bar gives the attention weights);
    titles give the query's attention mass on patches. A backbone without attention gets a
    one-panel figure saying so.
    """
    if insp.cls_attention is None and insp.register_attention is None:
        fig = Figure(figsize=(5, 1.5), layout="constrained")
        _note(fig.subplots(), f"{insp.backbone}: {insp.attention_note or 'no attention maps'}")
        return fig
    heads = 0 if insp.cls_attention is None else insp.cls_attention.shape[0]
    registers = 0 if insp.register_attention is None else insp.register_attention.shape[0]
    n_cols = min(max_cols, max(heads, registers, 2))
    head_rows = math.ceil(heads / n_cols)
    reg_rows = math.ceil(registers / n_cols)
    fig, axes = _new_figure(head_rows + reg_rows, n_cols, _aspect(insp))
    mass = insp.prefix_patch_mass
    assert mass is not None
    for ax in axes.flat:
        ax.set_axis_off()
    for h in range(heads):
        assert insp.cls_attention is not None
        ax = axes[h // n_cols, h % n_cols]
        ax.set_axis_on()
        image = _grid_map(ax, insp, insp.cls_attention[h], cmap="inferno")
        ax.set_title(f"CLS, head {h} (on patches {float(mass[0, h]):.2f})", fontsize=TITLE_SIZE - 1)
        _colorbar(fig, ax, image)
    first = 1 if heads else 0
    for r in range(registers):
        ax = axes[head_rows + r // n_cols, r % n_cols]
        ax.set_axis_on()
        assert insp.register_attention is not None
        image = _grid_map(ax, insp, insp.register_attention[r].mean(axis=0), cmap="inferno")
        ax.set_title(f"register {r + 1}, mean of heads\n(on patches {float(mass[first + r].mean()):.2f})",
                     fontsize=TITLE_SIZE - 1)
        _colorbar(fig, ax, image)
    _title(fig, f"{_label(insp)}: attention of block {insp.attention_layer} "
                f"(softmax over all tokens, patch columns)", insp)
    return fig


def pca_figure(insp: Inspection) -> Figure:
    """The picture and the first three PCA components of the patch tokens as RGB."""
    fig, axes = _new_figure(1, 2, _aspect(insp))
    _picture(axes[0, 0], insp)
    axes[0, 0].set_title(insp.image, fontsize=TITLE_SIZE)
    _panel_pca(axes[0, 1], insp)
    ratios = ", ".join(f"{100 * r:.0f}%" for r in insp.pca_explained)
    axes[0, 1].set_title(f"PCA of {insp.norm_source} patch tokens as RGB\n(explained variance {ratios})",
                         fontsize=TITLE_SIZE)
    _title(fig, f"{_label(insp)}: PCA", insp)
    return fig


def lost_figure(insp: Inspection) -> Figure:
    """LOST step by step: box and seed, inverse degree, similars, expansion map, mask, numbers.

    Raises:
        ValueError: the inspection ran another method (see :func:`method_figure`).
    """
    maps = insp.lost
    if maps is None:
        raise ValueError(f"{insp.backbone}: this inspection ran {insp.method}, not LOST")
    fig, axes = _new_figure(2, 3, _aspect(insp))
    protocol = insp.protocol

    ax = axes[0, 0]
    _panel_detection(ax, insp)
    ax.set_title("box (red) and seed (yellow)", fontsize=TITLE_SIZE)

    ax = axes[0, 1]
    _panel_inverse_degree(fig, ax, insp)
    _outline_patches(ax, insp, maps.potentials, "white", 0.7)
    ax.set_title(f"inverse degree, {int(maps.potentials.sum())} potentials outlined", fontsize=TITLE_SIZE)

    ax = axes[0, 2]
    _picture(ax, insp, alpha=0.45)
    _outline_patches(ax, insp, maps.similars, SIMILAR_COLOUR, 1.8)
    _seed(ax, insp)
    ax.set_title(f"similars: {int(maps.similars.sum())} (orange) + seed", fontsize=TITLE_SIZE)

    ax = axes[1, 0]
    _panel_expansion(fig, ax, insp)
    ax.set_title("expansion map, mask outlined", fontsize=TITLE_SIZE)

    ax = axes[1, 1]
    _picture(ax, insp, alpha=0.35)
    _grid_map(ax, insp, np.ma.masked_where(~maps.mask, maps.mask.astype(float)), cmap=MASK_CMAP,
              alpha=0.6, vmin=0, vmax=1)
    _box(ax, insp.processed_box_xyxy)
    _seed(ax, insp, filled=False)
    ax.set_title("mask (seed's component) and box", fontsize=TITLE_SIZE)

    ax = axes[1, 2]
    r, c = maps.seed_rc
    text = (f"seed (row, col) = ({r}, {c})\nseed degree = {int(maps.degree[r, c])} of {maps.degree.size - 1}\n"
            f"similars = {int(maps.similars.sum())}\nmask patches = {int(maps.mask.sum())}\n"
            f"box (patches) = {list(maps.box)}\nbox (pixels) = {list(insp.box_xyxy)}\n"
            f"features: {protocol.features.which} of block "
            f"{insp.attention_layer if insp.attention_layer is not None else '-'}"
            f"{' (L2-normalised)' if protocol.features.l2_normalize else ''}\n"
            f"k = {protocol.lost.k_patches}, gram bias = {protocol.lost.gram_bias:g}"
            + ("" if maps.seed_in_mask else "\nseed not in expansion > 0 (degenerate)"))
    ax.text(0.02, 0.98, text, va="top", ha="left", fontsize=8, family="monospace", transform=ax.transAxes)
    ax.set_axis_off()

    _title(fig, f"{_label(insp)}: LOST internals", insp)
    return fig


def tokencut_figure(insp: Inspection) -> Figure:
    """TokenCut step by step: box and seed, the Fiedler vector, the bipartition, the seed's
    component, the sorted eigenvector against the split, and the numbers (spectrum, degeneracy).

    A degenerate image (no unique Fiedler vector; lostreg returns the whole image) says so in
    the title and in every panel that would otherwise show an arbitrary vector.

    Raises:
        ValueError: the inspection ran another method (see :func:`method_figure`).
    """
    cut = insp.tokencut
    if cut is None:
        raise ValueError(f"{insp.backbone}: this inspection ran {insp.method}, not TokenCut")
    fig, axes = _new_figure(2, 3, _aspect(insp))
    knobs = insp.protocol.tokencut

    ax = axes[0, 0]
    _panel_detection(ax, insp)
    ax.set_title("box (red) and seed (yellow)", fontsize=TITLE_SIZE)

    ax = axes[0, 1]
    _panel_eigenvector(fig, ax, insp)
    ax.set_title("Fiedler vector (seed's side red)", fontsize=TITLE_SIZE)

    ax = axes[0, 2]
    _picture(ax, insp, alpha=0.35)
    _grid_map(ax, insp, np.ma.masked_where(~cut.bipartition, cut.bipartition.astype(float)),
              cmap=BIPARTITION_CMAP, alpha=0.6, vmin=0, vmax=1)
    _seed(ax, insp, filled=False)
    ax.set_title(f"bipartition: {int(cut.bipartition.sum())} patches on the seed's side", fontsize=TITLE_SIZE)

    ax = axes[1, 0]
    _panel_cut(ax, insp)
    ax.set_title("seed's component (green) and box", fontsize=TITLE_SIZE)

    ax = axes[1, 1]
    if cut.degenerate:
        _note(ax, DEGENERATE_NOTE)
    else:
        values = np.sort(cut.eigenvector.ravel())
        r, c = cut.seed_rc
        ax.plot(np.arange(values.size), values, color="black", linewidth=1)
        ax.axhline(cut.threshold, color=BIPARTITION_COLOUR, linestyle="--", linewidth=1, label="mean (split)")
        ax.axhline(float(cut.eigenvector[r, c]), color=SEED_COLOUR, linewidth=1.5, label="seed")
        ax.set_xlabel("patches, sorted", fontsize=8)
        ax.set_ylabel("x", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    ax.set_title("sorted Fiedler vector", fontsize=TITLE_SIZE)

    ax = axes[1, 2]
    r, c = cut.seed_rc
    lam2, lam3 = cut.eigenvalues
    text = (f"seed (row, col) = ({r}, {c})\nbipartition = {int(cut.bipartition.sum())} of {cut.mask.size}\n"
            f"mask patches = {int(cut.mask.sum())}\nbox (patches) = {list(cut.box)}\n"
            f"box (pixels) = {list(insp.box_xyxy)}\n"
            f"λ2 = {lam2:.4g}\nλ3 = {lam3:.4g}\ngap λ3 - λ2 = {cut.spectral_gap:.3g}\n"
            f"features: {insp.protocol.features.which} of block "
            f"{insp.attention_layer if insp.attention_layer is not None else '-'}\n"
            f"tau = {knobs.tau:g}, eps = {knobs.eps:g}, eig = {knobs.eig}"
            + ("\nDEGENERATE: whole image returned" if cut.degenerate else ""))
    ax.text(0.02, 0.98, text, va="top", ha="left", fontsize=8, family="monospace", transform=ax.transAxes,
            color="#b00000" if cut.degenerate else "black")
    ax.set_axis_off()

    title = f"{_label(insp)}: TokenCut internals"
    if cut.degenerate:
        title += "\n" + textwrap.fill(DEGENERATE_NOTE, 90)
    _title(fig, title, insp)
    return fig


def method_figure(insp: Inspection) -> Figure:
    """The internals figure of the inspection's method: :func:`lost_figure` or :func:`tokencut_figure`."""
    return tokencut_figure(insp) if insp.tokencut is not None else lost_figure(insp)


# --- side by side ------------------------------------------------------------------------------

COMPARISON_ROWS = ("LOST box + seed", "token norms + outliers", "norm histogram\npatches (log)", "CLS attention (mean of heads)",
                   "PCA (RGB)", "inverse degree", "expansion + mask")
#: The method rows of :func:`comparison_figure` (its last two) per method; the first row names the method.
METHOD_COMPARISON_ROWS = {"lost": ("inverse degree", "expansion + mask"),
                          "tokencut": ("Fiedler vector", "bipartition + component")}


def comparison_rows(methods: Sequence[str]) -> tuple[str, ...]:
    """Row titles of :func:`comparison_figure` for columns running ``methods`` (all LOST: :data:`COMPARISON_ROWS`)."""
    unique = list(dict.fromkeys(methods))
    name = " / ".join(method_label(m) for m in unique)
    internals = [" / ".join(METHOD_COMPARISON_ROWS[m][i] for m in unique) for i in range(2)]
    return (f"{name} box + seed", *COMPARISON_ROWS[1:5], *internals)


def comparison_figure(inspections: Sequence[Inspection]) -> Figure:
    """One column per backbone, one row per diagnostic (see :func:`comparison_rows`).

    All inspections should be of the same image; each column keeps its own colour scale (norms of
    different models are not comparable in absolute value; their shape is). The last two rows
    show each column's method internals: LOST's inverse degree and expansion, or TokenCut's
    Fiedler vector and bipartition (with the seed's component).
    """
    if not inspections:
        raise ValueError("nothing to compare")
    rows = comparison_rows([i.method for i in inspections])
    aspect = max(_aspect(i) for i in inspections)
    fig, axes = _new_figure(len(rows), len(inspections), aspect, extra_h=0.9)
    for col, insp in enumerate(inspections):
        _panel_detection(axes[0, col], insp)
        flag = ", DEGENERATE" if insp.tokencut is not None and insp.tokencut.degenerate else ""
        axes[0, col].set_title(f"{_label(insp)}\nseed {list(insp.seed_rc)}, box {list(insp.box_xyxy)}{flag}",
                               fontsize=TITLE_SIZE)
        _panel_norm_map(fig, axes[1, col], insp)
        _panel_histogram(axes[2, col], insp)
        cls_mean = _cls_mean(insp)
        if cls_mean is None:
            _note(axes[3, col], insp.attention_note or "no CLS attention")
        else:
            _colorbar(fig, axes[3, col], _grid_map(axes[3, col], insp, cls_mean, cmap="inferno"))
        _panel_pca(axes[4, col], insp)
        if insp.tokencut is not None:
            _panel_eigenvector(fig, axes[5, col], insp)
            _panel_cut(axes[6, col], insp)
        else:
            _panel_inverse_degree(fig, axes[5, col], insp)
            _panel_expansion(fig, axes[6, col], insp)
    for row, name in enumerate(rows):
        axes[row, 0].set_ylabel(name, fontsize=TITLE_SIZE)
    _title(fig, f"{inspections[0].image}: " + " vs ".join(i.backbone for i in inspections), inspections)
    return fig
