"""Published CorLoc numbers, as data, and the rules that set one beside a lostreg run.

Each :class:`PublishedResult` is one row of a paper's table (or one user report): who reported it
(:attr:`~PublishedResult.source`, the primary source: paper and table, or repository README), with
which discovery method, on which weights and under which protocol, and CorLoc (percent) on VOC07 /
VOC12 / COCO20k (``None`` where the source gives none, or where lostreg could not verify a number
in the primary source).

A published number stands beside a run only when the two are comparable (:func:`mismatches` is
empty), declared by the row, not by the method's or backbone's name:

* **the same weights**: the row's :attr:`~PublishedResult.checkpoint` is the timm tag of the run's
  backbone, with ``weights=pretrained`` (a row made with weights that were never released, such as the
  registers paper's own models, has none and matches no run), and a test-time register on both or
  neither;
* **the published protocol**: its method, native resolution, and either its single protocol
  (:attr:`~PublishedResult.features` and the method's reference values,
  :func:`lostreg.knobs.follows_reference`, except :attr:`~PublishedResult.free_knobs`, which the
  source leaves unpublished) or, for a searched protocol (:attr:`~PublishedResult.search`), a
  ``lostreg sweep`` whose grid covers the published one and whose best configuration (chosen on the
  same data, as the source chose) lies inside it.

Every other row of a table's families is shown apart, as a reference row that says what differs
(:attr:`~PublishedResult.differs`). :func:`published_match` and :func:`published_sweep_match` find a
run's row; :func:`published_for` is the LOST-only keyword form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lostreg.backbones.registry import list_backbones, registered_spec
from lostreg.evaluation.detector_runs import DETECTOR_METHOD
from lostreg.knobs import follows_reference, knob_fields
from lostreg.methods import DEFAULT_METHOD, method_label
from lostreg.methods.tokencut import REFERENCE_SOLVERS
from lostreg.protocol import DiscoveryProtocol, FeatureConfig, LostConfig, describe_features

__all__ = [
    "PUBLISHED",
    "PUBLISHED_DATASETS",
    "PUBLISHED_DETECTORS",
    "PUBLISHED_DETECTORS",
    "PUBLIC_CHECKPOINT_NOTE",
    "SOURCE_ISSUE_381",
    "SOURCE_JIANG",
    "SOURCE_LOST",
    "SOURCE_REGISTERS",
    "SOURCE_TOKENCUT",
    "TOKENCUT_REFERENCE_SOLVERS",
    "TOKENCUT_SOLVER_NOTE",
    "PublishedResult",
    "SearchGrid",
    "Span",
    "checkpoint_of",
    "lostreg_backbone_for",
    "method_label",
    "mismatches",
    "published_by_key",
    "published_detector_match",
    "published_for",
    "published_match",
    "published_detector_match",
    "published_sweep_match",
    "reference_rows",
]

#: Dataset names (as in ``configs/dataset``) that the published tables report.
PUBLISHED_DATASETS = ("voc07", "voc12", "coco20k")

SOURCE_LOST = ("LOST paper (Siméoni et al., \"Localizing Objects with Self-Supervised Transformers and no Labels\", "
               "BMVC 2021) and the README of github valeoai/LOST (table \"Different models\")")
SOURCE_REGISTERS = ('Registers paper ("Vision Transformers Need Registers", Darcet et al., ICLR 2024), Table 3 '
                    "(models: section 3.1; protocol: section 3.3 and appendix A)")
SOURCE_JIANG = ('Jiang et al., "Vision Transformers Don\'t Need Trained Registers" (NeurIPS 2025), Table 5 '
                "(protocol: section 5.3)")
SOURCE_ISSUE_381 = ("a user's report, not a paper: github facebookresearch/dinov2 issue #381 (2024-02-28), the "
                    "official LOST code on the public DINOv2+reg checkpoint")
SOURCE_LOST_CAD = ("LOST repository README (github valeoai/LOST, \"Towards unsupervised object detection\"): "
                   "LOST+CAD, a class-agnostic Faster R-CNN (detectron2 R50-C4, DINO ResNet-50) trained on the boxes of "
                   "LOST with DINO ViT-S/16, CorLoc of its most confident box per image")
SOURCE_TOKENCUT = ("TokenCut README and paper (Wang et al., \"Self-Supervised Transformers for Unsupervised Object "
                   "Discovery using Normalized Cut\", CVPR 2022), CorLoc with DINO backbones")

#: TokenCut eigen-solvers whose runs are set beside the published TokenCut numbers. ``scipy`` is
#: the reference's own call; ``torch64`` solves the same problem in float64 and gave the
#: reference's box on 629/630 of the spec's graphs (the miss: a seed near-tie that only the same
#: LAPACK call reproduces). ``torch32`` is an opt-in approximation (box parity 98.6%): another
#: numerical protocol, so no published number is shown beside it.
TOKENCUT_REFERENCE_SOLVERS: tuple[str, ...] = REFERENCE_SOLVERS
TOKENCUT_SOLVER_NOTE = (
    "Published TokenCut numbers are shown beside TokenCut runs with eig=scipy (the reference's own "
    "eigen-solver call) or eig=torch64 (the default: float64, the reference's box on 629/630 synthetic "
    "graphs), not beside eig=torch32 (float32, 98.6%). Images whose spectrum is degenerate get the "
    "whole image as their box in lostreg; the reference's box is undefined there (LAPACK-dependent)."
)

#: Why the public-checkpoint numbers differ from the registers paper's Table 3.
PUBLIC_CHECKPOINT_NOTE = (
    "Table 3 of the registers paper used the authors' own models (a DINOv2 ViT-L/14 trained on ImageNet-22k, "
    "a DeiT-III and an OpenCLIP ViT-B, with and without registers: section 3.1), not the public checkpoints, "
    "with a manual Gram bias whose value is not published; no run of public weights is comparable with it. "
    "With the public LVD-142M checkpoints, Jiang et al. (2025, Table 5) reach similar numbers only with a searched "
    "protocol (best of q/k/v over the last 4 blocks, L2-normalised features, Gram bias swept in [-1, 0], chosen "
    "on the evaluation data); a user reported the stock LOST protocol on the public DINOv2+reg checkpoint at "
    "about 36 CorLoc on VOC12 (github facebookresearch/dinov2 issue #381). Feature, layer, bias, normalisation "
    "and resolution decide the result."
)


@dataclass(frozen=True)
class Span:
    """A continuous range a source searched with an unpublished step.

    A grid covers it (lostreg's rule) when it holds both ends and no two consecutive values inside
    the range are more than ``max_step`` apart.
    """

    low: float
    high: float
    max_step: float

    def covered_by(self, values: Sequence[Any]) -> bool:
        eps = 1e-9
        inside = sorted(float(v) for v in values if self.contains(v))
        return (bool(inside) and inside[0] <= self.low + eps and inside[-1] >= self.high - eps
                and all(b - a <= self.max_step + eps for a, b in zip(inside, inside[1:])))

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            self.low - 1e-9 <= float(value) <= self.high + 1e-9

    def __str__(self) -> str:
        return f"[{self.low:g}, {self.high:g}] (step not published; lostreg asks for <= {self.max_step:g})"


@dataclass(frozen=True)
class SearchGrid:
    """The settings a source searched, and the values it tried: ``((setting, values or Span), ...)``.

    Settings are those of ``lostreg sweep`` (``which``, ``layer``, ``l2_normalize``, ``gram_bias``, ...).
    """

    axes: tuple[tuple[str, tuple[Any, ...] | Span], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def uncovered(self, grid: Mapping[str, Sequence[Any]]) -> list[str]:
        """The axes ``grid`` (a sweep's values per setting) does not cover, in words."""
        missing = []
        for name, wanted in self.axes:
            tried = list(grid.get(name) or ())
            ok = wanted.covered_by(tried) if isinstance(wanted, Span) else set(wanted) <= set(tried)
            if not ok:
                missing.append(f"sweep.{name} covers {_values(wanted)} (this sweep: {_values(tried)})")
        return missing

    def outside(self, protocol: DiscoveryProtocol) -> list[str]:
        """How a configuration lies outside the searched space, in words (empty: inside)."""
        values = {**vars(protocol.features), **vars(protocol.method_knobs)}
        out = []
        for name, wanted in self.axes:
            value = values.get(name)
            inside = wanted.contains(value) if isinstance(wanted, Span) else value in wanted
            if not inside:
                out.append(f"best {name}={value} is outside {_values(wanted)}")
        return out

    def __str__(self) -> str:
        return ", ".join(f"{name} in {_values(wanted)}" for name, wanted in self.axes)


def _values(values: Any) -> str:
    if isinstance(values, Span):
        return str(values)
    return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)
                           for v in values) + "}"


