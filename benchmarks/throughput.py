#!/usr/bin/env python3
"""Whole-process throughput of LOST on VOC-sized images: a reference-style loop, ``lostreg eval``, the backbone floor.

Three ways of running LOST over the same generated images, with the same random-init backbone,
in fp32 with TF32 off by default, each measured as a **separate process from start to exit** (interpreter
start-up, imports, model build and exit included, because that is what a user waits for):

(a) ``reference``: a loop written the way valeoai/LOST runs (our own code, from its behaviour):
    batch 1, images decoded one by one in the main process, the timm model's full forward with a
    forward hook on the last block's ``attn.qkv`` to grab the keys, :func:`lostreg.lost.lost` per
    image, the box mapped to pixels. Nothing else (no ground truth, no CorLoc).
(b) ``eval``: ``python -m lostreg eval ... weights=random dataset=voc07 --no-progress`` into a
    fresh run directory: read stage in worker processes, size-grouped batches, LOST, CorLoc,
    ``preds.jsonl`` / ``metrics.json`` written. ``--method tokencut`` runs TokenCut here instead.
(c) ``floor``: the same read stage and size-grouped batches as (b), then only
    :meth:`TimmViTBackbone.extract` to the last block's qkv; no LOST, nothing written.

``--precision tf32|bf16`` sets the forward's numerics of (b) and (c); (a) stays the fp32
reference, so the (a) vs (b) line then counts the boxes that the lower precision changed.

The driver (this script without ``_worker``) generates the images once (cached in ``--data``),
runs each measured process with ``subprocess`` and a wall clock, samples ``nvidia-smi`` in a
background thread where it exists, parses the one JSON summary line each process prints
(``LOSTREG_BENCH {...}``: in-process timings, peak GPU memory), and prints a markdown table.

Nothing here is a test: no threshold, no pass/fail. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# Only the standard library at module level: the measured processes re-run this file, and
# ``--help`` must be instant. torch, lostreg and numpy are imported where they are used.

REPO = Path(__file__).resolve().parents[1]
#: Image sizes (W, H), cycled in this order: VOC's common landscape and portrait sizes plus two
#: others, as the measurements in the eval-loop issue used. With p=14 they pad to four shapes.
VOC_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (375, 500), (500, 333), (353, 500))
#: Bumped whenever the generated images would change, so that a stale cache is regenerated.
GENERATOR_VERSION = 1
#: Precisions of the backbone forward in (b) and (c): lostreg.precision.PRECISIONS (a test keeps
#: the two equal; the library is not imported here so that ``--help`` stays instant). (a) is the
#: reference and always runs fp32 with TF32 off, so at tf32 / bf16 (a) vs (b) counts the boxes
#: the lower precision changed.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
#: Discovery methods of (b) (lostreg.protocol.METHODS). (a) is always LOST and (c) has no method.
METHODS: tuple[str, ...] = ("lost", "tokencut")
VARIANTS: dict[str, str] = {
    "a": "reference-style loop (batch 1, hook)",
    "b": "lostreg eval (whole CLI)",
    "c": "backbone-only floor (extract)",
}
WORKER_KIND = {"a": "reference", "b": "eval", "c": "floor"}
#: Prefix of the one JSON line each measured process prints on stdout.
SUMMARY_TAG = "LOSTREG_BENCH "
DEFAULT_IMAGES = {"cuda": 2000, "cpu": 48}
DEFAULT_BATCH = {"cuda": 32, "cpu": 8}
IDENTITY_IMAGES = 300


# ============================================================================ data


def _synthetic() -> ModuleType:
    """``tests/synthetic.py`` (the project's VOC writer), loaded by path: ``tests`` is no package."""
    import importlib.util

    name = "lostreg_tests_synthetic"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "synthetic.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"throughput: cannot load {REPO / 'tests' / 'synthetic.py'} (the image generator)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def image_id(index: int) -> str:
    """VOC07-style id of generated image ``index`` (0-based): ``000001``, ``000002``, ..."""
    return f"{index + 1:06d}"


def _write_image(job: tuple[str, int, int]) -> None:
    """Write generated image ``index`` (JPEG + VOC XML); it depends on ``(seed, index)`` only.

    Per-image seeding (rather than one stream as ``write_voc_dataset`` uses) lets the cache grow
    without rewriting and lets the images be written in parallel processes.
    """
    import numpy as np

    voc_dir, seed, index = job
    synthetic = _synthetic()
    width, height = VOC_SIZES[index % len(VOC_SIZES)]
    rng = np.random.default_rng([seed, index])
    boxes = synthetic.random_boxes(width, height, int(rng.integers(1, 4)), rng)
    objects = [synthetic.SyntheticObject(synthetic.VOC_CLASSES[k % len(synthetic.VOC_CLASSES)], box)
               for k, box in enumerate(boxes)]
    synthetic.write_voc_image(voc_dir, image_id(index), width, height, objects, rng)


def ensure_dataset(data: Path, n_images: int, seed: int = 0) -> Path:
    """Make ``data/VOCdevkit/VOC2007`` hold at least ``n_images`` generated images; return ``data``.

    The cache is described by ``data/lostreg_bench.json`` (generator version, seed, sizes, count),
    written only after the images, so an interrupted generation is redone. Images already there
    are kept: image ``i`` is the same whatever ``n_images`` is.
    """
    voc_dir = data / "VOCdevkit" / "VOC2007"
    marker = data / "lostreg_bench.json"
    wanted = {"generator": GENERATOR_VERSION, "seed": seed, "sizes": [list(s) for s in VOC_SIZES]}
    have = 0
    if marker.is_file():
        try:
            described = json.loads(marker.read_text())
            if {k: described.get(k) for k in wanted} == wanted:
                have = int(described.get("images", 0))
        except (OSError, ValueError):
            have = 0
    if have < n_images:
        todo = range(have, n_images)
        started = time.perf_counter()
        print(f"throughput: generating images {have + 1}..{n_images} in {voc_dir} ...", file=sys.stderr)
        jobs = [(str(voc_dir), seed, i) for i in todo]
        workers = max(1, min(os.cpu_count() or 1, len(jobs)))
        if workers == 1:
            for job in jobs:
                _write_image(job)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_write_image, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
        print(f"throughput: generated {len(jobs)} images in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        have = n_images
        _synthetic().write_voc_split(voc_dir, "trainval", [image_id(i) for i in range(have)])
        marker.write_text(json.dumps({**wanted, "images": have}, indent=1) + "\n")
    return data


def write_subset_split(data: Path, n_images: int) -> str:
    """Write ``ImageSets/Main/bench<n>.txt`` (the first ``n_images`` ids); return the split name."""
    name = f"bench{n_images}"
    voc_dir = data / "VOCdevkit" / "VOC2007"
    _synthetic().write_voc_split(voc_dir, name, [image_id(i) for i in range(n_images)])
    return name


def split_paths(data: Path, split: str) -> list[Path]:
    """JPEG paths of a split of the generated dataset, in split order."""
    voc_dir = data / "VOCdevkit" / "VOC2007"
    ids = (voc_dir / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    return [voc_dir / "JPEGImages" / f"{i}.jpg" for i in ids]


# ============================================================================ measured processes


def _emit(summary: dict[str, Any]) -> None:
    """Print the summary line the driver parses (one line, flushed before exit)."""
    print(SUMMARY_TAG + json.dumps(summary), flush=True)


def _gpu_memory(device: Any) -> dict[str, int | None]:
    """Peak allocated / reserved bytes of this process on ``device`` (None off CUDA)."""
    import torch

    if getattr(device, "type", str(device).split(":")[0]) != "cuda" or not torch.cuda.is_initialized():
        return {"peak_gpu_allocated_bytes": None, "peak_gpu_reserved_bytes": None}
    return {
        "peak_gpu_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
        "peak_gpu_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
    }


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_reference(args: argparse.Namespace) -> int:
    """(a) The reference's way: one image at a time, hook on the last qkv, LOST, pixel box.

    Per-stage seconds are measured with a device sync after the forward pass, which the reference
    does not do; it costs little because LOST moves its mask to the CPU, a sync, every image anyway.
    The hook is registered once (the reference registers one per image, and they pile up: that
    slowdown is left out, in the reference's favour).
    """
    import torch
    from PIL import Image
    from torchvision.transforms import functional as TF

    from lostreg.backbones import build_backbone
    from lostreg.boxes import patch_box_to_pixels
    from lostreg.lost import lost
    from lostreg.precision import strict_fp32

    backbone = build_backbone(args.backbone, weights="random", device=args.device)
    device = backbone.device
    model = backbone.model  # the timm VisionTransformer, same seeded random weights as (b) and (c)
    p = backbone.patch_size
    n_prefix = int(model.num_prefix_tokens)
    last = model.blocks[-1]
    heads = int(last.attn.num_heads)
    captured: dict[str, torch.Tensor] = {}
    last.attn.qkv.register_forward_hook(lambda _m, _i, out: captured.__setitem__("qkv", out))
    paths = split_paths(Path(args.root), args.split)

    read_s = forward_s = lost_s = 0.0
    preds: list[dict[str, Any]] = []
    loop_start = time.perf_counter()
    with torch.no_grad(), strict_fp32():
        for path in paths:
            t0 = time.perf_counter()
            image = Image.open(path).convert("RGB")
            width, height = image.size
            x = TF.normalize(TF.to_tensor(image), backbone.mean, backbone.std)
            rows, cols = math.ceil(height / p), math.ceil(width / p)
            padded = x.new_zeros((3, rows * p, cols * p))  # zero = mean colour, bottom/right only
            padded[:, :height, :width] = x
            t1 = time.perf_counter()
            model(padded.unsqueeze(0).to(device, non_blocking=True))
            _sync(device)
            t2 = time.perf_counter()
            qkv = captured.pop("qkv")  # (1, T, 3*D)
            tokens, dim = int(qkv.shape[1]), int(qkv.shape[2]) // 3
            # As the reference: split into (3, heads, T, head_dim), take k, merge heads back.
            k = qkv.reshape(1, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)[1]
            k = k.transpose(1, 2).reshape(1, tokens, dim)[0, n_prefix:]
            result = lost(k, (rows, cols), k_patches=100)
            box = patch_box_to_pixels(result.box, p, (height, width))
            preds.append({"image_id": path.stem, "box_xyxy": list(box), "seed": result.seed})
            t3 = time.perf_counter()
            read_s += t1 - t0
            forward_s += t2 - t1
            lost_s += t3 - t2
    loop_s = time.perf_counter() - loop_start
    if args.preds:
        Path(args.preds).write_text("".join(json.dumps(line) + "\n" for line in preds))
    _emit({
        "kind": "reference", "images": len(preds), "failed": 0, "loop_s": loop_s, "read_s": read_s,
        "forward_s": forward_s, "lost_s": lost_s, "device": str(device),
        "torch_threads": torch.get_num_threads(), **_gpu_memory(device),
    })
    return 0


def worker_floor(args: argparse.Namespace) -> int:
    """(c) The read stage and size-grouped batches of ``lostreg eval``, then only the backbone.

    The forward runs at ``--precision``, as (b)'s does.

    Uses the library's own pieces (``iterate_prepared`` with its packed uint8 batches, the
    ``DevicePrefetcher``, normalisation on the device, ``extract``) so that the floor moves when
    they get faster. No per-batch sync: the device may run behind the host, as fast as the
    library allows; one sync ends the loop.
    """
    import torch

    from lostreg.backbones import build_backbone
    from lostreg.datasets import build_dataset
    from lostreg.discovery import ObjectDiscoverer
    from lostreg.evaluation.loading import DevicePrefetcher, iterate_prepared
    from lostreg.preprocess import batch_images

    backbone = build_backbone(args.backbone, weights="random", device=args.device)
    device = backbone.device
    preparer = ObjectDiscoverer(backbone).preparer  # eval's preprocessing (max_size None: native size)
    records = list(build_dataset("voc07", root=args.root, split=args.split))
    batches = DevicePrefetcher(iterate_prepared(records, preparer, args.batch_size, args.num_workers,
                                                pin_memory=device.type == "cuda"), device)  # as eval does
    images = failed = 0
    wait_s = 0.0
    loop_start = time.perf_counter()
    iterator = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(iterator, None)
        wait_s += time.perf_counter() - t0
        if batch is None:
            break
        failed += len(batch.failed)
        for group in batch.groups:
            prepared = [it.prepared for it in group.items]
            backbone.extract(batch_images(prepared, device, group.packed), "k", -1, precision=args.precision)
            images += len(group.items)
    _sync(device)
    loop_s = time.perf_counter() - loop_start
    _emit({
        "kind": "floor", "images": images, "failed": failed, "loop_s": loop_s, "load_wait_s": wait_s,
        "forward_s": loop_s - wait_s, "device": str(device), "torch_threads": torch.get_num_threads(),
        **_gpu_memory(device),
    })
    return 0


def worker_eval(args: argparse.Namespace) -> int:
    """(b) ``python -m lostreg eval OVERRIDES --no-progress``, exactly, then the peak-memory line.

    ``runpy`` runs ``lostreg/__main__.py`` as ``python -m`` does; only the summary line (peak GPU
    memory, which only this process can read) is added after it returns.
    """
    import runpy

    sys.argv = ["lostreg", "eval", "--no-progress", *args.overrides]
    try:
        runpy.run_module("lostreg", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    memory: dict[str, Any] = {"peak_gpu_allocated_bytes": None, "peak_gpu_reserved_bytes": None}
    if "torch" in sys.modules:
        import torch

        device = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("device=")), "cuda")
        if device.startswith("cuda") and torch.cuda.is_initialized():
            memory = _gpu_memory(torch.device(device))
    _emit({"kind": "eval", "exit_code": code, **memory})
    return code


def worker_info(args: argparse.Namespace) -> int:
    """Versions and the resolved device, from a short-lived process (the driver never touches CUDA)."""
    import torch
    import torchvision

    import lostreg
    from lostreg.backbones import resolve_device
    from lostreg.rundir import environment_versions  # what run.json records, so the two agree

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        _emit({"error": str(err)})
        return 2
    info: dict[str, Any] = {
        "device": device.type if device.index is None else str(device),
        "device_type": device.type,
        **environment_versions(), "torchvision": torchvision.__version__,
        "lostreg_path": str(Path(lostreg.__file__).parent), "torch_threads": torch.get_num_threads(),
        "gpu_name": None, "gpu_memory_gib": None, "gpu_index": None,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_index=index)
    _emit(info)
    return 0


WORKERS = {"reference": worker_reference, "floor": worker_floor, "eval": worker_eval, "info": worker_info}


def worker_parser() -> argparse.ArgumentParser:
    """Arguments of ``throughput.py _worker KIND``: the measured processes the driver starts."""
    parser = argparse.ArgumentParser(prog="throughput.py _worker", description="one measured process (internal)")
    parser.add_argument("kind", choices=sorted(WORKERS))
    parser.add_argument("--root", help="dataset root (holds VOCdevkit/)")
    parser.add_argument("--split", help="VOC split file name (ImageSets/Main/<split>.txt)")
    parser.add_argument("--backbone", default="dinov2_vits14_reg")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--preds", help="(reference) write its boxes here as JSON lines")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("overrides", nargs="*", help="(eval) hydra overrides for lostreg eval")
    return parser


# ============================================================================ driver: measuring


class GpuSampler:
    """Samples ``nvidia-smi`` (utilisation %, memory used MiB) in a background thread.

    One ``nvidia-smi -lms`` process per measured process; absent tool = no samples and a note.
    Utilisation is the driver's "a kernel was running" share of each sample period, over the
    whole process (start-up included), not SM occupancy.
    """

    def __init__(self, gpu: str | None, interval_ms: int = 200) -> None:
        self.gpu = gpu
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, float]] = []
        self.note: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuSampler":
        if self.gpu is None:
            self.note = "no GPU in use"
            return self
        if shutil.which("nvidia-smi") is None:
            self.note = "nvidia-smi not found: GPU utilisation not sampled"
            return self
        command = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                   "-lms", str(self.interval_ms), "-i", self.gpu]
        try:
            self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as err:
            self.note = f"nvidia-smi failed to start ({err}): GPU utilisation not sampled"
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [s.strip() for s in line.split(",")]
            try:
                self.samples.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue  # "[N/A]" on some virtualised GPUs

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None and not self.samples:
            self.note = "nvidia-smi gave no readable samples"

    def summary(self) -> dict[str, Any]:
        """Mean / max utilisation and max memory used over the samples (None without samples)."""
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None, "gpu_mem_used_max_mib": None,
                    "gpu_samples": 0, "gpu_note": self.note}
        util = [s[0] for s in self.samples]
        return {"gpu_util_mean": statistics.fmean(util), "gpu_util_max": max(util),
                "gpu_mem_used_max_mib": max(s[1] for s in self.samples), "gpu_samples": len(self.samples),
                "gpu_note": self.note}


