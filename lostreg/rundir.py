"""The run directory of ``lostreg eval``: its layout, its files, and who may write them.

Every module that reads or writes a run directory does it through this one; nothing here
imports torch, so ``compare``, ``report`` and ``export`` stay light.

Layout of a run directory:

* ``config.yaml``  the composed config, resolved: the run's identity (written once).
* ``run.json``     ``{"sessions": [...]}``, one entry per session (command, versions, git state,
  device, timings, whether it was interrupted or stopped by an error), written when the session
  starts and completed when it ends, so a killed session is recorded too (``ended`` stays null).
* ``preds.jsonl``  one JSON line per image, appended and flushed per batch (:class:`PredictionStore`).
* ``metrics.json`` what the evaluators computed over every line of ``preds.jsonl``.
* ``.lock``        advisory lock held by the one process that appends to the directory; it holds
  that process's pid, host and command, so a second writer is told who holds it.
* ``sweep.csv`` and ``configs/<protocol>/`` (``lostreg sweep`` only): the table of configurations and
  one ordinary run directory per configuration; ``metrics.json`` then has ``"kind": "sweep"``.
* ``preds.rank<r>.jsonl`` only while a torchrun job runs (or after one was killed): each rank's
  predictions, merged into ``preds.jsonl`` by rank 0 at the end or by the next session.

All JSON and YAML writes are atomic (:func:`atomic_write_bytes`): a reader never sees half a file.

Where a run directory is by default (the naming section below): ``outputs/<dataset dir>/<backbone
dir>/<protocol dir>``, a sweep's ``outputs/<dataset dir>/<backbone dir>/sweep_<digest>``. The dataset
part is the dataset kind's (:meth:`lostreg.datasets.registry.DatasetKind.dir_name`), the protocol part
the protocol's (:attr:`lostreg.protocol.DiscoveryProtocol.name` plus ``_max<N>`` and ``_<precision>``);
this module puts them together, names sweeps and finds a sibling on another dataset (``select_on=``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

import yaml

from lostreg.errors import LostregError
from lostreg.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from lostreg.io.paths import check_output_folder

__all__ = [
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "OUTPUTS_DIR",
    "PREDS_FILE",
    "RANK_PREDS_PATTERN",
    "SWEEP_CONFIGS_DIR",
    "SWEEP_CSV",
    "SWEEP_DIR_PREFIX",
    "RUN_INFO_FILE",
    "PredictionStore",
    "PredictionWriter",
    "RunConfigMismatch",
    "RunDir",
    "RunError",
    "RunLockedError",
    "RunNotFoundError",
    "Session",
    "SessionTimer",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "backbone_dir_name",
    "config_differences",
    "default_run_dir",
    "environment_versions",
    "git_state",
    "run_dir_on_dataset",
    "sweep_dir_name",
    "sweep_run_dir",
]

CONFIG_FILE = "config.yaml"
#: A sweep directory's table of configurations, best first, and its folder of per-configuration runs.
SWEEP_CSV = "sweep.csv"
SWEEP_CONFIGS_DIR = "configs"
#: Per-rank prediction files of a torchrun job (merged into PREDS_FILE by rank 0).
RANK_PREDS_PATTERN = "preds.rank{rank}.jsonl"
RUN_INFO_FILE = "run.json"
PREDS_FILE = "preds.jsonl"
METRICS_FILE = "metrics.json"
LOCK_FILE = ".lock"
#: The folder default run directories go in, relative to the working directory.
OUTPUTS_DIR = "outputs"
#: A sweep's default directory is named ``sweep_<digest of its grid>`` (:func:`sweep_dir_name`).
SWEEP_DIR_PREFIX = "sweep_"


class RunError(LostregError, ValueError):
    """A run directory that cannot be read; ``str(err)`` is one line naming the path."""


class RunNotFoundError(RunError, FileNotFoundError):
    """The folder is not a run directory (no ``config.yaml`` / ``preds.jsonl`` as asked)."""


class RunConfigMismatch(LostregError, RuntimeError):
    """The run directory holds results of another configuration."""


class RunLockedError(LostregError, RuntimeError):
    """Another process is writing to the run directory."""


# --------------------------------------------------------------------------- naming
# Run directories are found again by name (a rerun resumes, select_on finds a sibling), so every
# name below must stay byte-identical across versions.


def backbone_dir_name(backbone: str, weights: str, ttreg: str | None = None) -> str:
    """``dinov2_vits14_reg`` (pretrained), ``dinov2_vits14_reg-random``, ``dinov2_vits14_reg-<file stem>``;
    ``-ttreg-<neuron file stem>`` appended for a test-time register."""
    name = backbone if weights == "pretrained" else f"{backbone}-{'random' if weights == 'random' else Path(weights).stem}"
    return name + (f"-ttreg-{Path(ttreg).stem}" if ttreg else "")


def default_run_dir(dataset_dir: str, backbone_dir: str, protocol_dir: str) -> str:
    """``outputs/<dataset_dir>/<backbone_dir>/<protocol_dir>``: the default of ``run_dir``.

    Each part names what changes results, so the same command resumes the same directory:
    ``dataset_dir`` from the dataset kind (``voc07_nohard``), ``backbone_dir`` from
    :func:`backbone_dir_name`, ``protocol_dir`` from the protocol (``k_layer-1_k100_bias0.0_max1024``).
    """
    return "/".join((OUTPUTS_DIR, dataset_dir, backbone_dir, protocol_dir))


def sweep_dir_name(method: str, grid: Mapping[str, Sequence[Any]], max_size: int | None, precision: str) -> str:
    """``sweep_<digest>``: a short stable name of a sweep's method, grid (setting -> values tried),
    ``max_size`` (0 and None are both native resolution) and precision."""
    text = json.dumps({"method": method, **grid, "extra": [max_size or None, precision]}, sort_keys=True)
    return SWEEP_DIR_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:10]


def sweep_run_dir(run_dir: str | os.PathLike[str], sweep_name: str) -> str:
    """A sweep's default directory: the eval ``run_dir`` of its base protocol with the protocol part
    replaced by ``sweep_name`` (``outputs/<dataset dir>/<backbone dir>/sweep_<digest>``)."""
    return str(Path(run_dir).parent / sweep_name)


def run_dir_on_dataset(run_dir: str | os.PathLike[str], dataset_dir: str, other_dataset_dir: str) -> Path | None:
    """Where the default layout puts the same backbone's run of the same name on another dataset.

    ``<root>/<dataset_dir>/<backbone dir>/<name>`` becomes ``<root>/<other_dataset_dir>/<backbone dir>/<name>``:
    a sweep of voc12 finds voc07's sweep of the same backbone and grid beside it. Does not look at the
    disk. None when ``run_dir`` is not in the default layout (its grandparent is not ``dataset_dir``).
    """
    path = Path(run_dir)
    if len(path.parts) < 3 or path.parent.parent.name != dataset_dir:
        return None
    return path.parent.parent.parent / other_dataset_dir / path.parent.name / path.name


# --------------------------------------------------------------------------- predictions


class PredictionStore:
    """Append-only JSON-lines file of per-image predictions, safe against kills.

    Each :meth:`append` writes whole lines, flushes and fsyncs them, so a killed process loses
    at most the batch being written; :meth:`read` ignores and :meth:`load` drops a trailing
    partial line.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        """Records by image id, read-only: a partial last line (left by a kill) is ignored.

        Raises:
            RunError: a complete line that is not JSON, naming the file and line.
        """
        if not self.path.exists():
            return {}
        try:
            text = self._complete_bytes().decode("utf-8")
        except OSError as err:
            raise RunError(f"{self.path}: unreadable: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise RunError(f"{self.path}: not UTF-8 text ({err})") from None
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunError(f"{self.path}:{number}: corrupt prediction line ({err})") from None
            if not isinstance(record, dict) or "image_id" not in record:
                raise RunError(f"{self.path}:{number}: corrupt prediction line (no image_id)")
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

    def drop_failed(self) -> int:
        """Remove the lines of images that failed (``error`` set), so that a resume tries them again.

        A failed line holds no result, only why there is none; once the image is fixed (a
        truncated JPEG replaced), the next session computes it. The file is rewritten atomically
        (the writer holds the directory's lock); a partial last line is dropped as by :meth:`load`.
        Returns how many lines were removed.
        """
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self._complete_bytes().decode("utf-8").splitlines(keepends=True):
            try:
                failed = json.loads(line).get("error") is not None
            except (ValueError, AttributeError):
                failed = False  # left for read() to report
            dropped += failed
            if not failed:
                kept.append(line)
        if dropped:
            atomic_write_text(self.path, "".join(kept))
        return dropped

    def _complete_bytes(self) -> bytes:
        data = self.path.read_bytes()
        return data[: data.rfind(b"\n") + 1]

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append whole lines and make them durable (flush + fsync) before returning."""
        lines = "".join(json.dumps(r) + "\n" for r in records)
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


class PredictionWriter:
    """Makes prediction lines durable from a background thread, in order, then rewrites the metrics.

    The compute loop hands each batch's lines (and the metrics they lead to) to :meth:`submit`
    and goes on; a writer thread appends them (flush + fsync, :meth:`PredictionStore.append`)
    and then replaces ``metrics.json``, so the device never waits on the disk. Kill-safety is the
    store's: a line is done once it is on disk, and lines handed over but not yet written are
    redone on resume. At most ``max_pending`` batches wait; beyond that :meth:`submit` blocks.
    An error in the thread is raised again by the next :meth:`submit` or by :meth:`close`.

    One writer may serve several run directories (a sweep's configurations): :meth:`submit`
    takes the target store and directory, defaulting to those given here.
    """

    def __init__(self, run_dir: "RunDir", store: PredictionStore, max_pending: int = 8) -> None:
        self._run_dir = run_dir
        self._store = store
        self._queue: queue.Queue[tuple[PredictionStore, RunDir, list[dict[str, Any]], dict[str, Any] | None] | None] \
            = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="lostreg-prediction-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            store, run_dir, lines, metrics = job
            try:
                store.append(lines)
                if metrics is not None:
                    run_dir.write_metrics(metrics)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                self._error = err

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, lines: list[dict[str, Any]], metrics: Mapping[str, Any] | None = None,
               store: PredictionStore | None = None, run_dir: "RunDir | None" = None) -> None:
        """Queue one batch's lines (then ``metrics``) for writing, to ``store`` / ``run_dir`` or the defaults."""
        self._raise()
        self._queue.put((store or self._store, run_dir or self._run_dir, lines,
                         None if metrics is None else dict(metrics)))

    def close(self) -> None:
        """Write everything submitted, stop the thread, raise a write error if one happened."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()


# --------------------------------------------------------------------------- sessions


@dataclass
class SessionTimer:
    """Where a session's time went: waiting for the read stage, computing, and the images done."""

    load_wait_s: float = 0.0
    compute_s: float = 0.0
    images: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float]:
        """``wall_s``, ``load_wait_s``, ``compute_s``, ``images``, ``images_per_s`` (rounded to ms)."""
        wall = time.monotonic() - self.started
        return {
            "wall_s": round(wall, 3),
            "load_wait_s": round(self.load_wait_s, 3),
            "compute_s": round(self.compute_s, 3),
            "images": self.images,
            "images_per_s": round(self.images / wall, 3) if wall > 0 else 0.0,
        }


def environment_versions() -> dict[str, str | None]:
    """Versions of what computes the results (lostreg, Python, torch and its CUDA, timm, numpy, OS).

    Imports torch and timm (call it from a session, not at import time).
    """
    import numpy as np
    import timm
    import torch

    from lostreg import __version__

    return {
        "lostreg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def git_state() -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the lostreg source tree, or None (an installed wheel, or no git)."""
    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


class Session:
    """One session's entry in ``run.json``: written when it starts, completed when it ends.

    Made by :meth:`RunDir.begin_session`. :attr:`timer` counts the session's time and images.
    """

    def __init__(self, run_dir: "RunDir", index: int, record: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.index = index
        self.record = record
        self.timer = SessionTimer()

    def end(self, interrupted: bool = False, error: BaseException | None = None, **fields: Any) -> None:
        """Complete the entry: ``ended``, ``timings``, ``interrupted``, and ``error`` (one line) when a
        bug stopped the session; ``fields`` are added (e.g. ``resumed_with``)."""
        self.record.update(fields)
        self.record.update(ended=_now(), timings=self.timer.as_dict(), interrupted=interrupted)
        if error is not None:
            self.record["error"] = f"{type(error).__name__}: {' '.join(str(error).split())}"
        self.run_dir._write_session(self.index, self.record)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- the directory


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["lost.k_patches: 100 in the run dir, 50 now", ...]`` for nested dicts ``old`` and ``new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} in the run dir, {new!r} now"]


class RunDir:
    """One run directory: paths, readers, and the writer's operations (pin, lock, append, record).

    Args:
        path: the directory (it need not exist yet).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def preds_path(self) -> Path:
        return self.path / PREDS_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def info_path(self) -> Path:
        return self.path / RUN_INFO_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    def configuration(self, name: str) -> "RunDir":
        """The run directory of one configuration of a sweep (``configs/<name>``)."""
        return RunDir(self.path / SWEEP_CONFIGS_DIR / name)

    def has_config(self) -> bool:
        """Whether ``config.yaml`` exists (the directory was started by ``lostreg eval``)."""
        return self.config_path.is_file()

    def has_predictions(self) -> bool:
        """Whether ``preds.jsonl`` exists."""
        return self.preds_path.is_file()

    # -- readers (never modify the directory) ----------------------------------------------

    def require(self, *files: str) -> None:
        """Raise :class:`RunNotFoundError` unless the directory exists and holds ``files``."""
        if not self.path.is_dir():
            raise RunNotFoundError(f"{self.path}: not a run directory (no such directory)")
        for name in files:
            if not (self.path / name).is_file():
                raise RunNotFoundError(f"{self.path}: not a run directory (no {name}; written by `lostreg eval`)")

    def read_config(self) -> dict[str, Any]:
        """``config.yaml`` as plain data.

        Raises:
            RunNotFoundError: no ``config.yaml``.
            RunError: unreadable, or not a mapping.
        """
        self.require(CONFIG_FILE)
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RunError(f"{self.config_path}: unreadable: {' '.join(str(err).split())}") from None
        if not isinstance(config, dict):
            raise RunError(f"{self.config_path}: expected a mapping")
        return config

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json``, or None when absent (a run killed before its first metrics).

        Raises:
            RunError: unreadable or not a JSON object.
        """
        if not self.metrics_path.is_file():
            return None
        try:
            metrics = json.loads(self.metrics_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RunError(f"{self.metrics_path}: unreadable: {err}") from None
        if not isinstance(metrics, dict):
            raise RunError(f"{self.metrics_path}: expected a JSON object")
        return metrics

    def read_run_info(self) -> dict[str, Any]:
        """``run.json`` (``{"sessions": []}`` when absent).

        Raises:
            RunError: unreadable.
        """
        if not self.info_path.is_file():
            return {"sessions": []}
        try:
            info = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RunError(f"{self.info_path}: unreadable: {err}") from None
        if not isinstance(info, dict) or not isinstance(info.get("sessions"), list):
            raise RunError(f"{self.info_path}: expected {{\"sessions\": [...]}}")
        return info

    def read_predictions(self) -> dict[str, dict[str, Any]]:
        """``preds.jsonl`` records by image id, read-only (see :meth:`PredictionStore.read`), plus
        those of torchrun rank files not merged yet (a job still running, or killed).

        Raises:
            RunNotFoundError: no ``preds.jsonl``.
            RunError: a corrupt complete line.
        """
        if not self.has_predictions():
            raise RunNotFoundError(f"{self.path} is not an eval run directory: no {PREDS_FILE} in it")
        records = PredictionStore(self.preds_path).read()
        for path in self.rank_files():
            for image_id, record in PredictionStore(path).read().items():
                records.setdefault(image_id, record)
        return records

    # -- the writer's operations ---------------------------------------------------------

    def store(self, rank: int | None = None) -> PredictionStore:
        """The prediction store of this directory (for the one writer holding :meth:`lock`), or of one
        rank of a torchrun job (``preds.rank<r>.jsonl``, merged by :meth:`merge_rank_files`)."""
        if rank is None:
            return PredictionStore(self.preds_path)
        return PredictionStore(self.path / RANK_PREDS_PATTERN.format(rank=rank))

    def rank_files(self) -> list[Path]:
        """Prediction files of torchrun ranks not merged yet (a job still running, or one killed)."""
        return sorted(self.path.glob(RANK_PREDS_PATTERN.format(rank="*")))

    def merge_rank_files(self, order: Callable[[str], Any] | None = None) -> int:
        """Append the ranks' records missing from ``preds.jsonl`` to it, then remove the rank files.

        Kill-safe: a rank file's partial last line is ignored; records are made durable in
        ``preds.jsonl`` before any rank file is removed; an image already in ``preds.jsonl`` is
        never added twice. Called by rank 0 while it holds :meth:`lock`.

        Args:
            order: sort key of image ids for the appended records (e.g. dataset order).

        Returns:
            How many records were added.
        """
        files = self.rank_files()
        if not files:
            return 0
        store = self.store()
        done = store.load()
        new: dict[str, dict[str, Any]] = {}
        for path in files:
            for image_id, record in PredictionStore(path).read().items():
                if image_id not in done:
                    new.setdefault(image_id, record)
        ids = sorted(new, key=order) if order is not None else list(new)
        store.append([new[i] for i in ids])
        for path in files:
            path.unlink()
        return len(ids)

    def pin_config(self, config: Mapping[str, Any], identity: Callable[[Mapping[str, Any]], Any]) -> None:
        """Write ``config.yaml`` on first use; afterwards refuse a config of another identity.

        Args:
            config: the resolved config as plain data.
            identity: maps a config (the new one, or the one on disk) to the part that can
                change a result; the two must be equal to share the directory.

        Raises:
            RunConfigMismatch: naming the differing keys and how to proceed.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.has_config():
            self.check_pinned(config, identity)
        else:
            atomic_write_text(self.config_path, yaml.safe_dump(dict(config), sort_keys=False))

    def check_pinned(self, config: Mapping[str, Any], identity: Callable[[Mapping[str, Any]], Any]) -> None:
        """Refuse, without writing, a config of another identity than the one pinned here (if any).

        Raises:
            RunConfigMismatch: naming the differing keys and how to proceed.
        """
        if not self.has_config():
            return
        old, new = identity(self.read_config()), identity(config)
        if old != new:
            diffs = config_differences(old, new)
            raise RunConfigMismatch(
                f"{self.path} holds results of another configuration ({'; '.join(diffs[:5])}); "
                "results are never mixed: pass run_dir=<new folder>, or delete the old one"
            )

    def check_writable(self, setting: str = "run_dir") -> None:
        """Stop before any work when this cannot become a run directory, or another process writes to it.

        Writes nothing: the folder is not created, and the lock is only probed (:meth:`lock` takes
        it for real when the run starts, so that a second run into a busy directory is refused
        before its model is built, not after).

        Raises:
            ConfigError: the path (or a folder on the way to it) is a file, or cannot be created.
            RunLockedError: another process holds the directory's lock; names that process.
        """
        path = self.path
        check_output_folder(path, f"{setting}=")
        if self.lock_path.is_file():
            with open(self.lock_path, "a+", encoding="utf-8") as handle:
                if not _try_lock(handle):
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown process"
                    raise RunLockedError(f"{path} is being written by another process ({holder}); wait for it "
                                         f"to finish, or pass another {setting}")
            # Closing the handle released the probe's lock.

    @contextlib.contextmanager
    def lock(self, command: str | None = None) -> Iterator[None]:
        """Hold the directory's advisory write lock; released on exit and by the OS if the process dies.

        Raises:
            RunLockedError: another process holds it; the message names that process.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+", encoding="utf-8")
        try:
            if not _try_lock(handle):
                handle.seek(0)
                holder = handle.read().strip() or "unknown process"
                raise RunLockedError(
                    f"{self.path} is being written by another process ({holder}); wait for it to finish, "
                    "or pass another run_dir"
                )
            handle.seek(0)
            handle.truncate()
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}: "
                         f"{command or ' '.join(sys.argv)}\n")
            handle.flush()
            yield
        finally:
            handle.close()  # closing the descriptor releases the lock

    def clear(self) -> list[str]:
        """Remove the run's files (config, predictions, metrics, sessions) to start afresh.

        Only the files this module names are removed, never anything else in the folder; the
        caller holds :meth:`lock`. Returns the names removed.
        """
        removed = []
        for path in (self.preds_path, *self.rank_files(), self.metrics_path, self.info_path, self.config_path):
            if path.is_file():
                path.unlink()
                removed.append(path.name)
        return removed

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Replace ``metrics.json`` atomically."""
        atomic_write_json(self.metrics_path, dict(metrics))

    def append_session(self, session: Mapping[str, Any]) -> None:
        """Add one (finished) session to ``run.json`` (atomically)."""
        info = self.read_run_info()
        info["sessions"].append(dict(session))
        atomic_write_json(self.info_path, info)

    def begin_session(self, command: str | None = None, **fields: Any) -> Session:
        """Record a session starting now in ``run.json`` (started, command, versions, git state, ``fields``)
        and return it; :meth:`Session.end` completes the entry. The caller holds :meth:`lock`."""
        record = {"started": _now(), "command": command or " ".join(sys.argv), **fields,
                  "versions": environment_versions(), "git": git_state(), "ended": None}
        info = self.read_run_info()
        info["sessions"].append(record)
        atomic_write_json(self.info_path, info)
        return Session(self, len(info["sessions"]) - 1, record)

    def _write_session(self, index: int, record: Mapping[str, Any]) -> None:
        info = self.read_run_info()
        sessions = info["sessions"]
        if index < len(sessions):
            sessions[index] = dict(record)
        else:  # run.json was cleared meanwhile (overwrite by another tool): keep this session anyway
            sessions.append(dict(record))
        atomic_write_json(self.info_path, info)


def _try_lock(handle: IO[str]) -> bool:
    """Take an exclusive, non-blocking advisory lock on an open file; False if someone holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True

