"""Tables of artifact-study records, as markdown and as HTML (the report's stylesheet).

One study: :func:`study_tables` (the layers, the neighbour cosines, the probes, the global probe).
Several: :func:`compare_tables` (one row per model: outlier share by size and register kind, then
the probes side by side). Every cell that holds a measurement says what it rests on (tokens or
images in brackets); a measurement that does not exist (no outlier token) reads ``n/a`` with the
reason in the table's notes, never 0 or NaN.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from lostreg.study.figures import register_kind

__all__ = ["Table", "compare_tables", "page_html", "page_markdown", "study_tables"]

NA = "n/a"


@dataclass
class Table:
    """A titled table of text cells with notes under it."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _pct(value: float | None, count: int | None = None, total: int | None = None) -> str:
    if value is None:
        return NA
    text = f"{100 * value:.2f}%"
    return f"{text} ({count}/{total})" if count is not None and total is not None else text


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return NA
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _fixed(value: float | None, decimals: int = 3) -> str:
    return NA if value is None else f"{value:.{decimals}f}"


def _label(record: Mapping[str, Any]) -> str:
    return str(record.get("label") or record["backbone"])


def _layer_table(record: Mapping[str, Any]) -> Table:
    table = Table(
        f"Patch-token norms along the blocks ({record['norm_source']}; {record['images']} images, "
        f"{record['tokens_per_image']} patch tokens each)",
        ["block", "median", "p90", "p99", "max", f"outliers ({record['outlier_rule']})", "images with outliers",
         f"norm > {record['norm_threshold']:g}"],
    )
    for row in record["layers"]:
        table.rows.append([
            str(row["layer"]), _num(row["median_norm"]), _num(row["p90_norm"]), _num(row["p99_norm"]),
            _num(row["max_norm"]), _pct(row["outlier_share"], row["outlier_tokens"], row["tokens"]),
            f"{row['images_with_outliers']}/{row['images']}",
            _pct(row["absolute_share"], row["absolute_tokens"], row["tokens"]),
        ])
    table.notes.append(f"Outliers: {record['outlier_rule_text']}, per image. Quantiles from fixed log-spaced bins "
                       "(within 0.46% of the exact value); max exact.")
    return table


def _neighbour_table(record: Mapping[str, Any]) -> Table:
    table = Table(f"Cosine similarity to the 4 neighbouring patches ({record['images']} images)",
                  ["tokens of", "outlier", "normal"])
    for key, name in (("neighbour_cosine", f"block {record['study_layer']}"),
                      ("neighbour_cosine_input", "input of block 0")):
        entry = record[key]
        table.rows.append([name, f"{_fixed(entry['outlier'])} ({entry['outlier_tokens']} tokens)",
                           f"{_fixed(entry['normal'])} ({entry['normal_tokens']} tokens)"])
    table.notes.append(f"Outlier / normal as decided at block {record['study_layer']}; the input row is the same "
                       "patches before block 0 (patch + position embedding).")
    table.notes.extend(record["neighbour_cosine"]["notes"])
    return table


def _probe_cell(entry: Mapping[str, Any] | None, key: str, pct: bool = False) -> str:
    if entry is None:
        return NA
    value = _pct(entry[key]) if pct else _fixed(entry[key])
    return f"{value} ({entry['tokens']} tokens)"


def _probe_table(record: Mapping[str, Any]) -> Table:
    probes = record["probes"]
    table = Table(f"Local information: linear probes on block {record['study_layer']} "
                  f"({probes['train_images']} training images, {probes['test_images']} test images)",
                  ["probe", "outlier tokens", "normal tokens"])
    position, pixels = probes.get("position"), probes.get("pixels")
    if position is not None:
        table.rows.append(["position top-1 (chance " + _pct(position["chance_top1"]) + ")",
                           _probe_cell(position.get("outlier"), "top1", True),
                           _probe_cell(position.get("normal"), "top1", True)])
        table.rows.append(["position: mean distance (patches)", _probe_cell(position.get("outlier"), "mean_distance"),
                           _probe_cell(position.get("normal"), "mean_distance")])
        table.notes.append(f"Position probe trained on {position['train_tokens']} tokens.")
        table.notes.extend(position["notes"])
    if pixels is not None:
        table.rows.append(["pixels: L2 error (RMS per value)", _probe_cell(pixels.get("outlier"), "l2_error"),
                           _probe_cell(pixels.get("normal"), "l2_error")])
        table.rows.append(["pixels: mean-patch baseline", _probe_cell(pixels.get("outlier"), "baseline_l2_error"),
                           _probe_cell(pixels.get("normal"), "baseline_l2_error")])
        table.notes.append(f"Pixel probe trained on {pixels['train_tokens']} tokens, ridge alpha {pixels['alpha']}.")
        table.notes.extend(pixels["notes"])
    table.notes.append("Split: " + probes["split"] + ".")
    table.notes.extend(probes.get("notes", []))
    return table


def _global_cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None or entry.get("value") is None:
        return NA
    return f"{_pct(entry['value'])} ({entry['train_images']} train / {entry['test_images']} test images)"