@dataclass(frozen=True)
class PublishedResult:
    """One published CorLoc row, with what it was made with.

    Attributes:
        key: short unique id, e.g. ``"lost_dino_vits16"``.
        method: method and model family as the source names them, e.g. ``"LOST (DINO)"``.
        backbone: architecture as the source names it, e.g. ``"ViT-S/16"``.
        protocol: how features and the method were set up, in words.
        source: the primary source (paper and table, repository README, or an issue for a user report).
        voc07, voc12, coco20k: CorLoc in percent; None where the source has none or lostreg has not
            verified it in the primary source.
        lostreg_method: the lostreg method of the row (``DiscoveryProtocol.method``).
        family: lostreg's backbone family the row belongs to (``dino``, ``dinov2``, ``dinov2_reg``,
            ``deit3``, ``openclip``): a table shows the row, as a reference, when it has runs of that family.
        checkpoint: timm tag of the released weights the row was made with; None when they were
            never released (the row then matches no run).
        ttreg: made with a test-time register.
        features: the features of a single-protocol row.
        free_knobs: the method's settings the source leaves unpublished (any value matches).
        search: for a searched protocol, what the source searched (a sweep's grid must cover it).
        differs: what sets the row apart from a stock run of public weights, for its reference row
            (``authors' ImageNet-22k ViT-L/14, not released``, ``Gram bias not published``).
        note: what else a reader must know (e.g. values left out), shown with the row's source.
    """

    key: str
    method: str
    backbone: str
    protocol: str
    source: str
    voc07: float | None
    voc12: float | None
    coco20k: float | None
    lostreg_method: str = DEFAULT_METHOD
    family: str = "dino"
    checkpoint: str | None = None
    ttreg: bool = False
    features: FeatureConfig = field(default_factory=FeatureConfig)
    free_knobs: tuple[str, ...] = ()
    search: SearchGrid | None = None
    differs: tuple[str, ...] = ()
    note: str = ""

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``"LOST (DINO) ViT-S/16"``."""
        return f"{self.method} {self.backbone}"

    @property
    def has_values(self) -> bool:
        """Whether the row carries any number (rows of unverified values carry none)."""
        return any(v is not None for v in (self.voc07, self.voc12, self.coco20k))

    def corloc(self, dataset: str) -> float | None:
        """CorLoc on ``dataset`` (``voc07``, ``voc12``, ``coco20k``), ``None`` if not reported."""
        return getattr(self, dataset) if dataset in PUBLISHED_DATASETS else None

    def matching_rule(self) -> str:
        """Which runs this row stands beside, in words (docs, the issue note)."""
        if self.checkpoint is None:
            return "none, a reference row: " + "; ".join(self.differs)
        if not self.has_values:
            return "none while its values are left out (a reference row)"
        name = lostreg_backbone_for(self.key)
        run = f"{self.checkpoint}" + (f" ({name})" if name else "") + ", weights=pretrained"
        run += ", with a test-time register" if self.ttreg else ""
        what = f"{method_label(self.lostreg_method)}"
        if self.search is None:
            free = f"; any {', '.join(self.free_knobs)}" if self.free_knobs else ""
            return (f"a run of {run}: {what} on {describe_features(self.features)}, the method's reference "
                    f"values{free}, native resolution")
        return (f"the oracle-best row of a `lostreg sweep` of {run}: {what}, grid covering {self.search}, its best "
                f"configuration inside that space, every other setting at its reference value, native resolution")


def checkpoint_of(backbone: str) -> str | None:
    """The timm tag a lostreg backbone name (registered name, alias or full timm name) loads; None if unknown."""
    spec = registered_spec(backbone)
    if spec is not None:
        return spec.timm_name
    return backbone if "." in backbone else None


def mismatches(result: PublishedResult, backbone: str, protocol: DiscoveryProtocol, weights: str = "pretrained", *,
               ttreg: bool = False, max_size: int | None = None,
               grid: Mapping[str, Sequence[Any]] | None = None) -> list[str]:
    """Why a run is not comparable with ``result``, in words; empty when it is.

    Args:
        result: the published row.
        backbone: the run's lostreg backbone name.
        protocol: the run's discovery protocol (a sweep's: its best configuration).
        weights: ``pretrained``, ``random`` or a checkpoint path.
        ttreg: the run had a test-time register.
        max_size: the run's downscale limit (None: native resolution).
        grid: for the best configuration of a ``lostreg sweep``, chosen on the data it is scored on: the
            sweep's values per setting; None for a single protocol.
    """
    why: list[str] = []
    if protocol.method != result.lostreg_method:
        why.append(f"method {protocol.method}, not {result.lostreg_method}")
    if result.checkpoint is None:
        why.append("no released checkpoint to match: " + "; ".join(result.differs))
    elif weights != "pretrained":
        why.append(f"weights={weights}, not the released {result.checkpoint}")
    elif checkpoint_of(backbone) != result.checkpoint:
        why.append(f"checkpoint {checkpoint_of(backbone)}, not {result.checkpoint}")
    if ttreg != result.ttreg:
        why.append("a test-time register" if ttreg else "no test-time register")
    if max_size is not None:
        why.append(f"max_size={max_size}, not native resolution")
    if protocol.objects != 1:
        # box_xyxy is then the most confident of several objects, not the published protocol's box.
        why.append(f"objects={protocol.objects}, not one object per image")
    if result.search is None:
        if grid is not None:
            why.append("the best of a sweep, not the single published protocol")
        if protocol.features != result.features:
            why.append(f"{describe_features(protocol.features)}, not {describe_features(result.features)}")
        if not follows_reference(protocol.method_knobs, result.free_knobs):
            why.append("the method's settings differ from the reference values")
        return why
    if grid is None:
        why.append(f"one protocol, not the searched one ({result.search})")
        return why
    why += result.search.uncovered(grid)
    why += result.search.outside(protocol)
    searched = set(result.search.names)
    default = FeatureConfig()
    why += [f"{f.name}={getattr(protocol.features, f.name)}" for f in knob_fields(FeatureConfig)
            if f.name not in searched and getattr(protocol.features, f.name) != getattr(default, f.name)]
    if not follows_reference(protocol.method_knobs, tuple(searched | set(result.free_knobs))):
        why.append("the method's unsearched settings differ from the reference values")
    return why


def published_match(backbone: str, protocol: DiscoveryProtocol, weights: str = "pretrained", *,
                    ttreg: bool = False, max_size: int | None = None) -> PublishedResult | None:
    """The published single-protocol row a lostreg run is comparable with, if any (see the module docstring).

    Args:
        backbone: lostreg backbone name, e.g. ``"dino_vits16"``.
        protocol: the run's discovery protocol.
        weights: ``pretrained``, ``random`` or a checkpoint path.
        ttreg: the run had a test-time register.
        max_size: the run's downscale limit (None: native resolution).
    """
    return next((p for p in PUBLISHED if p.search is None and p.has_values
                 and not mismatches(p, backbone, protocol, weights, ttreg=ttreg, max_size=max_size)), None)


def published_sweep_match(backbone: str, best: DiscoveryProtocol, grid: Mapping[str, Sequence[Any]],
                          weights: str = "pretrained", *, ttreg: bool = False,
                          max_size: int | None = None) -> PublishedResult | None:
    """The published searched-protocol row a ``lostreg sweep`` is comparable with, if any: its grid
    covers the published search and its best configuration (chosen on the same data) lies inside it.

    Args:
        backbone: lostreg backbone name.
        best: the sweep's best configuration.
        grid: the sweep's values per setting (``metrics.json``'s ``grid``).
        weights, ttreg, max_size: as for :func:`published_match`.
    """
    return next((p for p in PUBLISHED if p.search is not None and p.has_values
                 and not mismatches(p, backbone, best, weights, ttreg=ttreg, max_size=max_size, grid=grid)), None)


# ----------------------------------------------------------------------------------------- the rows

_ANTIALIASED_KEYS = FeatureConfig(pos_embed_antialias=True)
_VALUES = FeatureConfig(which="v")
_LOST_PROTOCOL = "raw keys of the last layer, k=100, no Gram bias (the reference code)"
_TOKENCUT_PROTOCOL = "keys of the last layer, binary graph tau=0.2, eps=1e-5, scipy eigh (the reference code)"
_JIANG_SEARCH = SearchGrid((("which", ("q", "k", "v")), ("layer", (-1, -2, -3, -4)), ("l2_normalize", (True,)),
                            ("gram_bias", Span(-1.0, 0.0, 0.1))))
_JIANG_PROTOCOL = ("searched (oracle): best of q/k/v over the last 4 blocks, L2-normalised, Gram bias swept in "
                   "[-1, 0], chosen on the evaluation data (`lostreg sweep protocol=best_of`)")
_SEARCHED = "searched protocol (oracle): only a best_of sweep of this checkpoint compares"
_BIAS = "Gram bias value not published"
_UNVERIFIED = "values left out: lostreg has not read them in the primary source (see the paper)"


def _t3(key: str, name: str, backbone: str, family: str, features: FeatureConfig, model: str,
        values: tuple[float | None, float | None, float | None]) -> PublishedResult:
    """A row of the registers paper's Table 3: the authors' own model, never released; keys for DINOv2
    with antialiased position embeddings (appendix A), values for DeiT-III and OpenCLIP (section 3.3)."""
    words = {"k": "keys", "v": "values"}[features.which]
    protocol = f"the authors' {model}; last-layer {words}, a Gram bias chosen by hand, k and resolution not stated"
    if features.pos_embed_antialias:
        protocol += "; position embeddings resized with antialiasing"
    return PublishedResult(key, f"LOST ({name})", backbone, protocol, SOURCE_REGISTERS, *values, family=family,
                           features=features, free_knobs=("gram_bias",),
                           differs=(f"authors' {model}, not released", _BIAS),
                           note="" if values[0] is not None else _UNVERIFIED)

_CAD_PROTOCOL = "class-agnostic detector trained on the pseudo-boxes of LOST (DINO ViT-S/16, keys, k=100) of the same data"

PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult("lost_dino_vits16", "LOST (DINO)", "ViT-S/16", _LOST_PROTOCOL, SOURCE_LOST, 61.9, 64.0, 50.7,
                    checkpoint="vit_small_patch16_224.dino"),
    PublishedResult("lost_dino_vits8", "LOST (DINO)", "ViT-S/8", _LOST_PROTOCOL, SOURCE_LOST, 55.5, 57.0, 49.5,
                    checkpoint="vit_small_patch8_224.dino"),
    PublishedResult("lost_dino_vitb16", "LOST (DINO)", "ViT-B/16", _LOST_PROTOCOL, SOURCE_LOST, 60.1, 63.3, 50.0,
                    checkpoint="vit_base_patch16_224.dino"),
    # Registers paper, Table 3: every model trained by the authors (section 3.1), none released. DINOv2:
    # keys and position embeddings resized with antialiasing (appendix A); DeiT-III, OpenCLIP: values
    # (section 3.3). The DeiT-III and OpenCLIP values were not read in the primary source: left out.
    _t3("registers_t3_dinov2", "DINOv2", "ViT-L/14", "dinov2", _ANTIALIASED_KEYS, "ImageNet-22k DINOv2 ViT-L/14",
        (35.3, 40.2, 26.9)),
    _t3("registers_t3_dinov2_reg", "DINOv2+reg", "ViT-L/14", "dinov2_reg", _ANTIALIASED_KEYS,
        "ImageNet-22k DINOv2 ViT-L/14 with registers", (55.4, 60.0, 42.0)),
    _t3("registers_t3_deit3", "DeiT-III", "ViT-B", "deit3", _VALUES, "DeiT-III ViT-B", (None, None, None)),
    _t3("registers_t3_deit3_reg", "DeiT-III+reg", "ViT-B", "deit3", _VALUES, "DeiT-III ViT-B with registers",
        (None, None, None)),
    _t3("registers_t3_openclip", "OpenCLIP", "ViT-B/16", "openclip", _VALUES, "OpenCLIP ViT-B/16",
        (None, None, None)),
    _t3("registers_t3_openclip_reg", "OpenCLIP+reg", "ViT-B/16", "openclip", _VALUES,
        "OpenCLIP ViT-B/16 with registers", (None, None, None)),
    # Jiang et al. 2025, Table 5: the public checkpoints, a searched protocol.
    PublishedResult("jiang_t5_dinov2", "LOST (DINOv2, public checkpoint)", "ViT-L/14", _JIANG_PROTOCOL,
                    SOURCE_JIANG, 32.2, 36.8, 25.4, family="dinov2", checkpoint="vit_large_patch14_dinov2.lvd142m",
                    search=_JIANG_SEARCH, differs=(_SEARCHED,)),
    PublishedResult("jiang_t5_dinov2_reg", "LOST (DINOv2+reg, public checkpoint)", "ViT-L/14", _JIANG_PROTOCOL,
                    SOURCE_JIANG, 56.2, 60.2, 42.3, family="dinov2_reg",
                    checkpoint="vit_large_patch14_reg4_dinov2.lvd142m", search=_JIANG_SEARCH,
                    differs=(_SEARCHED,)),
    PublishedResult("jiang_t5_dinov2_ttreg", "LOST (DINOv2 + test-time register, public checkpoint)", "ViT-L/14",
                    _JIANG_PROTOCOL + "; one test-time register on the authors' register neurons", SOURCE_JIANG,
                    53.8, 57.9, 41.9, family="dinov2", checkpoint="vit_large_patch14_dinov2.lvd142m", ttreg=True,
                    search=_JIANG_SEARCH,
                    differs=(_SEARCHED, "the authors' register neurons (a calibrated list may differ)")),
    PublishedResult("jiang_t5_openclip", "LOST (OpenCLIP, public checkpoint)", "ViT-B/16", _JIANG_PROTOCOL,
                    SOURCE_JIANG, None, None, None, family="openclip", checkpoint="vit_base_patch16_clip_224.laion2b",
                    search=_JIANG_SEARCH, differs=(_SEARCHED,), note=_UNVERIFIED),
    PublishedResult("jiang_t5_openclip_ttreg", "LOST (OpenCLIP + test-time register, public checkpoint)", "ViT-B/16",
                    _JIANG_PROTOCOL + "; one test-time register", SOURCE_JIANG, None, None, None, family="openclip",
                    checkpoint="vit_base_patch16_clip_224.laion2b", ttreg=True, search=_JIANG_SEARCH,
                    differs=(_SEARCHED,), note=_UNVERIFIED),
    # A user's report: the public DINOv2+reg checkpoint (its size not stated), the stock LOST code.
    PublishedResult("dinov2_issue381_reg", "LOST (DINOv2+reg, public checkpoint)", "user report, size not stated",
                    _LOST_PROTOCOL, SOURCE_ISSUE_381, None, 35.94, 23.39, family="dinov2_reg",
                    differs=("a user's report, not a paper", "model size not stated", "numbers given as ~"),
                    note="VOC07 not reported"),
    PublishedResult("tokencut_dino_vits16", "TokenCut (DINO)", "ViT-S/16", _TOKENCUT_PROTOCOL, SOURCE_TOKENCUT,
                    68.8, 72.1, 58.8, lostreg_method="tokencut", checkpoint="vit_small_patch16_224.dino"),
    PublishedResult("tokencut_dino_vits8", "TokenCut (DINO)", "ViT-S/8", _TOKENCUT_PROTOCOL, SOURCE_TOKENCUT,
                    67.3, 71.6, 60.7, lostreg_method="tokencut", checkpoint="vit_small_patch8_224.dino"),
    PublishedResult("tokencut_dino_vitb16", "TokenCut (DINO)", "ViT-B/16", _TOKENCUT_PROTOCOL, SOURCE_TOKENCUT,
                    68.8, 72.4, 59.0, lostreg_method="tokencut", checkpoint="vit_base_patch16_224.dino"),
)

#: Published CorLoc of detectors trained on a method's pseudo-boxes ("+ CAD"), beside ``lostreg score``
#: runs (rows of method :data:`~lostreg.evaluation.detector_runs.DETECTOR_METHOD`; :func:`published_detector_match`).
PUBLISHED_DETECTORS: tuple[PublishedResult, ...] = (
    PublishedResult("lost_cad_dino_vits16", "LOST + CAD (DINO)", "ViT-S/16", _CAD_PROTOCOL, SOURCE_LOST_CAD,
                    65.7, 70.4, 57.5, lostreg_method=DETECTOR_METHOD, checkpoint="vit_small_patch16_224.dino"),
)


def published_by_key(key: str) -> PublishedResult:
    """The published row with ``key`` (``KeyError`` if none)."""
    for result in PUBLISHED + PUBLISHED_DETECTORS:
        if result.key == key:
            return result
    raise KeyError(f"no published result {key!r}")


def lostreg_backbone_for(key: str) -> str | None:
    """The registered lostreg backbone that loads published row ``key``'s checkpoint, or None (weights never
    released, or not in the registry)."""
    checkpoint = published_by_key(key).checkpoint
    if checkpoint is None:
        return None
    return next((name for name in list_backbones(include_aliases=False)
                 if checkpoint_of(name) == checkpoint), None)


def reference_rows(methods: Sequence[str], families: Sequence[str],
                   shown: Sequence[str] = ()) -> list[PublishedResult]:
    """The published rows a table shows apart, as references: those of its ``methods`` and backbone
    ``families`` not already shown beside a run (keys in ``shown``), in :data:`PUBLISHED` order."""
    return [p for p in PUBLISHED + PUBLISHED_DETECTORS
            if p.lostreg_method in methods and p.family in families and p.key not in shown]


def published_for(
    backbone: str,
    *,
    which: str = FeatureConfig.which,
    layer: int = FeatureConfig.layer,
    k_patches: int = LostConfig.k_patches,
    gram_bias: float = LostConfig.gram_bias,
    weights: str = "pretrained",
) -> PublishedResult | None:
    """The published LOST row a LOST run can be compared with, if any (:func:`published_match` by keyword).

    Args:
        backbone: lostreg backbone name, e.g. ``"dino_vits16"``.
        which: ``q``, ``k``, ``v`` or ``out``.
        layer: Block index, negative from the end.
        k_patches: LOST's k.
        gram_bias: Added to the Gram matrix.
        weights: ``pretrained``, ``random`` or a checkpoint path.
    """
    protocol = DiscoveryProtocol(method="lost", features=FeatureConfig(which=which, layer=layer),
                                 lost=LostConfig(k_patches=k_patches, gram_bias=gram_bias))
    return published_match(backbone, protocol, weights)

#: Published single-protocol row -> the row of a detector trained on its boxes ("+ CAD"). Only LOST's is
#: published by its authors (LOST README); TokenCut + CAD (71.4 / 75.3 / 62.6 as tabled by later papers)
#: is not listed: lostreg could not check it against the TokenCut authors' own text.
_CAD_OF: dict[str, str] = {"lost_dino_vits16": "lost_cad_dino_vits16"}


def published_detector_match(backbone: str, protocol: DiscoveryProtocol, weights: str = "pretrained"
                              ) -> PublishedResult | None:
    """The published "+ CAD" row beside a detector trained on the pseudo-boxes of a run of ``backbone`` and
    ``protocol``: only when that run matches the published row the detector was trained from
    (:func:`published_match`). The caller checks that the detector is scored on the data it was trained on
    (the published setting) and on the published split; the detector itself (architecture, schedule) is
    the user's: the note of the table says so."""
    source = published_match(backbone, protocol, weights)
    key = None if source is None else _CAD_OF.get(source.key)
    return None if key is None else published_by_key(key)
