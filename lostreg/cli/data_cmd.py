"""``lostreg data``: check a dataset's layout, fetch the COCO20k file list.

* ``lostreg data check [OVERRIDES...] [--full]``: compose the eval config with hydra overrides
  (``dataset=voc07 dataset.root=/data``), read the dataset and every annotation, check every
  image file, and count what it holds. Every problem is collected (missing, unreadable or
  malformed annotations, missing, empty, truncated or non-image files), not only the first.
  By default the image check reads each file's header, verifies a PNG's chunks and looks for a
  JPEG's end marker (a cut JPEG is then decoded to be sure): about 0.5 ms per 640x480 JPEG,
  some 20 times faster than a full decode, so a big dataset takes seconds to minutes. ``--full``
  decodes every pixel as ``lostreg eval`` will, which also catches damage inside the pixel
  data of formats that cannot be verified without decoding (BMP, TIFF, WebP).
  ``dataset.expected_count=N`` states the expected number of images (a subset's size) instead
  of the published split size. Exit 0 when all is well, 1 when there are problems or the
  count differs from the expected size, 2 when it cannot be read at all (the expected
  layout is printed).
* ``lostreg data fetch-coco20k-list [--dest PATH]``: download and verify the 19817-line
  list of the LOST repository. Exit 2 when offline, with what to do instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lostreg.cli.common import error as _error
from lostreg.datasets.coco20k import COCO20K_FILELIST_URL, FileListDownloadError, download_coco20k_filelist
from lostreg.datasets.kinds import Coco20kNode

DEFAULT_FILELIST_DEST = Path(Coco20kNode.filelist_path)  # where dataset=coco20k looks by default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    check = sub.add_parser("check", help="check a dataset's layout, annotations and image files; count them",
                           description="Check a dataset's layout, every annotation and every image file, and "
                                       "count its images and ground-truth boxes. Lists every problem found.")
    check.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                       help="hydra overrides as for `lostreg eval`, e.g. dataset=voc07 dataset.root=/data; "
                            "dataset.expected_count=N states the expected number of images (a subset's size) "
                            "instead of the published one")
    check.add_argument("--max-listed", type=int, default=10, help="how many problems to list (default 10)")
    check.add_argument("--full", action="store_true",
                       help="decode every image completely, as `lostreg eval` does (slower); by default only "
                            "each image's header and a JPEG's end marker are read")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    check.set_defaults(_data_run=_run_check)

    fetch = sub.add_parser("fetch-coco20k-list", help="download the COCO20k file list (needs internet)",
                           description="Download and verify the COCO20k file list of the LOST repository.")
    fetch.add_argument("--dest", type=Path, default=DEFAULT_FILELIST_DEST,
                       help=f"target file or folder (default {DEFAULT_FILELIST_DEST})")
    fetch.add_argument("--url", default=COCO20K_FILELIST_URL, help="source URL (default: the LOST repository)")
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up (default 30)")
    fetch.set_defaults(_data_run=_run_fetch)


def run(args: argparse.Namespace) -> int:
    return int(args._data_run(args))


def format_report(kind: str, kwargs: dict[str, Any], report: dict[str, Any], max_listed: int = 10) -> str:
    """Readable summary of :func:`lostreg.datasets.check_dataset`'s report.

    Args:
        kind: Dataset kind (``voc07``, ``coco20k``, ...).
        kwargs: The dataset's settings (root, split, ...), shown so a user sees what was read.
        report: ``check_dataset``'s dict.
        max_listed: How many problems to list, one ``<path>: <reason>`` line each; the
            rest are counted (``... and N more``).
    """
    expected = report["expected_images"]
    source = " from dataset.expected_count" if report.get("expected_source") == "dataset.expected_count" else ""
    if expected is None:
        size = "no published size for this split"
    elif report["images"] == expected:
        size = f"{expected}{source} (matches)"
    else:
        size = f"{expected}{source} (MISMATCH: found {report['images']})"
    problems = report["problems"]
    rows = [("dataset", f"{report['name']} ({kind})")]
    rows += [(None, f"{key}: {value}") for key, value in kwargs.items()]
    rows += [
        ("images", report["images"]),
        ("with GT", report["images_with_gt"]),
        ("GT boxes", report["gt_boxes"]),
        ("expected", size),
        ("missing images", report["num_missing_images"]),
        ("unreadable images", report["num_unreadable_images"]),
        ("annotation problems", report["num_annotation_problems"]),
        ("problems", len(problems)),
    ]
    shown = problems[:max(max_listed, 0)]
    for problem in shown:
        # A missing file needs no reason; the others say what is wrong with the file.
        text = str(problem.path) if problem.kind.startswith("missing") else str(problem)
        rows.append((None, f"{problem.kind}: {text}"))
    if len(problems) > len(shown):
        rows.append((None, f"... and {len(problems) - len(shown)} more"))
    lines = [f"  {value}" if label is None else f"{label + ':':<21}{value}" for label, value in rows]
    if report["images"] == 0:
        lines.append("no images: the split lists none")
    lines.append(f"{'status:':<21}" + ("OK" if report["ok"] else "PROBLEM"))
    if expected is not None and report["images"] != expected and not source:
        lines.append(f"hint: checking a subset on purpose? state its size: dataset.expected_count={report['images']}")
    return "\n".join(lines)


def _run_check(args: argparse.Namespace) -> int:
    from lostreg.config import ConfigError, compose_config, dataset_kwargs
    from lostreg.datasets import DatasetLayoutError, check_dataset

    try:
        cfg = compose_config(args.overrides)
        kind = str(cfg.dataset.name)
        kwargs = dataset_kwargs(cfg)  # reader arguments only: expected_count is not one
        expected_count = cfg.dataset.get("expected_count")
        report = check_dataset(kind, max_listed=args.max_listed, expected_count=expected_count, full=args.full,
                               progress=not args.no_progress, **kwargs)
    except (ConfigError, DatasetLayoutError) as err:
        _error(str(err))  # a layout error carries the expected tree: several lines, on purpose
        return 2
    except (KeyError, ValueError, TypeError) as err:
        # Unknown dataset name, wrong year, a setting the reader does not take.
        _error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
        return 2
    shown = dict(kwargs, **({"expected_count": expected_count} if expected_count is not None else {}))
    print(format_report(kind, shown, report, max_listed=args.max_listed))
    return 0 if report["ok"] else 1


def _run_fetch(args: argparse.Namespace) -> int:
    try:
        dest = download_coco20k_filelist(args.dest, url=args.url, timeout=args.timeout)
    except FileListDownloadError as err:
        _error(str(err))
        if isinstance(err.__cause__, OSError):  # offline, not a bad file: say where the copy goes
            print(f"lostreg: hint: copy it to {args.dest}, or anywhere and pass dataset.filelist_path=PATH "
                  "to `lostreg eval`", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the destination folder is not writable
        _error(f"{args.dest}: {err.strerror or err}")
        return 2
    print(f"wrote {dest}")
    return 0
