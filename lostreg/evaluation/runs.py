"""Finished or partial eval runs, read back for tables and reports (through :mod:`lostreg.rundir`).

:func:`load_run` reads one run directory's ``config.yaml`` and ``metrics.json`` into a
:class:`RunSummary`: which backbone, dataset and protocol produced which CorLoc. Nothing here
imports torch; nothing here writes.
"""

from __future__ import annotations

import dataclasses
import glob
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lostreg.backbones.registry import is_weight_free
from lostreg.datasets.registry import dataset_kind
from lostreg.evaluation.detector_runs import DETECTOR_METHOD, SCORE_KIND, DetectorInfo
from lostreg.evaluation.published import (
    PublishedResult,
    method_label,
    published_detector_match,
    published_match,
    published_sweep_match,
)
from lostreg.methods import DEFAULT_METHOD
from lostreg.protocol import DiscoveryProtocol, ProtocolError
from lostreg.rundir import CONFIG_FILE, METRICS_FILE, RunDir, RunError

__all__ = ["DEFAULT_PROTOCOL_TEXT", "RunError", "RunSummary", "load_run", "load_run_rows", "load_runs",
           "sweep_choice"]

#: How a row with its method's default protocol (:class:`~lostreg.protocol.DiscoveryProtocol`
#: defaults: features and that method's knobs) is named.
DEFAULT_PROTOCOL_TEXT = "default"
_DEFAULT_WEIGHTS = "pretrained"
_CONFIG_KEYS = ("backbone.name", "dataset.name", "weights", "max_size")
_METRIC_KEYS = ("corloc", "hits", "total", "num_images", "complete")


