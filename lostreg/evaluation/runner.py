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
from typing import Any, Callable, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lostreg import __version__
from lostreg.backbones import Backbone, build_backbone, resolve_device
from lostreg.config import CHECK_ONLY_DATASET_KEYS, RESULT_KEYS, dataset_kwargs, protocol_from_config
from lostreg.datasets import build_dataset
from lostreg.datasets.base import ImageDataset, ImageRecord
from lostreg.discovery import Discovery, ObjectDiscoverer
from lostreg.evaluation.evaluators import DatasetEvaluators, default_evaluators, prediction_counts
from lostreg.evaluation.loading import LoadedItem, iterate_prepared, split_by_shape
from lostreg.protocol import DiscoveryProtocol
from lostreg.rundir import PredictionStore, RunConfigMismatch, RunDir

__all__ = ["EvalJob", "PredictionStore", "RunConfigMismatch", "prediction_record", "run_eval", "run_identity"]


def prediction_record(record: ImageRecord, found: Discovery | None, error: str | None) -> dict[str, Any]:
    """The ``preds.jsonl`` line of one image, before scoring.

    Keys: ``image_id``, ``image`` (path), ``width``, ``height``, ``box_xyxy`` (original pixels,
    max exclusive; null on error), ``seed`` (flat patch index), ``seed_rc``, ``hit``, ``iou``
    (null here: the CorLoc evaluator fills them where there is ground truth), ``gt_boxes_xyxy``,
    ``error`` (null or one line).
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


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that can change a result, normalised.

    Missing protocol keys of older run directories (``method``, ``features.l2_normalize``) take
    their defaults, so those directories are still found by the same command.
    """
    identity = {key: config.get(key) for key in RESULT_KEYS}
    dataset = identity.get("dataset")
    if isinstance(dataset, Mapping):
        # Settings of `lostreg data check` (dataset.expected_count) never change a box, and run
        # directories written before they existed lack them: neither may refuse a resume.
        identity["dataset"] = {k: v for k, v in dataset.items() if k not in CHECK_ONLY_DATASET_KEYS}
    identity.update(DiscoveryProtocol.from_mapping(config).as_dict())
    return identity


