"""Dataset runs: ``lostreg eval`` (one configuration) and the session every sweep shares, resumable.

The loop is the engine's (:mod:`lostreg.evaluation.engine`); this module is what a run over a
dataset adds around it, detectron2's way: the read stage yields batches of prepared images; the
engine turns each into outcomes per configuration; each configuration's :class:`RunTarget`
scores them with its evaluators (:mod:`lostreg.evaluation.evaluators`; a hit is decided there,
once) and hands the lines to a writer thread that appends them to its run directory
(:mod:`lostreg.rundir`, which owns the layout, the session record and the timers). At the end of
the session ``metrics.json`` holds what every evaluator computed over all lines, the ones of
earlier sessions included.

Resuming = running the same command on the same directory: images already in ``preds.jsonl``
are skipped; a line cut short by a kill is dropped and redone. Each image id is counted once,
so an interrupted and resumed run gives exactly the result of an uninterrupted one.

Everything that can fail for the whole run (config values, dataset layout, backbone, weights,
protocol against the backbone) is checked before the run directory is touched. During the run,
an image that cannot be read is recorded and the run goes on; any other exception is a bug: what
was computed is written (lines, metrics, the session with its error), then it propagates.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lostreg.backbones import Backbone, build_backbone, resolve_device
from lostreg.config import dataset_kwargs, protocol_from_config, run_identity, validate_execution
from lostreg.datasets import build_dataset
from lostreg.datasets.base import ImageDataset, ImageRecord
from lostreg.datasets.registry import kind_of
from lostreg.discovery import Discovery, ObjectDiscoverer
from lostreg.evaluation.distributed import DistEnv, shard
from lostreg.evaluation.engine import DiscoveryEngine, Outcome
from lostreg.evaluation.evaluators import DatasetEvaluators, default_evaluators
from lostreg.evaluation.loading import LoadedBatch
from lostreg.memory import check_fits
from lostreg.protocol import DiscoveryProtocol
from lostreg.rundir import PredictionStore, PredictionWriter, RunConfigMismatch, RunDir, Session, SessionTimer
from lostreg.ttreg import attach_test_time_registers

__all__ = ["DatasetSession", "EvalJob", "PredictionStore", "RunConfigMismatch", "RunTarget", "build_parts",
           "build_run_backbone", "check_memory", "check_parts", "prediction_record", "retry_failed", "run_eval"]

Log = Callable[[str], None]


def prediction_record(record: ImageRecord, found: Discovery | None, error: str | None) -> dict[str, Any]:
    """The ``preds.jsonl`` line of one image, before scoring.

    Keys: ``image_id``, ``image`` (path), ``width``, ``height``, ``box_xyxy`` (original pixels,
    max exclusive; null on error; the most confident object's box, the one CorLoc scores),
    ``seed`` (flat patch index), ``seed_rc``, ``boxes_xyxy`` (every object found, most confident
    first; one unless ``objects=N``), ``scores`` (their confidences, same order; null for a method
    without one), ``hit``, ``iou`` (null here: the CorLoc evaluator fills them where there is
    ground truth), ``gt_boxes_xyxy``, ``error`` (null or one line); then the method's own fields
    (TokenCut: ``degenerate``, the image's spectrum had no distinct object, see :mod:`lostreg.tokencut`).
    """
    line: dict[str, Any] = {"image_id": record.image_id, "image": str(record.path)}
    if found is None:
        line.update(width=record.width, height=record.height, box_xyxy=None, seed=None, seed_rc=None,
                    boxes_xyxy=None, scores=None)
    else:
        line.update(
            width=found.width, height=found.height, box_xyxy=list(found.box_xyxy),
            seed=found.result.seed, seed_rc=list(found.seed_rc),
            boxes_xyxy=found.boxes_xyxy, scores=found.scores,
        )
    line.update(hit=None, iou=None, gt_boxes_xyxy=np.asarray(record.gt_boxes_xyxy).tolist(), error=error)
    if found is not None:
        line.update(found.record_fields)
    return line


BackboneBuilder = Callable[[str, str, str], Backbone]


def check_parts(cfg: DictConfig, dataset: ImageDataset | None = None,
                identity: Callable[[Mapping[str, Any]], Any] = run_identity
                ) -> tuple[DiscoveryProtocol, ImageDataset, DistEnv]:
    """The cheap checks of a dataset run, before any model is built: execution settings, protocol,
    the run directory (a file in the way, another process writing to it, results of another
    configuration in it), the dataset index (unless ``dataset`` is given, already read). Writes nothing.

    Raises:
        ConfigError, ProtocolError, RunError, RunLockedError, RunConfigMismatch, DatasetLayoutError.
    """
    validate_execution(cfg)
    protocol = protocol_from_config(cfg)
    run_dir = RunDir(cfg.run_dir)
    run_dir.check_writable()  # a file in the way, or a busy directory: before the model loads
    if not cfg.overwrite:
        run_dir.check_pinned(resolved(cfg), identity)
    if dataset is None:
        dataset = build_dataset(str(cfg.dataset.name), **dataset_kwargs(cfg))
    return protocol, dataset, DistEnv.from_environment()


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, interpolations resolved, the dataset's locations absolute: what
    ``config.yaml`` holds, so that ``export`` and ``report`` find the images from any folder (the run
    identity ignores how a location is spelled, :func:`lostreg.config.dataset_identity`)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    dataset = container.get("dataset")
    if isinstance(dataset, dict):
        for key in kind_of(dataset).location_keys:
            if dataset.get(key) is not None:
                dataset[key] = os.path.abspath(os.path.expanduser(str(dataset[key])))
    return container


def build_run_backbone(cfg: DictConfig, dist: DistEnv, backbone: Backbone | None = None,
                       builder: BackboneBuilder | None = None) -> Backbone:
    """The run's backbone (built unless given), with its test-time register when ``ttreg`` is set.

    Raises:
        UnknownBackboneError, WeightsError, WeightsUnavailableError, NeuronFileError, ConfigError.
    """
    if backbone is None:
        device = str(resolve_device(dist.device(str(cfg.device))))
        build = builder or (lambda name, weights, dev: build_backbone(name, weights=weights, device=dev))
        backbone = build(str(cfg.backbone.name), str(cfg.weights), device)
    if cfg.get("ttreg"):
        backbone = attach_test_time_registers(backbone, str(cfg.ttreg))  # the add-on is ttreg's to attach
    return backbone


def build_parts(cfg: DictConfig, backbone: Backbone | None = None, builder: BackboneBuilder | None = None,
                dataset: ImageDataset | None = None) -> tuple[DiscoveryProtocol, ImageDataset, Backbone, DistEnv]:
    """Everything a dataset run needs that can fail for the whole run, cheapest checks first
    (:func:`check_parts`), then the backbone (:func:`build_run_backbone`). Writes nothing."""
    protocol, dataset, dist = check_parts(cfg, dataset)
    return protocol, dataset, build_run_backbone(cfg, dist, backbone, builder), dist


def check_memory(cfg: DictConfig, dataset: ImageDataset, backbone: Backbone,
                 protocols: Sequence[DiscoveryProtocol]) -> None:
    """Stop now if the largest image of the run would not fit in memory (:func:`lostreg.memory.check_fits`).

    Sizes come from the annotations; image files without (folders) have their headers read.

    Raises:
        InsufficientMemoryError: naming the image, the estimate and the ``max_size`` that would fit.
    """
    records = list(dataset) if cfg.limit is None else list(dataset)[: cfg.limit]
    sizes = [(str(r.path), (r.height, r.width) if r.width and r.height else None) for r in records]
    probe = [(str(r.path), r.path) for r in records if not (r.width and r.height)]
    for protocol in {p.method: p for p in protocols}.values():  # the heaviest knob is the method
        check_fits(sizes, probe, protocol, backbone.patch_size, backbone.token_width, int(cfg.batch_size),
                   cfg.max_size or None, backbone.device)


# --------------------------------------------------------------------------- one configuration


class RunTarget:
    """One configuration's run directory during a session: its store, its evaluators and its lines.

    Args:
        protocol: the configuration.
        run_dir: where its lines and metrics go (pinned and locked by the job).
        dataset: the dataset (order, size, ground truth).
        cfg: the run's config (dataset and backbone names for ``metrics.json``).
        rank: in a torchrun job, this process's rank (it appends to ``preds.rank<r>.jsonl``).
    """

    def __init__(self, protocol: DiscoveryProtocol, run_dir: RunDir, dataset: ImageDataset, cfg: DictConfig,
                 rank: int | None = None) -> None:
        self.protocol = protocol
        self.run_dir = run_dir
        self.dataset = dataset
        self.cfg = cfg
        self.store = run_dir.store(rank)
        self.evaluators: DatasetEvaluators = default_evaluators(dataset.has_ground_truth)
        self.lines: list[dict[str, Any]] = []
        self.done: dict[str, dict[str, Any]] = {}
        self.failed = 0

    def load(self, distributed: bool) -> dict[str, dict[str, Any]]:
        """Read the lines on disk (in dataset order) into fresh evaluators (stored hits are kept)."""
        if distributed:
            self.done = self.run_dir.store().read()  # rank 0 has merged and truncated before anyone reads
        else:
            self.done = self.store.load()  # drops a partial last line left by a kill
        self.evaluators.reset()
        self.lines, self.failed = [], 0
        self._add([self.done[r.image_id] for r in self.dataset if r.image_id in self.done])
        return self.done

    def _add(self, lines: list[dict[str, Any]]) -> None:
        self.evaluators.process(lines)  # scores the new lines (hit, iou) before they are stored
        self.lines += lines
        self.failed += sum(line.get("error") is not None for line in lines)

    def take(self, outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
        """Score and keep the outcomes of images this configuration has not done yet; return their lines."""
        lines = [prediction_record(o.record, o.discovery, o.error) for o in outcomes
                 if o.record.image_id not in self.done]
        self._add(lines)
        return lines

    def metrics(self, timer: SessionTimer, final: bool) -> dict[str, Any]:
        """Every evaluator's metrics (costly ones only when ``final``), counts and timings; O(1) when not final."""
        total, num_images = len(self.lines), len(self.dataset)
        metrics: dict[str, Any] = {"corloc": None, "hits": None}
        metrics.update(self.evaluators.evaluate(final=final))
        metrics.update(total=total, failed=self.failed, num_images=num_images, complete=total == num_images)
        metrics.update(dataset=str(self.cfg.dataset.name), backbone=str(self.cfg.backbone.name),
                       timings=timer.as_dict())
        return metrics


# --------------------------------------------------------------------------- the session


@dataclass
class DatasetSession:
    """One session over a dataset for one or more configurations sharing a backbone pass per batch.

    Alone, each configuration appends to its ``preds.jsonl``. In a torchrun job each rank
    processes its contiguous shard of what is left into its own ``preds.rank<r>.jsonl``; rank 0
    then merges them and writes the metrics and the session over every image.

    Attributes:
        engine: the backbone and the configurations.
        targets: one per configuration, in the engine's order.
        record_dir: the directory whose ``run.json`` records the session (the run, or the sweep).
        cfg: the run's config (``limit``, ``batch_size``, ``num_workers``, names).
        dist: the torchrun environment (a single process by default).
        progress: show a progress bar on stderr.
        command: how the run was started (``run.json``).
        log: one-line notes ("resuming ...").
        session_fields: what the session record adds (``resumed_with``, ``configurations``, ...).
    """

    engine: DiscoveryEngine
    targets: list[RunTarget]
    record_dir: RunDir
    cfg: DictConfig
    dist: DistEnv = field(default_factory=DistEnv)
    progress: bool = True
    command: str | None = None
    log: Log = field(default=lambda text: print(text, file=sys.stderr))
    session_fields: dict[str, Any] = field(default_factory=dict)
    announce: Callable[["DatasetSession", int, int], None] | None = None
    timer: SessionTimer = field(default_factory=SessionTimer)

    @property
    def dataset(self) -> ImageDataset:
        return self.targets[0].dataset

    def run(self) -> list[dict[str, Any]]:
        """Run (or resume); return each configuration's final metrics (what ``metrics.json`` holds).

        Raises:
            KeyboardInterrupt: after saving everything computed so far.
            Exception: a bug, after saving everything computed so far (recorded in the session).
        """
        dist, cfg = self.dist, self.cfg
        for target in self.targets:
            target.load(dist.is_distributed)
        records = list(self.dataset)
        selected = records if cfg.limit is None else records[: cfg.limit]
        remaining = [r for r in selected if any(r.image_id not in t.done for t in self.targets)]
        todo = shard(remaining, dist.rank, dist.world_size)
        if dist.is_main:
            (self.announce or _announce_eval)(self, len(selected), len(remaining))
        session: Session | None = None
        if dist.is_main:
            resumed = {"resumed_with": min(len(t.done) for t in self.targets)}
            session = self.record_dir.begin_session(self.command, **resumed, **self.session_fields,
                                                    **self._execution())
            self.timer = session.timer
            if remaining or not all(t.run_dir.metrics_path.is_file() for t in self.targets):
                # From here on each directory holds metrics of what is on disk; a session with
                # nothing to do leaves them (and their timings) as they were.
                for target in self.targets:
                    target.run_dir.write_metrics(target.metrics(self.timer, final=False))
        interrupted, failure = False, None
        try:
            if todo:
                self._process(todo)
        except KeyboardInterrupt:
            interrupted = True
            raise
        except BaseException as err:
            failure = err
            raise
        finally:
            metrics = self._finish(session, interrupted, failure, bool(remaining))
        return metrics

    def _execution(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"device": str(self.engine.backbone.device), "precision": self.engine.precision,
                "batch_size": int(cfg.batch_size), "num_workers": int(cfg.num_workers), "limit": cfg.limit,
                "world_size": self.dist.world_size}

    def _process(self, todo: list[ImageRecord]) -> None:
        """Batches come decoded and packed from the workers, are copied to the device one ahead, run
        through the engine, get scored per configuration, and go to the writer thread."""
        dataset = self.dataset
        first = self.targets[0]
        done = len(first.lines) if len(self.targets) == 1 else 0
        desc = f"{self.cfg.dataset.name} {self.engine.backbone.name}" + (
            f" x{len(self.targets)}" if len(self.targets) > 1 else "")
        bar = tqdm(total=done + len(todo), initial=done, desc=desc, unit="img",
                   disable=not (self.progress and self.dist.is_main), file=sys.stderr, dynamic_ncols=True)
        writer = PredictionWriter(first.run_dir, first.store)

        def consume(batch: LoadedBatch, outcomes: list[list[Outcome]]) -> None:
            for target, found in zip(self.targets, outcomes):
                lines = target.take(found)
                metrics = target.metrics(self.timer, final=False)
                # Only rank 0 keeps metrics.json current (other ranks' lines are counted at the end).
                writer.submit(lines, metrics if self.dist.is_main else None, store=target.store,
                              run_dir=target.run_dir)
                if len(self.targets) == 1 and dataset.has_ground_truth and target.lines:
                    bar.set_postfix_str(f"CorLoc {100.0 * (metrics.get('hits') or 0) / len(target.lines):.2f}")
            bar.update(batch.size)

        try:
            batches = self.engine.read(todo, int(self.cfg.batch_size), int(self.cfg.num_workers))
            self.engine.run(batches, consume, self.timer)
        finally:
            bar.close()
            _close_writer(writer)  # everything computed is on disk before the session's final metrics

    def _finish(self, session: Session | None, interrupted: bool, failure: BaseException | None,
                had_work: bool) -> list[dict[str, Any]]:
        """Alone: final metrics and the session. In a torchrun job: wait for every rank, then rank 0
        merges their files and computes the metrics over everything on disk."""
        dist = self.dist
        if dist.is_distributed:
            if not interrupted and failure is None:
                dist.barrier()
            if not dist.is_main:
                return [t.metrics(self.timer, final=False) for t in self.targets]
            for target in self.targets:
                target.run_dir.merge_rank_files(order=_order(self.dataset))
                target.load(distributed=True)
        metrics = [t.metrics(self.timer, final=True) for t in self.targets]
        if had_work or not all(t.run_dir.metrics_path.is_file() for t in self.targets):
            for target, values in zip(self.targets, metrics):
                target.run_dir.write_metrics(values)
        else:
            metrics = [t.run_dir.read_metrics() or m for t, m in zip(self.targets, metrics)]
        if session is not None:
            session.end(interrupted=interrupted, error=failure)
        return metrics


def _close_writer(writer: PredictionWriter) -> None:
    """Close the writer; while another exception is already leaving, do not mask it with the writer's."""
    if sys.exc_info()[0] is None:
        writer.close()
        return
    try:
        writer.close()
    except Exception as err:  # noqa: BLE001 - reported, the first error goes on
        print(f"lostreg: also failed to write predictions: {type(err).__name__}: {err}", file=sys.stderr)


def _order(dataset: ImageDataset) -> Callable[[str], int]:
    positions = {r.image_id: i for i, r in enumerate(dataset)}
    return lambda image_id: positions.get(image_id, len(positions))


def _announce_eval(session: DatasetSession, selected: int, remaining: int) -> None:
    target = session.targets[0]
    done, total = len(target.lines), len(session.dataset)
    where = session.record_dir.path
    if remaining == 0:
        what = "already complete" if done == total else f"the first {selected} images (limit) are already done"
        session.log(f"{where}: {what} ({done}/{total} images); nothing to run")
    elif done:
        session.log(f"resuming {where}: {done}/{total} images already done, {remaining} to go")


# --------------------------------------------------------------------------- lostreg eval


@dataclass
class EvalJob:
    """One eval run, checked and ready: every setting validated, dataset read, backbone built.

    :meth:`prepare` does everything that can fail for the whole run before the run directory is
    touched; :meth:`run` then runs (or resumes) the session: an eval is a sweep of one configuration.
    """

    cfg: DictConfig
    dataset: ImageDataset
    engine: DiscoveryEngine
    run_dir: RunDir
    dist: DistEnv = field(default_factory=DistEnv)

    @property
    def discoverer(self) -> ObjectDiscoverer:
        """The run's one configuration: backbone, protocol, preprocessing."""
        return self.engine.discoverers[0]

    @classmethod
    def prepare(cls, cfg: DictConfig, backbone: Backbone | None = None, builder: BackboneBuilder | None = None,
                dataset: ImageDataset | None = None) -> "EvalJob":
        """Validate ``cfg``, read the dataset index, build the backbone (unless given).

        Args:
            cfg: a composed eval config (:func:`lostreg.config.compose_config`).
            backbone: the backbone of ``cfg.backbone.name`` / ``cfg.weights``, if already built.
            builder: ``(name, weights, device) -> Backbone`` used otherwise (default
                :func:`lostreg.backbones.build_backbone`); called after the cheap checks.
            dataset: ``cfg.dataset``'s index, if already read (an experiment reads each once).

        Raises:
            ConfigError, ProtocolError, DatasetLayoutError, UnknownBackboneError, WeightsError,
                RunError, RunLockedError, RunConfigMismatch: one line each; nothing has been written.
        """
        protocol, dataset, backbone, dist = build_parts(cfg, backbone, builder, dataset)
        check_memory(cfg, dataset, backbone, [protocol])
        # 0 and null both mean native resolution, as for `lostreg discover --max-size 0`.
        engine = DiscoveryEngine(backbone, [protocol], max_size=cfg.max_size or None, precision=str(cfg.precision))
        return cls(cfg, dataset, engine, RunDir(cfg.run_dir), dist)

    def run(self, progress: bool = True, command: str | None = None, log: Log | None = None) -> dict[str, Any]:
        """Run (or resume) the session; return the metrics written to ``metrics.json``.

        Args:
            progress: show a progress bar on stderr.
            command: how the run was started, recorded in ``run.json`` and in the lock.
            log: where one-line notes go ("resuming: 33/60 images already done"); default stderr.

        Raises:
            RunConfigMismatch, RunLockedError: the run directory belongs to another config or writer.
            KeyboardInterrupt: after saving everything computed so far.
        """
        log = log or (lambda text: print(text, file=sys.stderr))
        dist = self.dist
        dist.init(self.engine.backbone.device)
        try:
            if not dist.is_main:
                # Rank 0 pins the directory and merges leftovers first; it says whether that worked.
                problem = dist.share(None)
                if problem is not None:
                    raise RunConfigMismatch(f"rank 0 could not start the run: {problem}")
                return self._session(False, command, log).run()[0]
            with self.run_dir.lock(command):
                try:
                    self._start(log)
                except BaseException as err:
                    dist.share(str(err))
                    raise
                dist.share(None)
                return self._session(progress, command, log).run()[0]
        finally:
            dist.finish()

    def _session(self, progress: bool, command: str | None, log: Log) -> DatasetSession:
        rank = self.dist.rank if self.dist.is_distributed else None
        target = RunTarget(self.discoverer.protocol, self.run_dir, self.dataset, self.cfg, rank)
        return DatasetSession(self.engine, [target], self.run_dir, self.cfg, self.dist, progress, command,
                              log if self.dist.is_main else (lambda text: None))

    def _start(self, log: Log) -> None:
        """Rank 0 (or the only process), holding the lock: start afresh if asked, pin the config,
        merge the prediction files a killed torchrun job left behind."""
        if self.cfg.overwrite:
            removed = self.run_dir.clear()
            if removed:
                log(f"overwrite=true: removed {', '.join(removed)} from {self.run_dir.path}")
        self.run_dir.pin_config(resolved(self.cfg), run_identity)
        merged = self.run_dir.merge_rank_files(order=_order(self.dataset))
        if merged:
            log(f"{self.run_dir.path}: merged {merged} predictions of an earlier multi-process session")
        retry_failed([self.run_dir], log)


def retry_failed(run_dirs: Sequence[RunDir], log: Log) -> int:
    """Drop the recorded failures of ``run_dirs`` so that this session tries those images again; say how many.

    Called by the writer holding the lock, before the session reads what is done.
    """
    retried = max((run_dir.store().drop_failed() for run_dir in run_dirs), default=0)
    if retried:
        log(f"retrying {retried} image{'s' if retried != 1 else ''} that failed in an earlier session")
    return retried


def run_eval(
    cfg: DictConfig, progress: bool = True, command: str | None = None, backbone: Backbone | None = None
) -> dict[str, Any]:
    """Run (or resume) the configured method on ``cfg.dataset``: :meth:`EvalJob.prepare` then :meth:`EvalJob.run`."""
    return EvalJob.prepare(cfg, backbone=backbone).run(progress=progress, command=command)
