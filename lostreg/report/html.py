"""A static, self-contained HTML page comparing ``lostreg eval`` runs of one dataset.

The page has the CorLoc table of :mod:`lostreg.evaluation.compare` at the top (and, for runs
whose boxes have scores, the CorLoc of their most confident images:
:mod:`lostreg.evaluation.confidence`), a legend, then
a gallery: one thumbnail per image with the ground truth and every run's box drawn on it,
and per run a hit / miss / error chip. Filters ("hit by A", "missed by B", "disagreements",
quick buttons per ordered pair of runs) are a few lines of JavaScript over ``data-``
attributes of the gallery items, so the page works offline from a single file.

Flow: :func:`~lostreg.report.runs.load_report_runs` (run directories -> :class:`ReportRun`,
refusing runs of different datasets) -> :func:`build_report` (runs -> :class:`Report`: the HTML
text, plus the thumbnail files when they are linked instead of embedded) -> :func:`write_report`.
The stylesheet and the script are package files (``assets/report.css``, ``assets/report.js``),
inlined into the page; the runs' data only ever goes into HTML text and ``data-`` attributes,
escaped, never into script text.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tqdm import tqdm

from lostreg import __version__
from lostreg.evaluation.compare import Table, build_table, corloc_cell, dataset_label, table_text
from lostreg.evaluation.confidence import CONFIDENCE_NOTE, confidence_table
from lostreg.io.atomic import atomic_write_text
from lostreg.report.gallery import (
    DEFAULT_THUMB_SIZE,
    RUN_COLOURS,
    GalleryItem,
    draw_thumbnail,
    gallery_items,
    jpeg_bytes,
    load_first_image,
    select_items,
)
from lostreg.report.runs import ReportError, ReportRun, check_same_dataset, describe_dataset, run_label
from lostreg.viz.draw import GT_COLOUR

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_THUMB_SIZE",
    "Report",
    "ReportError",
    "build_report",
    "link_dir_for",
    "run_label",
    "table_to_html",
    "write_report",
]

DEFAULT_MAX_IMAGES = 500


@lru_cache(maxsize=None)
def asset(name: str) -> str:
    """A static file of the page (``report.css``, ``report.js``), from the package."""
    return resources.files("lostreg.report").joinpath("assets", name).read_text(encoding="utf-8")


@dataclass
class Report:
    """A built report.

    Attributes:
        html: The page.
        files: Linked thumbnails: path relative to the page -> JPEG bytes (empty when embedded).
        shown: Images in the gallery.
        total: Images of all runs (matched by id).
        unreadable: ``(image_id, reason)`` of images whose file could not be read (shown without picture).
    """

    html: str
    files: dict[str, bytes] = field(default_factory=dict)
    shown: int = 0
    total: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def table_to_html(table: Table, run_labels: Mapping[Path, tuple[str, str]] | None = None) -> str:
    """Render a :class:`~lostreg.evaluation.compare.Table` as an HTML table plus notes.

    The cells are :func:`~lostreg.evaluation.compare.table_text`'s (those of ``lostreg
    compare``), with a first column naming the report's run of each row.

    Args:
        table: From :func:`~lostreg.evaluation.compare.build_table`.
        run_labels: Resolved run directory -> ``(label, css class)``, for the first column.
    """
    run_labels = run_labels or {}
    text = table_text(table)
    header = ["run"] + text.header
    out = ['<table class="corloc" id="corloc-table">',
           "<thead><tr>" + "".join(f'<th scope="col">{_esc(h)}</th>' for h in header) + "</tr></thead>", "<tbody>"]
    for row, cells in zip(table.rows, text.cells):
        labels = []
        for run in row.runs.values():
            found = run_labels.get(run.run_dir.resolve())
            if found is not None:
                labels.append(f'<span class="chip {found[1]}">{_esc(found[0])}</span>')
        tds = [f"<td>{''.join(labels)}</td>"]
        tds += [f'<td class="num">{_esc(c)}</td>' if i in text.numeric else f"<td>{_esc(c)}</td>"
                for i, c in enumerate(cells)]
        css = ' class="published-only"' if row.is_published_only else ""
        out.append(f"<tr{css}>{''.join(tds)}</tr>")
    out.append("</tbody></table>")
    out.append('<div class="notes">' + "".join(f"<p>{_esc(n)}</p>" for n in text.notes) + "</div>")
    for warning in table.warnings:
        out.append(f'<p class="warning">{_esc(warning)}</p>')
    return "\n".join(out)


def confidence_to_html(runs: Sequence[ReportRun], run_labels: Sequence[str]) -> str:
    """The confidence section: per run with scores, AP50 by score and by image order and the CorLoc of its
    most confident images (:func:`~lostreg.evaluation.confidence.confidence_table`); empty when none has them."""
    summaries = [run.summary for run in runs]
    table = confidence_table(summaries)
    if table is None:
        return ""
    header, rows = table
    labels = [label for run, label in zip(summaries, run_labels)
              if run.confidence_curve is not None or run.ap50 is not None]
    out = ['<section id="confidence">', "<h2>CorLoc of the most confident images</h2>",
           '<table class="corloc" id="confidence-table">',
           "<thead><tr>" + "".join(f'<th scope="col">{_esc(h)}</th>' for h in ["run", *header]) + "</tr></thead>",
           "<tbody>"]
    for label, cells in zip(labels, rows):
        tds = [f"<td>{_esc(label)}</td>"] + [f'<td class="num">{_esc(c)}</td>' if i >= 4 else f"<td>{_esc(c)}</td>"
                                            for i, c in enumerate(cells)]
        out.append(f"<tr>{''.join(tds)}</tr>")
    out += ["</tbody></table>", f'<div class="notes"><p>{_esc(CONFIDENCE_NOTE)}</p></div>', "</section>"]
    return "\n".join(out)


def _report_table(runs: Sequence[ReportRun], include_published: bool) -> Table:
    """The comparison table narrowed to the report's dataset (all runs share it)."""
    table = build_table([run.summary for run in runs], include_published=include_published)
    dataset = runs[0].summary.dataset
    rows = [row for row in table.rows
            if not row.is_published_only or (row.published is not None and row.published.corloc(dataset) is not None)]
    return dataclasses.replace(table, datasets=(dataset,), rows=rows)


