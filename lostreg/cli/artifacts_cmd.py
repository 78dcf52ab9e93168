"""``lostreg artifacts``: the registers paper's artifact study over a set of images, for any ViT.

    lostreg artifacts --backbone dinov2_vitl14 --images photos/ --output out/l14
    lostreg artifacts --backbones dinov2_vits14,dinov2_vits14_reg,dinov2_vitl14,dinov2_vitl14_reg \\
        dataset=voc07 dataset.root=/data --max-images 500 --output out/sizes
    lostreg artifacts --backbone dinov2_vitl14 --ttreg l14_neurons.json --images photos/ --output out/ttreg
    lostreg artifacts --compare out/l14 out/ttreg --output out/both

Per backbone (and, with ``--ttreg``, the same backbone with the test-time register): token norms
along the blocks, the outlier share (lostreg's outlier rule and an absolute norm), the outliers'
cosine to their 4 neighbours, linear position and pixel probes on held-out images, and with labels
(``--labels``, ``dataset=voc07``) image classification from CLS, a normal and an outlier token.
One backbone writes ``artifacts.json``, ``summary.md``, ``report.html`` and figures into
``--output``; several write one sub-folder each plus the comparison (``compare.md``,
``report.html``, the outlier share by model size). Definitions: docs/artifacts.md.

stdout: one JSON line per study (``label``, ``images``, ``outlier_share``, ``absolute_share``,
``first_layer_with_outliers``, ``output``). Exit code 0 on success, 1 when some images could not
be read (the study of the others is written), 2 when nothing could run (bad option, no images,
unknown backbone, a backbone without blocks, weights, labels).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lostreg.cli.common import add_precision_argument, build_backbone_loudly, error, report_user_error, user_errors
from lostreg.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.backbones import Backbone
    from lostreg.study.inputs import StudyImage
    from lostreg.study.run import StudySettings

DEFAULT_IMAGE_SIZE = 224
DEFAULT_NORM_THRESHOLD = 150.0  # the registers paper's (lostreg.study.run.PAPER_NORM_THRESHOLD)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="dataset=NAME dataset.KEY=VALUE",
                        help="study a dataset instead of --images (hydra overrides as for `lostreg eval`, e.g. "
                             "dataset=voc07 dataset.root=/data); its object classes are the labels")
    parser.add_argument("--backbone", default=None, help="backbone name or alias (see `lostreg backbones`)")
    parser.add_argument("--backbones", default=None, metavar="A,B,C",
                        help="several backbones side by side (after --backbone if given), e.g. "
                             "dinov2_vits14,dinov2_vits14_reg,dinov2_vitl14,dinov2_vitl14_reg")
    parser.add_argument("--weights", default="pretrained",
                        help="'pretrained' (timm hub, cached), 'random' (pipeline test only) or a checkpoint path; "
                             "or per backbone: dinov2_vitl14=PATH,dinov2_vitl14_reg=PATH")
    parser.add_argument("--images", nargs="+", default=None, metavar="DIR|GLOB|FILE",
                        help="image files, folders or glob patterns (quote globs)")
    parser.add_argument("--recursive", action="store_true", help="search --images folders recursively")
    parser.add_argument("--labels", default=None, metavar="FILE|folders",
                        help="image labels for the global probe: 'folders' (each image's class is its sub-folder "
                             "of the one --images folder; implies --recursive), or a file: JSON "
                             "{image: label or [labels]} or CSV lines image,label (image = path as listed or "
                             "file name)")
    parser.add_argument("--output", type=Path, default=None, help="folder for artifacts.json, figures and summaries")
    parser.add_argument("--ttreg", default=None, metavar="FILE",
                        help="register-neuron file (`lostreg calibrate`): study each backbone before and after "
                             "adding the test-time register")
    parser.add_argument("--compare", nargs="+", default=None, metavar="DIR",
                        help="compare earlier outputs of this command (folders with artifacts.json, or their "
                             "parents) into --output; runs no model")
    group = parser.add_argument_group("measurements")
    group.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                       help=f"images are resized (shorter side) and centre-cropped to this square (default "
                            f"{DEFAULT_IMAGE_SIZE}); a multiple of every backbone's patch size")
    group.add_argument("--layer", type=int, default=-1,
                       help="the study block for neighbours, probes and global tokens (default -1, the last); "
                            "norms and shares are given for every block")
    group.add_argument("--norm-source", choices=["prenorm", "final"], default="prenorm",
                       help="prenorm (default): each block's output, before the final LayerNorm (the residual "
                            "stream; the registers papers' thresholds); final: after the model's final norm "
                            "applied to each block's output")
    group.add_argument("--outlier-rule", default="mad", metavar="mad|mad:K|mean3std|FLOAT",
                       help="lostreg's outlier rule on each image's patch-token norms (as inspect and calibrate): "
                            "'mad' = median + 5*1.4826*MAD (default), 'mad:K', 'mean3std', or a fixed norm")
    group.add_argument("--norm-threshold", type=float, default=DEFAULT_NORM_THRESHOLD,
                       help=f"absolute norm whose share is reported beside the rule's (default "
                            f"{DEFAULT_NORM_THRESHOLD:g}, the registers paper's for its large DINOv2 models)")
    group.add_argument("--max-images", type=int, default=None, help="study only the first N images")
    group.add_argument("--test-fraction", type=float, default=0.25,
                       help="share of the images whose tokens test the probes (default 0.25; split by image)")
    group.add_argument("--train-tokens", type=int, default=10000,
                       help="probe training sample: at most this many tokens (default 10000)")
    group.add_argument("--test-tokens", type=int, default=5000,
                       help="probe test samples: at most this many outlier and as many normal tokens (default 5000)")
    group.add_argument("--seed", type=int, default=0, help="seed of the token samples (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    add_precision_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _settings(args: argparse.Namespace) -> "StudySettings":
    from lostreg.artifacts import OutlierRule
    from lostreg.study.run import StudySettings

    for flag, value, low in (("--image-size", args.image_size, 2), ("--batch-size", args.batch_size, 1),
                             ("--train-tokens", args.train_tokens, 1), ("--test-tokens", args.test_tokens, 1),
                             ("--max-images", args.max_images, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if not 0 < args.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if not args.norm_threshold > 0:
        raise ConfigError(f"--norm-threshold must be a positive norm, got {args.norm_threshold}")
    rule = OutlierRule.parse(args.outlier_rule, setting="outlier rule (--outlier-rule)")
    return StudySettings(layer=args.layer, norm_source=args.norm_source, rule=rule,
                         norm_threshold=args.norm_threshold, test_fraction=args.test_fraction,
                         train_tokens=args.train_tokens, test_tokens=args.test_tokens, seed=args.seed,
                         precision=args.precision)


def _inputs(args: argparse.Namespace) -> tuple[list["StudyImage"], str, list[str]]:
    """``(images, where they come from, problems)``; labels attached when asked.

    Raises:
        ConfigError, LabelError, DatasetLayoutError: one line.
    """
    from lostreg.io.images import collect_image_paths
    from lostreg.study.inputs import StudyImage, dataset_inputs, folder_labels, read_label_file

    if args.overrides:
        if args.images:
            raise ConfigError("give --images or dataset=... overrides, not both")
        if args.labels:
            raise ConfigError("--labels does not apply to dataset=... (its object classes are the labels)")
        images, source = dataset_inputs(args.overrides)
        problems: list[str] = []
    elif args.images:
        folders_labelled = args.labels == "folders"
        if folders_labelled and (len(args.images) != 1 or not Path(args.images[0]).is_dir()):
            raise ConfigError("--labels folders needs exactly one --images folder (ROOT/CLASS/image)")
        paths, found_problems = collect_image_paths(args.images, recursive=args.recursive or folders_labelled)
        problems = [str(p) for p in found_problems]
        if args.max_images is not None:
            paths = paths[:args.max_images]
        labels: list[tuple[str, ...]] | list[None] = [None] * len(paths)
        if folders_labelled:
            labels = folder_labels(paths, Path(args.images[0]))
        elif args.labels:
            labels = read_label_file(args.labels, paths)
        images = [StudyImage(path, label) for path, label in zip(paths, labels)]
        source = ", ".join(args.images)
    else:
        raise ConfigError("no images: give --images DIR|GLOB|FILE or dataset=NAME dataset.root=...")
    if args.max_images is not None:
        images = images[:args.max_images]
    return images, source, problems


def _class_names(images: list["StudyImage"], multilabel: bool) -> tuple[list[str] | None, bool]:
    """The label vocabulary (None without labels), and whether to treat the labels as multi-label:
    always for a dataset's object classes (``multilabel``), else when an image has not exactly one."""
    if not images or any(image.labels is None for image in images):
        return None, False
    names = sorted({name for image in images for name in image.labels or ()})
    return names, multilabel or any(len(image.labels or ()) != 1 for image in images)


