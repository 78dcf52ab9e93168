"""``lostreg inspect``: diagnostic figures of one image: token norms, attention, PCA, method internals.

    lostreg inspect photo.jpg --backbone dinov2 --output out/
    lostreg inspect photo.jpg --compare dino,dinov2,dinov2_reg --output out/
    lostreg inspect photo.jpg --compare dino,dinov3 --method tokencut --output out/
    lostreg inspect skimage:astronaut --compare dino,dinov2_reg --weights dino=dino.pth,dinov2_reg=reg.pth

Writes into ``--output``, per backbone ``<name>_norms.png``, ``<name>_attention.png`` (not for
backbones without attention, such as ``pixels``: the summary says why), ``<name>_pca.png`` and
the method's internals, ``<name>_lost.png`` or ``<name>_tokencut.png`` (``--method tokencut``);
``compare.png`` (one column per backbone) when there are several; and ``summary.json`` (the
method and its knobs under ``lost``, per backbone the method's numbers: LOST's similars, or
TokenCut's ``degenerate`` flag and eigenvalues). stdout: one JSON line per backbone
(``backbone``, ``method``, ``outlier_share``, ``max_norm``, ``seed_rc``, ``box_xyxy``; TokenCut
adds ``degenerate``). Exit code 0 on success, 1 when the image could not be read or a backbone
failed on it, 2 when nothing could run (bad option, backbone or weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lostreg.samples import SAMPLES
from lostreg.errors import ConfigError
from lostreg.cli.common import (
    DEFAULT_MAX_SIZE,
    as_flag,
    build_backbone_loudly,
    error,
    protocol_from_args,
    protocol_parent_parser,
    report_user_error,
    user_errors,
)
from lostreg.protocol import DiscoveryProtocol, FeatureConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from lostreg.backbones import Backbone

DEFAULT_BACKBONE = "dinov2_reg"
SAMPLE_PREFIX = "skimage:"
SUMMARY_FILE = "summary.json"
COMPARE_FILE = "compare.png"


def parents() -> list[argparse.ArgumentParser]:
    """Shared flag groups of this command (the discovery protocol)."""
    return [protocol_parent_parser()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help=f"an image file, or {SAMPLE_PREFIX}NAME for a bundled photo "
                                      f"({', '.join(SAMPLES)})")
    parser.add_argument("--backbone", default=None,
                        help=f"backbone name or alias (default {DEFAULT_BACKBONE} when --compare is not given)")
    parser.add_argument("--compare", default=None, metavar="A,B,C",
                        help="several backbones side by side, e.g. dino,dinov2,dinov2_reg (after --backbone if given)")
    parser.add_argument("--weights", default="pretrained",
                        help="for every backbone: 'pretrained' (timm hub, cached), 'random' (pipeline test only) or "
                             "a checkpoint path; or per backbone: dino=PATH,dinov2_reg=PATH (others: pretrained; "
                             "a bare item sets the default, e.g. random,dino=PATH)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--output", type=Path, required=True, help="folder for the PNG figures and summary.json")
    parser.add_argument("--norm-threshold", default="mad", metavar="mad|mad:K|mean3std|FLOAT",
                        help="high-norm outlier rule: 'mad' = median + 5*1.4826*MAD of the image's norms (default), "
                             "'mad:K' another K, 'mean3std' (or 'meanstd:K'), or a fixed norm such as the registers "
                             "paper's 150 (stated for its own large DINOv2 models; norms of other models differ)")
    parser.add_argument("--norm-source", choices=["final", "prenorm"], default="final",
                        help="token norms after the final LayerNorm (default; timm forward_features, DINOv2's "
                             "x_norm_patchtokens) or of the last block's output before it")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help=f"downscale images whose longer side exceeds this first (default {DEFAULT_MAX_SIZE}; "
                             "0 = native resolution)")
    # --layer also chooses the block of the attention maps.
    parser.add_argument("--ttreg", default=None, metavar="FILE",
                        help="register-neuron file (`lostreg calibrate`): show every backbone before and after "
                             "adding the test-time register (<name>-ttreg_*.png; its attention map follows "
                             "the registers')")


def backbone_names(backbone: str | None, compare: str | None) -> list[str]:
    """Canonical backbone names to inspect, in order, without duplicates.

    Raises:
        UnknownBackboneError: a name is unknown.
    """
    from lostreg.backbones import resolve_backbone

    requested = ([backbone] if backbone else []) + [n.strip() for n in (compare or "").split(",") if n.strip()]
    if not requested:
        requested = [DEFAULT_BACKBONE]
    names: list[str] = []
    for name in requested:
        canonical = resolve_backbone(name).name
        if canonical not in names:
            names.append(canonical)
    return names


def parse_weights(text: str, names: list[str]) -> dict[str, str]:
    """``--weights`` -> weights per canonical backbone name.

    A value without ``NAME=`` applies to every backbone (an existing file path is always taken
    whole, even with ``=`` or ``,`` in it); ``NAME=VALUE`` items set one backbone each (aliases
    accepted); a bare item among them sets the default of the others (else ``pretrained``).

    Raises:
        ValueError: unknown or not-inspected backbone in an item, two defaults, or an empty value.
    """
    from lostreg.backbones import UnknownBackboneError, resolve_backbone

    if Path(text).exists() or "=" not in text:
        return {name: text for name in names}
    default: str | None = None
    chosen: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            if default is not None:
                raise ConfigError(f"--weights: two defaults ({default!r}, {item!r}); name the backbone: NAME=VALUE")
            default = item
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            canonical = resolve_backbone(key).name
        except UnknownBackboneError:
            raise ConfigError(f"--weights: {key!r} is not a backbone name (expected NAME=VALUE items)") from None
        if canonical not in names:
            raise ConfigError(f"--weights: {key!r} is not among the inspected backbones ({', '.join(names)})")
        if not value:
            raise ConfigError(f"--weights: no value for {key!r}")
        chosen[canonical] = value
    return {name: chosen.get(name, default or "pretrained") for name in names}


def _load_image(text: str) -> "np.ndarray":
    from lostreg.io.images import ImageReadError, load_image_rgb
    from lostreg.samples import load_sample

    if text.startswith(SAMPLE_PREFIX) and not Path(text).exists():
        sample = text[len(SAMPLE_PREFIX):]
        if sample not in SAMPLES:
            raise ImageReadError(text, f"unknown sample; choose one of {', '.join(SAMPLES)}")
        return load_sample(sample)
    return load_image_rgb(text)


def _protocol_for(backbone: "Backbone", protocol: DiscoveryProtocol) -> tuple[DiscoveryProtocol, str | None]:
    """The protocol to run on ``backbone``: a backbone without attention ignores --which/--layer, one without
    a position table ignores --pos-embed-antialias (each with a note)."""
    default = FeatureConfig()
    features, notes = protocol.features, []
    if not backbone.has_attention and (features.which, features.layer) != (default.which, default.layer):
        features = dataclasses.replace(features, which=default.which, layer=default.layer)
        notes.append(f"{backbone.name} has no layers: --which/--layer do not apply")
    if features.pos_embed_antialias and not backbone.has_position_table:
        features = dataclasses.replace(features, pos_embed_antialias=False)
        notes.append(f"{backbone.name} has no position table: --pos-embed-antialias does not apply")
    return protocol.replace(features=features), "; ".join(notes) or None


def run(args: argparse.Namespace) -> int:
    # Imported here: matplotlib, torch and the diagnostics are only needed when the command runs.
    import torch

    from lostreg.diagnostics.figures import (
        attention_figure,
        comparison_figure,
        method_figure,
        norms_figure,
        pca_figure,
        save_figure,
    )
    from lostreg.diagnostics.inspection import inspect_image, protocol_summary
    from lostreg.artifacts import OutlierRule
    from lostreg.io.images import ImageReadError
    from lostreg.preprocess import ImageTooSmallError

    errors = user_errors()
    try:
        threshold = OutlierRule.parse(args.norm_threshold, setting="norm threshold (--norm-threshold)")
        protocol = protocol_from_args(args)
        if args.max_size < 0:
            raise ConfigError(f"--max-size must be >= 0, got {args.max_size}")
        names = backbone_names(args.backbone, args.compare)
        weights = parse_weights(args.weights, names)
    except errors as err:
        report_user_error(err)
        return 2

    try:
        image = _load_image(args.image)
    except ImageReadError as err:
        report_user_error(err)
        return 1

    try:
        backbones = [build_backbone_loudly(name, weights[name], args.device) for name in names]
        if args.ttreg:
            # Each backbone before and after: the same model, then with the test-time register.
            from lostreg.ttreg import attach_test_time_registers

            backbones = [b for plain in backbones for b in (plain, attach_test_time_registers(plain, args.ttreg))]
        plans = [(backbone, *_protocol_for(backbone, protocol)) for backbone in backbones]
        for backbone, used, _ in plans:
            backbone.check_feature_key(used.features.key, used.features.pos_embed_antialias)
    except errors as err:
        report_user_error(err, as_flag(str(err)))
        return 2

    max_size = args.max_size or None
    out_dir: Path = args.output
    if out_dir.exists() and not out_dir.is_dir():
        error(f"{out_dir}: exists and is not a folder; --output takes a folder")
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    inspections = []
    records: list[dict[str, Any]] = []
    for backbone, used, note in plans:
        try:
            insp = inspect_image(backbone, image, args.image, used, max_size=max_size,
                                 norm_source=args.norm_source, threshold=threshold)
            if backbone.forward_edit is not None:
                # Its own figures and record, beside the same model without the register.
                insp = dataclasses.replace(insp, backbone=f"{insp.backbone}-ttreg")
        except ImageTooSmallError as err:
            error(f"{args.image}: {err}")
            return 1
        except torch.OutOfMemoryError as err:  # this backbone does not fit: report, go on with the others
            error(f"{args.image}: {backbone.name}: {type(err).__name__}: {err}")
            records.append({"backbone": backbone.name, "error": f"{type(err).__name__}: {err}"})
            failed += 1
            continue
        # The method's figure is keyed (and its file named) by the method: lost or tokencut.
        figures = {"norms": norms_figure(insp), "pca": pca_figure(insp), insp.method: method_figure(insp)}
        if insp.cls_attention is not None or insp.register_attention is not None:
            figures["attention"] = attention_figure(insp)
        record = insp.summary()
        record["figures"] = {}
        for kind, fig in figures.items():
            name = f"{insp.backbone}_{kind}.png"
            save_figure(fig, out_dir / name)
            record["figures"][kind] = name
        if note is not None:
            record["note"] = note
        inspections.append(insp)
        records.append(record)
        keys = ("backbone", "method", "outlier_share", "max_norm", "seed_rc", "box_xyxy", "degenerate")
        print(json.dumps({key: record[key] for key in keys if key in record}))
        sys.stdout.flush()

    compare_name = None
    if len(inspections) > 1:
        save_figure(comparison_figure(inspections), out_dir / COMPARE_FILE)
        compare_name = COMPARE_FILE
    summary = {
        "image": args.image,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "max_size": max_size,
        "norm_threshold": str(threshold),
        "norm_source": args.norm_source,
        "method": protocol.method,
        # Named "lost" for compatibility: the flat protocol of whichever method ran.
        "lost": protocol_summary(protocol),
        "backbones": records,
        "comparison_figure": compare_name,
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"figures and {SUMMARY_FILE} in {out_dir}", file=sys.stderr)
    return 1 if failed else 0