BackboneBuilder = Callable[[str, str, str], Backbone]


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
            ProtocolError, DatasetLayoutError, UnknownBackboneError, WeightsError, ValueError:
                one line each; nothing has been written.
        """
        protocol = protocol_from_config(cfg)
        dataset = build_dataset(str(cfg.dataset.name), **dataset_kwargs(cfg))
        if backbone is None:
            device = str(resolve_device(str(cfg.device)))
            build = builder or (lambda name, weights, dev: build_backbone(name, weights=weights, device=dev))
            backbone = build(str(cfg.backbone.name), str(cfg.weights), device)
        max_size = None if cfg.max_size is None else int(cfg.max_size)
        discoverer = ObjectDiscoverer(backbone, protocol, max_size=max_size)
        return cls(cfg, dataset, discoverer, RunDir(cfg.run_dir))

    def run(self, progress: bool = True, command: str | None = None) -> dict[str, Any]:
        """Run (or resume) the session; return the metrics written to ``metrics.json``.

        Raises:
            RunConfigMismatch, RunLockedError: the run directory belongs to another config or writer.
            KeyboardInterrupt: after saving everything computed so far.
        """
        with self.run_dir.lock(command):
            container = OmegaConf.to_container(self.cfg, resolve=True)
            assert isinstance(container, dict)
            self.run_dir.pin_config(container, run_identity)
            return _run_session(self.cfg, self.dataset, self.discoverer, self.run_dir, progress, command)


def run_eval(
    cfg: DictConfig, progress: bool = True, command: str | None = None, backbone: Backbone | None = None
) -> dict[str, Any]:
    """Run (or resume) the configured method on ``cfg.dataset``: :meth:`EvalJob.prepare` then :meth:`EvalJob.run`."""
    return EvalJob.prepare(cfg, backbone=backbone).run(progress=progress, command=command)


def _run_session(
    cfg: DictConfig,
    dataset: ImageDataset,
    discoverer: ObjectDiscoverer,
    run_dir: RunDir,
    progress: bool,
    command: str | None,
) -> dict[str, Any]:
    """One session on a pinned, locked run directory: resume, process what is left, record."""
    store = run_dir.store()
    preds = store.load()
    evaluators = default_evaluators(dataset.has_ground_truth)
    done_lines = [preds[r.image_id] for r in dataset if r.image_id in preds]
    evaluators.process(done_lines)
    todo = [r for r in dataset if r.image_id not in preds]
    timer = _Timer()
    session: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        "resumed_with": len(preds),
        "device": str(discoverer.backbone.device), "batch_size": int(cfg.batch_size),
        "num_workers": int(cfg.num_workers), "versions": _versions(), "git": _git_state(),
    }
    interrupted = False
    try:
        if todo:
            _process(cfg, dataset, todo, discoverer, evaluators, done_lines, store, timer, progress)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        metrics: dict[str, Any] = {"corloc": None, "hits": None}
        metrics.update(evaluators.evaluate())
        metrics.update(prediction_counts(done_lines, len(dataset)))
        metrics.update(dataset=str(cfg.dataset.name), backbone=str(cfg.backbone.name), timings=timer.as_dict())
        run_dir.write_metrics(metrics)
        session.update(timings=timer.as_dict(), interrupted=interrupted)
        run_dir.append_session(session)
    return metrics


def _process(
    cfg: DictConfig,
    dataset: ImageDataset,
    todo: list[ImageRecord],
    discoverer: ObjectDiscoverer,
    evaluators: DatasetEvaluators,
    done_lines: list[dict[str, Any]],
    store: PredictionStore,
    timer: _Timer,
    progress: bool,
) -> None:
    device = discoverer.backbone.device
    hits = sum(bool(line.get("hit")) for line in done_lines)
    bar = tqdm(total=len(dataset), initial=len(done_lines), desc=f"{cfg.dataset.name} {discoverer.backbone.name}",
               unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    batches = iterate_prepared(todo, discoverer.preparer, int(cfg.batch_size), int(cfg.num_workers),
                               pin_memory=device.type == "cuda")
    try:
        waited = time.monotonic()
        for items in batches:
            timer.load_wait_s += time.monotonic() - waited
            start = time.monotonic()
            lines = _discover_items(discoverer, items)
            evaluators.process(lines)  # scores the new lines (hit, iou) before they are stored
            timer.compute_s += time.monotonic() - start
            store.append(lines)
            done_lines += lines
            hits += sum(bool(line.get("hit")) for line in lines)
            timer.images += len(lines)
            bar.update(len(lines))
            if dataset.has_ground_truth:
                bar.set_postfix_str(f"CorLoc {100.0 * hits / len(done_lines):.2f}")
            waited = time.monotonic()
    finally:
        bar.close()


def _discover_items(discoverer: ObjectDiscoverer, items: list[LoadedItem]) -> list[dict[str, Any]]:
    """Prediction lines for one loader batch; one bad image never takes its batch down."""
    lines = [prediction_record(it.record, None, it.error) for it in items if it.prepared is None]
    for group in split_by_shape([it for it in items if it.prepared is not None]):
        try:
            found = discoverer.discover_batch([it.prepared for it in group])  # type: ignore[misc]
            lines += [prediction_record(it.record, f, None) for it, f in zip(group, found)]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            # Retry one by one so that only the image at fault is recorded as failed.
            for it in group:
                try:
                    found_one = discoverer.discover_batch([it.prepared])[0]  # type: ignore[list-item]
                    lines.append(prediction_record(it.record, found_one, None))
                except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                    message = f"{it.record.path}: {type(err).__name__}: {' '.join(str(err).split())}"
                    lines.append(prediction_record(it.record, None, message))
    return lines
