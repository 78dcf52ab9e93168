"""The registers gap, compact: one row per model family, without and with registers side by side.

:func:`build_gap` arranges the runs of ``lostreg experiment registers_gap`` into :class:`GapRow` items:
one per family pair (DINOv2 beside DINOv2+reg; DINO, DeiT-III and OpenCLIP alone: no registers variant
of them was released) and per selection of a sweep (its oracle best, the configuration chosen on
other data). Each cell is our CorLoc with, beside it, the published number it is comparable with
(:meth:`~lostreg.evaluation.runs.RunSummary.published`: the same checkpoint, the published protocol)
and nothing else; the Δ column is ours with registers minus ours without. :func:`gap_markdown` puts
the reference rows (published numbers no run is comparable with, and what differs) and the notes
below the headline; :func:`gap_figure` draws the grouped bars (ours, comparable published, and the
references), one panel per dataset.

Pure functions over :class:`~lostreg.evaluation.runs.RunSummary` items; nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lostreg.evaluation.compare import (
    Table,
    build_table,
    corloc_cell,
    dataset_label,
    other_data_reason,
    published_cell,
    published_sources,
    table_text,
)
from lostreg.evaluation.published import PublishedResult, published_by_key
from lostreg.evaluation.runs import RunSummary

__all__ = ["GapPair", "GapRow", "build_gap", "gap_figure", "gap_markdown"]

#: Bar colours of the figure: ours without registers, ours with, published (comparable), reference.
_COLOURS = {"without": "#4c72b0", "with": "#dd8452", "published": "#222222", "reference": "#999999"}


@dataclass(frozen=True)
class GapPair:
    """One headline row's backbones: a model without registers beside its registers variant.

    Attributes:
        label: the family as tables name it (``DINOv2``).
        without: backbone without registers (None: not in this experiment).
        with_: its registers variant (None: never released, or not in this experiment).
        ttreg: the ``without`` backbone runs with a test-time register (the experiment's ``ttreg=`` row).
        references: published row keys drawn as references for the ``without`` and ``with`` sides in
            the figure (not comparable: e.g. the registers paper's own models).
    """

    label: str
    without: str | None
    with_: str | None = None
    ttreg: bool = False
    references: tuple[str | None, str | None] = (None, None)


@dataclass
class GapRow:
    """A headline row: a pair under one selection of its runs.

    Attributes:
        pair: the backbones.
        protocol: the runs' protocol (``default``; a sweep: which of its configurations).
        without, with_: dataset -> our run, per side.
    """

    pair: GapPair
    protocol: str
    without: dict[str, RunSummary] = field(default_factory=dict)
    with_: dict[str, RunSummary] = field(default_factory=dict)

    def delta(self, dataset: str) -> float | None:
        """Ours with registers minus ours without, in CorLoc points; None unless both have a CorLoc."""
        a, b = self.without.get(dataset), self.with_.get(dataset)
        if a is None or b is None or a.corloc is None or b.corloc is None:
            return None
        return b.corloc - a.corloc


def _protocol(run: RunSummary) -> str:
    """A run's protocol without its test-time register part (the pair's label names that)."""
    return " ".join(part for part in run.protocol.split(" ") if not part.startswith("ttreg=")) or "default"


def build_gap(runs: Sequence[RunSummary], pairs: Sequence[GapPair]) -> list[GapRow]:
    """The headline rows, in ``pairs`` order; within a pair, one row per protocol (a sweep's best, then
    its configuration chosen on other data). Runs of no pair are left out (the full table has them)."""
    rows: dict[tuple[int, str], GapRow] = {}
    for run in runs:
        for index, pair in enumerate(pairs):
            for side in ("without", "with_"):
                backbone = getattr(pair, side)
                if backbone != run.backbone or (side == "without" and bool(run.ttreg) != pair.ttreg) or \
                        (side == "with_" and run.ttreg):
                    continue
                row = rows.setdefault((index, _protocol(run)), GapRow(pair, _protocol(run)))
                getattr(row, side).setdefault(run.dataset, run)
    return [rows[key] for key in sorted(rows, key=lambda k: k[0])]


def _cell(run: RunSummary | None, sources: list[str]) -> str:
    """``61.87`` or, beside a comparable published number, ``61.87 (61.9 [1])``."""
    if run is None:
        return "-"
    published = run.published() if run.comparable else None
    value = published.corloc(run.dataset) if published is not None else None
    if value is None:
        return corloc_cell(run)
    return f"{corloc_cell(run)} ({published_cell(value)} [{sources.index(published.source) + 1}])"


def _delta_cell(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def gap_markdown(runs: Sequence[RunSummary], pairs: Sequence[GapPair], datasets: Sequence[str]) -> str:
    """``gap.md``: the compact headline, then the reference rows and the notes, then the figure.

    Args:
        runs: every run of the experiment (:func:`lostreg.evaluation.compare.load_runs`).
        pairs: the headline's families, in order.
        datasets: the column groups, in order.
    """
    gap = build_gap(runs, pairs)
    table = build_table(runs, include_published=True)
    sources = published_sources(table)  # the numbering of the reference rows below
    header = ["family", "backbones", "protocol"]
    for d in datasets:
        label = dataset_label(d)
        header += [f"{label} without registers", f"{label} with registers", f"{label} Δ"]
    lines = ["## The registers gap", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in gap:
        backbones = " / ".join(b for b in (row.pair.without, row.pair.with_) if b) + (
            " (no registers variant released)" if row.pair.with_ is None else "")
        cells = [row.pair.label, backbones, row.protocol]
        for d in datasets:
            cells += [_cell(row.without.get(d), sources),
                      _cell(row.with_.get(d), sources) if row.pair.with_ else "n/a",
                      _delta_cell(row.delta(d))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", "Cells: our CorLoc (percent; `*` incomplete); in parentheses the published number it is comparable "
                  "with (the same checkpoint and the published protocol) and its source, numbered as in the notes "
                  "below. Δ: ours with registers minus ours without, in points.", ""]
    lines += ["![ours and published, per dataset](gap.png)", ""]
    lines += _references_markdown(table)
    return "\n".join(lines) + "\n"


def _references_markdown(table: Table) -> list[str]:
    """The reference rows (published numbers no run here is comparable with, and what differs) and the
    notes of the full table (:func:`lostreg.evaluation.compare.table_text`)."""
    text = table_text(table)
    keep = [i for i, row in enumerate(table.rows) if row.is_published_only]
    lines = ["## Reference rows and notes", ""]
    if keep:
        columns = [i for i, h in enumerate(text.header) if h in ("method", "backbone", "protocol", "published source")
                   or h.endswith(" published")]
        lines += ["| " + " | ".join(text.header[i] for i in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(text.cells[r][i].replace("|", "\\|") for i in columns) + " |" for r in keep]
        lines.append("")
    for note in [n for n in text.notes if not n.startswith(_NOT_COMPARABLE)] + _other_data(table):
        lines += ["\\" + note if note.startswith("* ") else note, ""]  # a leading "* " would render as a bullet
    lines += ["Every run, one row per backbone and protocol: `gap.csv` (or `lostreg compare` on the run "
              "directories)."]
    return lines


#: How :func:`lostreg.evaluation.compare.table_text` begins its note for each run on other data than the
#: published split; the experiment's notes group them instead (one line per dataset and reason).
_NOT_COMPARABLE = "not comparable with published numbers:"


def _other_data(table: Table) -> list[str]:
    """One note per dataset and reason for the runs on other data than the published split."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in table.rows:
        for dataset, run in row.runs.items():
            if dataset in table.published_columns() and not run.comparable:
                groups.setdefault((dataset, other_data_reason(run)), []).append(row.backbone)
    return [f"Not on the published data, so no published number beside them: {dataset_label(d)} ({why}): "
            f"{', '.join(backbones)}." for (d, why), backbones in groups.items()]


def _reference(key: str | None, dataset: str) -> float | None:
    return None if key is None else published_by_key(key).corloc(dataset)


def gap_figure(runs: Sequence[RunSummary], pairs: Sequence[GapPair], datasets: Sequence[str]) -> Any:
    """Grouped bars, one panel per dataset: per headline row, ours without and with registers (solid), the
    comparable published number beside each (outlined) and the pair's reference rows (hatched, grey).

    Returns:
        A :class:`matplotlib.figure.Figure` (built without pyplot; save it with ``savefig``).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    gap = build_gap(runs, pairs)
    figure = Figure(figsize=(max(6.0, 1.6 * max(1, len(gap))) * max(1, len(datasets)) / 2, 4.2),
                    constrained_layout=True)
    axes = figure.subplots(1, max(1, len(datasets)), squeeze=False)[0]
    width = 0.13
    for ax, dataset in zip(axes, datasets):
        for x, row in enumerate(gap):
            bars = []  # (offset index, value, kind)
            for side, key in (("without", row.pair.references[0]), ("with", row.pair.references[1])):
                run = (row.without if side == "without" else row.with_).get(dataset)
                ours = None if run is None else run.corloc
                published: PublishedResult | None = run.published() if run is not None and run.comparable else None
                bars += [(ours, side), (None if published is None else published.corloc(dataset), "published"),
                         (_reference(key, dataset), "reference")]
            drawn = [(value, kind) for value, kind in bars if value is not None]  # centred on the group
            for i, (value, kind) in enumerate(drawn):
                offset = x + (i - (len(drawn) - 1) / 2) * width
                style: dict[str, Any] = {"color": _COLOURS[kind]}
                if kind == "published":
                    style = {"facecolor": "none", "edgecolor": _COLOURS[kind], "linewidth": 1.2}
                elif kind == "reference":
                    style = {"facecolor": "white", "edgecolor": _COLOURS[kind], "hatch": "///"}
                ax.bar(offset, value, width, **style)
        ax.set_xticks(range(len(gap)))
        ax.set_xticklabels([f"{r.pair.label}\n{r.protocol}" if len({g.protocol for g in gap}) > 1 else r.pair.label
                            for r in gap], fontsize=8)
        ax.set_title(dataset_label(dataset))
        ax.set_ylabel("CorLoc (%)")
        ax.set_ylim(0, 100)
    legend = [Patch(color=_COLOURS["without"], label="ours, without registers"),
              Patch(color=_COLOURS["with"], label="ours, with registers"),
              Patch(facecolor="none", edgecolor=_COLOURS["published"], label="published, comparable"),
              Patch(facecolor="white", edgecolor=_COLOURS["reference"], hatch="///",
                    label="published reference (not comparable)")]
    axes[-1].legend(handles=legend, fontsize=7, loc="upper right")
    return figure


def pairs_from_spec(spec: Mapping[str, Any], families: Sequence[str], size: str, ttreg: str | None) -> list[GapPair]:
    """The headline pairs of an experiment file's ``pairs`` for the chosen ``families`` and ``size``.

    Each entry of ``spec["pairs"]`` names a family ``without`` registers and, optionally, the family
    ``with`` them (``spec["families"][name][size]`` is the backbone) and the published rows drawn as
    references. With ``ttreg``, the entry marked ``ttreg_row`` gets a second row: its ``without``
    backbone with the test-time register.
    """
    chosen = set(families)
    out = []
    for entry in spec["pairs"]:
        without, with_ = entry.get("without"), entry.get("with")
        backbones = [spec["families"][f][size] if f in chosen else None for f in (without, with_)]
        if backbones == [None, None]:
            continue
        references = tuple(entry.get("references", [None, None]))
        pair = GapPair(str(entry["label"]), backbones[0], backbones[1] if with_ else None,
                       references=(references[0], references[1]))  # type: ignore[arg-type]
        out.append(pair)
        if ttreg and entry.get("ttreg_row") and backbones[0]:
            out.append(GapPair(f"{entry['label']} + test-time register", backbones[0], backbones[1], ttreg=True,
                               references=(references[0], references[1])))  # type: ignore[arg-type]
    return out
