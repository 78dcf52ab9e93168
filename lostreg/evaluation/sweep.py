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
import io
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from lostreg.backbones import Backbone
from lostreg.config import ConfigError, run_identity, sweep_axes
from lostreg.datasets.base import ImageDataset
from lostreg.datasets.registry import kind_of
from lostreg.evaluation.engine import DiscoveryEngine
from lostreg.evaluation.runner import (
    BackboneBuilder,
    DatasetSession,
    RunTarget,
    build_run_backbone,
    check_memory,
    check_parts,
    resolved,
    retry_failed,
)
from lostreg.io.atomic import atomic_write_text
from lostreg.knobs import FeatureConfig, knob_fields, omitted_at_default
from lostreg.protocol import DiscoveryProtocol, FeatureKey, ProtocolError
from lostreg.rundir import SWEEP_CSV, RunDir, RunError, run_dir_on_dataset, sweep_dir_name, sweep_run_dir

__all__ = ["SweepGrid", "SweepJob", "SweepResult", "select_on_dir", "sweep_identity", "sweep_table_markdown"]

#: Columns after the settings in ``sweep.csv`` and the table.
RESULT_COLUMNS = ("corloc", "hits", "total")
OPTIMISTIC_NOTE = ("The best configuration is chosen on the data it is scored on: an optimistic (oracle) "
                   "number. A configuration chosen on other data (select_on=) is the honest one.")


@dataclass(frozen=True)
class SweepGrid:
    """The configurations of a sweep, in grid order (the settings of :attr:`lists`, last varying fastest).

    Attributes:
        configurations: one validated :class:`DiscoveryProtocol` per combination (no duplicates).
        lists: the values per setting, in column order: the features' settings, the method's table
            knobs (:attr:`lostreg.methods.MethodSpec.table_knobs`), then any other knob of the method
            the grid varies. A setting not swept holds the base protocol's single value.
    """

    configurations: tuple[DiscoveryProtocol, ...]
    lists: Mapping[str, list[Any]]

    @classmethod
    def from_config(cls, cfg: DictConfig, base: DiscoveryProtocol) -> "SweepGrid":
        """Expand ``cfg.sweep`` around ``base`` (a missing list is base's single value).

        Raises:
            ConfigError: an empty list, a setting of another method than ``base.method``, or
                ``objects`` other than 1;
            ProtocolError: a value out of range (validated per configuration).
        """
        if base.objects != 1:
            # A sweep ranks protocols by the CorLoc of one box per image; objects= changes which
            # boxes a run keeps, not how it finds the first: evaluate the chosen protocol with it.
            raise ConfigError(f"objects={base.objects}: a sweep runs one object per image; run lostreg eval with "
                              "objects= on the configuration you choose")
        sweep = OmegaConf.to_container(cfg.sweep, resolve=True)
        assert isinstance(sweep, dict)
        axes = sweep_axes()
        given = {name: values for name, values in sweep.items() if values is not None}
        for name, values in given.items():
            section = axes[name][0]
            if section not in ("features", base.method):
                raise ConfigError(f"sweep.{name} is a setting of method {section}; method={base.method} has none "
                                  f"(its settings: {', '.join(base.spec.knob_names())})")
            if not values:
                raise ConfigError(f"sweep.{name} is an empty list; give values or leave it out")
        knobs = base.spec.knob_names()
        # A feature setting left out of run identities at its default (pos_embed_antialias) gets a
        # column only when set or swept: older sweeps keep their grid, hence their directory name.
        columns = [f.name for f in knob_fields(FeatureConfig)
                   if not omitted_at_default(f) or f.name in given or getattr(base.features, f.name) != f.default]
        columns += list(base.spec.table_knobs)
        columns += [name for name in knobs if name in given and name not in columns]
        current = {**vars(base.features), **vars(base.method_knobs)}
        lists = {name: list(dict.fromkeys(given[name])) if name in given else [current[name]] for name in columns}
        configurations = []
        for values in itertools.product(*lists.values()):
            chosen = dict(zip(columns, values))
            protocol = base.with_knobs(features={k: v for k, v in chosen.items() if axes[k][0] == "features"},
                                       knobs={k: v for k, v in chosen.items() if axes[k][0] != "features"})
            try:
                configurations.append(protocol.validate())
            except ProtocolError as err:  # named as the user typed it: sweep.which, not features.which
                raise ProtocolError(_as_sweep_key(str(err), {name: axes[name][0] for name in given})) from None
        return cls(tuple(dict.fromkeys(configurations)), lists)

    @property
    def columns(self) -> tuple[str, ...]:
        """The settings of the table, in order."""
        return tuple(self.lists)

    @property
    def feature_keys(self) -> list[FeatureKey]:
        """The feature sets the configurations need (their (which, layer) and what their method
        asks for besides, e.g. the output norms), in first-use order."""
        return DiscoveryEngine.feature_keys_of(self.configurations)

    def default_run_dir(self, cfg: DictConfig) -> str:
        """Where ``lostreg sweep`` (and ``lostreg experiment``) put this grid when ``run_dir`` is not given:
        beside the eval runs of ``cfg``'s dataset and backbone, named by the grid, ``max_size`` and
        precision (:func:`lostreg.rundir.sweep_dir_name`)."""
        name = sweep_dir_name(self.configurations[0].method, self.lists, cfg.max_size, str(cfg.precision))
        return sweep_run_dir(str(cfg.run_dir), name)


