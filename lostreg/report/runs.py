"""The runs of a report: run directories read (through :mod:`lostreg.rundir`) and checked to share a dataset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lostreg.datasets.registry import dataset_kind
from lostreg.errors import LostregError
from lostreg.evaluation.runs import RunSummary, load_runs
from lostreg.rundir import PREDS_FILE, RunDir, RunError, RunNotFoundError

__all__ = ["ReportError", "ReportRun", "check_same_dataset", "describe_dataset", "load_report_runs", "run_label"]


class ReportError(LostregError, ValueError):
    """Runs that cannot go in one report; ``str(err)`` is one line."""


@dataclass(frozen=True)
class ReportRun:
    """One run directory, read.

    Attributes:
        summary: Config and metrics, as :func:`lostreg.evaluation.compare.load_run` reads them.
        preds: ``preds.jsonl`` lines by image id, in file order (first occurrence wins).
        dataset_config: The ``dataset`` section of ``config.yaml``.
    """

    summary: RunSummary
    preds: dict[str, dict[str, Any]]
    dataset_config: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.summary.run_dir

    @property
    def name(self) -> str:
        """``method backbone [protocol]``: ``LOST dinov2_vitl14_reg [k=50]``, ``TokenCut dino_vits16 [default]``."""
        return self.summary.label

    def dataset_identity(self) -> dict[str, Any]:
        """Dataset name and the settings that choose its images and ground truth.

        Neither its location (the same data may live elsewhere on another machine, so the location
        keys of its kind never make two runs "different datasets") nor what only ``lostreg data
        check`` reads: it never changes which images or boxes a run has.
        """
        kind = dataset_kind(self.summary.dataset, strict=False)
        left_out = kind.location_keys + kind.check_only_keys
        identity = {k: v for k, v in self.dataset_config.items() if k not in left_out}
        identity["name"] = self.summary.dataset
        return identity


def run_label(index: int) -> str:
    """``A``, ``B``, ..., ``Z``, ``AA``, ``AB``, ... for run ``index`` (0-based)."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def _read_preds(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Lines of ``preds.jsonl`` by image id, in file order (first occurrence wins).

    Read through :meth:`lostreg.rundir.RunDir.read_predictions`, which never modifies the
    file: a report may be built while the run is still writing, and a partial last line is
    skipped.
    """
    try:
        return RunDir(run_dir).read_predictions()
    except RunNotFoundError:
        raise ReportError(f"{run_dir}: no {PREDS_FILE} (per-image predictions of `lostreg eval`)") from None
    except RunError as err:  # the message names the file (and line)
        raise ReportError(str(err)) from None


def describe_dataset(identity: Mapping[str, Any]) -> str:
    rest = " ".join(f"{k}={v}" for k, v in sorted(identity.items()) if k != "name")
    return f"{identity.get('name')}" + (f" ({rest})" if rest else "")


def load_report_runs(paths: Iterable[str | Path]) -> list[ReportRun]:
    """Read run directories (or glob patterns) for one report.

    Raises:
        RunError: A path that is not a run directory, a pattern matching nothing, a broken
            ``config.yaml`` / ``metrics.json``.
        ReportError: No ``preds.jsonl``, a corrupt line, runs on different datasets, or
            runs that share no image.
    """
    runs = []
    for summary in load_runs(paths):  # no on_error: the first bad directory is raised
        runs.append(ReportRun(summary, _read_preds(summary.source_dir), dict(summary.dataset_config)))
    if not runs:
        raise ReportError("no run directory given")
    check_same_dataset(runs)
    return runs


def check_same_dataset(runs: Sequence[ReportRun]) -> None:
    """Refuse runs on different datasets (name, split, hard-object setting, ...).

    Also refuses runs that share no image id at all, which is what runs of one dataset
    kept in different places (or of two custom COCO/folder datasets) look like.

    Raises:
        ReportError: Naming each run's dataset.
    """
    identities = [run.dataset_identity() for run in runs]
    if any(identity != identities[0] for identity in identities[1:]):
        listing = "; ".join(f"{run.run_dir}: {describe_dataset(ident)}" for run, ident in zip(runs, identities))
        raise ReportError(f"runs on different datasets cannot share a report ({listing})")
    with_preds = [run for run in runs if run.preds]
    if len(with_preds) > 1 and not set.intersection(*(set(run.preds) for run in with_preds)):
        raise ReportError(
            f"runs share no image id ({', '.join(str(r.run_dir) for r in with_preds)}): not the same dataset"
        )
