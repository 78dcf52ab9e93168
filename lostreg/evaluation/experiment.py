"""``lostreg experiment``: a whole comparison in one command (``configs/experiment/<name>.yaml``).

An experiment file names model families (a backbone per size; ``families=`` picks some) and
datasets (as eval overrides, with ``{data_root}`` filled in). :class:`Experiment` composes every (backbone, dataset) config first,
reads every dataset index once and checks every run directory and the output folder — so a missing
dataset, a bad setting or a folder in the way stops it before any backbone is built — then builds
each backbone once and runs ``lostreg eval`` (or ``lostreg sweep``) on each of its datasets.
``datasets=voc07,voc12`` runs a subset; with ``sweep=PRESET``, ``select_on=voc07`` chooses each
backbone's configuration on VOC07 and reports it, fixed, on the others ("chosen on" rows). The run directories are the ones the single commands would use, so an experiment
resumes them and they resume it. At the end the experiment's folder gets ``gap.md`` (one row per family,
without and with registers side by side, beside the published numbers each run is comparable with;
reference rows and notes below: :mod:`lostreg.evaluation.gap`), ``gap.csv`` (every run), ``gap.png``
and one HTML report per dataset.
"""

from __future__ import annotations

import gc
import shlex
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from lostreg.backbones import Backbone
from lostreg.config import (
    ConfigError,
    compose_config,
    dataset_kwargs,
    protocol_from_config,
    run_identity,
    validate_execution,
)
from lostreg.datasets import build_dataset
from lostreg.datasets.base import DatasetLayoutError, ImageDataset
from lostreg.errors import LostregError
from lostreg.evaluation.gap import GapPair, gap_figure, gap_markdown, pairs_from_spec
from lostreg.evaluation.runner import BackboneBuilder, EvalJob, resolved
from lostreg.evaluation.sweep import SweepGrid, SweepJob, sweep_identity
from lostreg.io.paths import check_output_folder
from lostreg.rundir import RunDir

__all__ = ["Experiment", "ExperimentRun", "experiment_names", "load_experiment"]

#: Keys of the experiment command itself; every other ``key=value`` goes to each run's config.
EXPERIMENT_KEYS = ("data_root", "size", "sweep", "out", "ttreg", "datasets", "select_on", "families")


def experiment_names() -> list[str]:
    """The experiments shipped in ``configs/experiment/``."""
    folder = resources.files("lostreg.configs").joinpath("experiment")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_experiment(name: str) -> DictConfig:
    """``configs/experiment/<name>.yaml``.

    Raises:
        ConfigError: no such experiment (the known ones are listed).
    """
    path = resources.files("lostreg.configs").joinpath("experiment", f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(experiment_names())}")
    spec = OmegaConf.create(path.read_text(encoding="utf-8"))
    assert isinstance(spec, DictConfig)
    return spec


@dataclass
class ExperimentRun:
    """One (backbone, dataset) run of an experiment."""

    backbone: str
    dataset: str
    cfg: DictConfig
    overrides: list[str]
    kind: str = "eval"
    #: the experiment file's family of the backbone (``dinov2_reg``)
    family: str = ""

    @property
    def command(self) -> str:
        """The single command this run is equal to (recorded in run.json)."""
        return f"lostreg {self.kind} " + " ".join(shlex.quote(o) for o in self.overrides)