def _as_sweep_key(message: str, swept: Mapping[str, str]) -> str:
    """``features.which must be ...`` -> ``sweep.which must be ...`` when ``which`` is a swept setting."""
    for name, section in swept.items():
        key = f"{section}.{name}"
        if message.startswith(key + " "):
            return f"sweep.{name}" + message[len(key):]
    return message


@dataclass
class SweepResult:
    """One configuration's outcome: its protocol, sub-run directory and metrics."""

    protocol: DiscoveryProtocol
    run_dir: RunDir
    metrics: dict[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        """The table row: the grid's settings (``columns``) then corloc, hits, total."""
        values = {**vars(self.protocol.features), **vars(self.protocol.method_knobs)}
        row = {name: values[name] for name in self.columns}
        row.update({key: self.metrics.get(key) for key in RESULT_COLUMNS})
        return row


def _sort_key(indexed: tuple[int, SweepResult]) -> tuple[float, int]:
    index, result = indexed
    corloc = result.metrics.get("corloc")
    return (-(corloc if corloc is not None else float("-inf")), index)  # best first, grid order on ties


def sweep_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep directory's identity: the run identity without the single protocol, plus the grid (the
    settings it lists; unset ones are left out, so directories of versions with fewer axes still match)."""
    identity = run_identity(config)
    for key in DiscoveryProtocol.from_mapping(config).identity():
        if key != "method":
            identity.pop(key, None)
    identity["sweep"] = {key: value for key, value in (config.get("sweep") or {}).items() if value is not None}
    return identity


class SweepJob:
    """A sweep, checked and ready (see the module docstring).

    Use :meth:`prepare` (validates everything and builds the backbone, writes nothing), then :meth:`run`.
    """

    def __init__(self, cfg: DictConfig, dataset: ImageDataset, backbone: Backbone, grid: SweepGrid,
                 run_dir: RunDir, chosen: "ChosenElsewhere | None" = None) -> None:
        self.cfg = cfg
        self.chosen = chosen
        self.dataset = dataset
        self.backbone = backbone
        self.grid = grid
        self.run_dir = run_dir
        # One engine for every configuration: each validates its protocol against the backbone.
        self.engine = DiscoveryEngine(backbone, grid.configurations, max_size=cfg.max_size or None,
                                      precision=str(cfg.precision))
        self.results = [SweepResult(p, run_dir.configuration(p.name), columns=grid.columns)
                        for p in grid.configurations]

    @classmethod
    def prepare(cls, cfg: DictConfig, backbone: Backbone | None = None, builder: BackboneBuilder | None = None,
                dataset: ImageDataset | None = None) -> "SweepJob":
        """Validate the config and the grid, read the dataset (unless given), build the backbone (unless
        given); write nothing.

        Raises:
            ConfigError, ProtocolError, DatasetLayoutError, UnknownBackboneError, WeightsError, RunError,
                RunLockedError, RunConfigMismatch.
        """
        base, dataset, dist = check_parts(cfg, dataset, identity=sweep_identity)
        if dist.is_distributed:
            raise ConfigError("lostreg sweep runs in one process (start it without torchrun)")
        grid = SweepGrid.from_config(cfg, base)
        chosen = chosen_on_other_data(cfg, grid)  # select_on: refused now, not after the whole sweep
        backbone = build_run_backbone(cfg, dist, backbone, builder)
        check_memory(cfg, dataset, backbone, grid.configurations)
        return cls(cfg, dataset, backbone, grid, RunDir(cfg.run_dir), chosen)

    # -- running -----------------------------------------------------------------------------

    def run(self, progress: bool = True, command: str | None = None,
            log: Callable[[str], None] | None = None) -> list[SweepResult]:
        """Run (or resume) the sweep; return the configurations' results, best first.

        The summary (``sweep.csv``, the sweep's ``metrics.json``) is written whatever happens, so a
        sweep directory is always readable; an interruption or a bug then goes on up.
        """
        log = log or (lambda text: print(text, file=sys.stderr))
        with self.run_dir.lock(command):
            if self.cfg.overwrite:
                removed = self.run_dir.clear()
                for result in self.results:
                    removed += result.run_dir.clear()
                if removed:
                    log(f"overwrite=true: removed earlier results from {self.run_dir.path}")
            container = resolved(self.cfg)
            self.run_dir.pin_config(container, sweep_identity)
            for result in self.results:
                sub = _configuration_config(container, result.protocol, result.run_dir.path)
                result.run_dir.pin_config(sub, run_identity)
            retry_failed([r.run_dir for r in self.results], log)
            for result in self.results:  # resumed: what is on disk
                result.metrics = result.run_dir.read_metrics() or {}
            self._write_summary(log)  # readable from the start (compare reads a killed sweep)
            targets = [RunTarget(r.protocol, r.run_dir, self.dataset, self.cfg) for r in self.results]
            session = DatasetSession(
                self.engine, targets, self.run_dir, self.cfg, progress=progress, command=command, log=log,
                session_fields={"configurations": len(self.results),
                                "feature_sets": [list(key) for key in self.grid.feature_keys]},
                announce=self._announce)
            try:
                for result, metrics in zip(self.results, session.run()):
                    result.metrics = metrics
            finally:
                if not all(r.metrics.get("timings") for r in self.results):  # stopped early: what is on disk
                    for result in self.results:
                        result.metrics = result.run_dir.read_metrics() or {}
                ranked = self._write_summary(log)
            if self.chosen is not None:
                log(f"chosen on {self.chosen.dataset}: {self.chosen.protocol}")
            return ranked

    def _announce(self, session: DatasetSession, selected: int, remaining: int) -> None:
        if remaining == 0:
            session.log(f"{self.run_dir.path}: every configuration is done for the images asked; nothing to run")
        elif any(t.done for t in session.targets):
            session.log(f"resuming {self.run_dir.path}: {selected - remaining}/{selected} images done in "
                        f"every configuration, {remaining} to go")

    # -- the table -----------------------------------------------------------------------------

    def _write_summary(self, log: Callable[[str], None]) -> list[SweepResult]:
        """sweep.csv and the sweep's metrics.json (best first; the selection on other data if asked)."""
        ranked = [r for _, r in sorted(enumerate(self.results), key=_sort_key)]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[*self.grid.columns, *RESULT_COLUMNS])
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
        """The configuration chosen on another dataset's sweep (``select_on=``), scored here."""
        if self.chosen is None:
            return None
        here = next(r for r in self.results if r.protocol.name == self.chosen.protocol)
        return {"on": self.chosen.dataset, "from": str(self.chosen.sweep_dir), "protocol": self.chosen.protocol,
                **here.row()}


