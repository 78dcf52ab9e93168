"""``lostreg score``: CorLoc, AP50 and AR of a detector's predictions on a dataset, as a run directory.

    lostreg score detector/coco_instances_results.json dataset=voc07 dataset.root=/data \
        --trained-on outputs/voc07/dino_vits16/k_layer-1_k100_bias0.0
    lostreg score runs/detect/predict dataset=voc12 dataset.root=/data --label "YOLOv8n on LOST boxes"

PREDICTIONS: a COCO results file (or COCO instances with scores), a folder of YOLO ``.txt``
predictions (``class cx cy w h conf``), or a detectron2 instances file (``.pth`` or JSON); see
:mod:`lostreg.evaluation.detections` for how predictions find their images. The dataset is given
as for ``lostreg eval`` (``dataset=...`` and ``dataset.*`` overrides). CorLoc scores the most
confident box of each image with ``lostreg eval``'s rule; the run directory
(:mod:`lostreg.evaluation.scoring`) is read by ``lostreg compare`` and ``lostreg report``.

stdout: ``CorLoc: xx.xx (h/t) | AP50: xx.xx | AR@100: xx.xx``. stderr: the run directory and notes.
Exit codes: 0 scored, 2 nothing written (bad predictions, dataset, option or run directory).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lostreg.cli.common import error, report_user_error, user_errors, warning

_FORMATS = ("coco", "yolo", "detectron2")  # lostreg.evaluation.detections.PREDICTION_FORMATS, without importing it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("predictions", metavar="PREDICTIONS", type=Path,
                        help="a COCO results json, a folder of YOLO txt predictions, or a detectron2 instances file")
    parser.add_argument("overrides", nargs="*",
                        help="the dataset, as for lostreg eval: dataset=voc07|voc12|coco20k|coco dataset.root=... "
                             "(dataset.* overrides only)")
    parser.add_argument("--format", choices=_FORMATS, default=None,
                        help="the predictions' format (default: a folder is yolo, a .pth detectron2, a json coco "
                             "or detectron2 by its content)")
    parser.add_argument("--coco-images", type=Path, default=None, metavar="FILE",
                        help="a COCO instances file whose images define the ids of a COCO results file (e.g. the "
                             "`lostreg export --format coco` file the detector was trained on)")
    parser.add_argument("--trained-on", type=Path, default=None, metavar="RUN_DIR",
                        help="the discovery run whose pseudo-boxes trained the detector: names the row, and a "
                             "published '+ CAD' number is shown beside it where comparable")
    parser.add_argument("--label", default=None, help="the row's name in compare and report tables")
    parser.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                        help="where to write (default outputs/<dataset>/scored/<predictions name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run directory of another identity")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from lostreg.config import compose_config, dataset_kwargs
    from lostreg.datasets import build_dataset
    from lostreg.errors import ConfigError
    from lostreg.evaluation.scoring import ScoreJob

    errors = user_errors()
    try:
        other = [o for o in args.overrides if not o.lstrip("+").startswith("dataset")]
        if other:
            raise ConfigError(f"lostreg score takes dataset=... and dataset.* overrides only; got {other[0]!r} "
                              "(the detector's predictions carry everything else)")
        cfg = compose_config(list(args.overrides))
        dataset_config = OmegaConf.to_container(cfg.dataset, resolve=True)
        assert isinstance(dataset_config, dict)
        dataset = build_dataset(str(cfg.dataset.name), **dataset_kwargs(cfg))
        job = ScoreJob.prepare(dataset, dataset_config, args.predictions, fmt=args.format,
                               coco_images=args.coco_images, trained_on=args.trained_on, label=args.label,
                               run_dir=args.run_dir, overwrite=args.overwrite)
        command = " ".join(shlex.quote(str(a)) for a in ("lostreg", "score", args.predictions, *args.overrides))
        metrics = job.run(command=command)
    except errors as err:
        report_user_error(err)
        return 2
    except OSError as err:  # e.g. --run-dir on a read-only disk
        error(f"{err.filename or args.run_dir}: {err.strerror or err}")
        return 2
    print(_quality_line(metrics))
    if not metrics.get("images_with_predictions"):
        warning("no image of the dataset has a prediction: every image is a miss")
    elif metrics.get("corloc_by_confidence") is None:  # some image's boxes have no score
        warning("the predictions have no scores: CorLoc took each image's first box, AP ranks them in file order")
    print(f"run directory: {job.run_dir.path}", file=sys.stderr)
    return 0


def _quality_line(metrics: dict) -> str:  # type: ignore[type-arg]
    from lostreg.evaluation.corloc import format_corloc

    def pct(value: float | None) -> str:
        return "nan" if value is None else f"{100.0 * value:.2f}"

    return f"{format_corloc(metrics)} | AP50: {pct(metrics.get('ap50'))} | AR@100: {pct(metrics.get('ar100'))}"
