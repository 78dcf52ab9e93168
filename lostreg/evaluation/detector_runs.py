"""What a ``lostreg score`` run directory says about its detector, for tables and reports.

A score run (:mod:`lostreg.evaluation.scoring`) holds a detector's predictions scored on a dataset.
Its ``config.yaml`` has ``kind: score``, the ``dataset`` section (as ``lostreg eval``'s), the
``predictions`` (path, format), an optional ``label`` and, when the user named the discovery run the
detector was trained on (``--trained-on``), ``trained_on``: that run's method, backbone, weights,
dataset and protocol. :class:`DetectorInfo` is that part, read back; tables show the run as a row
of the pseudo-method :data:`DETECTOR_METHOD` ("detector") named after what it was trained on.

Light: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DETECTOR_METHOD", "SCORE_KIND", "DetectorInfo"]

#: The ``method`` of a score run's rows in tables: not a discovery method, so never registered.
DETECTOR_METHOD = "detector"
#: ``kind`` of a score run's ``config.yaml`` and ``metrics.json``.
SCORE_KIND = "score"


@dataclass(frozen=True)
class DetectorInfo:
    """A scored detector: where its predictions came from and what it was trained on.

    Attributes:
        predictions: the predictions file or folder as scored.
        format: ``coco``, ``yolo`` or ``detectron2``.
        label: the user's name for the row (``--label``), or None.
        trained_on: the ``trained_on`` section (method, backbone, weights, dataset, protocol, run_dir,
            description), or None when not given.
    """

    predictions: str
    format: str
    label: str | None = None
    trained_on: Mapping[str, Any] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DetectorInfo":
        """Read the detector part of a score run's ``config.yaml`` (plain data)."""
        predictions = config.get("predictions") or {}
        trained = config.get("trained_on")
        return cls(predictions=str(predictions.get("path", "")), format=str(predictions.get("format", "")),
                   label=str(config["label"]) if config.get("label") else None,
                   trained_on=dict(trained) if isinstance(trained, Mapping) else None)

    @property
    def trained_dataset(self) -> str | None:
        """The dataset of the pseudo-labels the detector was trained on, if known."""
        return None if self.trained_on is None else str(self.trained_on.get("dataset") or "") or None

    def protocol_text(self) -> str:
        """The table's protocol cell: the label, else ``trained on LOST [k=50] (voc07)``, else the predictions' name."""
        if self.label:
            return self.label
        if self.trained_on is not None:
            return f"trained on {self.trained_on.get('description')}"
        return f"predictions {Path(self.predictions).name}"