@dataclass(frozen=True)
class RunSummary:
    """What a table needs from one run directory.

    Attributes:
        run_dir: The directory.
        backbone: lostreg backbone name (``backbone.name``).
        dataset: ``dataset.name`` (``voc07``, ``voc12``, ``coco20k``, ``coco``, ``folder``, or another
            registered kind, :mod:`lostreg.datasets.registry`).
        weights: ``pretrained``, ``random`` or a checkpoint path.
        discovery: The discovery protocol (method, features, knobs) of the run.
        max_size: Downscale limit in pixels, ``None`` for native resolution.
        corloc: Percent, ``None`` when not computed (no image, no ground truth).
        hits: Images hit; ``None`` without ground truth (folder).
        total: Images evaluated so far (failed ones included, as misses).
        failed: Images on which discovery failed.
        num_images: Size of the dataset.
        complete: Every image of the dataset is done.
        dataset_config: The whole ``dataset`` section of ``config.yaml`` (root, split, ...);
            not part of equality.
    """

    run_dir: Path
    backbone: str
    dataset: str
    weights: str
    discovery: DiscoveryProtocol
    max_size: int | None
    corloc: float | None
    hits: int | None
    total: int
    failed: int
    num_images: int
    complete: bool
    dataset_config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: For a row made from a ``lostreg sweep`` directory: ``best`` (chosen on the same data: an
    #: oracle) or ``chosen`` (chosen on ``selected_on`` and scored here); None for an ordinary run.
    sweep_role: str | None = None
    sweep_size: int = 0
    selected_on: str | None = None
    #: The register-neuron file of a run with a test-time register (``ttreg=``), else None.
    ttreg: str | None = None
    #: For a ``lostreg score`` run: the detector (its backbone, discovery and weights are those of the run
    #: it was trained on, when known); None for a discovery run.
    detector: DetectorInfo | None = None
    #: ``metrics.json``'s ``ap50``, ``image_order_ap50`` and ``corloc_by_confidence`` (None when absent:
    #: runs of earlier versions, no ground truth).
    ap50: float | None = field(default=None, compare=False)
    image_order_ap50: float | None = field(default=None, compare=False)
    confidence_curve: tuple[Mapping[str, Any], ...] | None = field(default=None, compare=False, repr=False)
    #: Where the row's ``preds.jsonl`` is when it is not ``run_dir`` (a sweep row: its configuration's directory).
    predictions_dir: Path | None = field(default=None, compare=False)

    @property
    def source_dir(self) -> Path:
        """The ordinary run directory holding this row's predictions."""
        return self.predictions_dir or self.run_dir
    #: For a sweep's rows: the values it tried per setting (its ``metrics.json`` ``grid``); None otherwise.
    sweep_grid: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def method(self) -> str:
        """The discovery method, ``lost`` or ``tokencut`` (``method=`` of the config); ``detector`` for a
        ``lostreg score`` run."""
        return DETECTOR_METHOD if self.detector is not None else self.discovery.method

    @property
    def method_label(self) -> str:
        """The method as tables name it: ``LOST``, ``TokenCut``."""
        return method_label(self.method)

    @property
    def which(self) -> str:
        """``q``, ``k`` or ``v``."""
        return self.discovery.features.which

    @property
    def layer(self) -> int:
        """Block index, negative from the end."""
        return self.discovery.features.layer

    @property
    def l2_normalize(self) -> bool:
        """Features L2-normalised before the method."""
        return self.discovery.features.l2_normalize

    @property
    def k_patches(self) -> int:
        """LOST's k."""
        return self.discovery.lost.k_patches

    @property
    def gram_bias(self) -> float:
        """Added to the Gram matrix."""
        return self.discovery.lost.gram_bias

    @property
    def is_random(self) -> bool:
        """The backbone had random weights (weight-free backbones such as ``pixels`` never do)."""
        return self.weights == "random" and not is_weight_free(self.backbone)

    @property
    def variant(self) -> list[str]:
        """How the run's data departs from the dataset's published form: ``["split=val", "no_hard"]``
        (the dataset kind's :meth:`~lostreg.datasets.registry.DatasetKind.variant`)."""
        return dataset_kind(self.dataset, strict=False).variant(self.dataset_config)

    @property
    def comparable(self) -> bool:
        """Whether published numbers of its dataset apply: the published split, all of its images.

        A run still in progress on that split is comparable (its cell is marked incomplete); a
        20-image split or a ``no_hard`` run is not.
        """
        return not self.variant and self.num_images == dataset_kind(self.dataset, strict=False).published_size

    @property
    def protocol(self) -> str:
        """The departures from the method's default protocol and data, e.g. ``"which=q layer=-2"``, or ``"default"``;
        for a sweep, which of its configurations the row is (``sweep of 132: best on the same data (oracle)``).

        The method itself is not named here (tables give it a column of its own): a TokenCut run
        with tau 0.2, eps 1e-5 and the default solver on the keys of the last layer is
        ``"default"``, one with ``tokencut.tau=0.3`` is ``"tau=0.3"``.
        """
        if self.detector is not None:
            return " ".join([self.detector.protocol_text(), *self.variant])
        if self.sweep_role == "best":
            parts = [f"sweep of {self.sweep_size}: best on the same data (oracle)"]
        elif self.sweep_role == "chosen":
            parts = [f"sweep of {self.sweep_size}: chosen on {self.selected_on}"]
        else:
            parts = [part for part in self.discovery.departures() if not part.startswith("method=")]
        if self.max_size is not None:
            parts.append(f"max_size={self.max_size}")
        if self.ttreg:
            parts.append(f"ttreg={Path(self.ttreg).stem}")
        if self.weights != _DEFAULT_WEIGHTS and not is_weight_free(self.backbone):
            parts.append(f"weights={self.weights}")
        parts += self.variant
        return " ".join(parts) or DEFAULT_PROTOCOL_TEXT

    @property
    def label(self) -> str:
        """Method, backbone and protocol in one line, e.g. ``TokenCut dino_vits16 [default]``."""
        return f"{self.method_label} {self.backbone} [{self.protocol}]"

    @property
    def row_key(self) -> tuple[str, str, str]:
        """``(method, backbone, protocol)``: runs with one key share a table row."""
        return self.method, self.backbone, self.protocol

    def published(self) -> PublishedResult | None:
        """The published row this run is comparable with (same checkpoint, the published protocol; see
        :mod:`lostreg.evaluation.published`): for a sweep's best configuration, a searched-protocol row
        whose grid it covers; never for a configuration chosen on other data (the sources chose on the
        data they scored: an oracle, another selection than ``select_on``); for a detector, the "+ CAD"
        row of what it was trained on, when it is scored on that same data."""
        if self.detector is not None:
            if self.detector.trained_on is None or self.detector.trained_dataset != self.dataset:
                return None
            return published_detector_match(self.backbone, self.discovery, self.weights)
        if self.sweep_role == "chosen":
            return None
        common: dict[str, Any] = {"ttreg": bool(self.ttreg), "max_size": self.max_size}
        if self.sweep_role == "best":
            return published_sweep_match(self.backbone, self.discovery, self.sweep_grid or {}, self.weights, **common)
        return published_match(self.backbone, self.discovery, self.weights, **common)


def _select(data: Any, dotted: str, source: Path) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RunError(f"{source}: missing key {dotted!r}")
        node = node[part]
    return node


def _typed(value: Any, kind: type, key: str, source: Path, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    # bool is an int to Python: a yaml/json `true` where a number belongs is a broken file.
    if isinstance(value, bool) != (kind is bool):
        raise RunError(f"{source}: {key!r} must be {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise RunError(f"{source}: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def _protocol(config: Mapping[str, Any], source: Path) -> DiscoveryProtocol:
    """The run's protocol, every value typed; what older files lack (method, l2_normalize, the
    sections of methods added later) takes the defaults, which were the only behaviour then."""
    for key in ("features.which", "features.layer", str(config.get("method", DEFAULT_METHOD))):
        _select(config, key, source)  # every lostreg version wrote these (the run's method section too)
    try:
        return DiscoveryProtocol.from_mapping(config, typed=True)
    except ProtocolError as err:
        raise RunError(f"{source}: {err}") from None


def load_run(run_dir: str | Path) -> RunSummary:
    """Read one run directory (of a sweep: its best configuration, see :func:`load_run_rows`).

    Raises:
        RunError: not a directory, a missing or unreadable ``config.yaml`` /
            ``metrics.json``, or a missing or mistyped key; the message names the path.
    """
    return load_run_rows(run_dir)[0]


def load_run_rows(run_dir: str | Path) -> list[RunSummary]:
    """The table rows of one run directory: one for ``lostreg eval``; for ``lostreg sweep`` its best
    configuration (an oracle) and, when it has one, the configuration chosen on other data.

    Raises:
        RunError: as :func:`load_run`.
    """
    run = RunDir(run_dir)
    run.require(CONFIG_FILE, METRICS_FILE)
    metrics = run.read_metrics()
    assert metrics is not None  # required above
    if metrics.get("kind") == SCORE_KIND:
        return [_score_summary(run, run.read_config(), metrics)]
    if metrics.get("kind") != "sweep":
        return [_summary(run, run.read_config(), metrics)]
    rows = []
    size = len(metrics.get("configurations") or [])
    entries = {role: metrics.get(role) for role in ("best", "selected")}
    if not metrics.get("complete"):
        # A sweep still running, or killed: its configurations' own metrics are current (written per
        # batch), the summary's copy is from its last start.
        entries["best"] = _current_best(run, metrics) or entries["best"]
    for role, entry in entries.items():
        if not entry:
            continue
        sub = run.configuration(str(entry["protocol"]))
        try:
            sub.require(CONFIG_FILE, METRICS_FILE)
        except RunError as err:
            raise RunError(f"{run.path}: sweep configuration {entry['protocol']} unreadable ({err})") from None
        summary = _summary(sub, sub.read_config(), sub.read_metrics() or {})
        rows.append(dataclasses.replace(summary, run_dir=run.path, predictions_dir=sub.path, sweep_size=size,
                                        sweep_role="best" if role == "best" else "chosen",
                                        selected_on=entry.get("on"), sweep_grid=_grid(metrics)))
    if not rows:
        raise RunError(f"{run.path}: a sweep without results yet")
    return rows


def sweep_choice(run_dir: str | Path) -> tuple[Path, str] | None:
    """For a sweep directory, the configuration that stands for it and a one-line note; None otherwise.

    The configuration chosen on other data (``select_on``) when there is one (the honest choice),
    else the best one on the sweep's own data (an oracle, said in the note). Its directory is an
    ordinary run directory (``configs/<protocol>/``) that ``export`` and ``report`` read.
    """
    run = RunDir(run_dir)
    try:
        metrics = run.read_metrics() or {}
    except RunError:
        return None
    if metrics.get("kind") != "sweep":
        return None
    selected = metrics.get("selected")
    best = _current_best(run, metrics) if not metrics.get("complete") else metrics.get("best")
    entry, how = ((selected, f"the configuration chosen on {selected.get('on')}") if selected
                  else (best, "its best configuration on the same data (an oracle)"))
    if not entry:
        return None
    path = run.configuration(str(entry["protocol"])).path
    return path, (f"{run.path} is a sweep of {len(metrics.get('configurations') or [])} configurations: using {how}, "
                  f"{entry['protocol']} ({path}); pass another {path.parent}/<protocol> directory for another")


def _grid(summary: Mapping[str, Any]) -> dict[str, list[Any]] | None:
    """A sweep's values per setting, from its summary (None when absent or malformed)."""
    grid = summary.get("grid")
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        return None
    return {str(k): list(v) for k, v in grid.items()}


def _current_best(run: RunDir, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The configuration of a sweep with the highest CorLoc now (ties: the summary's order), from the
    configurations' own ``metrics.json``; None when none has a CorLoc yet."""
    best: tuple[float, str] | None = None
    for entry in summary.get("configurations") or []:
        name = str(entry.get("protocol"))
        try:
            corloc = (run.configuration(name).read_metrics() or {}).get("corloc")
        except RunError:
            continue
        if isinstance(corloc, (int, float)) and (best is None or corloc > best[0]):
            best = (float(corloc), name)
    return None if best is None else {"protocol": best[1]}


def _quality(metrics: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """The ranking metrics of ``metrics.json`` (absent in runs of earlier versions: None)."""
    curve = metrics.get("corloc_by_confidence")
    return {
        "ap50": _typed(metrics.get("ap50"), float, "ap50", source, optional=True),
        "image_order_ap50": _typed(metrics.get("image_order_ap50"), float, "image_order_ap50", source, optional=True),
        "confidence_curve": tuple(curve) if isinstance(curve, list) else None,
    }


def _score_summary(run: RunDir, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> RunSummary:
    """A ``lostreg score`` run as a row: named by the discovery run the detector was trained on, when known."""
    for key in _METRIC_KEYS:
        if key not in metrics:
            raise RunError(f"{run.metrics_path}: missing key {key!r}")
    dataset = _select(config, "dataset", run.config_path)
    detector = DetectorInfo.from_config(config)
    trained = detector.trained_on or {}
    try:
        discovery = DiscoveryProtocol.from_mapping(trained.get("protocol") or {})
    except ProtocolError as err:
        raise RunError(f"{run.config_path}: trained_on: {err}") from None
    corloc = _typed(metrics["corloc"], float, "corloc", run.metrics_path, optional=True)
    return RunSummary(
        run_dir=run.path,
        backbone=str(trained.get("backbone") or "-"),
        dataset=str(_select(config, "dataset.name", run.config_path)).lower(),
        weights=str(trained.get("weights") or _DEFAULT_WEIGHTS),
        discovery=discovery,
        max_size=None,
        corloc=None if corloc is None or math.isnan(corloc) else corloc,
        hits=_typed(metrics["hits"], int, "hits", run.metrics_path, optional=True),
        total=_typed(metrics["total"], int, "total", run.metrics_path),
        failed=_typed(metrics.get("failed", 0), int, "failed", run.metrics_path),
        num_images=_typed(metrics["num_images"], int, "num_images", run.metrics_path),
        complete=_typed(metrics["complete"], bool, "complete", run.metrics_path),
        dataset_config=dict(dataset),
        detector=detector,
        **_quality(metrics, run.metrics_path),
    )


def _summary(run: RunDir, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> RunSummary:
    cfg = {key: _select(config, key, run.config_path) for key in _CONFIG_KEYS}
    for key in _METRIC_KEYS:
        if key not in metrics:
            raise RunError(f"{run.metrics_path}: missing key {key!r}")
    corloc = _typed(metrics["corloc"], float, "corloc", run.metrics_path, optional=True)
    if corloc is not None and math.isnan(corloc):
        corloc = None
    return RunSummary(
        run_dir=run.path,
        backbone=str(cfg["backbone.name"]),
        dataset=str(cfg["dataset.name"]).lower(),
        weights=str(cfg["weights"]),
        discovery=_protocol(config, run.config_path),
        # 0 means "off", as null does: one protocol, one row.
        max_size=_typed(cfg["max_size"], int, "max_size", run.config_path, optional=True) or None,
        corloc=corloc,
        hits=_typed(metrics["hits"], int, "hits", run.metrics_path, optional=True),
        total=_typed(metrics["total"], int, "total", run.metrics_path),
        failed=_typed(metrics.get("failed", 0), int, "failed", run.metrics_path),
        num_images=_typed(metrics["num_images"], int, "num_images", run.metrics_path),
        complete=_typed(metrics["complete"], bool, "complete", run.metrics_path),
        dataset_config=dict(config["dataset"]),  # a dict: _select found dataset.name in it
        ttreg=str(config["ttreg"]) if config.get("ttreg") else None,
        **_quality(metrics, run.metrics_path),
    )


def _expand(pattern: str) -> list[Path]:
    """A literal existing path as is, else the sorted glob matches (``**`` recursive)."""
    if Path(pattern).exists() or not any(c in pattern for c in "*?["):
        return [Path(pattern)]
    return [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]


def load_runs(
    paths: Iterable[str | Path],
    on_error: Callable[[RunError], None] | None = None,
) -> list[RunSummary]:
    """Read run directories given as paths or glob patterns.

    Args:
        paths: Run directories or glob patterns (``outputs/voc07/*/*``). A directory
            matched twice is read once.
        on_error: Called with each :class:`RunError` (bad directory, pattern matching
            nothing); the others are still read. ``None``: the first error is raised.

    Returns:
        The readable runs, in the order given (matches of one pattern sorted).
    """
    runs: list[RunSummary] = []
    seen: set[Path] = set()
    for pattern in paths:
        matches = _expand(str(pattern))
        if not matches:
            err = RunError(f"{pattern}: no run directory matches this pattern")
            if on_error is None:
                raise err
            on_error(err)
        for match in matches:
            resolved = match.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                runs.extend(load_run_rows(match))
            except RunError as err:
                if on_error is None:
                    raise
                on_error(err)
    return runs
