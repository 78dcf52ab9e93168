"""``lostreg calibrate``: find a ViT's register neurons from unlabeled images; write a neuron file.

    lostreg calibrate --backbone dinov2_vitl14 --images imagenet_val_100/ --output l14_neurons.json \\
        --threshold 150 --highest-layer 17

Images are prepared as ``lostreg discover`` prepares them (downscale to ``--max-size``, normalise,
zero-pad to a multiple of the patch size) and batched in the given order, consecutive images of
one padded size together. The file (see :mod:`lostreg.ttreg.neurons`) records the backbone, its
weights' hash and every setting; the same images in the same order give the same bytes.

stdout: one JSON line (``output``, ``images``, ``images_with_outliers``, ``units``, ``top``: the
first five ``[layer, unit, score]``). stderr: progress and one line per problem. Exit code 0 on
success, 1 when the file was written but some images failed, or when no image had an outlier
(no file), 2 when nothing could run (bad option, no images, backbone or weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lostreg.errors import ConfigError
from lostreg.cli.common import DEFAULT_MAX_SIZE, build_backbone_loudly, user_errors
from lostreg.cli.common import error as _error
from lostreg.ttreg.defaults import DEFAULT_DETECT_LAYER, DEFAULT_TOP_K

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lostreg.preprocess import ImagePreparer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", required=True, help="backbone name or alias (see `lostreg backbones`)")
    parser.add_argument("--weights", default="pretrained",
                        help="'pretrained' (timm hub, cached), 'random' (pipeline test only) or a checkpoint path; "
                             "the file is tied to these weights by their hash")
    parser.add_argument("--images", nargs="+", required=True, metavar="DIR|GLOB|FILE",
                        help="unlabeled images: files, folders or glob patterns (quote globs); ~100 are enough")
    parser.add_argument("--recursive", action="store_true", help="search folders recursively")
    parser.add_argument("--output", type=Path, required=True, help="the neuron file to write (JSON)")
    parser.add_argument("--detect-layer", type=int, default=DEFAULT_DETECT_LAYER,
                        help=f"block whose output norms define outlier tokens, negative from the end "
                             f"(default {DEFAULT_DETECT_LAYER}, the paper's for DINOv2)")
    parser.add_argument("--threshold", default="mad", metavar="mad|mad:K|mean3std|FLOAT",
                        help="outlier rule on each image's patch-token norms: 'mad' = median + 5*1.4826*MAD (default), "
                             "'mad:K', 'mean3std' (or 'meanstd:K'), or a fixed norm such as the paper's 150 for "
                             "DINOv2-L at block -2")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                        help=f"units to keep (default {DEFAULT_TOP_K}; the paper advises as few as remove the norm tail)")
    parser.add_argument("--highest-layer", type=int, default=None,
                        help="last block whose units may be chosen: the block where outliers first appear "
                             "(the paper: 17 for DINOv2-L); default every block")
    parser.add_argument("--lowest-layer", type=int, default=None, help="first block whose units may be chosen")
    parser.add_argument("--sparsity", action="store_true",
                        help="the released finder's sparsity filter: a unit scores 0 on an image unless >= 50%% of "
                             "its tokens have activation < 0.5")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help=f"downscale images whose longer side exceeds this first (default {DEFAULT_MAX_SIZE}; "
                             "0 = native resolution)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _batches(paths: list[Path], preparer: "ImagePreparer", batch_size: int,
             failures: list[str]) -> Iterator["torch.Tensor"]:
    """Stacked (B, 3, H, W) tensors of consecutive same-size images, in the given order.

    Images that cannot be read or are too small are reported, appended to ``failures`` and skipped.
    """
    import torch

    from lostreg.io.images import ImageReadError, load_image_rgb
    from lostreg.preprocess import ImageTooSmallError

    pending: list[torch.Tensor] = []
    for path in paths:
        try:
            tensor = preparer(load_image_rgb(path), str(path)).padded.tensor  # (3, H_pad, W_pad) float32
        except ImageReadError as err:
            _error(str(err))
            failures.append(str(path))
            continue
        except ImageTooSmallError as err:
            _error(f"{path}: {err}")
            failures.append(str(path))
            continue
        if pending and (tensor.shape != pending[0].shape or len(pending) == batch_size):
            yield torch.stack(pending)
            pending = []
        pending.append(tensor)
    if pending:
        yield torch.stack(pending)


def run(args: argparse.Namespace) -> int:
    from lostreg.artifacts import OutlierRule
    from lostreg.io.images import collect_image_paths
    from lostreg.preprocess import ImagePreparer
    from lostreg.ttreg.apply import require_forward_edits
    from lostreg.io.paths import check_output_file
    from lostreg.ttreg.finder import NoImagesError, NoOutliersError, SparsityFilter, calibrate

    limits = (("--top-k", args.top_k, 1), ("--batch-size", args.batch_size, 1), ("--max-size", args.max_size, 0))
    for flag, value, low in limits:
        if value < low:
            _error(f"{flag} must be >= {low}, got {value}")
            return 2
    try:
        rule = OutlierRule.parse(args.threshold)
    except ValueError as err:
        _error(f"--threshold: {err}")
        return 2
    try:
        check_output_file(args.output, "--output")  # now, not after the calibration
    except ConfigError as err:
        _error(str(err))
        return 2
    paths, problems = collect_image_paths(args.images, recursive=args.recursive)
    for problem in problems:
        _error(str(problem))
    if not paths:
        _error("no images to calibrate on")
        return 2

    try:
        backbone = build_backbone_loudly(args.backbone, args.weights, args.device)
        # Neurons only for backbones that can take the register (says which can otherwise).
        require_forward_edits(backbone)
        # Bad layer numbers fail here, before any image is read.
        for flag, layer in (("--detect-layer", args.detect_layer), ("--highest-layer", args.highest_layer),
                            ("--lowest-layer", args.lowest_layer)):
            if layer is not None:
                try:
                    backbone.layer_index(layer)
                except ValueError as err:
                    raise ConfigError(f"{flag}: {err}") from None
    except user_errors() as err:
        _error(str(err))
        return 2

    max_size = args.max_size or None
    preparer = ImagePreparer(backbone.patch_size, backbone.mean, backbone.std, max_size)
    failures: list[str] = []
    settings = {
        # The hash identifies the weights; the file name is a reminder (no local directories).
        "weights": args.weights if args.weights in ("pretrained", "random") else Path(args.weights).name,
        "image_inputs": len(paths),
        "max_size": max_size,
        "preprocessing": "as lostreg discover: downscale to max_size, normalise, zero-pad to the patch size",
    }
    try:
        neurons = calibrate(
            backbone,
            _batches(paths, preparer, args.batch_size, failures),
            detect_layer=args.detect_layer,
            threshold=rule,
            top_k=args.top_k,
            highest_layer=args.highest_layer,
            lowest_layer=args.lowest_layer,
            sparsity=SparsityFilter() if args.sparsity else None,
            progress=not args.no_progress,
            total_images=len(paths),
            settings=settings,
        )
    except NoOutliersError as err:
        _error(str(err))
        return 1
    except NoImagesError as err:
        _error(str(err))
        return 2

    args.output.parent.mkdir(parents=True, exist_ok=True)
    neurons.save(args.output)
    summary = {
        "output": str(args.output),
        "images": neurons.calibration["images"] if neurons.calibration else None,
        "images_with_outliers": neurons.calibration["images_with_outliers"] if neurons.calibration else None,
        "units": len(neurons.units),
        "top": [[u.layer, u.unit, round(u.score or 0.0, 4)] for u in neurons.units[:5]],
    }
    print(json.dumps(summary), file=sys.stdout)
    failed = len(problems) + len(failures)
    if failed:
        _error(f"{failed} of {len(paths) + len(problems)} inputs failed")
    return 1 if failed else 0
