"""Finding register neurons: the MLP units that write the high-norm outlier tokens.

For every image (batched, with masks):

1. **Outliers.** Token norms are L2 norms of block ``detect_layer``'s output (the residual
   stream after the block, before the final norm), over the PATCH tokens only. A patch is an
   outlier if its norm is strictly above the image's threshold (:class:`~lostreg.artifacts.OutlierRule`,
   the one rule of :mod:`lostreg.artifacts`: by default ``median + 5 * 1.4826 * MAD`` of the
   image's own patch norms; or mean + k std; or an absolute norm such as the paper's 150 for
   DINOv2-L at block -2).
   *Departure from the released code:* CLS and trained registers are never outliers there, so
   they do not steer the ranking (the released finder counts CLS).
2. **Scores.** For each scored block l and hidden unit n: the mean |hidden activation| over the
   image's outlier patches. With :class:`SparsityFilter`, a unit whose activation is below
   ``activation_threshold`` on less than ``frac_threshold`` of the image's tokens scores 0 for
   that image. Images without outliers are skipped (they count neither in sums nor in the mean).
3. **Ranking.** Per-image scores are averaged over the images with outliers; all (layer, unit)
   pairs in ``[lowest_layer, highest_layer]`` are ranked together, highest score first, ties by
   (layer, unit) ascending; pairs scoring 0 are dropped; the first ``top_k`` are kept. (Ranking
   every layer and then dropping those outside the range selects the same units, so layers
   outside it are not scored at all.)

Two forward passes per batch through the backbone's block stepping
(:meth:`~lostreg.backbones.timm_base.TimmBackbone.begin` / ``advance``): one up to
``detect_layer`` for the outlier masks, one over the scored blocks (restarting from the tokens
saved at the first scored block) that reduces each block's (B, T, H) hidden activation to (B, H)
as the block computes it, so memory stays that of one block. Everything
runs in fp32 without TF32; the result depends only on the images and their order (and the batch
composition at float32 rounding level), never on an RNG.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from lostreg.artifacts import DEFAULT_STD_K, OutlierRule
from lostreg.backbones.edits import mlp_hidden_dim
from lostreg.backbones.timm_base import TimmBackbone
from lostreg.errors import ConfigError, LostregError
from lostreg.precision import strict_fp32
from lostreg.ttreg.apply import require_forward_edits
from lostreg.ttreg.defaults import DEFAULT_DETECT_LAYER, DEFAULT_TOP_K
from lostreg.ttreg.neurons import ModelIdentity, RegisterNeurons, RegisterUnit


class NoImagesError(LostregError, ValueError):
    """Not one calibration image could be read."""


class NoOutliersError(LostregError, ValueError):
    """No calibration image had an outlier token, so no unit can be scored."""


def describe_rule(rule: OutlierRule) -> str:
    """The rule as the neuron file's ``threshold_rule`` words it, e.g. ``median + 5·1.4826·MAD of
    each image's patch norms`` or ``fixed 150``."""
    return rule.describe() if rule.kind == "absolute" else f"{rule.describe()} of each image's patch norms"


@dataclass(frozen=True)
class SparsityFilter:
    """The released finder's optional filter (defaults are its defaults).

    Per image and block, a unit keeps its score only if at least ``frac_threshold`` of the image's
    tokens (all of them, prefix included) have activation < ``activation_threshold`` (signed);
    otherwise it scores 0 for that image. It favours units that fire on few tokens.
    """

    frac_threshold: float = 0.5
    activation_threshold: float = 0.5


@dataclass(frozen=True)
class UnitScores:
    """Mean scores of every scored (layer, unit), before selection.

    Attributes:
        scores: (num_scored_layers, H) float64 on CPU, row i = block ``first_layer + i``.
        first_layer: block index of row 0.
        images: images seen.
        images_with_outliers: images that had at least one outlier (the mean's denominator).
        outlier_tokens: outlier patches over all images.
        detect_layer: block index where outliers were detected.
        rule: the outlier rule.
        sparsity: the filter used, or None.
        max_patch_norm: largest patch norm seen at the detection block.
    """

    scores: torch.Tensor
    first_layer: int
    images: int
    images_with_outliers: int
    outlier_tokens: int
    detect_layer: int
    rule: OutlierRule
    sparsity: SparsityFilter | None
    max_patch_norm: float

    def ranking(self, top_k: int | None = None) -> list[RegisterUnit]:
        """Units with a positive score, highest first, ties by (layer, unit); the first ``top_k``."""
        s = self.scores.numpy()
        layers, units = np.nonzero(s > 0)
        values = s[layers, units]
        order = np.lexsort((units, layers, -values))  # last key sorts first
        if top_k is not None:
            order = order[:top_k]
        return [RegisterUnit(int(layers[i]) + self.first_layer, int(units[i]), float(values[i])) for i in order]

    def score(self, layer: int, unit: int) -> float:
        """Mean score of one (layer, unit); raises IndexError for an unscored layer."""
        row = layer - self.first_layer
        if not 0 <= row < self.scores.shape[0]:
            last = self.first_layer + self.scores.shape[0] - 1
            raise IndexError(f"block {layer} was not scored (blocks {self.first_layer}..{last})")
        return float(self.scores[row, unit])


