"""``lostreg score``: a detector's predictions scored on a dataset, as a run directory.

The last step of the pseudo-label recipe: discover -> export -> train a class-agnostic detector
elsewhere -> score its predictions here, against the same datasets and with the same rules as
``lostreg eval``:

* **CorLoc** of the most confident box of each image (the LOST authors' rule for LOST+CAD: "only
  the box with the highest confidence score is considered per image"); an image without a
  prediction is a miss. The IoU rule and the ground truth are ``lostreg eval``'s
  (:mod:`lostreg.evaluation.corloc`), so the CorLoc of a file holding a run's own boxes equals
  that run's CorLoc.
* **Class-agnostic AP, AP50, AR@1/10/100** of every box, ranked by the detector's scores
  (:mod:`lostreg.evaluation.ap`), the CorLoc of the most confident images
  (:mod:`lostreg.evaluation.confidence`) and AP50 in image order, as ``metrics.json`` of an eval run.

The run directory (:class:`lostreg.rundir.RunDir`): ``config.yaml`` (``kind: score``, the dataset
section, the predictions, ``label`` and ``trained_on``: :mod:`lostreg.evaluation.detector_runs`),
``preds.jsonl`` (one line per dataset image, as an eval run's, with the detector's boxes,
real-valued, most confident first), ``metrics.json`` (``kind: score``) and ``run.json``. Scoring is
cheap, so each session writes the whole directory again; a directory of another identity (another
dataset or predictions path, or an eval run) is refused unless ``overwrite``. ``lostreg compare``
and ``lostreg report`` show it as a row of method ``detector``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lostreg.config import dataset_identity
from lostreg.datasets.base import ImageDataset
from lostreg.datasets.registry import kind_of
from lostreg.evaluation.detections import Detection, PredictionsError, detection_counts, read_predictions
from lostreg.evaluation.detector_runs import SCORE_KIND
from lostreg.evaluation.evaluators import metrics_from_lines
from lostreg.evaluation.runs import load_run
from lostreg.io.atomic import atomic_write_text
from lostreg.rundir import RunDir, default_run_dir

__all__ = ["SCORED_DIR", "ScoreJob", "score_identity", "score_lines", "trained_on_section"]

#: The backbone-level folder of score runs in the default layout: ``outputs/<dataset>/scored/<name>``.
SCORED_DIR = "scored"


def score_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a score run directory is: its kind, the dataset (as an eval run's identity names it) and the
    predictions' path. An eval run's ``config.yaml`` has another kind, so the two never share a directory."""
    predictions = config.get("predictions") or {}
    return {"kind": config.get("kind"), "dataset": dataset_identity(config.get("dataset") or {}),
            "predictions": predictions.get("path") if isinstance(predictions, Mapping) else None}


