"""LOST as a registered method: its settings, what it needs and how it is named (the algorithm: :mod:`lostreg.lost`).

Light (no torch): the run function is :func:`lostreg.lost.run_lost`, imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lostreg.knobs import OUTPUT_NORMS, FeatureConfig, FeatureKey, knob, validate_knobs
from lostreg.methods import MethodSpec, register_method

__all__ = ["LostConfig"]


@dataclass(frozen=True)
class LostConfig:
    """LOST's knobs (spec section 3).

    Attributes:
        k_patches: how many lowest-degree patches may join the seed's similars (>= 1).
        gram_bias: added to every Gram entry before any threshold; 0 reproduces the reference.
        exclude_outliers: artifact-aware LOST (a lostreg extension): high-norm output tokens
            (:func:`lostreg.artifacts.outlier_mask` on the final tokens' norms) can be neither the
            seed nor a potential; degrees and the expansion still count every patch.
    """

    k_patches: int = knob(100, "LOST k: lowest-degree patches that may join the seed", short="k", minimum=1)
    gram_bias: float = knob(0.0, "LOST: added to the Gram matrix", short="bias")
    exclude_outliers: bool = knob(False, "LOST: high-norm output tokens (artifacts) can be neither the seed nor a "
                                         "potential", omit_at_default=True)

    def validate(self) -> None:
        """Raise :class:`~lostreg.knobs.ProtocolError` for a value out of range."""
        validate_knobs(self, "lost")


def _extra_keys(config: LostConfig) -> tuple[FeatureKey, ...]:
    return (OUTPUT_NORMS,) if config.exclude_outliers else ()


def _memory_bytes(config: LostConfig, patches: int, batch: int) -> int:
    # One Gram step of the tiled path (bounded) plus O(N) per image (degrees, masks, expansion).
    from lostreg.lost_tiles import MAX_STEP_BYTES

    return min(MAX_STEP_BYTES, batch * patches * 4 * 128) + batch * patches * 64


def _confidence(result: Any) -> float:
    # How far the seed's degree lies below the image's mean degree (lostreg.lost.seed_confidence).
    return float(result.score)


def _dir_name(features: FeatureConfig, config: LostConfig) -> str:
    # The form of the first lostreg versions, so their run directories are found again.
    name = f"{features.which}_layer{features.layer}_k{config.k_patches}_bias{float(config.gram_bias)}"
    return name + ("_xo" if config.exclude_outliers else "")


def _describe(features_text: str, config: LostConfig) -> str:
    text = f"{features_text}, k={config.k_patches}, Gram bias {config.gram_bias:g}"
    return text + (", high-norm outliers excluded" if config.exclude_outliers else "")


SPEC = register_method(MethodSpec(
    name="lost",
    label="LOST",
    config=LostConfig,
    run="lostreg.lost:run_lost",
    memory_bytes=_memory_bytes,
    dir_name=_dir_name,
    describe=_describe,
    table_knobs=("gram_bias", "k_patches"),
    extra_keys=_extra_keys,
    confidence=_confidence,
    run_objects="lostreg.lost:run_lost_objects",
    summary="LOST (Simeoni et al., BMVC 2021): the lowest-degree seed of the patch-similarity graph, grown "
            "with its most similar low-degree patches",
))
