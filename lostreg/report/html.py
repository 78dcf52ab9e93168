"""A static, self-contained HTML page comparing ``lostreg eval`` runs of one dataset.

The page has the CorLoc table of :mod:`lostreg.evaluation.compare` at the top, a legend, then
a gallery: one thumbnail per image with the ground truth and every run's box drawn on it,
and per run a hit / miss / error chip. Filters ("hit by A", "missed by B", "disagreements",
quick buttons per ordered pair of runs) are a few lines of inline JavaScript over ``data-``
attributes of the gallery items, so the page works offline from a single file.

Flow: :func:`load_report_runs` (run directories -> :class:`ReportRun`, refusing runs of
different datasets) -> :func:`build_report` (runs -> :class:`Report`: the HTML text, plus the
thumbnail files when they are linked instead of embedded) -> :func:`write_report`.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from lostreg import __version__
from lostreg.evaluation.compare import (
    DATASET_LABELS,
    RunSummary,
    Table,
    build_table,
    corloc_cell,
    load_runs,
    table_text,
)
from lostreg.io.images import ImageReadError, load_image_rgb
from lostreg.viz.draw import GT_COLOUR

__all__ = [
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_THUMB_SIZE",
    "RUN_COLOURS",
    "GalleryItem",
    "Report",
    "ReportError",
    "ReportRun",
    "build_report",
    "draw_thumbnail",
    "check_same_dataset",
    "gallery_items",
    "link_dir_for",
    "load_report_runs",
    "run_label",
    "select_items",
    "table_to_html",
    "write_report",
]

DEFAULT_MAX_IMAGES = 500
DEFAULT_THUMB_SIZE = 320

#: Box colours of runs A, B, C, ... (RGB), chosen apart from each other and from the GT green.
RUN_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),    # red
    (67, 99, 216),    # blue
    (245, 130, 49),   # orange
    (240, 50, 230),   # magenta
    (66, 212, 244),   # cyan
    (255, 225, 25),   # yellow
    (145, 30, 180),   # purple
    (154, 99, 36),    # brown
)

# Dataset config keys that only say where the files are: the same data may live elsewhere
# on another machine, so they do not make two runs "different datasets".
_LOCATION_KEYS = frozenset({"root", "filelist_path", "cache_dir", "annotation_json", "image_dir"})

# Thumbnail drawing, in thumbnail pixels: GT is a ring just inside its box, each run a ring
# just outside its own, run A innermost; identical boxes thus show as concentric rings.
_GT_RING = 2
_RUN_RING = 3
_PAD_BG = (250, 250, 250)


class ReportError(ValueError):
    """Runs that cannot go in one report; ``str(err)`` is one line."""


@dataclass(frozen=True)
class ReportRun:
    """One run directory, read.

    Attributes:
        summary: Config and metrics, as :func:`lostreg.evaluation.compare.load_run` reads them.
        preds: ``preds.jsonl`` lines by image id, in file order (first occurrence wins).
        dataset_config: The ``dataset`` section of ``config.yaml``.
    """

    summary: RunSummary
    preds: dict[str, dict[str, Any]]
    dataset_config: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.summary.run_dir

    @property
    def name(self) -> str:
        """``backbone [protocol]``, e.g. ``dinov2_vitl14_reg [k=50]``."""
        return f"{self.summary.backbone} [{self.summary.protocol}]"

    def dataset_identity(self) -> dict[str, Any]:
        """Dataset name and the settings that choose its images and ground truth (not its location)."""
        identity = {k: v for k, v in self.dataset_config.items() if k not in _LOCATION_KEYS}
        identity["name"] = self.summary.dataset
        return identity


def run_label(index: int) -> str:
    """``A``, ``B``, ..., ``Z``, ``AA``, ``AB``, ... for run ``index`` (0-based)."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def _read_preds(path: Path) -> dict[str, dict[str, Any]]:
    """Lines of ``preds.jsonl`` by image id, in file order (first occurrence wins).

    Read with :meth:`lostreg.evaluation.runner.PredictionStore.read`, which never modifies
    the file: a report may be built while the run is still writing, and a partial last line
    is skipped.
    """
    from lostreg.evaluation.runner import PredictionStore

    try:
        return PredictionStore(path).read()
    except OSError as err:
        raise ReportError(f"{path}: unreadable: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ReportError(f"{path}: not UTF-8 text ({err})") from None
    except ValueError as err:  # a complete line that is not JSON; the message names file and line
        raise ReportError(str(err)) from None
    except (KeyError, TypeError) as err:  # a JSON line that is not a record with an image_id
        raise ReportError(f"{path}: corrupt prediction line (no image_id: {err!r})") from None


def _describe_dataset(identity: Mapping[str, Any]) -> str:
    rest = " ".join(f"{k}={v}" for k, v in sorted(identity.items()) if k != "name")
    return f"{identity.get('name')}" + (f" ({rest})" if rest else "")


def load_report_runs(paths: Iterable[str | Path]) -> list[ReportRun]:
    """Read run directories (or glob patterns) for one report.

    Raises:
        RunError: A path that is not a run directory, a pattern matching nothing, a broken
            ``config.yaml`` / ``metrics.json``.
        ReportError: No ``preds.jsonl``, a corrupt line, runs on different datasets, or
            runs that share no image.
    """
    runs = []
    for summary in load_runs(paths):  # no on_error: the first bad directory is raised
        preds_path = summary.run_dir / "preds.jsonl"
        if not preds_path.is_file():
            raise ReportError(f"{summary.run_dir}: no preds.jsonl (per-image predictions of `lostreg eval`)")
        runs.append(ReportRun(summary, _read_preds(preds_path), dict(summary.dataset_config)))
    if not runs:
        raise ReportError("no run directory given")
    check_same_dataset(runs)
    return runs


def check_same_dataset(runs: Sequence[ReportRun]) -> None:
    """Refuse runs on different datasets (name, split, hard-object setting, ...).

    Also refuses runs that share no image id at all, which is what runs of one dataset
    kept in different places (or of two custom COCO/folder datasets) look like.

    Raises:
        ReportError: Naming each run's dataset.
    """
    identities = [run.dataset_identity() for run in runs]
    if any(identity != identities[0] for identity in identities[1:]):
        listing = "; ".join(f"{run.run_dir}: {_describe_dataset(ident)}" for run, ident in zip(runs, identities))
        raise ReportError(f"runs on different datasets cannot share a report ({listing})")
    with_preds = [run for run in runs if run.preds]
    if len(with_preds) > 1 and not set.intersection(*(set(run.preds) for run in with_preds)):
        raise ReportError(
            f"runs share no image id ({', '.join(str(r.run_dir) for r in with_preds)}): not the same dataset"
        )


# ------------------------------------------------------------------------------ gallery items


@dataclass(frozen=True)
class GalleryItem:
    """One image of the dataset and what each run predicted for it.

    Attributes:
        image_id: Dataset image id.
        preds: Per run (report order), its ``preds.jsonl`` line, ``None`` if the run lacks the image.
    """

    image_id: str
    preds: tuple[dict[str, Any] | None, ...]

    @property
    def hits(self) -> tuple[str, ...]:
        """Per run ``"1"`` hit, ``"0"`` miss (errors included, as CorLoc counts them), ``"-"``
        not run or no ground truth."""
        out = []
        for pred in self.preds:
            hit = None if pred is None else pred.get("hit")
            out.append("-" if hit is None else ("1" if hit else "0"))
        return tuple(out)

    @property
    def errors(self) -> tuple[bool, ...]:
        """Per run: LOST failed on the image."""
        return tuple(pred is not None and pred.get("error") is not None for pred in self.preds)

    @property
    def disagreement(self) -> bool:
        """Some run hit the image and another missed it."""
        known = set(self.hits) - {"-"}
        return len(known) > 1

    @property
    def image_paths(self) -> list[str]:
        """Where the runs found the image (several when runs read the data in different places)."""
        paths: list[str] = []
        for pred in self.preds:
            if pred is not None and pred.get("image") and pred["image"] not in paths:
                paths.append(str(pred["image"]))
        return paths

    @property
    def gt_boxes(self) -> list[list[int]]:
        """Ground-truth boxes (xyxy, max exclusive) as the first run having the image stored them."""
        for pred in self.preds:
            if pred is not None:
                return [list(b) for b in pred.get("gt_boxes_xyxy") or []]
        return []


def _natural_key(text: str) -> tuple[Any, ...]:
    # COCO ids are unpadded numbers: "42" before "100".
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def gallery_items(runs: Sequence[ReportRun]) -> list[GalleryItem]:
    """Every image of any run, matched across runs by image id, in natural id order."""
    ids: dict[str, None] = {}
    for run in runs:
        ids.update(dict.fromkeys(run.preds))
    return [GalleryItem(i, tuple(run.preds.get(i) for run in runs)) for i in sorted(ids, key=_natural_key)]


def select_items(items: Sequence[GalleryItem], max_images: int | None) -> list[GalleryItem]:
    """The images the page shows, in page order: disagreements first, then images on which a
    run failed, then the rest (each group in the order given); at most ``max_images``
    (``None`` or 0: all)."""
    def priority(item: GalleryItem) -> int:
        return 0 if item.disagreement else 1 if any(item.errors) else 2

    ordered = sorted(items, key=priority)  # stable: keeps id order within a group
    return ordered if not max_images else ordered[:max_images]


# ------------------------------------------------------------------------------ thumbnails


def _ring(draw: ImageDraw.ImageDraw, box: Sequence[float], offset: float, thickness: float,
          colour: tuple[int, int, int]) -> None:
    """Fill the frame between ``box`` grown by ``offset`` and by ``offset + thickness``
    (canvas pixels, max exclusive; a negative offset lies inside the box)."""
    outer = [round(box[0] - offset - thickness), round(box[1] - offset - thickness),
             round(box[2] + offset + thickness), round(box[3] + offset + thickness)]
    inner = [round(box[0] - offset), round(box[1] - offset), round(box[2] + offset), round(box[3] + offset)]
    if thickness < 0:
        outer, inner = inner, outer
    bars = [
        (outer[0], outer[1], outer[2], inner[1]),  # top
        (outer[0], inner[3], outer[2], outer[3]),  # bottom
        (outer[0], inner[1], inner[0], inner[3]),  # left
        (inner[2], inner[1], outer[2], inner[3]),  # right
    ]
    for x1, y1, x2, y2 in bars:
        if x2 > x1 and y2 > y1:
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)  # PIL corners are inclusive