@dataclass(frozen=True)
class ChosenElsewhere:
    """The configuration a finished sweep of another dataset found best (``select_on=``)."""

    sweep_dir: Path
    dataset: str
    protocol: str


def chosen_on_other_data(cfg: DictConfig, grid: SweepGrid) -> ChosenElsewhere | None:
    """The configuration ``select_on`` names, checked before any work: that sweep exists, is finished,
    and its best configuration is one of this grid's.

    Raises:
        ConfigError: one line naming ``select_on`` and what is wrong.
    """
    if not cfg.select_on:
        return None
    other = select_on_dir(str(cfg.select_on), Path(str(cfg.run_dir)), cfg.dataset)
    try:
        summary = RunDir(other).read_metrics()
    except RunError as err:
        raise ConfigError(f"select_on={cfg.select_on}: {err}") from None
    if not summary or summary.get("kind") != "sweep":
        raise ConfigError(f"select_on={cfg.select_on}: {other} holds no sweep "
                          "(run `lostreg sweep` on that dataset with the same grid first)")
    if not summary.get("complete"):
        raise ConfigError(f"select_on={cfg.select_on}: the sweep in {other} is not finished "
                          f"({summary.get('total')} of {summary.get('num_images')} images); run it to the end first")
    name = str(summary["best"]["protocol"])
    if name not in {p.name for p in grid.configurations}:
        raise ConfigError(f"select_on={cfg.select_on}: its best configuration {name} is not in this grid")
    return ChosenElsewhere(other, str(summary.get("dataset")), name)


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


def sweep_table_markdown(results: list[SweepResult], selected: Mapping[str, Any] | None = None) -> str:
    """The configurations as a markdown table, best first, with the optimism note."""
    columns = [*(results[0].columns if results else ()), *RESULT_COLUMNS]
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for result in results:
        row = result.row()
        corloc = row["corloc"]
        row["corloc"] = "n/a" if corloc is None else f"{corloc:.2f}"
        lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                       for v in (row[c] for c in columns)) + " |")
    text = header + "\n".join(lines) + "\n\n" + OPTIMISTIC_NOTE + "\n"
    if selected:
        corloc = selected.get("corloc")
        value = "n/a" if corloc is None else f"{corloc:.2f}"
        text += f"\nChosen on {selected['on']}: {selected['protocol']}, CorLoc here {value}.\n"
    return text
