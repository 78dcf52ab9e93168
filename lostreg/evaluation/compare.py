"""CorLoc of several ``lostreg eval`` run directories in one table, beside published numbers.

Pure functions, no printing: :func:`load_runs` reads run directories into
:class:`RunSummary` items, :func:`build_table` arranges them (rows = method + backbone +
protocol, column groups = datasets), :func:`to_markdown` and :func:`to_csv` render the table.

Layout: the first column names the discovery method (``LOST``, ``TokenCut``; the CSV has the
config value ``lost`` / ``tokencut``), then the backbone, then the protocol as departures from
*that method's* defaults (``default``, ``k=50``, ``tau=0.3 eig=scipy``). Rows are grouped by
method (in registration order, :func:`lostreg.methods.method_names`), then backbone, default protocol first.
A published number stands only beside a run it is comparable with: the same checkpoint and the
published protocol (:mod:`lostreg.evaluation.published`). The other published rows of the table's
methods and backbone families follow apart, as reference rows whose protocol cell says what differs.

A run directory holds ``config.yaml`` (the composed, resolved hydra config) and
``metrics.json`` (``corloc``, ``hits``, ``total``, ``failed``, ``num_images``, ``complete``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lostreg.backbones.registry import family_of
from lostreg.evaluation.published import (
    PUBLIC_CHECKPOINT_NOTE,
    PUBLISHED_DATASETS,
    SOURCE_ISSUE_381,
    SOURCE_JIANG,
    SOURCE_REGISTERS,
    SOURCE_TOKENCUT,
    TOKENCUT_SOLVER_NOTE,
    PublishedResult,
    lostreg_backbone_for,
    method_label,
    reference_rows,
)
from lostreg.evaluation.runs import (
    DEFAULT_PROTOCOL_TEXT,
    RunError,
    RunSummary,
    load_run,
    load_runs,
)
from lostreg.datasets.registry import dataset_kind, dataset_kinds
from lostreg.evaluation.detector_runs import DETECTOR_METHOD
from lostreg.methods import DEFAULT_METHOD, method_names
from lostreg.protocol import DiscoveryProtocol, describe_protocol

__all__ = [
    "Row",
    "RunError",
    "RunSummary",
    "Table",
    "TableText",
    "build_table",
    "corloc_cell",
    "csv_header",
    "csv_rows",
    "dataset_label",
    "load_run",
    "load_runs",
    "table_text",
    "to_csv",
    "to_markdown",
]


def dataset_label(dataset: str) -> str:
    """A dataset's column-group title (``VOC07``, ``COCO20k``): its kind's label, else the name itself."""
    return dataset_kind(dataset, strict=False).label


def _dataset_columns(present: Iterable[str]) -> list[str]:
    """Column groups: the main published datasets always (VOC07, VOC12, COCO20k), then the others
    ``present`` in registration order (unregistered names last, alphabetically)."""
    registered = [kind.name for kind in dataset_kinds()]
    columns = [kind.name for kind in dataset_kinds() if kind.main]
    extra = set(present) - set(columns)
    return columns + sorted(extra, key=lambda d: (registered.index(d) if d in registered else len(registered), d))


def _default_note(method: str) -> str:
    """``LOST on raw keys of the last layer, k=100, Gram bias 0``: a method's default protocol in words."""
    text = describe_protocol(DiscoveryProtocol(method=method))
    label = method_label(method)
    return text if text.startswith(label) else f"{label} on {text}"


DEFAULT_DATA_NOTE = "native resolution, pretrained weights (the papers' protocol)"
DETECTOR_NOTE = ("detector: a detector's predictions scored by `lostreg score` (CorLoc of its most confident box per "
                 "image); its protocol names the discovery run it was trained on. A published '+ CAD' number stands "
                 "beside it only when that run follows the published protocol and the detector is scored on the "
                 "data it was trained on; the detector itself (architecture, schedule) is not checked.")
RANDOM_NOTE = "RANDOM weights: randomly initialised backbone, a pipeline test only; its CorLoc is meaningless"