def draw_thumbnail(
    image_rgb: np.ndarray,
    gt_boxes: Sequence[Sequence[int]],
    run_boxes: Sequence[Sequence[int] | None],
    max_side: int = DEFAULT_THUMB_SIZE,
    colours: Sequence[tuple[int, int, int]] = RUN_COLOURS,
) -> Image.Image:
    """Scale an image so its longer side is ``max_side`` and draw GT and run boxes on it.

    GT boxes are green rings just inside their edges; run ``i``'s box is a ring of colour
    ``colours[i % len(colours)]`` just outside its edges, ring ``i`` from the edge, so boxes
    that coincide stay visible. A margin around the image keeps rings of boxes at the border.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB, the frame the boxes refer to.
        gt_boxes: Ground-truth boxes, xyxy pixels, max exclusive.
        run_boxes: One box per run (``None``: no box, e.g. the run failed on the image).
        max_side: Longer side of the scaled image, without the margin.
        colours: Run colours (RGB).

    Returns:
        The thumbnail, RGB.
    """
    height, width = image_rgb.shape[:2]
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    margin = _RUN_RING * max(1, len(run_boxes)) + 1
    picture = Image.fromarray(np.ascontiguousarray(image_rgb)).resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size[0] + 2 * margin, size[1] + 2 * margin), _PAD_BG)
    canvas.paste(picture, (margin, margin))
    draw = ImageDraw.Draw(canvas)

    def to_canvas(box: Sequence[int]) -> list[float]:
        return [margin + float(v) * scale for v in box]

    for gt in gt_boxes:
        _ring(draw, to_canvas(gt), 0.0, -_GT_RING, GT_COLOUR)
    for i, box in enumerate(run_boxes):
        if box is not None:
            _ring(draw, to_canvas(box), float(i * _RUN_RING), float(_RUN_RING), colours[i % len(colours)])
    return canvas


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    return buffer.getvalue()


