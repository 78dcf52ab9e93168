"""``lostreg eval``: a discovery method over a dataset, resumable, scored by evaluators.

The loop, detectron2's way: the read stage (:mod:`lostreg.evaluation.loading`) yields batches
of prepared images; :class:`~lostreg.discovery.ObjectDiscoverer` turns each into prediction
lines; the evaluators (:mod:`lostreg.evaluation.evaluators`) score them (a hit is decided
there, once); the lines are appended to the run directory (:mod:`lostreg.rundir`, which owns
its layout); at the end of the session ``metrics.json`` holds what every evaluator computed
over all lines, the ones of earlier sessions included.

Resuming = running the same command on the same directory: images already in ``preds.jsonl``
are skipped; a line cut short by a kill is dropped and redone. Each image id is counted once,
so an interrupted and resumed run gives exactly the result of an uninterrupted one.

Everything that can fail for the whole run (config values, dataset layout, backbone, weights,
protocol against the backbone) is checked before the run directory is touched.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lostreg import __version__
from lostreg.backbones import Backbone, build_backbone, resolve_device
from lostreg.config import dataset_kwargs, protocol_from_config, run_identity, validate_execution
from lostreg.datasets import build_dataset
from lostreg.datasets.base import ImageDataset, ImageRecord
from lostreg.discovery import Discovery, ObjectDiscoverer
from lostreg.errors import ConfigError
from lostreg.evaluation.distributed import DistEnv, shard
from lostreg.evaluation.evaluators import default_evaluators
from lostreg.evaluation.loading import DevicePrefetcher, LoadedBatch, iterate_prepared
from lostreg.memory import check_fits
from lostreg.protocol import DiscoveryProtocol
from lostreg.rundir import PredictionStore, PredictionWriter, RunConfigMismatch, RunDir

__all__ = ["EvalJob", "PredictionStore", "RunConfigMismatch", "build_parts", "check_memory", "prediction_record",
           "run_eval",
           "with_test_time_registers"]


def prediction_record(record: ImageRecord, found: Discovery | None, error: str | None) -> dict[str, Any]:
    """The ``preds.jsonl`` line of one image, before scoring.

    Keys: ``image_id``, ``image`` (path), ``width``, ``height``, ``box_xyxy`` (original pixels,
    max exclusive; null on error), ``seed`` (flat patch index), ``seed_rc``, ``hit``, ``iou``
    (null here: the CorLoc evaluator fills them where there is ground truth), ``gt_boxes_xyxy``,
    ``error`` (null or one line); with ``method=tokencut`` also ``degenerate`` (the image's
    spectrum had no distinct object, see :mod:`lostreg.tokencut`).
    """
    line: dict[str, Any] = {"image_id": record.image_id, "image": str(record.path)}
    if found is None:
        line.update(width=record.width, height=record.height, box_xyxy=None, seed=None, seed_rc=None)
    else:
        line.update(
            width=found.width, height=found.height, box_xyxy=list(found.box_xyxy),
            seed=found.result.seed, seed_rc=list(found.seed_rc),
        )
    line.update(hit=None, iou=None, gt_boxes_xyxy=np.asarray(record.gt_boxes_xyxy).tolist(), error=error)
    if found is not None and hasattr(found.result, "degenerate"):
        # TokenCut flags images whose spectrum has no distinct object (a fixed full-image box).
        line["degenerate"] = bool(found.result.degenerate)
    return line


@dataclass
class _Timer:
    load_wait_s: float = 0.0
    compute_s: float = 0.0
    images: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        return {
            "wall_s": round(wall, 3),
            "load_wait_s": round(self.load_wait_s, 3),
            "compute_s": round(self.compute_s, 3),
            "images": self.images,
            "images_per_s": round(self.images / wall, 3) if wall > 0 else 0.0,
        }


def _versions() -> dict[str, str | None]:
    import timm
    import torch

    return {
        "lostreg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _git_state() -> dict[str, Any] | None:
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # an installed wheel, or no git
    return {"commit": commit, "dirty": bool(dirty)}


BackboneBuilder = Callable[[str, str, str], Backbone]


def build_parts(cfg: DictConfig, backbone: Backbone | None = None, builder: BackboneBuilder | None = None
                ) -> tuple[DiscoveryProtocol, ImageDataset, Backbone, DistEnv]:
    """Everything a dataset run needs that can fail for the whole run, cheapest checks first:
    execution settings, protocol, dataset index, then the backbone (unless given). Writes nothing.

    Raises:
        ConfigError, ProtocolError, DatasetLayoutError, UnknownBackboneError, WeightsError, ValueError.
    """
    validate_execution(cfg)
    protocol = protocol_from_config(cfg)
    dataset = build_dataset(str(cfg.dataset.name), **dataset_kwargs(cfg))
    dist = DistEnv.from_environment()
    if backbone is None:
        device = str(resolve_device(dist.device(str(cfg.device))))
        build = builder or (lambda name, weights, dev: build_backbone(name, weights=weights, device=dev))
        backbone = build(str(cfg.backbone.name), str(cfg.weights), device)
    if cfg.get("ttreg"):
        backbone = with_test_time_registers(backbone, str(cfg.ttreg))
    return protocol, dataset, backbone, dist


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


def with_test_time_registers(backbone: Backbone, path: str) -> Backbone:
    """:func:`lostreg.ttreg.attach_test_time_registers` (kept here until the call sites move)."""
    from lostreg.ttreg import attach_test_time_registers

    return attach_test_time_registers(backbone, path)


@dataclass
class EvalJob:
    """One eval run, checked and ready: every setting validated, dataset read, backbone built.

    :meth:`prepare` does everything that can fail for the whole run before the run directory is
    touched; :meth:`run` then runs (or resumes) the session.
    """

    cfg: DictConfig
    dataset: ImageDataset
    discoverer: ObjectDiscoverer
    run_dir: RunDir
    dist: DistEnv = field(default_factory=DistEnv)

    @classmethod
    def prepare(cls, cfg: DictConfig, backbone: Backbone | None = None,
                builder: BackboneBuilder | None = None) -> "EvalJob":
        """Validate ``cfg``, read the dataset index, build the backbone (unless given).

        Args:
            cfg: a composed eval config (:func:`lostreg.config.compose_config`).
            backbone: the backbone of ``cfg.backbone.name`` / ``cfg.weights``, if already built.
            builder: ``(name, weights, device) -> Backbone`` used otherwise (default
                :func:`lostreg.backbones.build_backbone`); called after the cheap checks.

        Raises:
            ConfigError, ProtocolError, DatasetLayoutError, UnknownBackboneError, WeightsError,
                ValueError: one line each; nothing has been written.
        """
        protocol, dataset, backbone, dist = build_parts(cfg, backbone, builder)
        check_memory(cfg, dataset, backbone, [protocol])
        # 0 and null both mean native resolution, as for `lostreg discover --max-size 0`.
        discoverer = ObjectDiscoverer(backbone, protocol, max_size=cfg.max_size or None, precision=str(cfg.precision))
        return cls(cfg, dataset, discoverer, RunDir(cfg.run_dir), dist)

    def run(self, progress: bool = True, command: str | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
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
        dist.init(self.discoverer.backbone.device)
        try:
            if not dist.is_main:
                # Rank 0 pins the directory and merges leftovers first; it says whether that worked.
                problem = dist.share(None)
                if problem is not None:
                    raise RunConfigMismatch(f"rank 0 could not start the run: {problem}")
                return _Session(self, False, command, log).run()
            with self.run_dir.lock(command):
                try:
                    self._start(log)
                except BaseException as err:
                    dist.share(str(err))
                    raise
                dist.share(None)
                return _Session(self, progress, command, log).run()
        finally:
            dist.finish()

    def _start(self, log: Callable[[str], None]) -> None:
        """Rank 0 (or the only process), holding the lock: start afresh if asked, pin the config,
        merge the prediction files a killed torchrun job left behind."""
        if self.cfg.overwrite:
            removed = self.run_dir.clear()
            if removed:
                log(f"overwrite=true: removed {', '.join(removed)} from {self.run_dir.path}")
        container = OmegaConf.to_container(self.cfg, resolve=True)
        assert isinstance(container, dict)
        self.run_dir.pin_config(container, run_identity)
        merged = self.run_dir.merge_rank_files(order=self.dataset_order)
        if merged:
            log(f"{self.run_dir.path}: merged {merged} predictions of an earlier multi-process session")

    def dataset_order(self, image_id: str) -> int:
        """Position of an image in the dataset (records of other ids sort last)."""
        if not hasattr(self, "_positions"):
            object.__setattr__(self, "_positions", {r.image_id: i for i, r in enumerate(self.dataset)})
        return self._positions.get(image_id, len(self._positions))  # type: ignore[attr-defined]


def run_eval(
    cfg: DictConfig, progress: bool = True, command: str | None = None, backbone: Backbone | None = None
) -> dict[str, Any]:
    """Run (or resume) the configured method on ``cfg.dataset``: :meth:`EvalJob.prepare` then :meth:`EvalJob.run`."""
    return EvalJob.prepare(cfg, backbone=backbone).run(progress=progress, command=command)


class _Session:
    """One session on a pinned, locked run directory: resume, process what is left, record.

    Alone, it appends to ``preds.jsonl``. In a torchrun job each rank processes its contiguous
    shard of what is left into its own ``preds.rank<r>.jsonl``; rank 0 then merges them and
    writes the metrics and the session over every image.
    """

    def __init__(self, job: EvalJob, progress: bool, command: str | None, log: Callable[[str], None]) -> None:
        self.job = job
        self.dist = job.dist
        self.progress = progress and job.dist.is_main
        self.command = command
        self.log = log if job.dist.is_main else (lambda text: None)
        self.store = job.run_dir.store(job.dist.rank if job.dist.is_distributed else None)
        self.evaluators = default_evaluators(job.dataset.has_ground_truth)
        self.done_lines: list[dict[str, Any]] = []
        self.failed = 0
        self.timer = _Timer()

    def metrics(self, final: bool) -> dict[str, Any]:
        """Every evaluator's metrics (costly ones only when ``final``), counts, timings. O(1) when not final."""
        cfg = self.job.cfg
        total, num_images = len(self.done_lines), len(self.job.dataset)
        metrics: dict[str, Any] = {"corloc": None, "hits": None}
        metrics.update(self.evaluators.evaluate(final=final))
        metrics.update(total=total, failed=self.failed, num_images=num_images, complete=total == num_images)
        metrics.update(dataset=str(cfg.dataset.name), backbone=str(cfg.backbone.name), timings=self.timer.as_dict())
        return metrics

    def _add(self, lines: list[dict[str, Any]]) -> None:
        self.done_lines += lines
        self.failed += sum(line.get("error") is not None for line in lines)

    def _load_done(self) -> dict[str, dict[str, Any]]:
        """Records on disk, in the dataset's order, fed to fresh evaluators (stored hits are kept)."""
        job = self.job
        if self.dist.is_distributed:
            preds = job.run_dir.store().read()  # rank 0 has merged and truncated before anyone reads
        else:
            preds = self.store.load()  # drops a partial last line left by a kill
        self.evaluators.reset()
        self.done_lines, self.failed = [], 0
        done = [preds[r.image_id] for r in job.dataset if r.image_id in preds]
        self.evaluators.process(done)
        self._add(done)
        return preds

    def run(self) -> dict[str, Any]:
        job, cfg, dist = self.job, self.job.cfg, self.dist
        dataset = job.dataset
        preds = self._load_done()
        selected = list(dataset) if cfg.limit is None else list(dataset)[: cfg.limit]
        remaining = [r for r in selected if r.image_id not in preds]
        todo = shard(remaining, dist.rank, dist.world_size)
        self._announce(len(selected), len(remaining))
        session: dict[str, Any] = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": self.command or " ".join(sys.argv),
            "resumed_with": len(preds),
            "device": str(job.discoverer.backbone.device), "precision": job.discoverer.precision,
            "batch_size": int(cfg.batch_size), "num_workers": int(cfg.num_workers), "limit": cfg.limit,
            "world_size": dist.world_size, "versions": _versions(), "git": _git_state(),
        }
        interrupted = False
        if dist.is_main:  # from here on the directory always holds metrics of what is on disk
            job.run_dir.write_metrics(self.metrics(final=False))
        try:
            if todo:
                self._process(todo)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            metrics = self._finish(session, interrupted)
        return metrics

    def _finish(self, session: dict[str, Any], interrupted: bool) -> dict[str, Any]:
        """Alone: final metrics and the session. In a torchrun job: wait for every rank, then rank 0
        merges their files and computes the metrics over everything on disk."""
        job, dist = self.job, self.dist
        if dist.is_distributed:
            if not interrupted:
                dist.barrier()
            if not dist.is_main:
                return self.metrics(final=False)
            job.run_dir.merge_rank_files(order=job.dataset_order)
            self._load_done()
        metrics = self.metrics(final=True)
        job.run_dir.write_metrics(metrics)
        session.update(timings=self.timer.as_dict(), interrupted=interrupted)
        job.run_dir.append_session(session)
        return metrics

    def _announce(self, selected: int, todo: int) -> None:
        done, total = len(self.done_lines), len(self.job.dataset)
        where = self.job.run_dir.path
        if todo == 0:
            what = "already complete" if done == total else f"the first {selected} images (limit) are already done"
            self.log(f"{where}: {what} ({done}/{total} images); nothing to run")
        elif done:
            self.log(f"resuming {where}: {done}/{total} images already done, {todo} to go")

    def _process(self, todo: list[ImageRecord]) -> None:
        """The loop: batches come decoded and packed from the workers, are copied to the device one
        ahead, run through the backbone and the method, get scored, and go to the writer thread."""
        job, cfg = self.job, self.job.cfg
        discoverer, dataset = job.discoverer, job.dataset
        device = discoverer.backbone.device
        hits = sum(bool(line.get("hit")) for line in self.done_lines)
        bar = tqdm(total=len(self.done_lines) + len(todo), initial=len(self.done_lines),
                   desc=f"{cfg.dataset.name} {discoverer.backbone.name}", unit="img", disable=not self.progress,
                   file=sys.stderr, dynamic_ncols=True)
        batches = DevicePrefetcher(iterate_prepared(todo, discoverer.preparer, int(cfg.batch_size),
                                                    int(cfg.num_workers), pin_memory=device.type == "cuda"), device)
        writer = PredictionWriter(job.run_dir, self.store)
        timer = self.timer
        try:
            waited = time.monotonic()
            for batch in batches:
                timer.load_wait_s += time.monotonic() - waited
                start = time.monotonic()
                lines = _discover_items(discoverer, batch)
                self.evaluators.process(lines)  # scores the new lines (hit, iou) before they are stored
                timer.compute_s += time.monotonic() - start
                self._add(lines)
                # Only rank 0 keeps metrics.json current (other ranks' lines are counted at the end).
                writer.submit(lines, self.metrics(final=False) if self.dist.is_main else None)
                hits += sum(bool(line.get("hit")) for line in lines)
                timer.images += len(lines)
                bar.update(len(lines))
                if dataset.has_ground_truth:
                    bar.set_postfix_str(f"CorLoc {100.0 * hits / len(self.done_lines):.2f}")
                waited = time.monotonic()
        finally:
            bar.close()
            writer.close()  # everything computed is on disk before the session's final metrics


def _discover_items(discoverer: ObjectDiscoverer, batch: LoadedBatch) -> list[dict[str, Any]]:
    """Prediction lines for one loader batch; one bad image never takes its batch down."""
    lines = [prediction_record(it.record, None, it.error) for it in batch.failed]
    for group in batch.groups:
        prepared = [it.prepared for it in group.items]
        try:
            found = discoverer.discover_packed(prepared, group.packed)  # type: ignore[arg-type]
            lines += [prediction_record(it.record, f, None) for it, f in zip(group.items, found)]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            # Retry one by one so that only the image at fault is recorded as failed.
            for it in group.items:
                try:
                    found_one = discoverer.discover_batch([it.prepared])[0]  # type: ignore[list-item]
                    lines.append(prediction_record(it.record, found_one, None))
                except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                    message = f"{it.record.path}: {type(err).__name__}: {' '.join(str(err).split())}"
                    lines.append(prediction_record(it.record, None, message))
    return lines
