"""``lostreg discover``: the main object's box for images, folders, globs or the bundled samples.

stdout: one JSON object per image (``image``, ``width``, ``height``, ``box_xyxy`` in original
pixels with exclusive max, ``seed_rc``, ``backbone``). stderr: progress and one line per
problem. Exit code 0 when every image succeeded, 1 when any failed, 2 when nothing could run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from lostreg.samples import SAMPLES
from lostreg.cli.common import (
    DEFAULT_MAX_SIZE,
    as_flag,
    build_backbone_loudly,
    error,
    protocol_from_args,
    protocol_parent_parser,
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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lostreg.discovery import ObjectDiscoverer
    from lostreg.io.images import ImageReadError, collect_image_paths
    from lostreg.preprocess import ImageTooSmallError
    from lostreg.viz.draw import draw_discovery, save_png

    errors = user_errors()
    if not args.paths and not args.samples:
        error("give image files, folders or globs, or --samples")
        return 2
    try:
        protocol = protocol_from_args(args)
        if args.max_size < 0:
            raise ValueError(f"--max-size must be >= 0 (0 = native resolution), got {args.max_size}")
    except errors as err:
        error(err)
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
        discoverer = ObjectDiscoverer(backbone, protocol, max_size=args.max_size or None)
    except errors as err:
        error(as_flag(str(err)))
        return 2

    failed = len(problems)
    used_names: set[str] = set()
    results_file = None
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        results_file = (args.output / "discoveries.jsonl").open("w")
    try:
        bar = tqdm(sources, desc="discover", unit="img", disable=len(sources) < 2, file=sys.stderr)
        for name, load in bar:
            try:
                image = load()
                found = discoverer.discover(image, name)
            except (ImageReadError, ImageTooSmallError) as err:
                message = str(err) if isinstance(err, ImageReadError) else f"{name}: {err}"
                error(message)
                failed += 1
                if results_file:
                    results_file.write(json.dumps({"image": name, "error": message}) + "\n")
                continue
            except Exception as err:  # e.g. CUDA out of memory on a huge image: record, go on
                error(f"{name}: {type(err).__name__}: {err}")
                failed += 1
                if results_file:
                    results_file.write(json.dumps({"image": name, "error": f"{type(err).__name__}: {err}"}) + "\n")
                continue
            record = found.to_json()
            tqdm.write(json.dumps(record), file=sys.stdout)
            sys.stdout.flush()
            if args.output is not None:
                record["png"] = _png_name(name, used_names)
                label = found.backbone + (" (RANDOM weights)" if backbone.is_random else "")
                picture = draw_discovery(image, found.box_xyxy, found.seed_box_xyxy, label=label)
                save_png(picture, args.output / record["png"])
                assert results_file is not None
                results_file.write(json.dumps(record) + "\n")
                results_file.flush()
    finally:
        if results_file:
            results_file.close()
    if failed:
        error(f"{failed} of {len(sources) + len(problems)} inputs failed")
    return 1 if failed else 0