@dataclass
class Row:
    """One table row: our runs of one method + backbone + protocol, or a published result alone.

    Attributes:
        backbone: lostreg backbone name; for a published-only row, the paper's label.
        protocol: :attr:`RunSummary.protocol`; for a published-only row, its protocol note.
        runs: dataset name -> our run (empty for a published-only row).
        published: The published row shown beside ours (or alone), if any.
        method: The discovery method (``lost``, ``tokencut``); for a published-only row, the
            lostreg method of the published result.
    """

    backbone: str
    protocol: str
    runs: dict[str, RunSummary] = field(default_factory=dict)
    published: PublishedResult | None = None
    method: str = DEFAULT_METHOD

    @property
    def method_label(self) -> str:
        """``LOST``, ``TokenCut``."""
        return method_label(self.method)

    @property
    def label(self) -> str:
        """``LOST dino_vits16 [default]``: how notes and warnings name the row."""
        return f"{self.method_label} {self.backbone} [{self.protocol}]"

    @property
    def is_published_only(self) -> bool:
        """No run of ours: the row only shows a published result."""
        return not self.runs

    @property
    def is_random(self) -> bool:
        """Our runs of this row used random weights."""
        return any(run.is_random for run in self.runs.values())


@dataclass
class Table:
    """A comparison table.

    Attributes:
        datasets: Column groups, in order (VOC07, VOC12, COCO20k, then any others present).
        rows: Our rows (sorted by backbone, default protocol first), then published-only rows.
        include_published: Whether published columns and rows are part of the table.
        warnings: One line each, e.g. two runs for one cell (the one with fewer images is dropped).
    """

    datasets: tuple[str, ...]
    rows: list[Row]
    include_published: bool = True
    warnings: list[str] = field(default_factory=list)

    def published_columns(self) -> tuple[str, ...]:
        """Datasets that get a "published" column."""
        return tuple(d for d in self.datasets if d in PUBLISHED_DATASETS) if self.include_published else ()


def _progress(run: RunSummary) -> str:
    return f"{run.total}/{run.num_images} images"


def build_table(runs: Iterable[RunSummary], include_published: bool = True) -> Table:
    """Arrange runs into rows (method + backbone + protocol) and dataset columns.

    Two runs with the same row and dataset are ambiguous: the one with more images done
    is kept (then a complete one, then the first given) and a warning names both.

    Args:
        runs: From :func:`load_runs`.
        include_published: Add published numbers beside the rows they are comparable with, and a
            reference row for each other published result of the methods and backbone families in ``runs``.
    """
    rows: dict[tuple[str, str, str], Row] = {}
    warnings: list[str] = []
    for run in runs:
        row = rows.setdefault(run.row_key, Row(backbone=run.backbone, protocol=run.protocol, method=run.method))
        kept = row.runs.get(run.dataset)
        if kept is not None:
            winner, loser = (run, kept) if (run.total, run.complete) > (kept.total, kept.complete) else (kept, run)
            warnings.append(
                f"two runs for {run.label} on {run.dataset}: kept {winner.run_dir} "
                f"({_progress(winner)}), ignored {loser.run_dir} ({_progress(loser)})"
            )
            run = winner
        row.runs[run.dataset] = run

    datasets = _dataset_columns(run.dataset for row in rows.values() for run in row.runs.values())

    # Grouped by method, then backbone; the default protocol first within a backbone, so
    # "ours vs published" leads each group.
    ordered = sorted(rows.values(), key=lambda r: (_method_order(r.method), r.backbone,
                                                   r.protocol != DEFAULT_PROTOCOL_TEXT, r.protocol))
    if include_published:
        for row in ordered:
            first = next(iter(row.runs.values()))
            row.published = first.published()  # the same for every run of the row: same protocol
        shown = {row.published.key for row in ordered if row.published is not None}
        # Reference rows only for the methods and backbone families compared here: a LOST-only table
        # stays LOST-only, a DINO table shows no OpenCLIP row.
        methods = [row.method for row in ordered]
        families = [family_of(row.backbone) for row in ordered]
        ordered += [Row(backbone=p.label, protocol=reference_text(p), published=p, method=p.lostreg_method)
                    for p in sorted(reference_rows(methods, families, sorted(shown)),
                                    key=lambda p: _method_order(p.lostreg_method))]
    return Table(datasets=tuple(datasets), rows=ordered, include_published=include_published, warnings=warnings)


def reference_text(result: PublishedResult) -> str:
    """A reference row's protocol cell: what makes it not comparable with a stock run of public weights
    (``differs: authors' ... not released; Gram bias value not published``), else its protocol."""
    return "differs: " + "; ".join(result.differs) if result.differs else result.protocol


def other_data_reason(run: RunSummary) -> str:
    """Why a run is not on its dataset's published data: ``split=small``, ``no_hard`` or
    ``300 images, not the published 5011``."""
    published_size = dataset_kind(run.dataset, strict=False).published_size
    return " ".join(run.variant) or f"{run.num_images} images, not the published {published_size}"


def _method_order(method: str) -> int:
    methods = method_names()
    return methods.index(method) if method in methods else len(methods)


