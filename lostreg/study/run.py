"""The artifact study of one backbone over a stream of image batches: :class:`ArtifactStudy`.

For every batch, one forward pass through the backbone's block stepping
(:meth:`~lostreg.backbones.timm_base.TimmBackbone.begin` / ``advance``), reading each block's
output as it is computed:

1. **Along the layers** (every block): the L2 norms of the patch tokens go into one fixed-bin
   histogram per block (quantiles, :class:`~lostreg.study.sketch.Histogram`); the outliers of each
   image under the outlier rule (:class:`~lostreg.artifacts.OutlierRule`, the rule of ``inspect``,
   ``calibrate`` and LOST's ``exclude_outliers``) and above the absolute threshold are counted
   exactly.
2. **At the study block** (``layer``, default the last):

   * the mean cosine similarity of each patch token to its 4 neighbours, outliers and normal
     tokens apart (exact means, histograms for the figure), on the study block's tokens and on
     the tokens entering block 0 (patch embedding + position embedding: is the patch itself
     redundant with its neighbours, before the model has written anything into it?);
   * bounded uniform samples (:class:`~lostreg.study.sketch.BottomKSample`) of tokens with
     their grid cell and pixels for the local probes: from the training images every patch token
     (normal and outlier tokens in their natural proportion), from the test images normal and
     outlier tokens apart;
   * with labels, per image its CLS token, one normal and one outlier patch token (each drawn at
     random among the image's tokens of that kind), in a bounded sample of images per split.

Memory is fixed by the settings, never by the number of images: one histogram per block and the
samples' capacities. The split is by image (:func:`is_test_image`), so no image has tokens on
both sides. Every random draw derives from ``(seed, image index)``, so results do not depend on
batching. :meth:`ArtifactStudy.result` fits the probes (:mod:`lostreg.study.probes`) and returns
the JSON-ready record (schema in ``docs/artifacts.md``).

Norms (``norm_source``): ``prenorm`` (default) is the block's output, the residual stream before
the model's final LayerNorm: defined the same way at every block, and the signal of the registers
papers' thresholds (150 at block -2 of DINOv2-L for test-time registers). ``final`` applies the
model's final norm to every block's output first (DINOv2's ``get_intermediate_layers(norm=True)``;
at the last block, the features timm's ``forward_features`` returns).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
import torch

from lostreg.artifacts import OutlierRule
from lostreg.backbones.base import Backbone
from lostreg.backbones.timm_base import TimmBackbone
from lostreg.errors import ConfigError
from lostreg.precision import forward_precision
from lostreg.study.probes import ProbeSettings, global_probe, pixel_probe, position_probe
from lostreg.study.sketch import BottomKSample, Histogram
from lostreg.study.tokens import neighbour_cosine, patch_pixels, rule_mask, token_norms

__all__ = [
    "PAPER_NORM_THRESHOLD",
    "SCHEMA",
    "ArtifactStudy",
    "NormSource",
    "StudyBatch",
    "StudySettings",
    "is_test_image",
    "require_layers",
]

SCHEMA = "lostreg.artifacts/1"
#: The registers paper's absolute cut ("norm > 150"), stated for its own large DINOv2 models.
PAPER_NORM_THRESHOLD = 150.0
NormSource = Literal["prenorm", "final"]
NORM_SOURCES: tuple[str, ...] = ("prenorm", "final")

_COSINE_BINS = 100
_KINDS = ("normal", "outlier")


def is_test_image(index: int, fraction: float) -> bool:
    """Whether image ``index`` (0-based, input order) belongs to the test split.

    Image i is a test image when ``floor((i + 1) * fraction) > floor(i * fraction)``: exactly
    ``floor(N * fraction)`` of the first N images, spread evenly through the list (with 0.25,
    images 3, 7, 11, ...), so a list sorted by class still has every class on both sides.
    """
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def require_layers(backbone: Backbone) -> TimmBackbone:
    """``backbone`` if it is a transformer the study can step through block by block.

    Raises:
        ConfigError: one line, naming the backbone (``pixels`` has no blocks).
    """
    if not isinstance(backbone, TimmBackbone):
        raise ConfigError(f"{backbone.name} has no transformer blocks (no token norms along layers): the artifact "
                          "study needs a ViT backbone such as dinov2 or dinov2_reg")
    return backbone


@dataclass(frozen=True)
class StudySettings:
    """What the study measures and how (see the module docstring).

    Attributes:
        layer: the study block (negative from the end) for neighbours, probes and global tokens.
        norm_source: ``prenorm`` or ``final``.
        rule: the outlier rule, per image.
        norm_threshold: the absolute cut whose share is reported beside the rule's.
        test_fraction: share of the images in the test split, in (0, 1).
        train_tokens: capacity of the training-token sample of the local probes.
        test_tokens: capacity of each test-token sample (normal, outlier).
        global_images: capacity of each split's image sample of the global probe.
        seed: of every random draw (token samples, the normal/outlier token of an image).
        precision: the backbone forward's numerics (``fp32``, ``tf32``, ``bf16``).
        probes: the probes' regularisers.
    """

    layer: int = -1
    norm_source: NormSource = "prenorm"
    rule: OutlierRule = OutlierRule()
    norm_threshold: float = PAPER_NORM_THRESHOLD
    test_fraction: float = 0.25
    train_tokens: int = 10000
    test_tokens: int = 5000
    global_images: int = 5000
    seed: int = 0
    precision: str = "fp32"
    probes: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        if self.norm_source not in NORM_SOURCES:
            raise ConfigError(f"norm source must be one of {', '.join(NORM_SOURCES)}, got {self.norm_source!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        for name in ("train_tokens", "test_tokens", "global_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.norm_threshold) or self.norm_threshold <= 0:
            raise ConfigError(f"norm threshold must be a positive number, got {self.norm_threshold}")


class StudyBatch(NamedTuple):
    """One batch of study images.

    Attributes:
        images: (B, 3, S, S) float32, normalised with the backbone's mean/std, S a multiple of the
            patch size; every batch of a study has the same S.
        indices: each image's 0-based position in the input list (decides its split and its draws).
        labels: each image's class names (one or more), or None without labels.
    """

    images: torch.Tensor
    indices: Sequence[int]
    labels: Sequence[Sequence[str]] | None = None


@dataclass
class _LayerStats:
    histogram: Histogram
    images: int = 0
    outlier_tokens: int = 0
    images_with_outliers: int = 0
    absolute_tokens: int = 0
    images_above_absolute: int = 0


class ArtifactStudy:
    """Accumulates the study of one backbone over batches; :meth:`result` gives the record.

    Args:
        backbone: a timm transformer backbone (plain, with trained registers, or running a
            test-time register); refused otherwise (:func:`require_layers`).
        settings: :class:`StudySettings`.
        class_names: the label vocabulary, for the global probe; None without labels.
        multilabel: whether an image may carry several labels (mAP) or exactly one (top-1).

    Raises:
        ConfigError: a backbone without blocks, or a study layer out of range.
    """

    def __init__(self, backbone: Backbone, settings: StudySettings = StudySettings(),
                 class_names: Sequence[str] | None = None, multilabel: bool = False) -> None:
        self.backbone = require_layers(backbone)
        self.settings = settings
        self.layer = self.backbone.layer_index(settings.layer)
        self.class_names = list(class_names) if class_names is not None else None
        self._class_index = {name: k for k, name in enumerate(self.class_names or [])}
        self.multilabel = multilabel
        self.grid_hw: tuple[int, int] | None = None
        self.image_size: tuple[int, int] | None = None
        self.layers = [_LayerStats(Histogram.log_spaced()) for _ in range(self.backbone.num_layers)]
        self.images = 0
        self.split_images = {"train": 0, "test": 0}
        self.study_norms = {kind: Histogram.log_spaced() for kind in _KINDS}  # the study block's, for the figure
        self.cosine = {where: {kind: Histogram.linear(-1.0, 1.0, _COSINE_BINS) for kind in _KINDS}
                       for where in ("layer", "input")}
        self.train = BottomKSample(settings.train_tokens)
        self.test = {kind: BottomKSample(settings.test_tokens) for kind in _KINDS}
        self.global_sample = {split: BottomKSample(settings.global_images) for split in ("train", "test")}
        self.forward_seconds = 0.0

    # --- streaming -----------------------------------------------------------------------------

    def _keys(self, index: int, count: int, stream: int) -> np.ndarray:
        """``count`` uniform keys for image ``index``: the same whatever the batching."""
        return np.random.default_rng([self.settings.seed, index, stream]).random(count)

    def _check_grid(self, images: torch.Tensor) -> tuple[int, int]:
        grid = self.backbone.grid_hw((int(images.shape[-2]), int(images.shape[-1])))
        if self.grid_hw is None:
            if grid[0] * grid[1] < 2:
                raise ConfigError(f"images of {tuple(images.shape[-2:])} pixels give a single patch: no neighbours")
            self.grid_hw, self.image_size = grid, (int(images.shape[-2]), int(images.shape[-1]))
        elif grid != self.grid_hw:
            # Position classes are grid cells: every image must have the same grid.
            raise ValueError(f"batch grid {grid} differs from the study's {self.grid_hw}")
        return grid

    def add(self, batch: StudyBatch) -> None:
        """Run the backbone on one batch and accumulate everything (see the module docstring)."""
        started = time.perf_counter()
        backbone, settings = self.backbone, self.settings
        images = batch.images.to(backbone.device, torch.float32)
        if len(batch.indices) != images.shape[0]:
            raise ValueError("one index per image is needed")
        grid = self._check_grid(images)
        final_norm = backbone.model.norm if settings.norm_source == "final" else None
        with torch.inference_mode(), forward_precision(settings.precision, backbone.device):
            state = backbone.begin(images)
            entering = backbone.patch_tokens(state.tokens, grid).float()  # (B, n, D) entering block 0
            for index in range(backbone.num_layers):
                state = backbone.advance(state, index + 1)
                tokens = state.tokens if final_norm is None else final_norm(state.tokens)
                patches = backbone.patch_tokens(tokens, grid)
                norms = token_norms(patches)  # (B, n) float32
                mask = rule_mask(norms, settings.rule)  # (B, n) bool
                self._count_layer(self.layers[index], norms, mask)
                if index == self.layer:
                    self.study_norms["outlier"].add(norms[mask])
                    self.study_norms["normal"].add(norms[~mask])
                    self._study_block(batch, images, tokens.float(), patches.float(), entering, mask, grid)
        self.images += int(images.shape[0])
        self.forward_seconds += time.perf_counter() - started

    def _count_layer(self, stats: _LayerStats, norms: torch.Tensor, mask: torch.Tensor) -> None:
        above = norms.to(torch.float64) > self.settings.norm_threshold
        stats.histogram.add(norms)
        stats.images += int(norms.shape[0])
        stats.outlier_tokens += int(mask.sum())
        stats.images_with_outliers += int(mask.any(dim=1).sum())
        stats.absolute_tokens += int(above.sum())
        stats.images_above_absolute += int(above.any(dim=1).sum())

    def _study_block(self, batch: StudyBatch, images: torch.Tensor, tokens: torch.Tensor, patches: torch.Tensor,
                     entering: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> None:
        """Neighbour cosines and the probes' samples from the study block's tokens (B, n, D)."""
        for where, source in (("layer", patches), ("input", entering)):
            cosine = neighbour_cosine(source, grid)
            self.cosine[where]["outlier"].add(cosine[mask])
            self.cosine[where]["normal"].add(cosine[~mask])

        n = grid[0] * grid[1]
        features = patches.cpu().numpy()  # (B, n, D) float32
        pixels = patch_pixels(images, self.backbone.patch_size).float().cpu().numpy()  # (B, n, 3*p*p)
        outliers = mask.cpu().numpy()
        cells = np.arange(n, dtype=np.int64)
        has_cls = self.backbone.has_class_token
        cls = tokens[:, 0].cpu().numpy() if has_cls else None
        for b, index in enumerate(batch.indices):
            split = "test" if is_test_image(int(index), self.settings.test_fraction) else "train"
            self.split_images[split] += 1
            keys = self._keys(int(index), n, 0)
            if split == "train":
                self.train.add(keys, x=features[b], cell=cells, pixels=pixels[b])
            else:
                for kind, where in (("outlier", outliers[b]), ("normal", ~outliers[b])):
                    self.test[kind].add(keys[where], x=features[b][where], cell=cells[where], pixels=pixels[b][where])
            if batch.labels is not None and self.class_names is not None:
                self._add_global(split, int(index), features[b], outliers[b], keys,
                                 None if cls is None else cls[b], batch.labels[b])

    def _add_global(self, split: str, index: int, features: np.ndarray, outliers: np.ndarray, keys: np.ndarray,
                    cls: np.ndarray | None, labels: Sequence[str]) -> None:
        """One image's CLS, one random normal and one random outlier token (zeros + flag when absent)."""
        width = features.shape[1]
        multi_hot = np.zeros(len(self.class_names or []), dtype=bool)
        for name in labels:
            multi_hot[self._class_index[name]] = True

        def pick(where: np.ndarray) -> tuple[np.ndarray, bool]:
            if not where.any():
                return np.zeros(width, dtype=np.float32), False
            candidates = np.nonzero(where)[0]
            return features[candidates[np.argmin(keys[candidates])]], True  # the kind's token of smallest key

        normal, has_normal = pick(~outliers)
        outlier, has_outlier = pick(outliers)
        self.global_sample[split].add(
            self._keys(index, 1, 1),
            cls=(cls if cls is not None else np.zeros(width, dtype=np.float32))[None],
            normal=normal[None], outlier=outlier[None], has_normal=np.array([has_normal]),
            has_outlier=np.array([has_outlier]), labels=multi_hot[None],
        )

    # --- the record ----------------------------------------------------------------------------

    def _layer_rows(self) -> list[dict[str, Any]]:
        rows = []
        for index, stats in enumerate(self.layers):
            h = stats.histogram
            tokens = h.total
            rows.append({
                "layer": index,
                "median_norm": h.quantile(0.5),
                "p90_norm": h.quantile(0.9),
                "p99_norm": h.quantile(0.99),
                "max_norm": h.max if tokens else None,
                "min_norm": h.min if tokens else None,
                "mean_norm": h.mean,
                "outlier_share": stats.outlier_tokens / tokens if tokens else None,
                "outlier_tokens": stats.outlier_tokens,
                "images_with_outliers": stats.images_with_outliers,
                "absolute_share": stats.absolute_tokens / tokens if tokens else None,
                "absolute_tokens": stats.absolute_tokens,
                "images_above_absolute": stats.images_above_absolute,
                "tokens": tokens,
                "images": stats.images,
            })
        return rows

    def _neighbours(self, where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in _KINDS:
            h = self.cosine[where][kind]
            out[kind] = h.mean
            out[f"{kind}_tokens"] = h.total
        out["notes"] = [] if out["outlier"] is not None else ["no outlier token at the study block: nothing to compare"]
        return out

    def _local_probes(self) -> dict[str, Any]:
        s = self.settings
        assert self.grid_hw is not None
        out: dict[str, Any] = {
            "split": f"by image: image i (0-based, input order) is a test image when floor((i+1)*f) > floor(i*f), "
                     f"f = {s.test_fraction:g}; no image has tokens in both splits",
            "train_images": self.split_images["train"],
            "test_images": self.split_images["test"],
            "train_tokens_seen": self.train.seen,
            "train_sample": f"uniform sample of at most {s.train_tokens} patch tokens of the training images "
                            "(normal and outlier tokens in their natural proportion)",
            "test_tokens_seen": {kind: self.test[kind].seen for kind in _KINDS},
            "test_sample": f"uniform sample of at most {s.test_tokens} test tokens of each kind",
            "regularisers": s.probes.describe(),
        }
        if len(self.train) == 0:
            out["position"] = out["pixels"] = None
            out["notes"] = ["no training image (too few images for the split): no probe"]
            return out
        tests_pos, tests_pix = {}, {}  # kind -> test tokens with their cells / pixels
        for kind in _KINDS:
            sample = self.test[kind]
            if len(sample) == 0:
                width, pixels = self.train.column("x").shape[1], self.train.column("pixels").shape[1]
                tests_pos[kind] = (np.zeros((0, width), np.float32), np.zeros(0, np.int64))
                tests_pix[kind] = (np.zeros((0, width), np.float32), np.zeros((0, pixels), np.float32))
            else:
                tests_pos[kind] = (sample.column("x"), sample.column("cell"))
                tests_pix[kind] = (sample.column("x"), sample.column("pixels"))
        x = self.train.column("x")
        started = time.perf_counter()
        out["position"] = position_probe(x, self.train.column("cell"), tests_pos, self.grid_hw, s.probes)
        out["position"]["seconds"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        out["pixels"] = pixel_probe(x, self.train.column("pixels"), tests_pix, s.probes)
        out["pixels"]["seconds"] = round(time.perf_counter() - started, 3)
        out["notes"] = []
        if self.split_images["test"] == 0:
            out["notes"].append("no test image (too few images for the split): no score")
        return out

    def _global_probe(self) -> dict[str, Any] | None:
        if self.class_names is None:
            return None
        train, test = self.global_sample["train"], self.global_sample["test"]
        out: dict[str, Any] = {
            "metric": "mAP" if self.multilabel else "top1",
            "classes": len(self.class_names),
            "multilabel": self.multilabel,
            "token": "one token per image at the study block: CLS, one normal patch token, one outlier patch "
                     "token (each drawn at random among the image's tokens of that kind)",
            "train_images_seen": train.seen,
            "test_images_seen": test.seen,
        }
        if len(train) == 0 or len(test) == 0:
            return {**out, "cls": None, "normal": None, "outlier": None,
                    "notes": ["no image in one of the splits: no global probe"]}
        names = self.class_names

        def probe(token: str, only_outlier_images: bool) -> dict[str, Any] | None:
            def rows(sample: BottomKSample) -> np.ndarray:
                keep = sample.column("has_normal") if token == "normal" else np.ones(len(sample), bool)
                if token == "outlier" or only_outlier_images:
                    keep = keep & sample.column("has_outlier")
                return keep

            tr, te = rows(train), rows(test)
            if not tr.any() or not te.any():
                return None
            return global_probe(train.column(token)[tr], train.column("labels")[tr], test.column(token)[te],
                                test.column("labels")[te], names, self.multilabel, self.settings.probes)

        notes: list[str] = []
        has_cls = self.backbone.has_class_token
        out["cls"] = probe("cls", False) if has_cls else None
        if not has_cls:
            notes.append(f"{self.backbone.name} has no CLS token")
        out["normal"] = probe("normal", False)
        out["outlier"] = probe("outlier", True)
        if out["outlier"] is None:
            notes.append("no outlier token in the training or the test images: no outlier-token probe")
        else:
            # The same images for the three tokens: the images that have an outlier.
            out["on_outlier_images"] = {"cls": probe("cls", True) if has_cls else None, "normal": probe("normal", True),
                                        "outlier": out["outlier"]}
        out["notes"] = notes
        return out

    def result(self) -> dict[str, Any]:
        """The record of the study so far (fits the probes: seconds to minutes with big samples).

        scikit-learn's BLAS runs with torch's intra-op thread count (``torch.set_num_threads``,
        ``OMP_NUM_THREADS``), so one setting bounds both: on a shared CPU, BLAS threads that outnumber
        the free cores made a small probe 20 times slower (measured: 24.5 s against 1.2 s).

        Raises:
            ValueError: no image was added.
        """
        # scikit-learn first: threadpool_limits only limits the libraries already loaded.
        import sklearn.linear_model  # noqa: F401
        from threadpoolctl import threadpool_limits

        if self.images == 0:
            raise ValueError("no image was studied")
        with threadpool_limits(limits=torch.get_num_threads()):
            return self._result()

    def _result(self) -> dict[str, Any]:
        started = time.perf_counter()
        s, backbone = self.settings, self.backbone
        rows = self._layer_rows()
        first = next((row["layer"] for row in rows if row["outlier_tokens"] > 0), None)
        study = rows[self.layer]
        assert self.grid_hw is not None and self.image_size is not None
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "backbone": backbone.name,
            "family": backbone.spec.family,
            "random_weights": backbone.is_random,
            "test_time_register": backbone.forward_edit is not None,
            "num_registers": backbone.num_registers,
            "num_layers": backbone.num_layers,
            "embed_dim": int(getattr(backbone.model, "embed_dim", 0)) or None,
            "parameters": int(sum(p.numel() for p in backbone.model.parameters())),
            "patch_size": backbone.patch_size,
            "image_size": list(self.image_size),
            "grid": list(self.grid_hw),
            "images": self.images,
            "tokens_per_image": self.grid_hw[0] * self.grid_hw[1],
            "norm_source": s.norm_source,
            "outlier_rule": str(s.rule),
            "outlier_rule_text": s.rule.describe() + ("" if s.rule.kind == "absolute" else " of each image's patch-token norms"),
            "norm_threshold": s.norm_threshold,
            "study_layer": self.layer,
            "layers": rows,
            "first_layer_with_outliers": first,
            "outlier_share": study["outlier_share"],
            "neighbour_cosine": {"layer": self.layer, **self._neighbours("layer"), "images": self.images},
            "neighbour_cosine_input": {"layer": "input of block 0 (patch + position embedding)",
                                       **self._neighbours("input"), "images": self.images},
            "probes": self._local_probes(),
            "global": self._global_probe(),
            "settings": {"seed": s.seed, "test_fraction": s.test_fraction, "train_tokens": s.train_tokens,
                         "test_tokens": s.test_tokens, "global_images": s.global_images, "precision": s.precision},
        }
        notes = []
        if study["outlier_tokens"] == 0:
            notes.append(f"no outlier token at the study block {self.layer} under {s.rule.describe()}: outlier "
                         "columns are null")
        if backbone.is_random:
            notes.append("RANDOM weights: these numbers describe an untrained network (pipeline test)")
        record["notes"] = notes
        record["cost"] = {"forward_seconds": round(self.forward_seconds, 3),
                          "probe_seconds": round(time.perf_counter() - started, 3),
                          "forward_seconds_per_image": round(self.forward_seconds / self.images, 4)}
        return record

    # --- for the figures -----------------------------------------------------------------------

    def norm_histograms(self) -> dict[str, Histogram]:
        """``{"normal": Histogram, "outlier": Histogram}`` of the study block's patch-token norms."""
        return self.study_norms

    def cosine_histograms(self, where: str = "layer") -> dict[str, Histogram]:
        """``{"normal": Histogram, "outlier": Histogram}`` of the neighbour cosines (``layer`` or ``input``)."""
        return self.cosine[where]