@dataclass
class Measured:
    """One measured process: the driver's wall clock, its summary line, and the GPU samples."""

    variant: str
    repeat: int
    wall_s: float
    exit_code: int
    summary: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and bool(self.summary)

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "repeat": self.repeat, "wall_s": self.wall_s, "exit_code": self.exit_code,
                "summary": self.summary, "gpu": self.gpu, "log": self.log, **self.extra}


def child_env() -> dict[str, str]:
    """Environment of the measured processes: this checkout's lostreg first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_process(command: list[str], log_stem: Path, gpu: str | None, timeout: float) -> tuple[float, int, dict, dict]:
    """Run ``command`` to exit with the GPU sampled; return (wall s, exit code, summary, GPU stats).

    stdout/stderr go to files (``log_stem``.out/.err), never to pipes that could fill and stall it.
    """
    out_path, err_path = log_stem.with_suffix(".out"), log_stem.with_suffix(".err")
    with out_path.open("w") as out, err_path.open("w") as err, GpuSampler(gpu) as sampler:
        started = time.perf_counter()
        try:
            code = subprocess.run(command, check=False, stdout=out, stderr=err, env=child_env(), cwd=REPO,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
        wall = time.perf_counter() - started
    summary: dict[str, Any] = {}
    for line in out_path.read_text(errors="replace").splitlines():
        if line.startswith(SUMMARY_TAG):
            summary = json.loads(line[len(SUMMARY_TAG):])
    return wall, code, summary, sampler.summary()


def _hydra_value(value: str) -> str:
    """A value safe in a hydra override: plain when simple, else single-quoted and escaped."""
    if re.fullmatch(r"[\w./:+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def eval_overrides(opts: argparse.Namespace, split: str, device: str, batch_size: int, run_dir: Path) -> list[str]:
    """The ``lostreg eval`` overrides of (b) for ``split`` (``--precision`` and ``--method`` included)."""
    group = (REPO / "configs" / "backbone" / f"{opts.backbone}.yaml").is_file()
    backbone = f"backbone={opts.backbone}" if group else f"backbone.name={_hydra_value(opts.backbone)}"
    return [backbone, "weights=random", "dataset=voc07", f"dataset.root={_hydra_value(str(opts.data))}",
            f"dataset.split={split}", f"batch_size={batch_size}", f"num_workers={opts.num_workers}",
            f"device={device}", f"run_dir={_hydra_value(str(run_dir))}", f"precision={opts.precision}",
            f"method={opts.method}"]


def worker_command(kind: str, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", kind, *extra]


def measure(variant: str, repeat: int, opts: argparse.Namespace, split: str, device: str, batch_size: int,
            work: Path, gpu: str | None) -> Measured:
    """Run variant ``a``, ``b`` or ``c`` once as its own process."""
    tag = f"{variant}_r{repeat}"
    common = ["--root", str(opts.data), "--split", split, "--backbone", opts.backbone, "--device", device,
              "--precision", opts.precision]
    extra: dict[str, Any] = {}
    if variant == "a":
        preds = work / f"{tag}_preds.jsonl"
        command = worker_command("reference", *common, "--preds", str(preds))
        extra["preds"] = str(preds)
    elif variant == "c":
        command = worker_command("floor", *common, "--batch-size", str(batch_size),
                                 "--num-workers", str(opts.num_workers))
    else:
        run_dir = work / f"{tag}_run"
        command = worker_command("eval", "--", *eval_overrides(opts, split, device, batch_size, run_dir))
        extra["run_dir"] = str(run_dir)
    print(f"throughput: ({variant}) repeat {repeat + 1}/{opts.repeat}: {VARIANTS[variant]} ...", file=sys.stderr)
    wall, code, summary, gpu_stats = run_process(command, work / tag, gpu, opts.timeout)
    result = Measured(variant, repeat, wall, code, summary, gpu_stats, extra, str(work / tag))
    if variant == "b" and code == 0:
        metrics = json.loads((Path(extra["run_dir"]) / "metrics.json").read_text())
        result.summary.update(images=metrics["timings"]["images"], failed=metrics["failed"],
                              timings=metrics["timings"])
    if not result.ok:
        tail = (work / f"{tag}.err").read_text(errors="replace").splitlines()[-15:]
        print(f"throughput: ({variant}) FAILED (exit {code}); log {work / tag}.err:\n  " + "\n  ".join(tail),
              file=sys.stderr)
    else:
        print(f"throughput: ({variant}) {wall:.2f} s, {result.summary['images'] / wall:.2f} img/s", file=sys.stderr)
    return result


def read_boxes(path: Path) -> dict[str, dict[str, Any]]:
    """Predictions by image id from a ``preds.jsonl`` (lostreg's reader) or (a)'s JSON lines."""
    from lostreg.rundir import PredictionStore

    return PredictionStore(path).read()


def compare_boxes(first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]],
                  ids: Sequence[str]) -> dict[str, Any]:
    """Counts of images whose boxes (and seeds) are identical in two prediction sets, over ``ids``."""
    both = [i for i in ids if i in first and i in second]
    boxed = [i for i in both if first[i].get("box_xyxy") is not None and second[i].get("box_xyxy") is not None]
    same_box = [i for i in boxed if first[i]["box_xyxy"] == second[i]["box_xyxy"]]
    same_seed = [i for i in boxed if first[i].get("seed") == second[i].get("seed")]
    differing = [i for i in boxed if first[i]["box_xyxy"] != second[i]["box_xyxy"]]
    return {"images": len(ids), "compared": len(boxed), "identical_boxes": len(same_box),
            "identical_seeds": len(same_seed), "missing_or_failed": len(ids) - len(boxed),
            "first_differing_ids": differing[:10]}


def identity_check(opts: argparse.Namespace, device: str, batch_size: int, work: Path) -> dict[str, Any]:
    """``lostreg eval`` at batch 1 and at ``batch_size`` on the first 300 images (and CPU vs GPU).

    These processes are timed only for information; they are not part of the throughput table.
    """
    n = min(IDENTITY_IMAGES, opts.images)
    split = write_subset_split(opts.data, n)
    ids = [p.stem for p in split_paths(opts.data, split)]
    out: dict[str, Any] = {"images": n}

    def eval_run(tag: str, dev: str, bs: int, sub_split: str) -> dict[str, dict[str, Any]] | None:
        run_dir = work / f"identity_{tag}_run"
        command = worker_command("eval", "--", *eval_overrides(opts, sub_split, dev, bs, run_dir))
        print(f"throughput: identity check: lostreg eval {tag} ...", file=sys.stderr)
        wall, code, _summary, _gpu = run_process(command, work / f"identity_{tag}", None, opts.timeout)
        out[f"{tag}_wall_s"] = round(wall, 2)
        if code != 0:
            out[f"{tag}_error"] = f"exit {code}, log {work / f'identity_{tag}'}.err"
            return None
        return read_boxes(run_dir / "preds.jsonl")

    batch_one = eval_run(f"{device}_bs1", device, 1, split)
    batched = eval_run(f"{device}_bs{batch_size}", device, batch_size, split)
    if batch_one is not None and batched is not None:
        out[f"bs1_vs_bs{batch_size}"] = compare_boxes(batch_one, batched, ids)
    if device.startswith("cuda"):
        m = min(opts.identity_cpu_images, n)
        cpu_split = write_subset_split(opts.data, m)
        cpu = eval_run(f"cpu_bs{DEFAULT_BATCH['cpu']}", "cpu", DEFAULT_BATCH["cpu"], cpu_split)
        if cpu is not None and batched is not None:
            out[f"cpu_vs_{device}"] = compare_boxes(cpu, batched, ids[:m])
    return out


# ============================================================================ driver: reporting


def machine_description(info: dict[str, Any]) -> dict[str, Any]:
    """CPU model and counts, memory, load, versions, GPU (from the info process)."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem_gib: float | None = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    driver = None
    if info.get("gpu_name") and shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 check=False, capture_output=True, text=True, timeout=20)
            driver = smi.stdout.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = None
    return {"cpu_model": cpu_model, "cpu_count": os.cpu_count(), "cpu_usable": usable, "memory_gib": mem_gib,
            "nvidia_driver": driver,
            **{k: v for k, v in info.items() if k not in ("device", "device_type")}}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median_run(runs: list[Measured]) -> Measured:
    """The run whose wall time is the (lower) median: its breakdown is the one shown."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    return ordered[(len(ordered) - 1) // 2]


def summarise(results: dict[str, list[Measured]]) -> dict[str, dict[str, Any]]:
    """Per variant: median / min wall, img/s at both, peak memory, GPU utilisation, breakdown."""
    table: dict[str, dict[str, Any]] = {}
    for variant, runs in results.items():
        good = [r for r in runs if r.ok]
        if not good:
            table[variant] = {"ok": False, "runs": len(runs)}
            continue
        images = good[0].summary["images"]
        walls = [r.wall_s for r in good]
        med = _median_run(good)
        peaks = [r.summary.get("peak_gpu_allocated_bytes") for r in good]
        peaks = [p for p in peaks if p is not None]
        table[variant] = {
            "ok": True, "runs": len(runs), "ok_runs": len(good), "images": images,
            "failed_images": good[0].summary.get("failed", 0),
            "walls_s": [r.wall_s for r in runs if r.ok],  # in run order: the spread shows the noise
            "wall_median_s": statistics.median(walls), "wall_min_s": min(walls),
            "img_per_s_median": images / statistics.median(walls), "img_per_s_best": images / min(walls),
            "peak_gpu_allocated_mib": max(peaks) / 2**20 if peaks else None,
            "gpu_util_mean": med.gpu.get("gpu_util_mean"), "gpu_util_max": med.gpu.get("gpu_util_max"),
            "gpu_note": med.gpu.get("gpu_note"), "breakdown": breakdown(variant, med, results),
        }
    return table


def breakdown(variant: str, run: Measured, results: dict[str, list[Measured]]) -> dict[str, Any]:
    """Where the process's seconds went, as far as each variant can tell (see the README)."""
    s = run.summary
    if variant == "a":
        backbone = s["forward_s"]
        return {"process_s": run.wall_s, "outside_loop_s": run.wall_s - s["loop_s"], "waiting_images_s": s["read_s"],
                "compute_s": s["forward_s"] + s["lost_s"],
                "rest_s": s["loop_s"] - s["read_s"] - s["forward_s"] - s["lost_s"],
                "backbone_s": backbone, "outside_backbone_share": 1 - backbone / run.wall_s, "estimated": False}
    if variant == "c":
        backbone = s["forward_s"]
        return {"process_s": run.wall_s, "outside_loop_s": run.wall_s - s["loop_s"],
                "waiting_images_s": s["load_wait_s"],
                "compute_s": s["forward_s"], "rest_s": 0.0, "backbone_s": backbone,
                "outside_backbone_share": 1 - backbone / run.wall_s, "estimated": False}
    t = s["timings"]
    # lostreg eval cannot time its backbone apart without editing the library: borrow (c)'s.
    floor = [r for r in results.get("c", []) if r.ok]
    backbone = _median_run(floor).summary["forward_s"] if floor else None
    return {"process_s": run.wall_s, "outside_loop_s": run.wall_s - t["wall_s"], "waiting_images_s": t["load_wait_s"],
            "compute_s": t["compute_s"], "rest_s": t["wall_s"] - t["load_wait_s"] - t["compute_s"],
            "backbone_s": backbone, "estimated": True,
            "outside_backbone_share": None if backbone is None else 1 - backbone / run.wall_s}