def _chip(label: str, css: str, pred: dict[str, Any] | None) -> str:
    """The per-run status of one image: ``A hit 0.81``, ``B miss 0.12``, ``B error``, ``B not run``."""
    if pred is None:
        return f'<span class="chip {css} absent" title="image not in this run">{_esc(label)} not run</span>'
    if pred.get("error") is not None:
        return (f'<span class="chip {css} error" title="{_esc(pred["error"])}">{_esc(label)} '
                '<span class="badge">error</span></span>')
    if pred.get("hit") is None:
        return f'<span class="chip {css}">{_esc(label)}</span>'
    word = "hit" if pred["hit"] else "miss"
    iou = pred.get("iou")
    iou_text = "" if iou is None else f" {float(iou):.2f}"
    return (f'<span class="chip {css} {word}" title="IoU with the best GT box{_esc(iou_text)}">'
            f"{_esc(label)} {word}{_esc(iou_text)}</span>")


def _pair_count(items: Sequence[GalleryItem], hit_by: int, missed_by: int) -> int:
    return sum(1 for item in items if item.hits[hit_by] == "1" and item.hits[missed_by] == "0")


def _button(text: str, count: int, hit: str = "", miss: str = "", disagree: bool = False, errors: bool = False) -> str:
    return (f'<button type="button" class="quick" data-hit="{hit}" data-miss="{miss}" '
            f'data-disagree="{int(disagree)}" data-errors-only="{int(errors)}" aria-pressed="false">'
            f'{_esc(text)} <span class="n">({count})</span></button>')