# ------------------------------------------------------------------------------ rendering


def published_sources(table: Table) -> list[str]:
    """Published sources cited in the table, in first-use order ([1], [2], ...)."""
    sources: list[str] = []
    for row in table.rows:
        if row.published is not None and row.published.source not in sources:
            sources.append(row.published.source)
    return sources


def published_value(row: Row, dataset: str) -> float | None:
    """The published CorLoc shown in ``row`` for ``dataset``: only beside a run on the published data
    (:attr:`RunSummary.comparable`) or where the row has no run of that dataset."""
    run = row.runs.get(dataset)
    if row.published is None or (run is not None and not run.comparable):
        return None
    return row.published.corloc(dataset)


def published_cell(value: float | None) -> str:
    """A published CorLoc as a cell: as the source gives it (one decimal, two for a report such as 35.94);
    ``-`` when none."""
    if value is None:
        return "-"
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def corloc_cell(run: RunSummary | None) -> str:
    """Our CorLoc as a cell: two decimals, ``*`` incomplete, ``n/a`` no CorLoc, ``-`` no run."""
    if run is None:
        return "-"
    text = "n/a" if run.corloc is None else f"{run.corloc:.2f}"
    return text + ("*" if not run.complete else "")


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass(frozen=True)
class TableText:
    """A :class:`Table` as plain-text cells, shared by the markdown and HTML renderers.

    Attributes:
        header: column titles.
        cells: one list of cell texts per row of ``table.rows`` (same order).
        numeric: indices of columns holding numbers.
        notes: footnotes, plain text, in order.
    """

    header: list[str]
    cells: list[list[str]]
    numeric: frozenset[int]
    notes: list[str]


def table_text(table: Table) -> TableText:
    """Cells and notes of ``table``: ``method | backbone | protocol | VOC07 ours | VOC07 published | ...``.

    Method: ``LOST`` or ``TokenCut``. Ours: two decimals, ``*`` when incomplete, ``-`` when not
    run, ``n/a`` when the run has no CorLoc. Published: one decimal. Published-only rows' backbone
    cell starts with ``published:``.
    """
    published_cols = table.published_columns()
    sources = published_sources(table)
    header = ["method", "backbone", "protocol"]
    for d in table.datasets:
        label = dataset_label(d)
        header.append(f"{label} ours")
        if d in published_cols:
            header.append(f"{label} published")
    if published_cols:
        header.append("published source")
    numeric = frozenset(i for i, h in enumerate(header) if h.endswith((" ours", " published")))

    rows: list[list[str]] = []
    footnotes: list[str] = []
    for row in table.rows:
        if row.is_published_only:
            assert row.published is not None
            ours_name = lostreg_backbone_for(row.published.key)
            backbone = f"published: {row.backbone}" + (f" [lostreg: {ours_name}]" if ours_name else "")
        else:
            backbone = row.backbone + (" (RANDOM weights)" if row.is_random else "")
        cells = [row.method_label, backbone, row.protocol]
        for d in table.datasets:
            run = row.runs.get(d)
            cells.append("" if row.is_published_only else corloc_cell(run))
            if run is not None and not run.complete:
                footnotes.append(f"* incomplete: {row.label} {dataset_label(d)}: "
                                 f"{_progress(run)} ({run.run_dir})")
            if run is not None and d in published_cols and not run.comparable:
                footnotes.append(f"not comparable with published numbers: {row.label} "
                                 f"{dataset_label(d)}: {other_data_reason(run)} ({run.run_dir})")
            if run is not None and run.sweep_role is not None:
                footnotes.append(f"{row.label} {dataset_label(d)}: the configuration is {sweep_configuration(run)}")
            if d in published_cols:
                cells.append(published_cell(published_value(row, d)))
        if published_cols:
            cells.append(f"[{sources.index(row.published.source) + 1}]" if row.published is not None else "")
        rows.append(cells)

    methods = sorted({row.method for row in table.rows if row.method != DETECTOR_METHOD}, key=_method_order)
    defaults = "; ".join(_default_note(m) if m in method_names() else m for m in methods or [DEFAULT_METHOD])
    notes = [f"protocol {DEFAULT_PROTOCOL_TEXT}: the method's default protocol ({defaults}), {DEFAULT_DATA_NOTE}; "
             "otherwise only the departures from it are named.",
             "ours: CorLoc in percent (hits / images evaluated), two decimals; - not run"
             + ("; n/a: the run has no CorLoc (a dataset without ground truth, such as a folder of images, "
                "or no image done yet)." if any(c.startswith("n/a") for cells in rows for c in cells) else ".")]
    if any(row.method == DETECTOR_METHOD for row in table.rows):
        notes.append(DETECTOR_NOTE)
    notes += footnotes
    if any(row.is_random for row in table.rows):
        notes.append(RANDOM_NOTE + ".")
    if published_cols:
        notes += [f"[{i}] {source}." for i, source in enumerate(sources, start=1)]
        if any(row.is_published_only for row in table.rows):
            notes.append("published: rows are reference rows: no run of this table is comparable with them (other "
                         "weights or another protocol; the protocol column says what differs). A published number "
                         "stands beside our run only for the same checkpoint and the published protocol.")
        by_note: dict[str, list[str]] = {}
        for row in table.rows:
            if row.published is not None and row.published.note:
                by_note.setdefault(row.published.note, []).append(row.published.label)
        notes += [f"{note}: {', '.join(labels)}." for note, labels in by_note.items()]
        if any(s in sources for s in (SOURCE_REGISTERS, SOURCE_JIANG, SOURCE_ISSUE_381)):
            notes.append("Why the public-checkpoint numbers differ from Table 3: " + PUBLIC_CHECKPOINT_NOTE)
        if SOURCE_TOKENCUT in sources:
            notes.append(TOKENCUT_SOLVER_NOTE)
    return TableText(header, rows, numeric, notes)


