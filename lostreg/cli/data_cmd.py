"""``lostreg data``: check a dataset's layout, fetch the COCO20k file list.

* ``lostreg data check [OVERRIDES...]``: compose the eval config with hydra overrides
  (``dataset=voc07 dataset.root=/data``), read the dataset and count what it holds.
  Exit 0 when it is complete, 1 when images are missing or the count differs from the
  published split size, 2 when it cannot be read at all (the expected layout is printed).
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

DEFAULT_FILELIST_DEST = Path("data/coco_20k_filenames.txt")  # where configs/dataset/coco20k.yaml looks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    check = sub.add_parser("check", help="check a dataset's layout and count its images and boxes",
                           description="Check a dataset's layout and count its images and ground-truth boxes.")
    check.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                       help="hydra overrides as for `lostreg eval`, e.g. dataset=voc07 dataset.root=/data")
    check.add_argument("--max-listed", type=int, default=10, help="how many missing image files to list (default 10)")
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


def format_report(kind: str, kwargs: dict[str, Any], report: dict[str, Any]) -> str:
    """Readable summary of :func:`lostreg.datasets.check_dataset`'s report.

    Args:
        kind: Dataset kind (``voc07``, ``coco20k``, ...).
        kwargs: The dataset's settings (root, split, ...), shown so a user sees what was read.
        report: ``check_dataset``'s dict.
    """
    expected = report["expected_images"]
    if expected is None:
        size = "no published size for this split"
    elif report["images"] == expected:
        size = f"{expected} (matches)"
    else:
        size = f"{expected} (MISMATCH: found {report['images']})"
    lines = [f"dataset:        {report['name']} ({kind})"]
    lines += [f"  {key}: {value}" for key, value in kwargs.items()]
    lines += [
        f"images:         {report['images']}",
        f"with GT:        {report['images_with_gt']}",
        f"GT boxes:       {report['gt_boxes']}",
        f"expected:       {size}",
        f"missing images: {report['num_missing_images']}",
    ]
    lines += [f"  {path}" for path in report["missing_images"]]
    not_listed = report["num_missing_images"] - len(report["missing_images"])
    if not_listed > 0:
        lines.append(f"  ... and {not_listed} more")
    if report["images"] == 0:
        lines.append("no images: the split lists none")
    lines.append("status:         " + ("OK" if report["ok"] else "PROBLEM"))
    return "\n".join(lines)


def _run_check(args: argparse.Namespace) -> int:
    from lostreg.config import ConfigError, compose_config, dataset_kwargs
    from lostreg.datasets import DatasetLayoutError, check_dataset

    try:
        cfg = compose_config(args.overrides)
        kind = str(cfg.dataset.name)
        kwargs = dataset_kwargs(cfg)
        report = check_dataset(kind, max_listed=args.max_listed, **kwargs)
    except (ConfigError, DatasetLayoutError) as err:
        _error(str(err))  # a layout error carries the expected tree: several lines, on purpose
        return 2
    except (KeyError, ValueError, TypeError) as err:
        # Unknown dataset name, wrong year, a setting the reader does not take.
        _error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
        return 2
    print(format_report(kind, kwargs, report))
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
