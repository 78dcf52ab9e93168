"""``lostreg discover``: the main object's box for images, folders, globs or the bundled samples.

stdout: one JSON object per image (``image``, ``width``, ``height``, ``box_xyxy`` in original
pixels with exclusive max, ``seed_rc``, ``backbone``; with ``--method tokencut`` also
``degenerate``). stderr: progress and one line per
problem. Exit code 0 when every image succeeded, 1 when any failed, 2 when nothing could run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from lostreg.samples import SAMPLES
from lostreg.errors import ConfigError
from lostreg.cli.common import (
    DEFAULT_MAX_SIZE,
    add_precision_argument,
    as_flag,
    build_backbone_loudly,
    error,
    protocol_from_args,
    protocol_parent_parser,
    report_user_error,
    user_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np



def parents() -> list[argparse.ArgumentParser]:
    """Shared flag groups of this command (the discovery protocol)."""
    return [protocol_parent_parser()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="image files, folders or glob patterns (quote globs)")
    parser.add_argument("--samples", action="store_true",
                        help=f"also run on scikit-image's bundled photos ({', '.join(SAMPLES)})")
    parser.add_argument("--backbone", default="dinov2_reg", help="backbone name or alias (see `lostreg backbones`)")
    parser.add_argument("--weights", default="pretrained",
                        help="'pretrained' (timm hub, cached), 'random' (pipeline test only) or a checkpoint path")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--output", type=Path, default=None, help="folder for one PNG per image (box and seed)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help=f"downscale images whose longer side exceeds this first (default {DEFAULT_MAX_SIZE}; "
                             "0 = native resolution); boxes are always in original pixels")
    parser.add_argument("--recursive", action="store_true", help="search folders recursively")
    parser.add_argument("--ttreg", default=None, metavar="FILE",
                        help="register-neuron file (`lostreg calibrate`): run the backbone with one test-time register")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per forward pass (default 1); consecutive images of one padded size are "
                             "batched; boxes do not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision_argument(parser)


Source = tuple[str, Callable[[], "np.ndarray"]]


def _sources(paths: list[Path], samples: bool) -> Iterator[Source]:
    from lostreg.io.images import load_image_rgb
    from lostreg.samples import load_sample

    for path in paths:
        yield str(path), (lambda p=path: load_image_rgb(p))
    if samples:
        for name in SAMPLES:
            yield f"skimage:{name}", (lambda n=name: load_sample(n))


def _png_name(image: str, used: set[str]) -> str:
    stem = Path(image.split(":", 1)[1] if image.startswith("skimage:") else image).stem or "image"
    name, i = f"{stem}.png", 1
    while name in used:  # two inputs with one stem (a/x.jpg, b/x.jpg)
        name, i = f"{stem}_{i}.png", i + 1
    used.add(name)
    return name


RESULTS_FILE = "discoveries.jsonl"


def _remove_stale_pictures(output: Path) -> None:
    """Delete the PNGs an earlier ``discover`` listed in ``output/discoveries.jsonl`` (and only those):
    a re-run on fewer or other images must not leave pictures of the old ones beside the new."""
    listing = output / RESULTS_FILE
    if not listing.is_file():
        return
    for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            name = json.loads(line).get("png")
        except (ValueError, AttributeError):
            continue
        if isinstance(name, str) and Path(name).name == name and name.endswith(".png"):
            (output / name).unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lostreg.discovery import ObjectDiscoverer
    from lostreg.io.images import ImageReadError, collect_image_paths
    from lostreg.memory import InsufficientMemoryError, check_fits
    from lostreg.preprocess import ImageTooSmallError
    from lostreg.viz.draw import draw_discovery, save_png

    errors = user_errors()
    if not args.paths and not args.samples:
        error("give image files, folders or globs, or --samples")
        return 2
    try:
        protocol = protocol_from_args(args)
        if args.max_size < 0:
            raise ConfigError(f"--max-size must be >= 0 (0 = native resolution), got {args.max_size}")
        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.output is not None and args.output.exists() and not args.output.is_dir():
            raise ConfigError(f"--output {args.output}: exists and is not a folder; --output takes a folder")
    except errors as err:
        report_user_error(err)
        return 2
    paths, problems = collect_image_paths(args.paths, recursive=args.recursive) if args.paths else ([], [])
    for problem in problems:
        error(str(problem))
    sources = list(_sources(paths, args.samples))
    if not sources:
        error("no images to process")
        return 2

    try:
        backbone = build_backbone_loudly(args.backbone, args.weights, args.device)
        if args.ttreg:
            from lostreg.ttreg import attach_test_time_registers

            backbone = attach_test_time_registers(backbone, args.ttreg)
        discoverer = ObjectDiscoverer(backbone, protocol, max_size=args.max_size or None,
                                     precision=args.precision)
    except errors as err:
        report_user_error(err, as_flag(str(err)))
        return 2

    results_file = None
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        _remove_stale_pictures(args.output)
        results_file = (args.output / RESULTS_FILE).open("w", encoding="utf-8")
    used_names: set[str] = set()
    failed = 0

    def record_failure(name: str, message: str) -> None:
        nonlocal failed
        error(message)
        failed += 1
        if results_file:
            results_file.write(json.dumps({"image": name, "error": message}) + "\n")
            results_file.flush()

    def emit(name: str, image: "np.ndarray", found) -> None:  # type: ignore[no-untyped-def]
        record = found.to_json()
        tqdm.write(json.dumps(record), file=sys.stdout)
        sys.stdout.flush()
        if results_file is not None:
            record["png"] = _png_name(name, used_names)
            label = found.backbone + (" (RANDOM weights)" if backbone.is_random else "")
            picture = draw_discovery(image, found.box_xyxy, found.seed_box_xyxy, label=label)
            save_png(picture, args.output / record["png"])
            results_file.write(json.dumps(record) + "\n")
            results_file.flush()

    def flush(pending: list) -> None:  # type: ignore[type-arg]
        """Discover a run of consecutive same-size images in one pass; retry one by one on failure."""
        try:
            found = discoverer.discover_batch([prepared for _, _, prepared in pending])
        except Exception:  # e.g. CUDA out of memory: find the image at fault, record it, go on
            for name, image, prepared in pending:
                try:
                    emit(name, image, discoverer.discover_batch([prepared])[0])
                except Exception as err:  # noqa: BLE001 - recorded, the others go on
                    record_failure(name, f"{name}: {type(err).__name__}: {err}")
            return
        for (name, image, _), one in zip(pending, found):
            emit(name, image, one)

    try:
        for problem in problems:  # inputs that named no image: recorded like failed images
            if results_file:
                results_file.write(json.dumps({"image": problem.path, "error": str(problem)}) + "\n")
        pending: list = []  # type: ignore[type-arg]
        bar = tqdm(sources, desc="discover", unit="img", disable=args.no_progress or len(sources) < 2,
                   file=sys.stderr)
        for name, load in bar:
            try:
                image = load()
                prepared = discoverer.prepare(image, name)
            except ImageReadError as err:
                record_failure(name, str(err))
                continue
            except ImageTooSmallError as err:
                record_failure(name, f"{name}: {err}")
                continue
            try:  # a photo too large for this machine at this --max-size: its own error, not an OOM kill
                check_fits([(name, prepared.original_hw)], [], protocol, backbone.patch_size, backbone.token_width,
                           1, args.max_size or None, backbone.device)
            except InsufficientMemoryError as err:
                record_failure(name, str(err).replace("max_size=", "--max-size "))
                continue
            if pending and (len(pending) == args.batch_size
                            or prepared.padded_hw != pending[0][2].padded_hw):
                flush(pending)
                pending = []
            pending.append((name, image, prepared))
        if pending:
            flush(pending)
    finally:
        if results_file:
            results_file.close()
    failed += len(problems)
    if failed:
        error(f"{failed} of {len(sources) + len(problems)} inputs failed")
    return 1 if failed else 0