def markdown_report(opts: argparse.Namespace, device: str, batch_size: int, machine: dict[str, Any],
                    table: dict[str, dict[str, Any]], identity: dict[str, Any] | None,
                    agreement: dict[str, Any] | None, load: dict[str, Any]) -> str:
    """The table to paste into benchmarks/README.md."""
    m = machine
    gpu = "none used"
    if m.get("gpu_name"):
        gpu = f"{m['gpu_name']} ({m['gpu_memory_gib']} GiB, driver {m['nvidia_driver'] or '?'})"
    lines = [
        f"### lostreg throughput: {opts.backbone}, random weights, {_precision_words(opts.precision)}, "
        f"method {opts.method}, device {device}",
        "",
        f"- machine: CPU {m['cpu_model']}, {m['cpu_usable']} usable of {m['cpu_count']} logical CPUs, "
        f"{m['memory_gib']} GiB RAM; GPU: {gpu}",
        f"- software: Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), timm {m['timm']}, "
        f"torchvision {m['torchvision']}, numpy {m['numpy']}, lostreg {m['lostreg']}; {m['platform']}",
        f"- settings: {opts.images} generated images ({', '.join(f'{w}x{h}' for w, h in VOC_SIZES)} cycled), "
        f"batch_size {batch_size} for (b) and (c), num_workers {opts.num_workers}, repeat {opts.repeat}, "
        f"torch threads {m['torch_threads']}",
        f"- load average (1/5/15 min) before: {load['before']}, after: {load['after']}",
        "",
        "| run | what | images | wall s median / min | img/s median / best | peak GPU MiB (allocated) "
        "| GPU util % mean / max |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        if v not in table:
            continue
        row = table[v]
        if not row["ok"]:
            lines.append(f"| ({v}) | {VARIANTS[v]} | FAILED | | | | |")
            continue
        failed = f" ({row['failed_images']} failed)" if row["failed_images"] else ""
        util = "-" if row["gpu_util_mean"] is None else f"{row['gpu_util_mean']:.0f} / {row['gpu_util_max']:.0f}"
        lines.append(
            f"| ({v}) | {VARIANTS[v]} | {row['images']}{failed} | {row['wall_median_s']:.2f} / {row['wall_min_s']:.2f} "
            f"| {row['img_per_s_median']:.2f} / {row['img_per_s_best']:.2f} | {_fmt(row['peak_gpu_allocated_mib'], 0)} "
            f"| {util} |")
    ok = {v: r for v, r in table.items() if r["ok"]}
    ratios = []
    for num, den, meaning in (("b", "c", "share of the backbone floor reached"),
                              ("b", "a", "speed-up over the reference-style loop")):
        if num in ok and den in ok:
            ratios.append(f"- ({num})/({den}) img/s: {ok[num]['img_per_s_median'] / ok[den]['img_per_s_median']:.2f} "
                          f"(medians), {ok[num]['img_per_s_best'] / ok[den]['img_per_s_best']:.2f} (best): {meaning}")
    lines += ["", *ratios] if ratios else []
    lines.append("- wall s of every run, in run order: " + "; ".join(
        f"({v}) " + ", ".join(f"{w:.2f}" for w in r["walls_s"]) for v, r in ok.items()))
    notes = {r.get("gpu_note") for r in ok.values() if r.get("gpu_note")}
    lines += [f"- GPU utilisation: {n}" for n in sorted(notes)]
    lines += ["", "Where the time goes (median run of each; seconds):", "",
              "| run | process | outside loop (start-up, build, exit) | waiting for images | compute | rest of loop "
              "| backbone | outside backbone |",
              "|---|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        if v not in ok:
            continue
        b = ok[v]["breakdown"]
        share = "-" if b["outside_backbone_share"] is None else f"{100 * b['outside_backbone_share']:.0f}%"
        tilde = "~" if b["estimated"] else ""
        lines.append(f"| ({v}) | {b['process_s']:.2f} | {b['outside_loop_s']:.2f} | {b['waiting_images_s']:.2f} "
                     f"| {b['compute_s']:.2f} | {b['rest_s']:.2f} | {tilde}{_fmt(b['backbone_s'])} | {tilde}{share} |")
    lines += ["", "(a) compute = forward + LOST; (b) compute = backbone + LOST + scoring (metrics.json `compute_s`), "
              "its backbone column is (c)'s (~: estimate); (c) compute = backbone only."]
    if agreement:
        what = ("same images" if opts.precision == "fp32"
                else f"same images, (a) fp32 vs (b) {opts.precision}: the differing boxes are the ones "
                     f"{opts.precision} changed")
        lines += ["", f"- boxes (a) vs (b), {what}: {_agreement(agreement)}"]
    elif opts.method != "lost" and "a" in ok and "b" in ok:
        lines += ["", f"- boxes (a) vs (b) not compared: (a) is LOST, (b) is {opts.method}"]
    if identity:
        lines += ["", f"Identity check (lostreg eval on the first {identity['images']} images):"]
        for key, value in identity.items():
            if isinstance(value, dict):
                lines.append(f"- {key}: {_agreement(value)}")
            elif key.endswith("_error"):
                lines.append(f"- {key}: {value}")
    return "\n".join(lines)


def _precision_words(precision: str) -> str:
    return {"fp32": "fp32 (TF32 off)", "tf32": "tf32 (TF32 matmuls and convolutions)",
            "bf16": "bf16 (autocast; LOST in fp32)"}.get(precision, precision)


def _agreement(c: dict[str, Any]) -> str:
    text = (f"{c['identical_boxes']}/{c['compared']} identical boxes, {c['identical_seeds']}/{c['compared']} "
            f"identical seeds, {c['missing_or_failed']} missing or failed of {c['images']}")
    if c["first_differing_ids"]:
        text += f"; first differing: {', '.join(c['first_differing_ids'])}"
    return text


# ============================================================================ command line


def _device_arg(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return number




def _skip_arg(value: str) -> frozenset[str]:
    parts = {p.strip() for p in value.split(",") if p.strip()}
    unknown = parts - set(VARIANTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--skip takes a comma-separated subset of a,b,c; got {', '.join(sorted(unknown))}")
    return frozenset(parts)


def build_parser() -> argparse.ArgumentParser:
    """The driver's command line (``--help`` documents every option)."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/throughput.py",
        description=(
            "Whole-process images/second of LOST on generated VOC-sized images with a random-init backbone, "
            "fp32 with TF32 off unless --precision says otherwise. Each of (a) a reference-style loop (batch 1, qkv hook, LOST per image), "
            "(b) `python -m lostreg eval` and (c) the backbone-only floor (same read stage and size-grouped "
            "batches as (b), extract() only) runs as its own process; its wall time from start to exit "
            "(start-up, imports, model build included) gives img/s. Prints a markdown table with the machine."),
        epilog=(
            "Examples: `python benchmarks/throughput.py` (GPU machine: 2000 images, batch 32); "
            "`python benchmarks/throughput.py --device cpu --images 48 --batch-size 8 --num-workers 2`. "
            "Internally the script re-runs itself as `throughput.py _worker reference|floor|eval|info ...` "
            "for the measured processes; see benchmarks/README.md."),
    )
    parser.add_argument("--device", type=_device_arg, default="auto",
                        help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--images", type=_positive, default=None,
                        help=f"number of images (default: {DEFAULT_IMAGES['cuda']} on CUDA, "
                             f"{DEFAULT_IMAGES['cpu']} on CPU)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "lostreg_bench_voc",
                        help="where the generated VOC-layout images are cached (VOCdevkit/VOC2007 inside); "
                             "made once, grown when more images are asked (default: %(default)s)")
    parser.add_argument("--backbone", default="dinov2_vits14_reg",
                        help="lostreg backbone name or alias, or a timm ViT name; random weights "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help=f"batch size of (b) and (c); (a) is always 1 (default: {DEFAULT_BATCH['cuda']} on CUDA, "
                             f"{DEFAULT_BATCH['cpu']} on CPU)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding worker processes of (b) and (c) (default: min(8, CPU count) = %(default)s)")
    parser.add_argument("--repeat", type=_positive, default=1,
                        help="run each process K times, interleaved a,b,c,a,b,c...; the table shows median and min "
                             "wall time (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="numerics of the backbone forward in (b) and (c): fp32 (TF32 off, exact, the "
                             "spec's), tf32 or bf16 (autocast); (a) stays fp32, so (a) vs (b) then counts the "
                             "boxes the precision changed (default: %(default)s)")
    parser.add_argument("--method", default="lost", choices=METHODS,
                        help="discovery method of (b): lost or tokencut; (a) is always the LOST reference "
                             "loop and (c) has no method, so with tokencut (b)/(c) is TokenCut's share of "
                             "the backbone floor (default: %(default)s)")
    parser.add_argument("--skip", type=_skip_arg, default=frozenset(), metavar="a,b,c",
                        help="variants not to run, comma-separated (e.g. --skip a)")
    parser.add_argument("--check-identity", action="store_true",
                        help=f"also run lostreg eval with batch_size=1 and with --batch-size on the first "
                             f"{IDENTITY_IMAGES} images (or all, if fewer) and count identical boxes; on CUDA also "
                             "a CPU pass on --identity-cpu-images of them, compared with the GPU boxes. "
                             "Not timed in the table")
    parser.add_argument("--identity-cpu-images", type=_positive, default=48,
                        help="images of the CPU pass of --check-identity on a GPU machine (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT",
                        help="also write everything (machine, settings, every run, summary, checks) to OUT as JSON")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds after which one measured process is killed (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (run directories, logs, (a)'s boxes) and print its path")
    return parser


def _nvidia_smi_id(index: int) -> str:
    """The ``nvidia-smi -i`` id of CUDA device ``index`` (honours CUDA_VISIBLE_DEVICES ids and UUIDs)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return visible[index] if index < len(visible) else str(index)


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def run_benchmark(opts: argparse.Namespace) -> int:
    """Driver: info, data, measured processes, checks, report."""
    load = {"before": _load()}
    info_out = subprocess.run(worker_command("info", "--device", opts.device), check=False, capture_output=True,
                              text=True, env=child_env(), cwd=REPO)
    info = next((json.loads(line[len(SUMMARY_TAG):]) for line in info_out.stdout.splitlines()
                 if line.startswith(SUMMARY_TAG)), None)
    if info is None or "error" in info:
        reason = info["error"] if info else info_out.stderr.strip().splitlines()[-1:] or ["no output"]
        print(f"throughput: error: {reason}", file=sys.stderr)
        return 2
    device, kind = info["device"], info["device_type"]
    opts.images = opts.images or DEFAULT_IMAGES.get(kind, DEFAULT_IMAGES["cpu"])
    batch_size = opts.batch_size or DEFAULT_BATCH.get(kind, DEFAULT_BATCH["cpu"])
    gpu = _nvidia_smi_id(info["gpu_index"]) if kind == "cuda" else None
    machine = machine_description(info)

    opts.data = ensure_dataset(opts.data.resolve(), opts.images)
    split = write_subset_split(opts.data, opts.images)
    # Read every image once so that no variant pays for a cold disk the others do not.
    for path in split_paths(opts.data, split):
        path.read_bytes()

    work = Path(tempfile.mkdtemp(prefix="lostreg_bench_"))
    variants = [v for v in VARIANTS if v not in opts.skip]
    results: dict[str, list[Measured]] = {v: [] for v in variants}
    try:
        for repeat in range(opts.repeat):
            for v in variants:  # interleaved, so slow drifts of a shared machine spread over all
                results[v].append(measure(v, repeat, opts, split, device, batch_size, work, gpu))
        agreement = None
        a_ok = [r for r in results.get("a", []) if r.ok]
        b_ok = [r for r in results.get("b", []) if r.ok]
        if a_ok and b_ok and opts.method == "lost":  # (a) is LOST: TokenCut's boxes are not comparable
            ids = [p.stem for p in split_paths(opts.data, split)]
            agreement = compare_boxes(read_boxes(Path(a_ok[0].extra["preds"])),
                                      read_boxes(Path(b_ok[0].extra["run_dir"]) / "preds.jsonl"), ids)
        identity = identity_check(opts, device, batch_size, work) if opts.check_identity else None
        load["after"] = _load()
        table = summarise(results)
        report = markdown_report(opts, device, batch_size, machine, table, identity, agreement, load)
        print(report)
        if opts.json:
            opts.json.write_text(json.dumps({
                "machine": machine, "device": device, "load_average": load,
                "settings": {"images": opts.images, "batch_size": batch_size, "num_workers": opts.num_workers,
                             "repeat": opts.repeat, "backbone": opts.backbone, "precision": opts.precision,
                             "method": opts.method,
                             "data": str(opts.data), "skip": sorted(opts.skip), "sizes": VOC_SIZES},
                "runs": [r.as_dict() for v in variants for r in results[v]],
                "summary": table, "agreement_a_vs_b": agreement, "identity": identity,
                "markdown": report,
            }, indent=1) + "\n")
            print(f"\nthroughput: results written to {opts.json}", file=sys.stderr)
        failed = any(not r.ok for runs in results.values() for r in runs)
    finally:
        if opts.keep:
            print(f"throughput: work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``throughput.py [options]`` (driver) or ``throughput.py _worker KIND ...`` (a measured process)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        args = worker_parser().parse_args(argv[1:])
        return WORKERS[args.kind](args)
    return run_benchmark(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
