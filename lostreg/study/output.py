"""Writing a study: ``artifacts.json``, figures, ``summary.md``, ``report.html``; and the comparison.

One study (:func:`write_study`) fills a folder::

    artifacts.json          the record (schema in docs/artifacts.md)
    summary.md, report.html the tables, with the figures
    norms_by_layer.png      norm quantiles and outlier shares along the blocks
    norm_histogram.png      the study block's norms, normal and outlier tokens
    neighbour_cosine.png    cosine to the 4 neighbours, outliers vs normal tokens

Several (:func:`write_comparison`, from records alone, so it also works on earlier outputs) add
``compare.json`` (the records' labels, folders and key numbers), ``compare.md``, ``report.html``,
``outlier_share_by_size.png`` and ``outlier_share_by_layer.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from lostreg.errors import LostregError
from lostreg.io.atomic import atomic_write_json, atomic_write_text
from lostreg.study.figures import (
    neighbour_cosine_figure,
    norm_histogram_figure,
    norms_by_layer_figure,
    share_by_layer_figure,
    share_by_size_figure,
)
from lostreg.study.summary import compare_tables, page_html, page_markdown, study_tables

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from lostreg.study.run import ArtifactStudy

__all__ = ["RECORD_FILE", "StudyOutputError", "find_records", "write_comparison", "write_study"]

RECORD_FILE = "artifacts.json"
_FIGURES = (("norms_by_layer.png", "Norms and outlier shares along the blocks"),
            ("norm_histogram.png", "Norms at the study block"),
            ("neighbour_cosine.png", "Cosine similarity to the 4 neighbours"))


class StudyOutputError(LostregError, ValueError):
    """A folder given to compare holds no readable study record."""


def _save(fig: "Figure", path: Path) -> None:
    # Agg through the Figure itself: nothing is registered with pyplot.
    fig.savefig(path, dpi=110, format="png")


def _intro(record: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Backbone {record['backbone']} ({record['family']}, {record['num_layers']} blocks, "
        f"{record['parameters'] / 1e6:.1f}M parameters, {record['num_registers']} trained registers"
        + (", with a test-time register" if record.get("test_time_register") else "") + ").",
        f"{record['images']} images of {record['image_size'][0]}x{record['image_size'][1]} pixels "
        f"({record['grid'][0]}x{record['grid'][1]} patches of {record['patch_size']} pixels); norms: "
        f"{record['norm_source']}; study block {record['study_layer']}.",
        f"Cost: {record['cost'].get('seconds_per_image', 'n/a')} s per image in all (decoding, forward, statistics, "
        f"probes), of which {record['cost']['forward_seconds_per_image']} s forward and statistics; probes "
        f"{record['cost']['probe_seconds']} s ({record['cost'].get('device', 'device not recorded')}).",
    ]
    return lines + [f"Note: {note}" for note in record.get("notes", [])]


def write_study(folder: str | Path, record: Mapping[str, Any], study: "ArtifactStudy") -> list[Path]:
    """Write one study's files into ``folder`` (created); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "norms_by_layer.png": norms_by_layer_figure(record),
        "norm_histogram.png": norm_histogram_figure(record, study.norm_histograms()),
        "neighbour_cosine.png": neighbour_cosine_figure(
            record, {where: study.cosine_histograms(where) for where in ("layer", "input")}),
    }
    written = [atomic_write_json(folder / RECORD_FILE, record)]
    for name, fig in figures.items():
        _save(fig, folder / name)
        written.append(folder / name)
    title = f"Artifact study: {record.get('label') or record['backbone']}"
    tables = study_tables(record)
    written.append(atomic_write_text(folder / "summary.md", page_markdown(title, _intro(record), tables,
                                                                           [(c, n) for n, c in _FIGURES])))
    written.append(atomic_write_text(folder / "report.html", page_html(title, _intro(record), tables,
                                                                        [(c, folder / n) for n, c in _FIGURES])))
    return written


def find_records(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, record)`` of each study folder given, or of each study folder one level inside it.

    Raises:
        StudyOutputError: a path with no ``artifacts.json`` in it or one level below, or a record
            that is not a study record (one line, naming the file).
    """
    from lostreg.study.run import SCHEMA

    found: list[tuple[Path, dict[str, Any]]] = []
    for raw in paths:
        path = Path(raw)
        files = [path / RECORD_FILE] if (path / RECORD_FILE).is_file() else sorted(path.glob(f"*/{RECORD_FILE}"))
        if not files:
            raise StudyOutputError(f"{path}: no {RECORD_FILE} in it or in its sub-folders (run lostreg artifacts first)")
        for file in files:
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise StudyOutputError(f"{file}: not a readable study record ({err})") from None
            if not isinstance(record, dict) or record.get("schema") != SCHEMA:
                raise StudyOutputError(f"{file}: not a study record of schema {SCHEMA}")
            found.append((file.parent, record))
    return found


def write_comparison(folder: str | Path, studies: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[Path]:
    """The comparison of several study records (``(their folder, record)``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = [record for _, record in studies]
    tables = compare_tables(records)
    figures = [("outlier_share_by_size.png", "Outlier share by model size, with and without registers"),
               ("outlier_share_by_layer.png", "Outlier share along relative depth")]
    _save(share_by_size_figure(records), folder / figures[0][0])
    _save(share_by_layer_figure(records), folder / figures[1][0])
    intro = [f"{len(records)} studies: " + ", ".join(str(r.get("label") or r["backbone"]) for r in records) + ".",
             "Each model's folder has its artifacts.json, summary.md and figures."]
    summary = [{"label": r.get("label") or r["backbone"], "folder": str(path), "backbone": r["backbone"],
                "images": r["images"], "outlier_share": r["outlier_share"],
                "first_layer_with_outliers": r["first_layer_with_outliers"]} for path, r in studies]
    written = [atomic_write_json(folder / "compare.json", {"studies": summary})]
    written.append(atomic_write_text(folder / "compare.md", page_markdown("Artifact study: comparison", intro, tables,
                                                                          [(c, n) for n, c in figures])))
    written.append(atomic_write_text(folder / "report.html", page_html(
        "Artifact study: comparison", intro, tables, [(c, folder / n) for n, c in figures])))
    return written + [folder / name for name, _ in figures]
