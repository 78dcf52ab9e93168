"""Self-contained HTML reports of ``lostreg eval`` runs (CorLoc table and a filterable gallery).

* :mod:`lostreg.report.runs`: run directories read and checked to share a dataset.
* :mod:`lostreg.report.gallery`: images matched across runs, their order, thumbnails.
* :mod:`lostreg.report.html`: the page (its CSS and JS are files in ``assets/``).

The names below load their module on first use, so importing the package stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "GalleryItem": "gallery", "gallery_items": "gallery", "select_items": "gallery",
    "Report": "html", "build_report": "html", "table_to_html": "html", "write_report": "html",
    "ReportError": "runs", "ReportRun": "runs", "load_report_runs": "runs",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lostreg.report.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lostreg.report' has no attribute {name!r}")
