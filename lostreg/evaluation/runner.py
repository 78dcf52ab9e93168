"""``lostreg eval``: LOST over a dataset, resumable, with CorLoc.

A run directory holds:

* ``config.yaml``  the composed config, resolved (the run's identity);
* ``run.json``     one entry per session: command, versions, git state, device, timings;
* ``preds.jsonl``  one line per image, appended and flushed per batch;
* ``metrics.json`` CorLoc and counts, recomputed from ``preds.jsonl`` at the end of every session.

Resuming = running the same command on the same directory: images already in
``preds.jsonl`` are skipped; a line cut short by a kill is dropped and redone. Because the
metrics are always recomputed from the file and each image id appears once, an interrupted
and resumed run gives exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lostreg import __version__
from lostreg.backbones import build_backbone, resolve_device
from lostreg.config import dataset_kwargs, result_affecting
from lostreg.datasets import build_dataset
from lostreg.datasets.base import ImageDataset, ImageRecord
from lostreg.discovery import Discovery, LostConfig, ObjectDiscoverer
from lostreg.evaluation.corloc import CorLocEvaluator, is_hit
from lostreg.io.loading import LoadedItem, iterate_prepared, split_by_shape

PREDS_FILE = "preds.jsonl"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"


class RunConfigMismatch(RuntimeError):
    """The run directory holds results of another configuration."""


class PredictionStore:
    """Append-only JSON-lines file of per-image predictions, safe against kills.

    Each :meth:`append` writes whole lines and flushes them to the OS, so a killed process
    loses at most the batch being written; :meth:`load` drops a trailing partial line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, dict[str, Any]]:
        """Records by image id, read-only: a partial last line (left by a kill) is ignored.

        Raises:
            ValueError: a complete line that is not JSON, naming the file and line.
        """
        if not self.path.exists():
            return {}
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(self._complete_bytes().decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: corrupt prediction line ({err})") from None
            # First occurrence wins; later duplicates cannot appear through this class.
            records.setdefault(str(record["image_id"]), record)
        return records

    def load(self) -> dict[str, dict[str, Any]]:
        """:meth:`read`, then truncate a partial last line so that appends start on a line."""
        records = self.read()
        if self.path.exists():
            complete = len(self._complete_bytes())
            if complete != self.path.stat().st_size:
                with self.path.open("r+b") as f:
                    f.truncate(complete)
        return records

    def _complete_bytes(self) -> bytes:
        data = self.path.read_bytes()
        return data[: data.rfind(b"\n") + 1]

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in records)
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def prediction_record(record: ImageRecord, found: Discovery | None, error: str | None, has_gt: bool) -> dict[str, Any]:
    """The ``preds.jsonl`` line of one image.

    Keys: ``image_id``, ``image`` (path), ``width``, ``height``, ``box_xyxy`` (original pixels,
    max exclusive; null on error), ``seed`` (flat patch index), ``seed_rc``, ``hit``, ``iou``
    (null without ground truth), ``gt_boxes_xyxy``, ``error`` (null or one line).
    """
    line: dict[str, Any] = {"image_id": record.image_id, "image": str(record.path)}
    if found is None:
        line.update(width=record.width, height=record.height, box_xyxy=None, seed=None, seed_rc=None)
    else:
        line.update(
            width=found.width, height=found.height, box_xyxy=list(found.box_xyxy),
            seed=found.lost.seed, seed_rc=list(found.seed_rc),
        )
    if has_gt and found is not None:
        hit, iou = is_hit(found.box_xyxy, record.gt_boxes_xyxy)
        line.update(hit=bool(hit), iou=round(float(iou), 6))
    else:
        line.update(hit=False if has_gt else None, iou=0.0 if has_gt else None)
    line.update(gt_boxes_xyxy=np.asarray(record.gt_boxes_xyxy).tolist(), error=error)
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


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create the run directory and pin its config; refuse a directory of another config.

    Raises:
        RunConfigMismatch: naming the differing keys and how to proceed.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        previous = OmegaConf.load(config_path)
        old, new = result_affecting(previous), result_affecting(cfg)  # type: ignore[arg-type]
        if old != new:
            diffs = _differences(old, new)
            raise RunConfigMismatch(
                f"{run_dir} holds results of another configuration ({'; '.join(diffs[:5])}); "
                "results are never mixed: pass run_dir=<new folder>, or delete the old one"
            )
    else:
        OmegaConf.save(cfg, config_path, resolve=True)
    return run_dir


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} in the run dir, {new!r} now"]


def compute_metrics(dataset: ImageDataset, preds: dict[str, dict[str, Any]], has_gt: bool) -> dict[str, Any]:
    """CorLoc and counts from stored predictions, in dataset order (each image once)."""
    evaluator = CorLocEvaluator()
    failed = done = 0
    for record in dataset:
        pred = preds.get(record.image_id)
        if pred is None:
            continue
        done += 1
        failed += pred.get("error") is not None
        if has_gt:
            evaluator.process(record.image_id, pred.get("box_xyxy"), record.gt_boxes_xyxy)
    metrics: dict[str, Any] = {"corloc": None, "hits": None, "total": done, "failed": failed}
    if has_gt:
        scores = evaluator.evaluate()
        metrics.update(corloc=scores["corloc"] if done else None, hits=scores["hits"])
    metrics.update(num_images=len(dataset), complete=done == len(dataset))
    return metrics