@dataclass
class Experiment:
    """An experiment, checked and ready: every run's config composed, every dataset index read.

    Attributes:
        name: the experiment file's name.
        runs: in order, grouped by backbone (each backbone is built once for its runs).
        out: where the gap table and reports go.
        sweep: the protocol preset swept instead of a single protocol (``best_of``), or None.
        pairs: the headline's rows (a family without registers beside its registers variant).
    """

    name: str
    runs: list[ExperimentRun]
    out: Path
    sweep: str | None = None
    pairs: list[GapPair] = field(default_factory=list)
    #: each dataset's index, read once in :meth:`prepare` (and handed to every run of it)
    datasets: dict[str, ImageDataset] = field(default_factory=dict)

    @classmethod
    def prepare(cls, name: str, arguments: list[str]) -> "Experiment":
        """Parse ``key=value`` arguments, compose and check every run. Builds no backbone, writes nothing.

        Checked here, so that nothing fails after hours of work: every run's config, every dataset
        (all missing ones listed at once), every run directory (a file in the way, another process
        in it, results of another configuration), the output folder, and ``select_on``.

        Raises:
            ConfigError, ProtocolError, DatasetLayoutError, RunError, RunLockedError, RunConfigMismatch: one line.
        """
        spec = load_experiment(name)
        own: dict[str, str] = {}
        rest: list[str] = []
        for argument in arguments:
            key, sep, value = argument.partition("=")
            if sep and key in EXPERIMENT_KEYS:
                own[key] = value
            else:
                rest.append(argument)
        if "data_root" not in own:
            raise ConfigError(f"lostreg experiment {name} needs data_root=DIR (the folder holding the datasets)")
        size = own.get("size", "s")
        sizes = list(next(iter(spec.families.values())))
        if size not in sizes:
            raise ConfigError(f"size must be one of {', '.join(sizes)}; got {size!r}")
        families = _chosen_families(spec, own.get("families"))
        sweep = own.get("sweep") or None
        datasets = _chosen_datasets(spec, own.get("datasets"))
        select_on = own.get("select_on") or None
        if select_on is not None:
            if not sweep:
                raise ConfigError("select_on= chooses a sweep's configuration on one dataset: give sweep=PRESET too")
            if select_on not in datasets:
                raise ConfigError(f"select_on={select_on} is not one of this experiment's datasets "
                                  f"({', '.join(datasets)})")
            # The dataset the configuration is chosen on runs first for each backbone.
            datasets = [select_on] + [d for d in datasets if d != select_on]
        default_families = [str(f) for f in spec.get("default_families") or spec.families]
        out = Path(own.get("out") or f"outputs/experiment_{name}_{size}" + (f"_{sweep}" if sweep else "")
                   + ("" if families == default_families else "_" + "-".join(families)))
        check_output_folder(out, "out=")
        data_root = str(Path(own["data_root"]).expanduser())
        runs: list[ExperimentRun] = []
        plan = [(str(spec.families[family][size]), [], family) for family in families]
        if own.get("ttreg"):
            # One more row: the plain backbone of this size with a test-time register.
            plan.append((str(spec.ttreg_backbone[size]), [f"ttreg={own['ttreg']}"], "ttreg"))
        for backbone, extra, family in plan:
            for dataset in datasets:
                filled = [str(o).replace("{data_root}", data_root) for o in spec.datasets[dataset]]
                run_overrides = [f"backbone={backbone}", *filled, *extra, *rest]
                if sweep:
                    run_overrides.insert(1, f"protocol={sweep}")
                    if select_on is not None and dataset != select_on:
                        run_overrides.append(f"select_on={select_on}")
                cfg = compose_config(run_overrides)
                validate_execution(cfg)
                protocol = protocol_from_config(cfg)
                if sweep:  # the directory `lostreg sweep` would use with these overrides
                    cfg.run_dir = SweepGrid.from_config(cfg, protocol).default_run_dir(cfg)
                runs.append(ExperimentRun(backbone, str(dataset), cfg, run_overrides, "sweep" if sweep else "eval",
                                          family))
        # Every dataset index once, before any backbone is built: all missing ones in one message.
        indexes, problems = {}, []
        for dataset in datasets:
            try:
                indexes[dataset] = build_dataset(dataset, **dataset_kwargs(next(r.cfg for r in runs
                                                                                if r.dataset == dataset)))
            except DatasetLayoutError as err:
                problems.append(f"{dataset}: {str(err).splitlines()[0]}")
        if problems:
            raise DatasetLayoutError(f"{len(problems)} of {len(datasets)} datasets cannot be read (pass "
                                     f"datasets=... to run the others): " + "; ".join(problems))
        for run in runs:
            directory = RunDir(str(run.cfg.run_dir))
            directory.check_writable()
            directory.check_pinned(resolved(run.cfg), sweep_identity if sweep else run_identity)
        container = OmegaConf.to_container(spec, resolve=True)
        assert isinstance(container, dict)
        pairs = pairs_from_spec(container, families, size, own.get("ttreg")) if "pairs" in container else []
        return cls(name, runs, out, sweep, pairs, indexes)

    def run(self, builder: BackboneBuilder, progress: bool = True,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Run every (backbone, dataset), each backbone built once; write the gap table and reports.

        Returns:
            ``{"runs": [run directories], "failed": [(run, error)], "table": markdown, "files": [...]}``.
        """
        log = log or (lambda text: print(text, file=sys.stderr))
        done: list[Path] = []
        failed: list[tuple[str, str]] = []
        current: tuple[str, Backbone] | None = None
        for run in self.runs:
            if current is None or current[0] != run.backbone:
                current = None
                gc.collect()  # the previous backbone's memory before the next one is built
                cfg = run.cfg
                current = (run.backbone, builder(str(cfg.backbone.name), str(cfg.weights), str(cfg.device)))
            log(f"== {run.backbone} on {run.dataset}")
            try:
                job = SweepJob if self.sweep else EvalJob
                job.prepare(run.cfg, backbone=current[1], dataset=self.datasets[run.dataset]).run(
                    progress=progress, command=run.command, log=log)
            except KeyboardInterrupt:
                raise
            except LostregError as err:  # a user error of one run (its data, say) does not stop the others
                failed.append((f"{run.backbone} on {run.dataset}", f"{type(err).__name__}: {err}"))
                log(f"lostreg: error: {run.backbone} on {run.dataset}: {err}")
                continue
            done.append(Path(str(run.cfg.run_dir)))
        return {"runs": done, "failed": failed, **self.write_outputs(done)}

    def write_outputs(self, run_dirs: list[Path]) -> dict[str, Any]:
        """``gap.md`` (the compact headline, reference rows and notes), ``gap.csv`` (every run), ``gap.png``
        (ours vs published, per dataset) and one HTML report per dataset in :attr:`out`."""
        from lostreg.evaluation.compare import build_table, load_runs, to_csv
        from lostreg.report.html import build_report, write_report
        from lostreg.report.runs import load_report_runs

        self.out.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        if not run_dirs:
            return {"table": "", "files": files}
        summaries = load_runs([str(d) for d in run_dirs])
        datasets = list(dict.fromkeys(run.dataset for run in self.runs))
        markdown = gap_markdown(summaries, self.pairs, datasets)
        (self.out / "gap.md").write_text(markdown, encoding="utf-8")
        files += [self.out / "gap.md", to_csv(build_table(summaries, include_published=True), self.out / "gap.csv")]
        figure = gap_figure(summaries, self.pairs, datasets)
        figure.savefig(self.out / "gap.png", dpi=120)
        files.append(self.out / "gap.png")
        by_dataset: dict[str, list[Path]] = {}
        for run in self.runs:
            path = Path(str(run.cfg.run_dir))
            if path in run_dirs:
                # A sweep is reported through its best configuration's ordinary run directory.
                if self.sweep:
                    best = (RunDir(path).read_metrics() or {}).get("best")
                    path = RunDir(path).configuration(best["protocol"]).path if best else path
                by_dataset.setdefault(run.dataset, []).append(path)
        for dataset, paths in by_dataset.items():
            report = build_report(load_report_runs([str(p) for p in paths]), progress=False)
            files.append(write_report(report, self.out / f"report_{dataset}.html"))
        return {"table": markdown, "files": files}


def _chosen_families(spec: DictConfig, chosen: str | None) -> list[str]:
    """The families to run: ``families=deit3,openclip`` (in the file's order), else the file's
    ``default_families``.

    Raises:
        ConfigError: a name the experiment does not have.
    """
    names = [str(f) for f in spec.families]
    if not chosen:
        return [str(f) for f in spec.get("default_families") or names]
    wanted = [f.strip() for f in chosen.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in names]
    if unknown or not wanted:
        raise ConfigError(f"families={chosen}: this experiment's families are {', '.join(names)}")
    return [f for f in names if f in wanted]


def _chosen_datasets(spec: DictConfig, chosen: str | None) -> list[str]:
    """The experiment's datasets, or the subset ``datasets=voc07,voc12`` names (in the file's order).

    Raises:
        ConfigError: a name the experiment does not have.
    """
    names = [str(d) for d in spec.datasets]
    if not chosen:
        return names
    wanted = [d.strip() for d in chosen.split(",") if d.strip()]
    unknown = [d for d in wanted if d not in names]
    if unknown or not wanted:
        raise ConfigError(f"datasets={chosen}: this experiment's datasets are {', '.join(names)}")
    return [d for d in names if d in wanted]
