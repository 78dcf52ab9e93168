"""``lostreg discover``: the main object's box for images, folders, globs or the bundled samples.

stdout: one JSON object per image (``image``, ``width``, ``height``, ``box_xyxy`` in original
pixels with exclusive max, ``seed_rc``, ``backbone``; with ``--objects N`` (N > 1) or
``--with-score`` also ``boxes_xyxy`` and ``scores``, every object most confident first, as in
``preds.jsonl``; with ``--method tokencut`` also ``degenerate``). stderr: progress and one line per problem. Exit code 0 when every image succeeded,
1 when any failed, 2 when nothing could run; a bug stops with its traceback (exit code 1).

The discovery itself is the engine's (:mod:`lostreg.evaluation.engine`), as for ``lostreg eval``;
this module reads the inputs (files, globs, bundled samples) in this process and writes the records
and pictures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from lostreg.cli.common import (
    DEFAULT_MAX_SIZE,
    add_objects_argument,
    add_precision_argument,
    as_flag,
    build_backbone_loudly,
    error,
    protocol_from_args,
    protocol_parent_parser,
    report_user_error,
    user_errors,
)
from lostreg.errors import ConfigError
from lostreg.samples import SAMPLES

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from lostreg.evaluation.engine import DiscoveryEngine
    from lostreg.evaluation.loading import LoadedBatch


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
    parser.add_argument("--with-score", action="store_true",
                        help="add boxes_xyxy and scores (the method's confidence) to each JSON line; always there "
                             "with --objects N > 1")
    add_objects_argument(parser)
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
#: From this many patches on, discover says what it is doing before the image (a 12-Mpixel photo at
#: native resolution is 47k-61k patches; VOC images are about 1000).
LONG_IMAGE_PATCHES = 16384


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
    from lostreg.evaluation.engine import DiscoveryEngine

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
    from lostreg.io.images import collect_image_paths

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
            print(f"lostreg: {backbone.name} runs with {backbone.forward_edit} ({args.ttreg})", file=sys.stderr)
        engine = DiscoveryEngine(backbone, [protocol], max_size=args.max_size or None, precision=args.precision)
    except errors as err:
        report_user_error(err, as_flag(str(err)))
        return 2

    sink = _DiscoverSink(args, backbone.is_random, total=len(sources) + len(problems))
    try:
        sink.record_problems(problems)
        reader = _ReadStage(sources, engine, args.batch_size, args.max_size or None, keep_images=sink.draws)
        engine.run(reader.batches(), lambda batch, outcomes: sink.emit(outcomes[0], reader))
    finally:
        sink.close()
    return sink.finish()


class _ReadStage:
    """``discover``'s read stage: each input decoded and prepared in this process, checked against the
    memory, and consecutive images of one padded size packed into one batch (up to ``--batch-size``).

    Inputs that cannot be read, are smaller than a patch or too large for this machine become failed
    items of the batch (recorded, the others go on); nothing else is caught.
    """

    def __init__(self, sources: list[Source], engine: "DiscoveryEngine", batch_size: int, max_size: int | None,
                 keep_images: bool) -> None:
        self.sources = sources
        self.engine = engine
        self.batch_size = batch_size
        self.max_size = max_size
        self.keep_images = keep_images
        #: decoded originals by input index, kept only to draw the pictures (popped when drawn)
        self.images: dict[int, "np.ndarray"] = {}

    def batches(self) -> "Iterator[LoadedBatch]":
        from tqdm import tqdm

        from lostreg.datasets.base import ImageRecord
        from lostreg.evaluation.loading import LoadedBatch, LoadedItem, PackedGroup
        from lostreg.io.images import ImageReadError
        from lostreg.memory import InsufficientMemoryError, check_fits
        from lostreg.preprocess import ImageTooSmallError, pack_uint8

        backbone = self.engine.backbone
        failed: list[LoadedItem] = []
        pending: list[LoadedItem] = []

        def flush() -> "LoadedBatch":
            group = [PackedGroup(list(pending), pack_uint8([it.prepared.pixels for it in pending],  # type: ignore
                                                           pending[0].prepared.padded_hw))] if pending else []
            batch = LoadedBatch(list(failed), group)
            failed.clear()
            pending.clear()
            return batch

        bar = tqdm(self.sources, desc="discover", unit="img", disable=len(self.sources) < 2, file=sys.stderr)
        for index, (name, load) in enumerate(bar):
            record = ImageRecord(image_id=name, path=Path(name), width=None, height=None)  # no ground truth
            try:
                image = load()
                prepared = self.engine.preparer(image, name)
                # A photo too large for this machine at this --max-size: its own error, not an OOM kill.
                estimate = check_fits([(name, prepared.original_hw)], [], self.engine.protocols[0],
                                      backbone.patch_size, backbone.token_width, 1, self.max_size, backbone.device)
            except ImageReadError as err:
                failed.append(LoadedItem(index, record, None, str(err)))
                continue
            except ImageTooSmallError as err:
                failed.append(LoadedItem(index, record, None, f"{name}: {err}"))
                continue
            except InsufficientMemoryError as err:
                failed.append(LoadedItem(index, record, None, str(err).replace("max_size=", "--max-size ")))
                continue
            if estimate is not None and estimate.patches >= LONG_IMAGE_PATCHES:
                # Say what is happening before a long silence (a phone photo at --max-size 0).
                height, width = prepared.image_hw
                tqdm.write(f"lostreg: {name}: {width}x{height} px is {estimate.patches} patches at "
                           f"p={backbone.patch_size}, about {estimate.total / 2**30:.1f} GiB; one image this large "
                           f"takes minutes on a CPU (--max-size {DEFAULT_MAX_SIZE} is faster)", file=sys.stderr)
            if pending and (len(pending) == self.batch_size or prepared.padded_hw != pending[0].prepared.padded_hw):
                yield flush()
            if self.keep_images:
                self.images[index] = image
            pending.append(LoadedItem(index, record, prepared, None))
        if pending or failed:
            yield flush()


class _DiscoverSink:
    """Where ``discover``'s outcomes go: one JSON line per image on stdout, and with ``--output`` one
    picture per image and ``discoveries.jsonl`` (failures recorded there too)."""

    def __init__(self, args: argparse.Namespace, random_weights: bool, total: int) -> None:
        self.ttreg: str | None = str(args.ttreg) if args.ttreg else None
        self.output: Path | None = args.output
        self.random_weights = random_weights
        # Lines of earlier versions unless asked: scripts that parse them keep working.
        self.with_objects = bool(args.with_score) or args.objects > 1
        self.total = total
        self.failed = 0
        self.used_names: set[str] = set()
        self.results_file = None
        if self.output is not None:
            self.output.mkdir(parents=True, exist_ok=True)
            _remove_stale_pictures(self.output)
            self.results_file = (self.output / RESULTS_FILE).open("w", encoding="utf-8")

    @property
    def draws(self) -> bool:
        return self.output is not None

    def record_problems(self, problems: list) -> None:  # type: ignore[type-arg]
        """Inputs that named no image: recorded like failed images."""
        for problem in problems:
            self._write({"image": problem.path, "error": str(problem)})
        self.failed += len(problems)

    def emit(self, outcomes: list, reader: _ReadStage) -> None:  # type: ignore[type-arg]
        from tqdm import tqdm

        from lostreg.viz.draw import draw_discovery, save_png

        for outcome in outcomes:
            name = outcome.record.image_id
            if outcome.discovery is None:
                error(outcome.error)
                self.failed += 1
                self._write({"image": name, "error": outcome.error})
                continue
            found = outcome.discovery
            record = found.to_json(with_objects=self.with_objects)
            if self.ttreg is not None:
                record["ttreg"] = self.ttreg  # the register neuron file the backbone ran with
            tqdm.write(json.dumps(record), file=sys.stdout)
            sys.stdout.flush()
            if self.output is not None:
                record["png"] = _png_name(name, self.used_names)
                image = reader.images.pop(outcome.index)
                label = found.backbone + (" (RANDOM weights)" if self.random_weights else "")
                others = [o.box_xyxy for o in found.objects[1:]]
                save_png(draw_discovery(image, found.box_xyxy, found.seed_box_xyxy, label=label,
                                        other_boxes_xyxy=others), self.output / record["png"])
                self._write(record)

    def _write(self, record: dict) -> None:  # type: ignore[type-arg]
        if self.results_file is not None:
            self.results_file.write(json.dumps(record) + "\n")
            self.results_file.flush()

    def close(self) -> None:
        if self.results_file is not None:
            self.results_file.close()

    def finish(self) -> int:
        """Exit code: 0 when every input succeeded, 1 when any failed."""
        if self.failed:
            error(f"{self.failed} of {self.total} inputs failed")
        return 1 if self.failed else 0