def _dataset_has_gt(cfg: DictConfig) -> bool:
    return str(cfg.dataset.name) != "folder"


def run_eval(cfg: DictConfig, progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Run (or resume) LOST on ``cfg.dataset`` and return the metrics written to ``metrics.json``.

    Raises:
        RunConfigMismatch, DatasetLayoutError, UnknownBackboneError, WeightsError, ...
        KeyboardInterrupt: after saving everything computed so far.
    """
    dataset = build_dataset(str(cfg.dataset.name), **dataset_kwargs(cfg))
    run_dir = prepare_run_dir(cfg)
    has_gt = _dataset_has_gt(cfg)
    store = PredictionStore(run_dir / PREDS_FILE)
    preds = store.load()
    todo = [r for r in dataset if r.image_id not in preds]
    timer = _Timer()
    session: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
        "resumed_with": len(preds),
        "device": str(cfg.device), "batch_size": int(cfg.batch_size), "num_workers": int(cfg.num_workers),
        "versions": _versions(), "git": _git_state(),
    }
    interrupted = False
    try:
        if todo:
            _process(cfg, dataset, todo, preds, store, has_gt, timer, progress, session)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        metrics = compute_metrics(dataset, preds, has_gt)
        metrics.update(dataset=str(cfg.dataset.name), backbone=str(cfg.backbone.name), timings=timer.as_dict())
        _write_json_atomic(run_dir / METRICS_FILE, metrics)
        session.update(timings=timer.as_dict(), interrupted=interrupted)
        info_path = run_dir / RUN_INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.exists() else {"sessions": []}
        info["sessions"].append(session)
        _write_json_atomic(info_path, info)
    return metrics


def _process(
    cfg: DictConfig,
    dataset: ImageDataset,
    todo: list[ImageRecord],
    preds: dict[str, dict[str, Any]],
    store: PredictionStore,
    has_gt: bool,
    timer: _Timer,
    progress: bool,
    session: dict[str, Any],
) -> None:
    device = resolve_device(str(cfg.device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is printed once, below
        backbone = build_backbone(str(cfg.backbone.name), weights=str(cfg.weights), device=device)
    if backbone.is_random:
        print(f"WARNING: {backbone.name} has RANDOM weights: CorLoc is meaningless.", file=sys.stderr)
    session["device"] = str(device)
    discoverer = ObjectDiscoverer(
        backbone,
        LostConfig(
            k_patches=int(cfg.lost.k_patches), gram_bias=float(cfg.lost.gram_bias),
            which=str(cfg.features.which), layer=int(cfg.features.layer),  # type: ignore[arg-type]
            l2_normalize=bool(cfg.features.get("l2_normalize", False)),
        ),
        max_size=None if cfg.max_size is None else int(cfg.max_size),
    )
    hits = sum(bool(p.get("hit")) for p in preds.values())
    done = len(preds)
    bar = tqdm(total=len(dataset), initial=done, desc=f"{cfg.dataset.name} {backbone.name}", unit="img",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    batches = iterate_prepared(todo, discoverer.preparer, int(cfg.batch_size), int(cfg.num_workers),
                               pin_memory=device.type == "cuda")
    try:
        waited = time.monotonic()
        for items in batches:
            timer.load_wait_s += time.monotonic() - waited
            start = time.monotonic()
            lines = _discover_items(discoverer, items, has_gt)
            timer.compute_s += time.monotonic() - start
            store.append(lines)
            for line in lines:
                preds[line["image_id"]] = line
                hits += bool(line.get("hit"))
            done += len(lines)
            timer.images += len(lines)
            bar.update(len(lines))
            if has_gt:
                bar.set_postfix_str(f"CorLoc {100.0 * hits / done:.2f}")
            waited = time.monotonic()
    finally:
        bar.close()


def _discover_items(discoverer: ObjectDiscoverer, items: list[LoadedItem], has_gt: bool) -> list[dict[str, Any]]:
    """Prediction lines for one loader batch; one bad image never takes its batch down."""
    lines = [prediction_record(it.record, None, it.error, has_gt) for it in items if it.prepared is None]
    for group in split_by_shape([it for it in items if it.prepared is not None]):
        try:
            found = discoverer.discover_batch([it.prepared for it in group])  # type: ignore[misc]
            lines += [prediction_record(it.record, f, None, has_gt) for it, f in zip(group, found)]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            # Retry one by one so that only the image at fault is recorded as failed.
            for it in group:
                try:
                    found_one = discoverer.discover_batch([it.prepared])[0]  # type: ignore[list-item]
                    lines.append(prediction_record(it.record, found_one, None, has_gt))
                except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                    message = f"{it.record.path}: {type(err).__name__}: {' '.join(str(err).split())}"
                    lines.append(prediction_record(it.record, None, message, has_gt))
    return lines