def sweep_configuration(run: RunSummary) -> str:
    """The configuration a sweep row stands for, in words: ``which=q layer=-2 bias=-0.2`` (or ``default``)."""
    parts = [part for part in run.discovery.departures() if not part.startswith("method=")]
    return " ".join(parts) or DEFAULT_PROTOCOL_TEXT


def _has_sweeps(table: Table) -> bool:
    return any(run.sweep_role is not None for row in table.rows for run in row.runs.values())


def to_markdown(table: Table) -> str:
    """Render :func:`table_text` as a markdown table followed by footnotes."""
    text = table_text(table)
    lines = ["| " + " | ".join(text.header) + " |", "|" + "---|" * len(text.header)]
    lines += ["| " + " | ".join(_escape(c) for c in cells) + " |" for cells in text.cells]
    # A leading "* " would render as a bullet; a blank line keeps notes separate paragraphs.
    notes = ["\\" + n if n.startswith("* ") else n for n in text.notes]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def csv_header(table: Table) -> list[str]:
    """CSV columns of :func:`to_csv`."""
    header = ["row_type", "method", "backbone", "protocol", "random_weights"]
    sweeps = _has_sweeps(table)
    for d in table.datasets:
        header += [f"{d}_ours", f"{d}_images_done", f"{d}_num_images", f"{d}_complete"]
        if sweeps:
            header.append(f"{d}_configuration")
        if d in table.published_columns():
            header.append(f"{d}_published")
    if table.published_columns():
        header += ["published_label", "published_source"]
    return header


def csv_rows(table: Table) -> list[list[str]]:
    """The rows of :func:`to_csv` (without header): numbers as plain text, empty when missing."""
    published_cols = table.published_columns()
    sweeps = _has_sweeps(table)
    out = []
    for row in table.rows:
        cells = ["published" if row.is_published_only else "ours", row.method, row.backbone, row.protocol,
                 "" if row.is_published_only else str(int(row.is_random))]
        for d in table.datasets:
            run = row.runs.get(d)
            if run is None:
                cells += ["", "", "", ""]
            else:
                cells += ["" if run.corloc is None else repr(run.corloc), str(run.total), str(run.num_images),
                          str(int(run.complete))]
            if sweeps:
                cells.append(sweep_configuration(run) if run is not None and run.sweep_role is not None else "")
            if d in published_cols:
                value = published_value(row, d)
                cells.append("" if value is None else repr(value))
        if published_cols:
            cells += [row.published.label, row.published.source] if row.published is not None else ["", ""]
        out.append(cells)
    return out


def to_csv(table: Table, path: str | Path) -> Path:
    """Write the table as CSV: one row per method + backbone + protocol, then published-only rows.

    ``row_type`` is ``ours`` or ``published``; ``method`` the config value (``lost``,
    ``tokencut``); ``backbone``, ``protocol`` as in the markdown; per dataset ``<d>_ours`` (full precision),
    ``<d>_images_done``, ``<d>_num_images``, ``<d>_complete`` (0/1), when the table has sweep rows
    ``<d>_configuration`` (the configuration the row stands for, e.g. ``which=q layer=-2``), and, for
    VOC07 / VOC12 / COCO20k, ``<d>_published``. Missing values are empty cells.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(table))
        writer.writerows(csv_rows(table))
    return path