def _global_table(record: Mapping[str, Any]) -> Table | None:
    entry = record.get("global")
    if entry is None:
        return None
    table = Table(f"Global information: image classification from one token ({entry['metric']}, "
                  f"{entry['classes']} classes)", ["token", "all images", "images with an outlier"])
    same = entry.get("on_outlier_images") or {}
    # The outlier token exists only on images with an outlier: its cell is in the second column.
    table.rows.append(["CLS", _global_cell(entry.get("cls")), _global_cell(same.get("cls"))])
    table.rows.append(["one normal patch", _global_cell(entry.get("normal")), _global_cell(same.get("normal"))])
    table.rows.append(["one outlier patch", NA, _global_cell(entry.get("outlier"))])
    table.notes.append(entry["token"] + ".")
    table.notes.extend(entry.get("notes", []))
    for token in ("cls", "normal", "outlier"):
        sub = entry.get(token)
        if sub:
            table.notes.extend(f"{token}: {note}" for note in sub.get("notes", []))
    return table


def study_tables(record: Mapping[str, Any]) -> list[Table]:
    """The tables of one study record."""
    tables = [_layer_table(record), _neighbour_table(record), _probe_table(record)]
    global_table = _global_table(record)
    if global_table is not None:
        tables.append(global_table)
    return tables


def compare_tables(records: Sequence[Mapping[str, Any]]) -> list[Table]:
    """Models side by side: outliers by size and register kind, then the probes."""
    ordered = sorted(records, key=lambda r: (r["family"], register_kind(r), r["parameters"]))
    overview = Table("Outliers by model (study block)",
                     ["model", "registers", "parameters", "blocks", "images", "outlier share", "norm > threshold",
                      "first block with outliers", "max norm", "neighbour cosine outlier / normal"])
    probes = Table("Linear probes, outlier vs normal tokens",
                   ["model", "position top-1 out / norm", "distance out / norm", "pixel L2 out / norm (mean-patch baseline)",
                    "global CLS / normal / outlier"])
    for r in ordered:
        row = r["layers"][r["study_layer"]]
        nc = r["neighbour_cosine"]
        overview.rows.append([
            _label(r), register_kind(r), f"{r['parameters'] / 1e6:.1f}M", str(r["num_layers"]), str(r["images"]),
            _pct(row["outlier_share"], row["outlier_tokens"], row["tokens"]),
            _pct(row["absolute_share"], row["absolute_tokens"], row["tokens"]) + f" (> {r['norm_threshold']:g})",
            NA if r["first_layer_with_outliers"] is None else str(r["first_layer_with_outliers"]),
            _num(row["max_norm"]), f"{_fixed(nc['outlier'])} / {_fixed(nc['normal'])}",
        ])
        position, pixels = r["probes"].get("position") or {}, r["probes"].get("pixels") or {}

        def pair(entry: Mapping[str, Any], key: str, pct: bool = False) -> str:
            cells = []
            for kind in ("outlier", "normal"):
                sub = entry.get(kind)
                cells.append(NA if sub is None else (_pct(sub[key]) if pct else _fixed(sub[key])))
            return " / ".join(cells)

        g = r.get("global") or {}
        glob = " / ".join(NA if not g.get(t) or g[t].get("value") is None else _pct(g[t]["value"])
                          for t in ("cls", "normal", "outlier")) if g else "no labels"
        probes.rows.append([_label(r), pair(position, "top1", True), pair(position, "mean_distance"),
                            f"{pair(pixels, 'l2_error')} (baseline {pair(pixels, 'baseline_l2_error')})", glob])
    rules = sorted({f"{r['outlier_rule_text']} ({r['norm_source']} norms)" for r in records})
    overview.notes.append("Outliers: " + "; ".join(rules) + ". Shares are of all patch tokens (count/total).")
    probes.notes.append("n/a: no outlier token in that model's test images (or no labels for the global probe). "
                        "Each model's own summary.md says on how many tokens each number rests.")
    return [overview, probes]


# --- rendering -------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def page_markdown(title: str, intro: Sequence[str], tables: Sequence[Table],
                  figures: Sequence[tuple[str, str]] = ()) -> str:
    """Markdown: a title, intro lines, the tables with their notes, then ``(caption, file)`` figures."""
    lines = [f"# {title}", ""]
    lines += [*intro, ""] if intro else []
    for table in tables:
        lines += [f"## {table.title}", "", "| " + " | ".join(map(_md_cell, table.headers)) + " |",
                  "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
        lines += [""] if table.notes else []
    for caption, name in figures:
        lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def page_html(title: str, intro: Sequence[str], tables: Sequence[Table],
              figures: Sequence[tuple[str, Path]] = ()) -> str:
    """A self-contained HTML page: the report's stylesheet inlined, the PNG figures embedded."""
    from lostreg.report.html import asset

    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{asset('report.css')}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>"]
    parts += [f'<p class="meta">{esc(line)}</p>' for line in intro]
    for table in tables:
        parts.append(f"<h2>{esc(table.title)}</h2>")
        parts.append('<table class="corloc"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in table.headers)
                     + "</tr></thead><tbody>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>")
        parts.append("</tbody></table>")
        if table.notes:
            parts.append('<div class="notes">' + "".join(f"<p>{esc(n)}</p>" for n in table.notes) + "</div>")
    for caption, path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}" style="max-width:100%">'
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