def trained_on_section(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``trained_on`` section of a score run's config from the discovery run the detector learnt from.

    Raises:
        RunError: ``run_dir`` is not a readable run directory.
    """
    summary = load_run(run_dir)
    return {
        "run_dir": os.path.abspath(run_dir),
        "method": summary.method,
        "backbone": summary.backbone,
        "weights": summary.weights,
        "dataset": summary.dataset,
        "protocol": summary.discovery.as_dict(),
        "description": f"{summary.method_label} {summary.backbone} [{summary.protocol}] ({summary.dataset})",
    }


def score_lines(dataset: ImageDataset, matched: Mapping[str, Sequence[Detection]]) -> list[dict[str, Any]]:
    """One prediction line per dataset image (dataset order), before scoring.

    Keys as :func:`lostreg.evaluation.runner.prediction_record`'s: ``box_xyxy`` is the most confident box
    (null when the detector gave the image none: a miss), ``boxes_xyxy`` and ``scores`` every box, most
    confident first (ties keep the file's order; ``scores`` null when the file gives none, then the
    file's first box is the one CorLoc scores), no seed.

    Raises:
        PredictionsError: an image whose boxes have scores for some and not for others.
    """
    lines = []
    for record in dataset:
        found = list(matched.get(str(record.image_id), []))
        with_score = [d.score is not None for d in found]
        if any(with_score) and not all(with_score):
            raise PredictionsError(f"{record.path}: some predicted boxes have a score and others not")
        scored = all(with_score)
        if scored:
            found.sort(key=lambda d: -float(d.score))  # type: ignore[arg-type]  # stable: ties keep file order
        boxes = [list(d.box_xyxy) for d in found]
        lines.append({
            "image_id": record.image_id, "image": str(record.path), "width": record.width, "height": record.height,
            "box_xyxy": boxes[0] if boxes else None, "boxes_xyxy": boxes,
            "scores": [float(d.score) for d in found] if scored else None,  # type: ignore[arg-type]
            "hit": None, "iou": None, "gt_boxes_xyxy": [list(map(int, b)) for b in record.gt_boxes_xyxy],
            "error": None,
        })
    return lines


@dataclass
class ScoreJob:
    """A score run, checked and ready: predictions read and matched, the run directory checked.

    :meth:`prepare` does everything that can fail before anything is written; :meth:`run` scores and
    writes the run directory.
    """

    config: dict[str, Any]
    dataset: ImageDataset
    matched: dict[str, list[Detection]]
    run_dir: RunDir
    overwrite: bool = False

    @classmethod
    def prepare(cls, dataset: ImageDataset, dataset_config: Mapping[str, Any], predictions: str | os.PathLike[str],
                fmt: str | None = None, coco_images: str | os.PathLike[str] | None = None,
                trained_on: str | os.PathLike[str] | None = None, label: str | None = None,
                run_dir: str | os.PathLike[str] | None = None, overwrite: bool = False) -> "ScoreJob":
        """Read and match the predictions, describe the run, check its directory. Writes nothing.

        Args:
            dataset: the images and their ground truth.
            dataset_config: the ``dataset`` section as ``lostreg eval`` composes it (plain data).
            predictions: a COCO or detectron2 file, or a folder of YOLO files.
            fmt: ``coco``, ``yolo`` or ``detectron2``; None: guessed.
            coco_images: a COCO instances file that defines the ids of a results file.
            trained_on: the discovery run whose pseudo-labels trained the detector (its method,
                backbone and protocol name the row, and decide whether a published "+ CAD" number
                stands beside it).
            label: the row's name in tables (default: what it was trained on).
            run_dir: where to write (default ``outputs/<dataset>/scored/<predictions name>``).
            overwrite: replace a directory of another identity.

        Raises:
            PredictionsError, RunError, RunLockedError, RunConfigMismatch, ConfigError.
        """
        from lostreg.errors import ConfigError

        if not dataset.has_ground_truth:
            raise ConfigError(f"dataset {dataset.name} has no ground truth: lostreg score needs one to score against")
        used, matched = read_predictions(predictions, dataset, fmt, coco_images)
        config: dict[str, Any] = {
            "kind": SCORE_KIND,
            "label": label,
            "predictions": {"path": os.path.abspath(predictions), "format": used,
                            "coco_images": None if coco_images is None else os.path.abspath(coco_images)},
            "trained_on": None if trained_on is None else trained_on_section(trained_on),
            "dataset": dict(dataset_config),
        }
        if run_dir is None:
            name = Path(os.path.abspath(predictions)).stem or "predictions"
            run_dir = default_run_dir(kind_of(dataset_config).dir_name(dataset_config), SCORED_DIR, name)
        target = RunDir(run_dir)
        target.check_writable()
        if not overwrite:
            target.check_pinned(config, score_identity)
        return cls(config, dataset, matched, target, overwrite)

    def run(self, command: str | None = None) -> dict[str, Any]:
        """Score the predictions and write the run directory; return ``metrics.json``'s content."""
        lines = score_lines(self.dataset, self.matched)
        metrics = metrics_from_lines(lines, len(self.dataset), has_ground_truth=True)  # decides hit / iou
        metrics.update(kind=SCORE_KIND, dataset=str(self.config["dataset"].get("name")),
                       backbone=(self.config.get("trained_on") or {}).get("backbone"),
                       predictions=self.config["predictions"]["path"], **detection_counts(self.matched))
        with self.run_dir.lock(command):
            if self.overwrite:
                self.run_dir.clear()
            self.run_dir.pin_config(self.config, score_identity)
            session = self.run_dir.begin_session(command, images=len(lines))
            atomic_write_text(self.run_dir.preds_path, "".join(json.dumps(line) + "\n" for line in lines))
            self.run_dir.write_metrics(metrics)
            session.end()
        return metrics

