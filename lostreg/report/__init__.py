"""Self-contained HTML reports of ``lostreg eval`` runs (CorLoc table and a filterable gallery)."""

from lostreg.report.html import (
    GalleryItem,
    Report,
    ReportError,
    ReportRun,
    build_report,
    gallery_items,
    load_report_runs,
    select_items,
    table_to_html,
    write_report,
)

__all__ = [
    "GalleryItem",
    "Report",
    "ReportError",
    "ReportRun",
    "build_report",
    "gallery_items",
    "load_report_runs",
    "select_items",
    "table_to_html",
    "write_report",
]