def _study_one(backbone: "Backbone", label: str, weights: str, images: list["StudyImage"], settings: "StudySettings",
               args: argparse.Namespace, failures: dict[int, str]) -> tuple[dict[str, Any], Any]:
    """Run one backbone over every image; returns ``(record, study)``."""
    import torch
    from tqdm import tqdm

    from lostreg.study.inputs import study_batches
    from lostreg.study.run import ArtifactStudy

    names, multilabel = _class_names(images, multilabel=bool(args.overrides))
    study = ArtifactStudy(backbone, settings, class_names=names, multilabel=multilabel)

    def failed(index: int, image: "StudyImage", err: Exception) -> None:
        if index not in failures:  # reported once, by the first backbone's pass
            failures[index] = str(err)
            error(str(err))

    started = time.perf_counter()
    bar = tqdm(total=len(images), desc=f"artifacts {label}", unit="img", disable=args.no_progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for batch in study_batches(images, args.image_size, backbone.patch_size, backbone.mean, backbone.std,
                                   args.batch_size, failed):
            study.add(batch)
            bar.update(len(batch.indices))
    finally:
        bar.close()
    if study.images == 0:
        raise ConfigError(f"none of the {len(images)} images could be read")
    record = study.result()
    seconds = time.perf_counter() - started
    record["label"] = label
    # A checkpoint by its file name only (no local directories in a record meant to be shared).
    record["weights"] = weights if weights in ("pretrained", "random") else Path(weights).name
    record["ttreg"] = str(args.ttreg) if backbone.forward_edit is not None else None
    record["failed_images"] = len(failures)
    record["labels"] = None if names is None else {"classes": names, "multilabel": multilabel}
    record["cost"].update({
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / study.images, 4),
        "device": str(backbone.device) + ("" if backbone.device.type != "cpu" else f", {torch.get_num_threads()} threads"),
        "what": "wall time of decoding, the forward passes, the statistics and the probes, per studied image",
    })
    return record, study