def _filters(runs: Sequence[ReportRun], labels: Sequence[str], items: Sequence[GalleryItem], has_gt: bool) -> str:
    """Filter controls: hit-by / missed-by selects, checkboxes and quick buttons."""
    if not has_gt:
        return '<p class="filters">No ground truth in this dataset: no hit / miss filters.</p>'

    def options(select_id: str, caption: str) -> str:
        opts = ['<option value="">any run</option>'] + [
            f'<option value="{i}">{_esc(labels[i])}: {_esc(run.name)}</option>' for i, run in enumerate(runs)]
        return f'<label>{_esc(caption)} <select id="{select_id}">{"".join(opts)}</select></label>'

    n_dis = sum(item.disagreement for item in items)
    n_err = sum(any(item.errors) for item in items)
    buttons = [_button("all", len(items))]
    if len(runs) > 1:
        buttons.append(_button("disagreements", n_dis, disagree=True))
        for a in range(len(runs)):
            for b in range(len(runs)):
                if a != b:
                    buttons.append(_button(f"hit by {labels[a]}, missed by {labels[b]}", _pair_count(items, a, b),
                                           hit=str(a), miss=str(b)))
    else:
        buttons += [_button("hits", sum(i.hits[0] == "1" for i in items), hit="0"),
                    _button("misses", sum(i.hits[0] == "0" for i in items), miss="0")]
    if n_err:
        buttons.append(_button("errors", n_err, errors=True))
    checks = ['<label><input type="checkbox" id="only-disagreements"> disagreements only</label>'] if len(runs) > 1 else []
    checks.append('<label><input type="checkbox" id="only-errors"> errors only</label>')
    return ('<div class="filters" id="filters">'
            f'<div class="controls">{options("hit-by", "hit by")} {options("missed-by", "missed by")} '
            f'{" ".join(checks)}</div>'
            f'<div class="quick-buttons">{"".join(buttons)}</div>'
            '<p class="count" id="shown-count" aria-live="polite"></p></div>')


# No network and nothing from elsewhere: images are data: URIs or files beside the page.
_CSP = ("default-src 'none'; img-src data: 'self' file:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _safe_name(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id)[:80] or "image"


def build_report(
    runs: Sequence[ReportRun],
    max_images: int | None = DEFAULT_MAX_IMAGES,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    link_dir: str | None = None,
    include_published: bool = True,
    progress: bool = False,
) -> Report:
    """Build the page for runs of one dataset.

    Args:
        runs: From :func:`load_report_runs` (same dataset); their order gives labels A, B, ...
        max_images: Gallery size limit (``None`` or 0: every image); see :func:`select_items`.
        thumb_size: Longer side of thumbnails in pixels.
        link_dir: ``None``: thumbnails are embedded as base64 ``data:`` URIs (one file).
            Otherwise a folder name relative to the page: thumbnails are linked there and
            returned in :attr:`Report.files`.
        include_published: Published CorLoc numbers in the table.
        progress: A progress bar on stderr while drawing thumbnails.

    Raises:
        ReportError: No run, or runs of different datasets.
    """
    if not runs:
        raise ReportError("no run to report")
    check_same_dataset(runs)
    labels = [run_label(i) for i in range(len(runs))]
    classes = [f"r{i % len(RUN_COLOURS)}" for i in range(len(runs))]
    colours = [RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(len(runs))]
    dataset = runs[0].summary.dataset
    data_label = dataset_label(dataset)
    all_items = gallery_items(runs)
    items = select_items(all_items, max_images)
    has_gt = any(h != "-" for item in all_items for h in item.hits)
    report = Report(html="", shown=len(items), total=len(all_items))

    figures = []
    for index, item in enumerate(tqdm(items, desc="report", unit="img", disable=not progress, file=sys.stderr)):
        figures.append(_figure(index, item, labels, classes, colours, thumb_size, link_dir, report))

    run_labels = {run.run_dir.resolve(): (label, css) for run, label, css in zip(runs, labels, classes)}
    table_html = table_to_html(_report_table(runs, include_published), run_labels)
    title = f"lostreg report: {data_label}, " + " vs ".join(f"{label} {run.name}" for label, run in zip(labels, runs))

    legend = ["<ul class=\"legend\">"]
    for run, label, css in zip(runs, labels, classes):
        s = run.summary
        if s.hits is not None:
            counts = f"CorLoc {corloc_cell(s)} ({s.hits}/{s.total} hit, {s.failed} failed"
        else:
            counts = f"({s.total} images, {s.failed} failed"
        counts += ")" if s.complete else f"; incomplete: {s.total} of {s.num_images} images)"
        legend.append(f'<li><span class="swatch {css}"></span><strong>{_esc(label)}</strong> {_esc(run.name)}: '
                      f'{_esc(counts)} <code>{_esc(run.run_dir)}</code></li>')
    if has_gt:
        legend.append('<li><span class="swatch gt"></span><strong>GT</strong> ground truth</li>')
    legend.append("</ul>")

    boxes_note = (f"Boxes: each run's in its colour just outside its edges, {labels[0]} innermost, so boxes "
                  "that coincide stay visible.")
    if has_gt:
        boxes_note += (" Ground truth in green just inside its edges. The number after hit / miss is the IoU "
                       "with the best ground-truth box (hit: at least 0.5).")
    n_dis = sum(item.disagreement for item in all_items)
    missing = sum(any(p is None for p in item.preds) for item in all_items)
    summary = f"Showing {len(items)} of {len(all_items)} images"
    if len(runs) > 1 and has_gt:
        summary += f" ({n_dis} where the runs disagree)"
    summary += "."
    if len(items) < len(all_items):
        summary += (f" Limited to {len(items)} (--max-images): images where the runs disagree come first, "
                    "then images on which a run failed, then the rest in id order.")
    elif len(runs) > 1 and has_gt:
        summary += " Images where the runs disagree come first."
    if missing:
        summary += f" {_plural(missing, 'image is', 'images are')} missing from some run (incomplete runs)."

    colour_css = "\n".join(f".r{i} {{ --c: {_hex(c)}; }}" for i, c in enumerate(RUN_COLOURS))
    colour_css += f"\n.gt {{ --c: {_hex(GT_COLOUR)}; }}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="lostreg {_esc(__version__)}">',
        # An empty icon: otherwise a browser asks the server (or file system) for favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<title>{_esc(title)}</title>",
        f"<style>{asset('report.css')}\n{colour_css}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(data_label)}: CorLoc of {len(runs)} run{'s' if len(runs) != 1 else ''}</h1>",
        f'<p class="meta">Generated by lostreg {_esc(__version__)}. Dataset: '
        f"{_esc(describe_dataset(runs[0].dataset_identity()))}.</p>",
        '<section id="table">',
        "<h2>CorLoc</h2>",
        table_html,
        "</section>",
        confidence_to_html(runs, labels),
        '<section id="images">',
        "<h2>Images</h2>",
        "\n".join(legend),
        f'<p class="meta">{_esc(boxes_note)}</p>',
        f'<p class="summary" id="summary">{_esc(summary)}</p>',
        _filters(runs, labels, items, has_gt),
        '<p id="empty" hidden>No image matches this filter.</p>',
        '<div id="gallery">',
        "\n".join(figures),
        "</div>",
        "</section>",
        f"<script>{asset('report.js')}</script>",
        "</body>",
        "</html>",
    ]
    report.html = "\n".join(parts) + "\n"
    return report


