"""``lostreg report``: a self-contained HTML page of ``lostreg eval`` runs on one dataset.

    lostreg report outputs/voc07/dinov2_vitl14/k_layer-1_k100_bias0.0 \\
        outputs/voc07/dinov2_vitl14_reg/k_layer-1_k100_bias0.0 --output report.html

The page: the CorLoc table, then one thumbnail per image with the ground truth and each
run's box, filterable by "hit by A, missed by B". Thumbnails are embedded (one file to
share) unless ``--link-images`` writes them to ``<output stem>_files/`` beside the page.

Exit codes: 0 written, 2 nothing written (bad run directory, runs of different datasets,
output not writable). Images whose file cannot be read are shown without picture, with one
warning line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lostreg.cli.common import error, report_user_error, warning

#: Defaults of lostreg.report.html / lostreg.report.gallery (checked equal by tests/test_cli.py),
#: repeated so that --help does not import PIL and the page builder.
DEFAULT_MAX_IMAGES = 500
DEFAULT_THUMB_SIZE = 320


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _thumb_size(text: str) -> int:
    value = int(text)
    if not 16 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 16 and 4096 pixels, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories of `lostreg eval` on one dataset (config.yaml, metrics.json, "
                             "preds.jsonl) or quoted glob patterns; labelled A, B, ... in this order")
    parser.add_argument("--output", "-o", type=Path, default=Path("report.html"), metavar="PATH",
                        help="the HTML page to write (default: report.html)")
    parser.add_argument("--max-images", type=_non_negative, default=DEFAULT_MAX_IMAGES, metavar="N",
                        help=f"at most N images in the gallery, those where the runs disagree first "
                             f"(default: {DEFAULT_MAX_IMAGES}; 0: all)")
    parser.add_argument("--link-images", action="store_true",
                        help="write thumbnails to <output stem>_files/ and link them, instead of embedding "
                             "them in the page")
    parser.add_argument("--thumb-size", type=_thumb_size, default=DEFAULT_THUMB_SIZE, metavar="PX",
                        help=f"longer side of the thumbnails (default: {DEFAULT_THUMB_SIZE})")
    parser.add_argument("--no-published", action="store_true", help="leave the published numbers out of the table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from lostreg.report.html import ReportError, build_report, link_dir_for, write_report
    from lostreg.report.runs import load_report_runs
    from lostreg.rundir import RunError

    output: Path = args.output
    if output.is_dir():
        error(f"{output}: is a directory; pass the HTML file to write")
        return 2
    try:
        runs = load_report_runs(args.run_dirs)
        report = build_report(
            runs,
            max_images=args.max_images,
            thumb_size=args.thumb_size,
            link_dir=link_dir_for(output) if args.link_images else None,
            include_published=not args.no_published,
            progress=not args.no_progress,
        )
    except (RunError, ReportError) as err:
        report_user_error(err)
        return 2
    if report.unreadable:
        image_id, reason = report.unreadable[0]
        warning(f"{len(report.unreadable)} image(s) shown without picture, the file could not be "
                f"read (first: {image_id}: {reason})")
    try:
        write_report(report, output)
    except OSError as err:
        error(f"{output}: cannot write: {err.strerror or err}")
        return 2
    where = f" and {len(report.files)} thumbnails in {output.parent / link_dir_for(output)}" if report.files else ""
    print(f"wrote {output}{where} ({report.shown} of {report.total} images)", file=sys.stderr)
    return 0