def _compare_only(args: argparse.Namespace) -> int:
    from lostreg.study.output import find_records, write_comparison

    try:
        studies = find_records(args.compare)
    except user_errors() as err:
        report_user_error(err)
        return 2
    write_comparison(args.output, studies)
    print(json.dumps({"compared": [str(path) for path, _ in studies], "output": str(args.output)}))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.output is None:
        error("--output DIR is required")
        return 2
    if args.output.exists() and not args.output.is_dir():
        error(f"{args.output}: exists and is not a folder; --output takes a folder")
        return 2
    if args.compare:
        if args.backbone or args.backbones or args.images or args.overrides:
            error("--compare reads earlier outputs: give no --backbone, --images or dataset")
            return 2
        return _compare_only(args)

    from lostreg.cli.inspect_cmd import backbone_names, parse_weights

    try:
        settings = _settings(args)
        if not (args.backbone or args.backbones):
            raise ConfigError("give --backbone NAME (or --backbones A,B,C)")
        names = backbone_names(args.backbone, args.backbones)
        weights = parse_weights(args.weights, names)
        images, source, problems = _inputs(args)
    except user_errors() as err:
        report_user_error(err)
        return 2
    for problem in problems:
        error(problem)
    if not images:
        error("no images to study" + (f" in {source}" if source else ""))
        return 2

    from lostreg.rundir import backbone_dir_name
    from lostreg.study.output import write_comparison, write_study
    from lostreg.study.run import require_layers

    several = len(names) > 1 or bool(args.ttreg)
    failures: dict[int, str] = {}
    studies: list[tuple[Path, dict[str, Any]]] = []
    for name in names:
        try:
            plain = build_backbone_loudly(name, weights[name], args.device)
            require_layers(plain)
            if args.image_size % plain.patch_size:
                raise ConfigError(f"--image-size {args.image_size} is not a multiple of {plain.name}'s patch size "
                                  f"{plain.patch_size}")
            try:
                plain.layer_index(args.layer)
            except ConfigError as err:
                raise ConfigError(f"--layer: {err}") from None
            # Labels (and sub-folders) name the weights and the neuron file as eval's run directories do:
            # dinov2_vitl14, dinov2_vitl14-random, dinov2_vitl14-<checkpoint stem>-ttreg-<neuron file stem>.
            variants = [(backbone_dir_name(plain.name, weights[name]), plain)]
            if args.ttreg:
                from lostreg.ttreg import attach_test_time_registers

                variants.append((backbone_dir_name(plain.name, weights[name], args.ttreg),
                                 attach_test_time_registers(plain, args.ttreg)))
        except user_errors() as err:
            report_user_error(err)
            return 2
        for label, backbone in variants:
            try:
                record, study = _study_one(backbone, label, weights[name], images, settings, args, failures)
            except user_errors() as err:
                report_user_error(err)
                return 2
            record["inputs"] = {"source": source, "listed": len(images), "problems": len(problems)}
            folder = args.output / label if several else args.output
            write_study(folder, record, study)
            studies.append((folder, record))
            row = record["layers"][record["study_layer"]]
            print(json.dumps({"label": label, "images": record["images"], "outlier_share": record["outlier_share"],
                              "absolute_share": row["absolute_share"],
                              "first_layer_with_outliers": record["first_layer_with_outliers"],
                              "output": str(folder)}))
            sys.stdout.flush()
    if several:
        write_comparison(args.output, studies)
    print(f"artifact study of {len(studies)} model(s) in {args.output}", file=sys.stderr)
    failed = len(problems) + len(failures)
    if failed:
        error(f"{failed} of {len(images) + len(problems)} inputs failed")
    return 1 if failed else 0
