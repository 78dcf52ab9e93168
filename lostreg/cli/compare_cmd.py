"""``lostreg compare``: CorLoc of ``lostreg eval`` run directories, beside published numbers.

stdout: a markdown table (rows = method + backbone + protocol, in columns ``method``,
``backbone``, ``protocol``; column pairs ``<dataset> ours`` / ``<dataset> published``) and its
footnotes; a published number stands only beside a comparable run (the same released checkpoint,
the published protocol; for a searched protocol, a sweep whose grid covers it:
:mod:`lostreg.evaluation.published`), every other published row of the table's methods and
families below, as a reference row saying what differs; then, for runs whose boxes have scores,
the CorLoc of their most confident images and AP50 ranked by score and by image order
(:mod:`lostreg.evaluation.confidence`). stderr: one line per bad run directory and per ambiguous
cell. Exit code 0, 1 when any run directory was bad (the table still shows the others), 2 when
none was usable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lostreg.cli.common import error, warning



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories of `lostreg eval` (config.yaml + metrics.json) or quoted glob "
                             "patterns, e.g. 'outputs/*/*/*'")
    parser.add_argument("--csv", type=Path, default=None, metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--no-published", action="store_true", help="leave out the published numbers")


def run(args: argparse.Namespace) -> int:
    from lostreg.evaluation.compare import RunError, build_table, load_runs, to_csv, to_markdown

    errors: list[RunError] = []

    def report(err: RunError) -> None:
        errors.append(err)
        error(err)

    runs = load_runs(args.run_dirs, on_error=report)
    if not runs:
        error("no usable run directory")
        return 2
    table = build_table(runs, include_published=not args.no_published)
    for text in table.warnings:
        warning(text)
    sys.stdout.write(to_markdown(table))
    from lostreg.evaluation.confidence import confidence_markdown

    ranking = confidence_markdown(runs)
    if ranking is not None:
        sys.stdout.write("\n" + ranking)
    if args.csv is not None:
        try:
            to_csv(table, args.csv)
        except OSError as err:
            error(f"{args.csv}: cannot write CSV: {err.strerror or err}")
            return 2
        print(f"wrote {args.csv}", file=sys.stderr)
    return 1 if errors else 0
