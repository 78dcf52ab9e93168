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
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from lostreg.backbones import UnknownBackboneError, WeightsError, WeightsUnavailableError
from lostreg.cli.common import DEFAULT_MAX_SIZE, build_backbone_loudly
from lostreg.cli.common import error as _error
from lostreg.discovery import LostConfig, ObjectDiscoverer
from lostreg.io.images import ImageReadError, collect_image_paths, load_image_rgb
from lostreg.preprocess import ImageTooSmallError
from lostreg.samples import SAMPLES, load_sample
from lostreg.viz.draw import draw_discovery, save_png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="image files, folders or glob patterns (quote globs)")
    parser.add_argument("--samples", action="store_true",
                        help="also run on scikit-image's bundled photos (astronaut, chelsea, coffee, rocket, motorcycle)")
    parser.add_argument("--backbone", default="dinov2_reg", help="backbone name or alias (see `lostreg backbones`)")
    parser.add_argument("--weights", default="pretrained",
                        help="'pretrained' (timm hub, cached), 'random' (pipeline test only) or a checkpoint path")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--output", type=Path, default=None, help="folder for one PNG per image (box and seed)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help=f"downscale images whose longer side exceeds this first (default {DEFAULT_MAX_SIZE}; "
                             "0 = native resolution); boxes are always in original pixels")
    parser.add_argument("--recursive", action="store_true", help="search folders recursively")
    parser.add_argument("--k-patches", type=int, default=100, help="LOST k (default 100)")
    parser.add_argument("--gram-bias", type=float, default=0.0, help="added to the Gram matrix (default 0)")
    parser.add_argument("--which", choices=["q", "k", "v"], default="k", help="attention features (default k)")
    parser.add_argument("--layer", type=int, default=-1, help="block index, negative from the end (default -1)")
    parser.add_argument("--l2-normalize", action="store_true",
                        help="L2-normalise each patch feature before LOST (cosine Gram matrix)")


Source = tuple[str, Callable[[], np.ndarray]]


def _sources(paths: list[Path], samples: bool) -> Iterator[Source]:
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
    if not args.paths and not args.samples:
        _error("give image files, folders or globs, or --samples")
        return 2
    if args.k_patches < 1:
        _error(f"--k-patches must be >= 1, got {args.k_patches}")
        return 2
    paths, problems = collect_image_paths(args.paths, recursive=args.recursive) if args.paths else ([], [])
    for problem in problems:
        _error(str(problem))
    sources = list(_sources(paths, args.samples))
    if not sources:
        _error("no images to process")
        return 2

    try:
        backbone = build_backbone_loudly(args.backbone, args.weights, args.device)
    except (UnknownBackboneError, WeightsError, WeightsUnavailableError, ValueError) as err:
        _error(str(err))
        return 2

    discoverer = ObjectDiscoverer(
        backbone,
        LostConfig(k_patches=args.k_patches, gram_bias=args.gram_bias, which=args.which, layer=args.layer,
                   l2_normalize=args.l2_normalize),
        max_size=args.max_size or None,
    )
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
                _error(message)
                failed += 1
                if results_file:
                    results_file.write(json.dumps({"image": name, "error": message}) + "\n")
                continue
            except Exception as err:  # e.g. CUDA out of memory on a huge image: record, go on
                _error(f"{name}: {type(err).__name__}: {err}")
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
        _error(f"{failed} of {len(sources) + len(problems)} inputs failed")
    return 1 if failed else 0