def _figure(
    index: int,
    item: GalleryItem,
    labels: Sequence[str],
    classes: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    thumb_size: int,
    link_dir: str | None,
    report: Report,
) -> str:
    """One gallery item: thumbnail (or why there is none), id, per-run chips, data attributes."""
    image, problem = load_first_image(item.image_paths)
    if image is not None:
        boxes = [None if p is None else p.get("box_xyxy") for p in item.preds]
        thumb = draw_thumbnail(image, item.gt_boxes, boxes, thumb_size, colours)
        data = jpeg_bytes(thumb)
        if link_dir is None:
            src = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
        else:
            name = f"{index:05d}_{_safe_name(item.image_id)}.jpg"
            report.files[f"{link_dir}/{name}"] = data
            src = f"{quote(link_dir)}/{quote(name)}"
        picture = (f'<img src="{_esc(src)}" width="{thumb.width}" height="{thumb.height}" '
                   f'alt="image {_esc(item.image_id)}" loading="lazy">')
    else:
        report.unreadable.append((item.image_id, str(problem)))
        # min-height, not height: a long failure text wraps onto more lines and the box grows with it.
        picture = (f'<div class="noimg" style="width:{thumb_size}px;min-height:{thumb_size * 3 // 4}px">'
                   f"image unavailable: {_esc(problem)}</div>")
    chips = "".join(_chip(label, css, pred) for label, css, pred in zip(labels, classes, item.preds))
    css = "item disagree" if item.disagreement else "item"
    errors = ",".join("1" if e else "0" for e in item.errors)
    return (f'<figure class="{css}" data-id="{_esc(item.image_id)}" data-hits="{",".join(item.hits)}" '
            f'data-disagree="{int(item.disagreement)}" data-errors="{errors}">{picture}'
            f'<figcaption><span class="iid">{_esc(item.image_id)}</span>{chips}</figcaption></figure>')


def link_dir_for(output: str | Path) -> str:
    """The thumbnail folder name of a page, ``report.html`` -> ``report_files`` (as browsers save pages)."""
    return Path(output).stem + "_files"


def write_report(report: Report, output: str | Path) -> Path:
    """Write the page (atomically) and its linked thumbnails, if any, beside it.

    Returns:
        ``output``.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for relative, data in report.files.items():
        path = output.parent / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return atomic_write_text(output, report.html)