def _load_first(paths: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
    """The image from the first path that reads, else ``(None, reason)``."""
    if not paths:
        return None, "no image path in preds.jsonl"
    first_error: str | None = None
    for path in paths:
        try:
            return load_image_rgb(path), None
        except ImageReadError as err:
            first_error = first_error or str(err)
    return None, first_error


# ------------------------------------------------------------------------------ page


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


_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #1b1b1b;
       background: #fff; }
h1 { font-size: 1.5em; margin: 0 0 .3em; } h2 { font-size: 1.2em; margin: 1.4em 0 .5em; }
code { font-size: .92em; word-break: break-all; }
[hidden] { display: none !important; }
table.corloc { border-collapse: collapse; margin: .5em 0; }
table.corloc th, table.corloc td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
table.corloc th { background: #f0f0f0; }
table.corloc td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.published-only td { color: #666; font-style: italic; }
.notes p, p.meta { color: #555; font-size: .88em; margin: .2em 0; max-width: 70em; }
p.warning { color: #8a4b00; }
.legend { list-style: none; padding: 0; margin: .3em 0; }
.legend li { margin: .2em 0; }
.swatch { display: inline-block; width: 1.6em; height: .9em; vertical-align: middle; border: 3px solid var(--c);
          margin-right: .4em; }
.chip { display: inline-block; border-left: .45em solid var(--c); padding: 0 .35em; margin: .1em .2em .1em 0;
        background: #f4f4f4; border-radius: 2px; white-space: nowrap; font-size: .9em; }
.chip.hit { background: #e3f5e1; } .chip.miss { background: #fbe4e4; } .chip.absent { color: #777; }
.badge { background: #b00020; color: #fff; border-radius: 3px; padding: 0 .3em; font-size: .85em; font-weight: 600; }
.filters { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .5em 0; z-index: 1; }
.filters label { margin-right: 1em; } .filters select { max-width: 24em; }
.quick-buttons { margin-top: .4em; }
button.quick { margin: .15em .3em .15em 0; padding: .2em .6em; border: 1px solid #999; border-radius: 3px;
               background: #fafafa; cursor: pointer; font: inherit; }
button.quick[aria-pressed="true"] { background: #1b1b1b; color: #fff; border-color: #1b1b1b; }
.count { font-weight: 600; margin: .4em 0 0; }
#gallery { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 12px; margin-top: 1em; }
.item { margin: 0; width: min-content; border: 1px solid #ddd; padding: 4px; background: #fff; }
.item.disagree { border-color: #888; }
.item img, .noimg { display: block; }
.noimg { background: #eee; color: #555; display: flex; align-items: center; justify-content: center;
         text-align: center; padding: 1em; font-size: .9em; }
.item figcaption { margin-top: 3px; }
.iid { display: block; font-family: ui-monospace, monospace; font-size: .9em; word-break: break-all; }
"""

# Inline and static: the data lives in data- attributes, so nothing from the runs is ever
# interpolated into script text.
_JS = """
(function () {
  "use strict";
  var items = Array.prototype.slice.call(document.querySelectorAll("#gallery .item"));
  var hitBy = document.getElementById("hit-by");
  var missedBy = document.getElementById("missed-by");
  var onlyDisagree = document.getElementById("only-disagreements");
  var onlyErrors = document.getElementById("only-errors");
  var count = document.getElementById("shown-count");
  var empty = document.getElementById("empty");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button.quick"));
  function value(control) { return control ? control.value : ""; }
  function checked(control) { return control ? control.checked : false; }
  function apply() {
    var hit = value(hitBy), miss = value(missedBy);
    var disagree = checked(onlyDisagree), errors = checked(onlyErrors);
    var shown = 0;
    items.forEach(function (item) {
      var hits = item.getAttribute("data-hits").split(",");
      var ok = (hit === "" || hits[Number(hit)] === "1") &&
               (miss === "" || hits[Number(miss)] === "0") &&
               (!disagree || item.getAttribute("data-disagree") === "1") &&
               (!errors || item.getAttribute("data-errors").indexOf("1") !== -1);
      item.hidden = !ok;
      if (ok) { shown += 1; }
    });
    if (count) { count.textContent = shown + " of " + items.length + " images shown"; }
    if (empty) { empty.hidden = shown !== 0; }
    buttons.forEach(function (button) {
      var active = button.getAttribute("data-hit") === hit && button.getAttribute("data-miss") === miss &&
                   (button.getAttribute("data-disagree") === "1") === disagree &&
                   (button.getAttribute("data-errors-only") === "1") === errors;
      button.setAttribute("aria-pressed", active ? "true" : "false");
    });
  }
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      if (hitBy) { hitBy.value = button.getAttribute("data-hit"); }
      if (missedBy) { missedBy.value = button.getAttribute("data-miss"); }
      if (onlyDisagree) { onlyDisagree.checked = button.getAttribute("data-disagree") === "1"; }
      if (onlyErrors) { onlyErrors.checked = button.getAttribute("data-errors-only") === "1"; }
      apply();
    });
  });
  [hitBy, missedBy, onlyDisagree, onlyErrors].forEach(function (control) {
    if (control) { control.addEventListener("change", apply); }
  });
  apply();
})();
"""

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
    dataset_label = DATASET_LABELS.get(dataset, dataset)
    all_items = gallery_items(runs)
    items = select_items(all_items, max_images)
    has_gt = any(h != "-" for item in all_items for h in item.hits)
    report = Report(html="", shown=len(items), total=len(all_items))

    figures = []
    for index, item in enumerate(tqdm(items, desc="report", unit="img", disable=not progress, file=sys.stderr)):
        figures.append(_figure(index, item, labels, classes, colours, thumb_size, link_dir, report))

    run_labels = {run.run_dir.resolve(): (label, css) for run, label, css in zip(runs, labels, classes)}
    table_html = table_to_html(_report_table(runs, include_published), run_labels)
    title = f"lostreg report: {dataset_label}, " + " vs ".join(f"{label} {run.name}" for label, run in zip(labels, runs))

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
        f"<style>{_CSS}\n{colour_css}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(dataset_label)}: CorLoc of {len(runs)} run{'s' if len(runs) != 1 else ''}</h1>",
        f'<p class="meta">Generated by lostreg {_esc(__version__)}. Dataset: '
        f"{_esc(_describe_dataset(runs[0].dataset_identity()))}.</p>",
        '<section id="table">',
        "<h2>CorLoc</h2>",
        table_html,
        "</section>",
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
        f"<script>{_JS}</script>",
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
    image, problem = _load_first(item.image_paths)
    if image is not None:
        boxes = [None if p is None else p.get("box_xyxy") for p in item.preds]
        thumb = draw_thumbnail(image, item.gt_boxes, boxes, thumb_size, colours)
        data = _jpeg(thumb)
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
        picture = (f'<div class="noimg" style="width:{thumb_size}px;height:{thumb_size * 3 // 4}px">'
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
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(report.html, encoding="utf-8")
    os.replace(tmp, output)
    return output
