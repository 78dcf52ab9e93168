"""``lostreg export``: LOST pseudo-boxes as detector training labels.

    lostreg export outputs/voc07/dinov2_vits14_reg/k_layer-1_k100_bias0.0 --format coco --out pseudo.json
    lostreg export --images photos/ --backbone dinov2_reg --format yolo --out yolo_ds/

From an eval run directory (its ``preds.jsonl``; the backbone is not run again), or from a
folder of images (runs ``lostreg eval`` on it first, into ``--run-dir``, resumable).
Formats: ``coco`` (instances json; ``--results`` adds a COCO results json), ``detectron2``
(json list of dataset dicts, XYXY_ABS), ``yolo`` (``labels/*.txt``, ``images.txt``,
``data.yaml``) and ``voc`` (``Annotations/*.xml``), every box of an image (several for
``objects=N`` runs). COCO and detectron2 carry each box's confidence (``score``); ``--with-score``
adds it to YOLO and VOC labels; ``--min-score`` and ``--top-k-objects`` keep the confident boxes. Failed images go to a
``failed.txt`` side file, never into the labels. Paths are written relative to ``--root`` (default: the
run's dataset root).

stdout: ``CorLoc: xx.xx (h/t) | AP50: xx.xx | AP: xx.xx`` when the run had ground truth
(class-agnostic COCO AP of the pseudo-boxes, :mod:`lostreg.evaluation.ap`); nothing
otherwise. stderr: what was written, failed images, warnings. Exit codes: 0 written (failed
images are listed, not an error), 2 nothing written (bad run directory, root, option,
config, weights), 130 interrupted during discovery (re-run to resume).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lostreg.cli.common import (
    DEFAULT_MAX_SIZE,
    add_objects_argument,
    add_precision_argument,
    build_backbone_loudly,
    error,
    protocol_overrides,
    protocol_parent_parser,
    user_errors,
    warning,
)

from lostreg.export.formats import FILE_FORMATS, FORMATS

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.export.formats import ExportResult

DEFAULT_BACKBONE = "dinov2_reg"
# Options that only make sense with --images (None = not given).
_DISCOVERY_OPTIONS = ("backbone", "weights", "device", "max_size", "batch_size", "num_workers", "run_dir", "set")


def parents() -> list[argparse.ArgumentParser]:
    """Shared flag groups of this command (the discovery protocol, for --images)."""
    return [protocol_parent_parser()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", metavar="RUN_DIR", help="an eval run directory (holds preds.jsonl)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="label format to write")
    parser.add_argument("--out", required=True, type=Path, metavar="PATH",
                        help="output file (coco, detectron2: a .json) or folder (yolo, voc)")
    parser.add_argument("--results", type=Path, default=None, metavar="PATH",
                        help="coco only: also write a COCO results file (image_id, category_id, bbox, score) "
                             "for COCOeval")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root", type=Path, default=None, metavar="DIR",
                       help="write image paths relative to DIR (default: the run's dataset root: dataset.root, "
                            "or dataset.image_dir for coco)")
    where.add_argument("--absolute", action="store_true", help="write absolute image paths")
    parser.add_argument("--link-images", action="store_true",
                        help="yolo: symlink the images into OUT/images/ (where Ultralytics looks); "
                             "voc: into OUT/JPEGImages/")
    scores = parser.add_argument_group("scores and filters (the method's confidence per box)")
    scores.add_argument("--with-score", action="store_true",
                        help="yolo: a sixth value per line, the box's confidence (`yolo train` does not read it); "
                             "voc: a <score> per object. coco (annotations and --results) and detectron2 always "
                             "carry the confidences")
    scores.add_argument("--min-score", type=float, default=None, metavar="S",
                        help="keep only boxes whose score is >= S; images left without a box are not written")
    scores.add_argument("--top-k-objects", type=int, default=None, metavar="K",
                        help="keep the K most confident boxes of each image (objects=N runs have several)")

    found = parser.add_argument_group("discovery from a folder of images (instead of RUN_DIR)")
    found.add_argument("--images", type=Path, default=None, metavar="DIR", help="folder of images to run LOST on")
    found.add_argument("--recursive", action="store_true", help="also images in sub-folders")
    found.add_argument("--backbone", default=None, help=f"backbone name or alias, or a timm ViT name "
                                                         f"(default {DEFAULT_BACKBONE})")
    found.add_argument("--weights", default=None, help="pretrained (default), random (pipeline test only) or a path")
    found.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, ...")
    found.add_argument("--max-size", type=int, default=None,
                       help=f"downscale images whose longer side exceeds this first (default {DEFAULT_MAX_SIZE}; "
                            "0 = native resolution); boxes are always in original pixels")
    found.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default 8)")
    found.add_argument("--num-workers", type=int, default=None, help="image loading workers (default 2)")
    found.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                       help="where the discovery run goes (default OUT/run for folders, OUT_STEM_run beside "
                            "a file); re-running resumes it")
    found.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                       help="extra eval config override, e.g. --set lost.k_patches=50 (repeatable)")
    found.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_objects_argument(found)
    add_precision_argument(found)


def _error(message: object) -> int:
    """Print the error line; return exit code 2."""
    error(message)
    return 2


def default_run_dir(fmt: str, out: Path) -> Path:
    """Where ``--images`` puts its eval run: ``OUT/run`` for folder formats, ``OUT_STEM_run`` beside a file."""
    return out.with_name(f"{out.stem}_run") if fmt in FILE_FORMATS else out / "run"


def _backbone_override(name: str) -> str:
    # Registry names and aliases are config-group options (configs/backbone/<name>.yaml, which
    # set the canonical name); any other timm name goes straight into backbone.name.
    option = resources.files("lostreg.configs").joinpath("backbone", f"{name}.yaml")
    return f"backbone={name}" if option.is_file() else f"backbone.name={name}"


def _discover(args: argparse.Namespace) -> tuple[Path | None, int]:
    """Run (or resume) discovery on ``args.images``; return ``(run_dir, 0)`` or ``(None, exit code)``."""
    from lostreg.config import compose_config
    from lostreg.evaluation.runner import EvalJob

    max_size = DEFAULT_MAX_SIZE if args.max_size is None else args.max_size
    if max_size < 0:
        return None, _error(f"--max-size must be >= 0, got {max_size}")
    overrides = [
        "dataset=folder",
        "dataset.root=.",  # placeholder: paths are set below, so no character needs hydra quoting
        _backbone_override(args.backbone or DEFAULT_BACKBONE),
        f"dataset.recursive={'true' if args.recursive else 'false'}",
        f"max_size={max_size if max_size > 0 else 'null'}",
    ]
    if args.batch_size is not None:
        overrides.append(f"batch_size={args.batch_size}")
    if args.num_workers is not None:
        overrides.append(f"num_workers={args.num_workers}")
    run_dir = args.run_dir if args.run_dir is not None else default_run_dir(args.format, args.out)
    try:
        overrides += protocol_overrides(args) + (args.set or [])
        if args.precision != "fp32":
            overrides.append(f"precision={args.precision}")
        cfg = compose_config(overrides)
        cfg.dataset.root = str(args.images)
        cfg.run_dir = str(run_dir)
        if args.weights is not None:
            cfg.weights = str(args.weights)
        if args.device is not None:
            cfg.device = str(args.device)
        command = " ".join(shlex.quote(str(a)) for a in (
            "lostreg", "export", "--images", args.images, "--format", args.format, "--out", args.out, *overrides[2:]))
        job = EvalJob.prepare(cfg, builder=build_backbone_loudly)
        job.run(progress=not args.no_progress, command=command)
    except KeyboardInterrupt:
        print(f"lostreg: interrupted; everything computed is saved in {run_dir}; run the same command again "
              "to resume", file=sys.stderr)
        return None, 130
    except user_errors() as err:
        return None, _error(err)
    except OSError as err:  # e.g. --run-dir names a file, or a folder that cannot be created
        return None, _error(f"{err.filename or run_dir}: {err.strerror or err}")
    print(f"run directory: {run_dir}", file=sys.stderr)
    return run_dir, 0


def run_metrics(run_dir: Path, records: list[dict[str, Any]]) -> Mapping[str, Any]:
    """The run's metrics as ``lostreg eval`` wrote them; derived from the records when ``metrics.json``
    is missing or older than ``preds.jsonl`` (a run killed before its session ended)."""
    from lostreg.evaluation.evaluators import metrics_from_lines
    from lostreg.rundir import RunDir

    metrics = RunDir(run_dir).read_metrics() or {}
    if metrics.get("total") == len(records) and "ap" in metrics:
        return metrics
    has_gt = any(r.get("hit") is not None for r in records)
    num_images = metrics.get("num_images", len(records))
    return metrics_from_lines(records, num_images, has_ground_truth=has_gt)


def quality_line(metrics: Mapping[str, Any]) -> str | None:
    """``CorLoc: xx.xx (h/t) | AP50: xx.xx | AP: xx.xx`` (percent), or None when the run had no ground truth."""
    from lostreg.evaluation.corloc import format_corloc

    if metrics.get("corloc") is None:
        return None

    def pct(v: float | None) -> str:
        return "nan" if v is None or math.isnan(v) else f"{100.0 * v:.2f}"

    return f"{format_corloc(metrics)} | AP50: {pct(metrics.get('ap50'))} | AP: {pct(metrics.get('ap'))}"


def _report(result: "ExportResult", args: argparse.Namespace) -> None:
    what = "file" if result.format in FILE_FORMATS else "folder"
    print(f"wrote {result.images} pseudo-boxes ({result.format}) to {what} {result.out}", file=sys.stderr)
    if result.boxes != result.images:
        print(f"  {result.boxes} boxes in all (several per image)", file=sys.stderr)
    if result.dropped:
        print(f"{len(result.dropped)} images kept no box after --min-score / --top-k-objects: not written "
              f"(e.g. {', '.join(result.dropped[:3])})", file=sys.stderr)
    if args.results is not None:
        print(f"wrote COCO results to {args.results}", file=sys.stderr)
    if result.failed:
        print(f"{len(result.failed)} images failed discovery (no label written): listed in {result.failed_file}",
              file=sys.stderr)
    if result.stale:
        warning(f"{len(result.stale)} label files in {result.stale[0].parent} were not written by "
                f"this export (e.g. {result.stale[0].name}); remove them before training")
    if result.format == "yolo" and not args.link_images:
        print(f"note: Ultralytics looks for the images in {result.out / 'images'}/ (labels/<name>.txt pairs with "
              "images/<name>.<ext>): add --link-images, or see docs/export.md", file=sys.stderr)


def _check_image_stems(args: argparse.Namespace) -> None:
    """Refuse ``--images`` whose files share a stem, before discovery runs on them.

    The per-image formats (yolo, voc) name each label after its image's stem; a clash found
    only when writing would waste the whole discovery run. The images are listed exactly as
    the run will list them (:class:`~lostreg.datasets.FolderDataset`); an image that then
    fails discovery would get no label, but whether it fails is not known yet, so every
    clash is refused.

    Raises:
        ExportError: two images share a stem.
        DatasetLayoutError: the folder is missing or holds no image.
    """
    from lostreg.datasets import FolderDataset
    from lostreg.export.formats import check_unique_stems

    images = FolderDataset(args.images, recursive=args.recursive)
    check_unique_stems([record.path for record in images])


def run(args: argparse.Namespace) -> int:
    from lostreg.evaluation.runs import sweep_choice
    from lostreg.export.formats import ExportError, check_output, export_records
    from lostreg.export.readers import default_root, read_run_config, read_run_predictions
    from lostreg.rundir import RunError

    if args.images is not None and args.run is not None:
        return _error("give an eval RUN_DIR or --images DIR, not both")
    if args.images is None:
        if args.run is None:
            return _error("give an eval RUN_DIR, or --images DIR to run discovery first")
        given = [name for name in _DISCOVERY_OPTIONS if getattr(args, name) is not None]
        if args.recursive:
            given.append("recursive")
        if protocol_overrides(args) or args.precision != "fp32":
            given.append("discovery protocol")
        if given:
            flags = ", ".join("--" + n.replace("_", "-") if " " not in n else n for n in given)
            return _error(f"{flags} go with --images DIR (a run directory's predictions are exported as they are)")
    if args.results is not None and args.format != "coco":
        return _error("--results (a COCO results file) goes with --format coco")
    if args.link_images and args.format in FILE_FORMATS:
        return _error("--link-images goes with --format yolo or voc")
    if args.root is not None and not args.root.is_dir():
        return _error(f"--root {args.root} is not a folder")
    if args.top_k_objects is not None and args.top_k_objects < 1:
        return _error(f"--top-k-objects must be >= 1, got {args.top_k_objects}")
    if args.min_score is not None and not math.isfinite(args.min_score):
        return _error(f"--min-score must be a finite number, got {args.min_score}")
    try:
        # Before the run directory is read or discovery starts: a wrong --out would otherwise
        # cost a whole discovery run, then fail.
        check_output(args.format, args.out, args.results)
        if args.images is not None and args.format not in FILE_FORMATS:
            _check_image_stems(args)
    except (ExportError, *user_errors()) as err:  # user_errors: the images folder is missing or empty
        return _error(err)

    if args.images is not None:
        run_dir, code = _discover(args)
        if run_dir is None:
            return code
    else:
        run_dir = Path(args.run)
        choice = sweep_choice(run_dir)
        if choice is not None:  # a sweep: its chosen (or best) configuration's ordinary run directory
            run_dir, note = choice
            warning(note)

    try:
        records = read_run_predictions(run_dir)
        if not records:
            return _error(f"{run_dir} holds no predictions yet")
        metrics = run_metrics(run_dir, records)
        if metrics.get("complete") is False:
            warning(f"{run_dir} is incomplete ({metrics.get('total')} of {metrics.get('num_images')} images): "
                    "exporting those; resume the eval to get all")
        if args.absolute:
            root = None
        else:
            root = args.root if args.root is not None else default_root(read_run_config(run_dir))
        result = export_records(records, args.format, args.out, root=root, results=args.results,
                                link_images=args.link_images, with_score=args.with_score,
                                min_score=args.min_score, top_k=args.top_k_objects)
    except (ExportError, RunError, ValueError) as err:
        return _error(err)
    except OSError as err:
        return _error(f"{err.filename or args.out}: {err.strerror or err}")
    _report(result, args)
    line = quality_line(metrics)
    if line is not None:
        print(line)
    return 0
