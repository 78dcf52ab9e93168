"""``lostreg sweep``: many discovery protocols over one dataset, from ONE backbone pass per batch.

The grid (``sweep.which``, ``sweep.layer``, ``sweep.l2_normalize``, ``sweep.gram_bias``,
``sweep.k_patches``; a missing list is the single value of ``features.*`` / ``lost.*``) gives
the configurations. Per batch, :meth:`~lostreg.backbones.base.Backbone.extract_many` returns every
(which, layer) feature set they need from one forward pass, and each configuration runs the
method on its features. So the cost grows with the number of method configurations, not of
backbone passes.

Run directory (through :class:`lostreg.rundir.RunDir`)::

    <sweep dir>/config.yaml          the sweep's composed config (its identity: data, backbone,
                                     weights, max_size, precision, method and the grid)
    <sweep dir>/run.json             sessions
    <sweep dir>/metrics.json         {"kind": "sweep", "configurations": [...], "best": ..., "selected": ...}
    <sweep dir>/sweep.csv            one row per configuration, best first
    <sweep dir>/configs/<protocol>/  one ordinary run directory per configuration (config.yaml,
                                     preds.jsonl, metrics.json): compare, report and export read
                                     them as they read ``lostreg eval``'s, and their predictions
                                     equal those of ``lostreg eval`` with that protocol

Resumable and kill-safe as eval: each configuration's predictions are appended per batch; an
image missing from any configuration is redone (its features recomputed once) for the
configurations that lack it.

Honest selection: the best configuration on the evaluated data is an optimistic (oracle)
number. ``select_on=voc07`` picks the configuration on another dataset's sweep of the same grid
(its ``metrics.json``) and reports it, fixed, beside this dataset's own best.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lostreg.backbones import Backbone
from lostreg.config import ConfigError, run_identity
from lostreg.datasets.base import ImageDataset, ImageRecord
from lostreg.datasets.registry import kind_of
from lostreg.discovery import ObjectDiscoverer
from lostreg.evaluation.evaluators import DatasetEvaluators, default_evaluators
from lostreg.evaluation.loading import DevicePrefetcher, LoadedBatch, iterate_prepared
from lostreg.evaluation.runner import (
    BackboneBuilder,
    _git_state,
    _Timer,
    _versions,
    build_parts,
    check_memory,
    prediction_record,
)
from lostreg.io.atomic import atomic_write_text
from lostreg.preprocess import batch_images
from lostreg.protocol import OUTPUT_NORMS, DiscoveryProtocol, FeatureConfig, FeatureKey, LostConfig
from lostreg.rundir import (
    SWEEP_CSV,
    PredictionStore,
    PredictionWriter,
    RunDir,
    RunError,
    run_dir_on_dataset,
    sweep_dir_name,
    sweep_run_dir,
)

__all__ = ["SweepGrid", "SweepJob", "SweepResult", "select_on_dir", "sweep_identity", "sweep_table_markdown"]

SWEEP_COLUMNS = ("which", "layer", "l2_normalize", "gram_bias", "k_patches", "corloc", "hits", "total")
OPTIMISTIC_NOTE = ("The best configuration is chosen on the data it is scored on: an optimistic (oracle) "
                   "number. A configuration chosen on other data (select_on=) is the honest one.")


@dataclass(frozen=True)
class SweepGrid:
    """The configurations of a sweep, in grid order (which, layer, l2_normalize, gram_bias, k_patches).

    Attributes:
        configurations: one validated :class:`DiscoveryProtocol` per combination (no duplicates).
        lists: the swept values per setting, as resolved (for identity and the file).
    """

    configurations: tuple[DiscoveryProtocol, ...]
    lists: Mapping[str, list[Any]]

    @classmethod
    def from_config(cls, cfg: DictConfig, base: DiscoveryProtocol) -> "SweepGrid":
        """Expand ``cfg.sweep`` around ``base`` (a missing list is base's single value).

        Raises:
            ConfigError: an empty list; ProtocolError: a value out of range (validated per configuration).
        """
        sweep = OmegaConf.to_container(cfg.sweep, resolve=True)
        assert isinstance(sweep, dict)
        single = {"which": base.features.which, "layer": base.features.layer,
                  "l2_normalize": base.features.l2_normalize, "gram_bias": base.lost.gram_bias,
                  "k_patches": base.lost.k_patches}
        lists: dict[str, list[Any]] = {}
        for key, value in single.items():
            values = sweep.get(key)
            if values is not None and not values:
                raise ConfigError(f"sweep.{key} is an empty list; give values or leave it out")
            lists[key] = list(dict.fromkeys(values)) if values is not None else [value]
        if base.method != "lost" and (len(lists["gram_bias"]) > 1 or len(lists["k_patches"]) > 1):
            raise ConfigError(f"sweep.gram_bias / sweep.k_patches are LOST's knobs; method={base.method} has none")
        configurations = []
        for which, layer, l2, bias, k in itertools.product(*lists.values()):
            protocol = dataclasses.replace(
                base, features=FeatureConfig(which=which, layer=layer, l2_normalize=l2),
                lost=LostConfig(k_patches=k, gram_bias=float(bias), exclude_outliers=base.lost.exclude_outliers))
            configurations.append(protocol.validate())
        return cls(tuple(configurations), lists)

    @property
    def feature_keys(self) -> list[FeatureKey]:
        """The (which, layer) feature sets the configurations need, in first-use order (and the
        output norms when a configuration excludes high-norm outliers)."""
        keys = list(dict.fromkeys(p.features.key for p in self.configurations))
        if any(p.method == "lost" and p.lost.exclude_outliers for p in self.configurations):
            keys.append(OUTPUT_NORMS)
        return keys

    def default_run_dir(self, cfg: DictConfig) -> str:
        """Where ``lostreg sweep`` (and ``lostreg experiment``) put this grid when ``run_dir`` is not given:
        beside the eval runs of ``cfg``'s dataset and backbone, named by the grid, ``max_size`` and
        precision (:func:`lostreg.rundir.sweep_dir_name`)."""
        name = sweep_dir_name(self.configurations[0].method, self.lists, cfg.max_size, str(cfg.precision))
        return sweep_run_dir(str(cfg.run_dir), name)


@dataclass
class SweepResult:
    """One configuration's outcome: its protocol, sub-run directory and metrics."""

    protocol: DiscoveryProtocol
    run_dir: RunDir
    metrics: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        f, lost = self.protocol.features, self.protocol.lost
        return {"which": f.which, "layer": f.layer, "l2_normalize": f.l2_normalize, "gram_bias": lost.gram_bias,
                "k_patches": lost.k_patches, "corloc": self.metrics.get("corloc"), "hits": self.metrics.get("hits"),
                "total": self.metrics.get("total")}


def _sort_key(indexed: tuple[int, SweepResult]) -> tuple[float, int]:
    index, result = indexed
    corloc = result.metrics.get("corloc")
    return (-(corloc if corloc is not None else float("-inf")), index)  # best first, grid order on ties


def sweep_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep directory's identity: the run identity without the single protocol, plus the grid."""
    identity = run_identity(config)
    for key in ("features", "lost", "tokencut"):
        identity.pop(key, None)
    identity["sweep"] = {key: value for key, value in (config.get("sweep") or {}).items()}
    return identity


class SweepJob:
    """A sweep, checked and ready (see the module docstring).

    Use :meth:`prepare` (validates everything and builds the backbone, writes nothing), then :meth:`run`.
    """

    def __init__(self, cfg: DictConfig, dataset: ImageDataset, backbone: Backbone, grid: SweepGrid,
                 run_dir: RunDir) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.backbone = backbone
        self.grid = grid
        self.run_dir = run_dir
        max_size, precision = cfg.max_size or None, str(cfg.precision)
        # One discoverer per configuration, sharing the backbone; each validates its protocol.
        self.discoverers = [ObjectDiscoverer(backbone, p, max_size=max_size, precision=precision)
                            for p in grid.configurations]
        self.results = [SweepResult(p, run_dir.configuration(p.name)) for p in grid.configurations]

    @classmethod
    def prepare(cls, cfg: DictConfig, backbone: Backbone | None = None,
                builder: BackboneBuilder | None = None) -> "SweepJob":
        """Validate the config and the grid, read the dataset, build the backbone; write nothing.

        Raises:
            ConfigError, ProtocolError, DatasetLayoutError, UnknownBackboneError, WeightsError, ValueError.
        """
        base, dataset, backbone, dist = build_parts(cfg, backbone, builder)
        if dist.is_distributed:
            raise ConfigError("lostreg sweep runs in one process (start it without torchrun)")
        grid = SweepGrid.from_config(cfg, base)
        check_memory(cfg, dataset, backbone, grid.configurations)
        return cls(cfg, dataset, backbone, grid, RunDir(cfg.run_dir))

    # -- running -----------------------------------------------------------------------------

    def run(self, progress: bool = True, command: str | None = None,
            log: Callable[[str], None] | None = None) -> list[SweepResult]:
        """Run (or resume) the sweep; return the configurations' results, best first."""
        log = log or (lambda text: print(text, file=sys.stderr))
        with self.run_dir.lock(command):
            if self.cfg.overwrite:
                removed = self.run_dir.clear()
                for result in self.results:
                    removed += result.run_dir.clear()
                if removed:
                    log(f"overwrite=true: removed earlier results from {self.run_dir.path}")
            container = OmegaConf.to_container(self.cfg, resolve=True)
            assert isinstance(container, dict)
            self.run_dir.pin_config(container, sweep_identity)
            for result in self.results:
                sub = _configuration_config(container, result.protocol, result.run_dir.path)
                result.run_dir.pin_config(sub, run_identity)
            return self._session(progress, command, log)

    def _session(self, progress: bool, command: str | None, log: Callable[[str], None]) -> list[SweepResult]:
        cfg, dataset = self.cfg, self.dataset
        stores = [r.run_dir.store() for r in self.results]
        done = [store.load() for store in stores]
        evaluators = [default_evaluators(dataset.has_ground_truth) for _ in self.results]
        lines_done: list[list[dict[str, Any]]] = []
        for preds, evaluator in zip(done, evaluators):
            stored = [preds[r.image_id] for r in dataset if r.image_id in preds]
            evaluator.process(stored)
            lines_done.append(stored)
        selected = list(dataset) if cfg.limit is None else list(dataset)[: cfg.limit]
        todo = [r for r in selected if any(r.image_id not in preds for preds in done)]
        if not todo:
            log(f"{self.run_dir.path}: every configuration is done for the images asked; nothing to run")
        elif any(done):
            log(f"resuming {self.run_dir.path}: {len(selected) - len(todo)}/{len(selected)} images done in "
                f"every configuration, {len(todo)} to go")
        timer = _Timer()
        session: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(sys.argv), "configurations": len(self.results),
            "feature_sets": [list(key) for key in self.grid.feature_keys],
            "device": str(self.backbone.device), "precision": str(cfg.precision),
            "batch_size": int(cfg.batch_size), "num_workers": int(cfg.num_workers), "limit": cfg.limit,
            "versions": _versions(), "git": _git_state(),
        }
        interrupted = False
        try:
            if todo:
                self._process(todo, stores, done, evaluators, lines_done, timer, progress)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            for result, evaluator, lines in zip(self.results, evaluators, lines_done):
                result.metrics = _metrics(evaluator, lines, dataset, cfg, timer, final=True)
                result.run_dir.write_metrics(result.metrics)
            ranked = self._write_summary(log)
            session.update(timings=timer.as_dict(), interrupted=interrupted)
            self.run_dir.append_session(session)
        return ranked

    def _process(self, todo: list[ImageRecord], stores: list[PredictionStore], done: list[dict[str, Any]],
                 evaluators: list[DatasetEvaluators], lines_done: list[list[dict[str, Any]]], timer: _Timer,
                 progress: bool) -> None:
        cfg, backbone = self.cfg, self.backbone
        preparer = self.discoverers[0].preparer  # the same for all: one backbone, one max_size
        keys = self.grid.feature_keys
        bar = tqdm(total=len(todo), desc=f"sweep {cfg.dataset.name} {backbone.name} x{len(self.results)}",
                   unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        batches = DevicePrefetcher(iterate_prepared(todo, preparer, int(cfg.batch_size), int(cfg.num_workers),
                                                    pin_memory=backbone.device.type == "cuda"), backbone.device)
        writer = PredictionWriter(self.results[0].run_dir, stores[0])
        try:
            waited = time.monotonic()
            for batch in batches:
                timer.load_wait_s += time.monotonic() - waited
                start = time.monotonic()
                per_config = self._discover(batch, keys)
                timer.compute_s += time.monotonic() - start
                for i, lines in enumerate(per_config):
                    lines = [line for line in lines if line["image_id"] not in done[i]]  # resumed: keep the stored
                    evaluators[i].process(lines)
                    lines_done[i] += lines
                    metrics = _metrics(evaluators[i], lines_done[i], self.dataset, cfg, timer, final=False)
                    writer.submit(lines, metrics, store=stores[i], run_dir=self.results[i].run_dir)
                size = len(batch.failed) + sum(len(g.items) for g in batch.groups)
                timer.images += size
                bar.update(size)
                waited = time.monotonic()
        finally:
            bar.close()
            writer.close()

    def _discover(self, batch: LoadedBatch, keys: list[FeatureKey]) -> list[list[dict[str, Any]]]:
        """Prediction lines of every configuration for one loader batch, from one backbone pass per group."""
        per_config: list[list[dict[str, Any]]] = [[prediction_record(it.record, None, it.error) for it in batch.failed]
                                                   for _ in self.results]
        for group in batch.groups:
            items = [it.prepared for it in group.items]
            try:
                images = batch_images(items, self.backbone.device, group.packed)  # type: ignore[arg-type]
                features = self.backbone.extract_many(images, keys, precision=str(self.cfg.precision))
                for i, discoverer in enumerate(self.discoverers):
                    key = discoverer.protocol.features.key
                    found = discoverer.locate_batch(items, features[key], features.get(OUTPUT_NORMS))  # type: ignore[arg-type]
                    per_config[i] += [prediction_record(it.record, f, None) for it, f in zip(group.items, found)]
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # noqa: BLE001 - one bad image never takes its batch down
                for it in group.items:
                    for i, lines in enumerate(self._discover_one(it, keys, err)):
                        per_config[i].append(lines)
        return per_config

    def _discover_one(self, item: Any, keys: list[FeatureKey], batch_error: Exception) -> list[dict[str, Any]]:
        """One image alone, after its batch failed: its lines, or its error in every configuration."""
        try:
            images = batch_images([item.prepared], self.backbone.device)
            features = self.backbone.extract_many(images, keys, precision=str(self.cfg.precision))
            return [prediction_record(item.record, d.locate_batch([item.prepared], features[d.protocol.features.key],
                                                                  features.get(OUTPUT_NORMS))[0], None)
                    for d in self.discoverers]
        except Exception as err:  # noqa: BLE001 - recorded, the run goes on
            message = f"{item.record.path}: {type(err).__name__}: {' '.join(str(err).split())}"
            return [prediction_record(item.record, None, message) for _ in self.discoverers]

    # -- the table -----------------------------------------------------------------------------

    def _write_summary(self, log: Callable[[str], None]) -> list[SweepResult]:
        """sweep.csv and the sweep's metrics.json (best first; the selection on other data if asked)."""
        ranked = [r for _, r in sorted(enumerate(self.results), key=_sort_key)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(SWEEP_COLUMNS))
        writer.writeheader()
        writer.writerows(r.row() for r in ranked)
        atomic_write_text(self.run_dir.path / SWEEP_CSV, buffer.getvalue())
        best = ranked[0]
        summary: dict[str, Any] = {
            "kind": "sweep",
            "dataset": str(self.cfg.dataset.name),
            "backbone": str(self.cfg.backbone.name),
            "num_images": len(self.dataset),
            "total": min(int(r.metrics.get("total") or 0) for r in self.results),
            "complete": all(bool(r.metrics.get("complete")) for r in self.results),
            "grid": dict(self.grid.lists),
            "configurations": [{"protocol": r.protocol.name, **r.row()} for r in ranked],
            "best": {"protocol": best.protocol.name, **best.row(), "note": OPTIMISTIC_NOTE},
            "selected": self._selection(log),
        }
        self.run_dir.write_metrics(summary)
        return ranked

    def _selection(self, log: Callable[[str], None]) -> dict[str, Any] | None:
        """The configuration chosen on another dataset's sweep, scored here (``select_on=``)."""
        if not self.cfg.select_on:
            return None
        other = select_on_dir(str(self.cfg.select_on), self.run_dir.path, self.cfg.dataset)
        try:
            chosen = RunDir(other).read_metrics()
        except RunError as err:
            raise ConfigError(f"select_on={self.cfg.select_on}: {err}") from None
        if not chosen or chosen.get("kind") != "sweep":
            raise ConfigError(f"select_on={self.cfg.select_on}: {other} holds no finished sweep "
                              "(run `lostreg sweep` on that dataset with the same grid first)")
        name = chosen["best"]["protocol"]
        here = next((r for r in self.results if r.protocol.name == name), None)
        if here is None:
            raise ConfigError(f"select_on={self.cfg.select_on}: its best configuration {name} is not in this grid")
        log(f"chosen on {chosen.get('dataset')}: {name}")
        return {"on": chosen.get("dataset"), "from": str(other), "protocol": name, **here.row()}


def select_on_dir(select_on: str, sweep_dir: Path, dataset: Mapping[str, Any]) -> Path:
    """The sweep directory named by ``select_on``: a path, or another dataset's directory name (``voc07``,
    ``voc07_nohard``) whose sweep of the same backbone and grid sits beside ``sweep_dir`` (a sweep of
    ``dataset``, the config's section) in the default layout (:func:`lostreg.rundir.run_dir_on_dataset`).

    Raises:
        ConfigError: neither is a directory; one line naming where it looked.
    """
    path = Path(select_on).expanduser()
    if path.is_dir():
        return path
    if Path(select_on).name != select_on:  # a path, not a dataset's directory name
        raise ConfigError(f"select_on={select_on}: no such sweep directory")
    beside = run_dir_on_dataset(sweep_dir, kind_of(dataset).dir_name(dataset), select_on)
    if beside is None:
        raise ConfigError(f"select_on={select_on}: no directory {path}, and this sweep's run_dir {sweep_dir} is not "
                          f"in the default layout, so no sweep of {select_on} can be found beside it; "
                          "give select_on the sweep directory")
    if not beside.is_dir():
        raise ConfigError(f"select_on={select_on}: no directory {path}, and no sweep of {select_on} at {beside} "
                          f"(run `lostreg sweep` on {select_on} with the same backbone and grid first)")
    return beside


def _configuration_config(container: Mapping[str, Any], protocol: DiscoveryProtocol, path: Path) -> dict[str, Any]:
    """An ordinary eval config for one configuration: the sweep's, with this protocol and no grid."""
    config = json.loads(json.dumps(container))  # a deep copy of plain data
    config.update(protocol.as_dict())
    config["sweep"] = {key: None for key in (container.get("sweep") or {})}
    config["select_on"] = None
    config["run_dir"] = str(path)
    return config


def _metrics(evaluator: DatasetEvaluators, lines: list[dict[str, Any]], dataset: ImageDataset, cfg: DictConfig,
             timer: _Timer, final: bool) -> dict[str, Any]:
    total = len(lines)
    metrics: dict[str, Any] = {"corloc": None, "hits": None}
    metrics.update(evaluator.evaluate(final=final))
    metrics.update(total=total, failed=sum(line.get("error") is not None for line in lines),
                   num_images=len(dataset), complete=total == len(dataset), dataset=str(cfg.dataset.name),
                   backbone=str(cfg.backbone.name), timings=timer.as_dict())
    return metrics


def sweep_table_markdown(results: list[SweepResult], selected: Mapping[str, Any] | None = None) -> str:
    """The configurations as a markdown table, best first, with the optimism note."""
    header = "| " + " | ".join(SWEEP_COLUMNS) + " |\n|" + "---|" * len(SWEEP_COLUMNS) + "\n"
    lines = []
    for result in results:
        row = result.row()
        corloc = row["corloc"]
        row["corloc"] = "n/a" if corloc is None else f"{corloc:.2f}"
        row["gram_bias"] = f"{row['gram_bias']:g}"
        lines.append("| " + " | ".join(str(row[c]) for c in SWEEP_COLUMNS) + " |")
    text = header + "\n".join(lines) + "\n\n" + OPTIMISTIC_NOTE + "\n"
    if selected:
        corloc = selected.get("corloc")
        value = "n/a" if corloc is None else f"{corloc:.2f}"
        text += f"\nChosen on {selected['on']}: {selected['protocol']}, CorLoc here {value}.\n"
    return text