def _check_backbone(backbone: TimmBackbone) -> None:
    # Neurons are found for the backbones that can take the register they lead to.
    require_forward_edits(backbone)
    if backbone.forward_edit is not None:
        raise ConfigError(f"{backbone.name}: calibrate the plain model, not one already running test-time registers")


def score_units(
    backbone: TimmBackbone,
    batches: Iterable[torch.Tensor],
    *,
    detect_layer: int = DEFAULT_DETECT_LAYER,
    threshold: OutlierRule | str = "mad",
    lowest_layer: int | None = None,
    highest_layer: int | None = None,
    sparsity: SparsityFilter | None = None,
    progress: bool = False,
    total_images: int | None = None,
) -> UnitScores:
    """Score every (layer, unit) of blocks ``lowest_layer..highest_layer`` (steps 1-2 of the module doc).

    Args:
        backbone: a plain backbone that supports forward edits (a timm ViT, no test-time register).
        batches: (B, 3, H, W) float32 images, normalised and padded as for
            :meth:`~lostreg.backbones.base.Backbone.extract` (H, W may differ between batches).
        detect_layer: block whose output norms define outliers (negative from the end).
        threshold: an :class:`OutlierRule` or its text form.
        lowest_layer, highest_layer: scored blocks (inclusive; negative from the end; None = ends).
        sparsity: optional :class:`SparsityFilter`.
        progress: show a progress bar on stderr (``total_images`` sizes it).

    Raises:
        ValueError: bad layers or rule, no images, or a backbone that cannot be calibrated.
        NoOutliersError: no image had an outlier.
    """
    _check_backbone(backbone)
    rule = OutlierRule.parse(threshold)
    detect = backbone.layer_index(detect_layer)
    lo = 0 if lowest_layer is None else backbone.layer_index(lowest_layer)
    hi = backbone.num_layers - 1 if highest_layer is None else backbone.layer_index(highest_layer)
    if lo > hi:
        raise ConfigError(f"lowest_layer (block {lo}) is above highest_layer (block {hi})")
    width = mlp_hidden_dim(backbone.model.blocks[lo])
    totals = torch.zeros(hi - lo + 1, width, dtype=torch.float64)
    images = with_outliers = outlier_tokens = 0
    max_norm = 0.0
    prefix = backbone.num_prefix_tokens
    # Pass 2 restarts from the tokens entering this block (saved during pass 1).
    restart = min(lo, detect + 1)

    bar = tqdm(total=total_images, desc=f"calibrate {backbone.name}", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.inference_mode(), strict_fp32():
            for batch in batches:
                x = batch.to(backbone.device, torch.float32)
                n_batch = int(x.shape[0])

                # Pass 1: block outputs up to the detection block.
                saved = backbone.advance(backbone.begin(x), restart)
                detected = backbone.advance(saved, detect + 1)
                norms = torch.linalg.vector_norm(backbone.patch_tokens(detected.tokens, detected.grid_hw), dim=-1)
                cuts = torch.tensor([rule.threshold(norms[b]) for b in range(n_batch)],
                                    dtype=norms.dtype, device=norms.device)
                patch_mask = norms > cuts[:, None]  # (B, n)
                counts = patch_mask.sum(dim=1)  # (B,)
                images += n_batch
                max_norm = max(max_norm, float(norms.max()))
                bar.update(n_batch)
                keep = counts > 0
                if not bool(keep.any()):
                    continue
                with_outliers += int(keep.sum())
                outlier_tokens += int(counts.sum())

                # Pass 2: reduce each scored block's hidden activation over the outlier patches.
                weights = torch.zeros(n_batch, detected.tokens.shape[1], dtype=torch.float32, device=x.device)
                weights[:, prefix:prefix + patch_mask.shape[1]] = patch_mask.float()
                weights = weights / counts.clamp_min(1)[:, None].float()  # per-image mean over outliers
                kept = torch.nonzero(keep.cpu()).flatten().tolist()

                def reduce(layer: int, hidden: torch.Tensor) -> None:
                    per_image = torch.einsum("bt,bth->bh", weights, hidden.abs())  # (B, H)
                    if sparsity is not None:
                        quiet = (hidden < sparsity.activation_threshold).float().mean(dim=1)
                        per_image = per_image * (quiet >= sparsity.frac_threshold)
                    per_image = per_image.to("cpu", torch.float64)
                    # One image at a time, in input order: the float64 sum does not depend on batching.
                    for b in kept:
                        totals[layer - lo] += per_image[b]

                backbone.advance(saved, hi + 1, read_hidden=reduce, hidden_layers=range(lo, hi + 1))
    finally:
        bar.close()

    if images == 0:
        raise NoImagesError("no calibration images could be read")
    if with_outliers == 0:
        raise NoOutliersError(
            f"none of the {images} images has a patch token above the outlier threshold ({describe_rule(rule)}) at "
            f"block {detect} (largest patch norm {max_norm:.4g}); lower the threshold (e.g. mad:3, mean3std or a "
            "number), try another detect layer, or this model has no high-norm tokens to move"
        )
    return UnitScores(
        scores=totals / with_outliers,
        first_layer=lo,
        images=images,
        images_with_outliers=with_outliers,
        outlier_tokens=outlier_tokens,
        detect_layer=detect,
        rule=rule,
        sparsity=sparsity,
        max_patch_norm=max_norm,
    )


def calibrate(
    backbone: TimmBackbone,
    batches: Iterable[torch.Tensor],
    *,
    detect_layer: int = DEFAULT_DETECT_LAYER,
    threshold: OutlierRule | str = "mad",
    top_k: int = DEFAULT_TOP_K,
    highest_layer: int | None = None,
    lowest_layer: int | None = None,
    sparsity: SparsityFilter | None = None,
    progress: bool = False,
    total_images: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> RegisterNeurons:
    """Find register neurons of ``backbone`` from unlabeled images (the whole module doc).

    Args:
        backbone, batches, detect_layer, threshold, sparsity, progress, total_images: as for
            :func:`score_units`.
        top_k: how many units to keep (fewer if fewer score above 0).
        highest_layer: last block whose units may be chosen (the paper: the block where outliers
            first appear, 17 for DINOv2-L); None = every block. Negative counts from the end.
        lowest_layer: first such block; None = block 0.
        settings: extra facts to record in the file's ``calibration`` (e.g. preprocessing).

    Returns:
        The neurons, with the model identity (weights hashed once, here) and every setting.

    Raises:
        ValueError, NoOutliersError: as for :func:`score_units`; ``top_k < 1``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    _check_backbone(backbone)
    scores = score_units(
        backbone, batches, detect_layer=detect_layer, threshold=threshold, lowest_layer=lowest_layer,
        highest_layer=highest_layer, sparsity=sparsity, progress=progress, total_images=total_images,
    )
    units = scores.ranking(top_k)
    if not units:
        raise NoOutliersError("every unit scored 0 (the sparsity filter removed them all?)")
    highest = scores.first_layer + scores.scores.shape[0] - 1
    calibration: dict[str, Any] = {
        "images": scores.images,
        "images_with_outliers": scores.images_with_outliers,
        "outlier_tokens": scores.outlier_tokens,
        "detect_layer": scores.detect_layer,
        "threshold": str(scores.rule),
        "threshold_rule": describe_rule(scores.rule),
        "max_patch_norm": float(f"{scores.max_patch_norm:.7g}"),
        "norms": "L2 norm of the detect block's output (residual stream, before the final norm); patch tokens only",
        "score": "mean |MLP hidden activation| over an image's outlier patches, averaged over images with outliers",
        "sparsity": None if sparsity is None else {"frac_threshold": sparsity.frac_threshold,
                                                   "activation_threshold": sparsity.activation_threshold},
    }
    calibration.update(settings or {})
    return RegisterNeurons(
        model=ModelIdentity.of(backbone, with_hash=True),
        units=tuple(units),
        selection={"top_k": top_k, "highest_layer": highest, "lowest_layer": scores.first_layer},
        calibration=calibration,
    )


__all__ = [
    "DEFAULT_DETECT_LAYER",
    "DEFAULT_STD_K",
    "DEFAULT_TOP_K",
    "NoOutliersError",
    "OutlierRule",
    "SparsityFilter",
    "UnitScores",
    "describe_rule",
    "calibrate",
    "score_units",
]
