"""Backbones: registry of names, weights loading, and patch-feature extraction."""

from __future__ import annotations

import torch

from lostreg.backbones.base import FEATURE_KINDS, Backbone, FeatureKey, FeatureKind, RopeMode
from lostreg.backbones.registry import (
    ALIASES,
    BUILDERS,
    BackboneSpec,
    UnknownBackboneError,
    list_backbones,
    register_backbone,
    register_builder,
    resolve_backbone,
)
from lostreg.backbones.weights import WeightsError, WeightsUnavailableError

# Importing the builder modules registers them in BUILDERS.
from lostreg.backbones import dinov3 as _dinov3  # noqa: F401,E402
from lostreg.backbones import pixels as _pixels  # noqa: F401,E402
from lostreg.backbones import vit as _vit  # noqa: F401,E402


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> cuda if available else cpu; otherwise ``torch.device(device)``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def build_backbone(
    name: str,
    weights: str | None = "pretrained",
    device: str | torch.device | None = "auto",
    *,
    rope: RopeMode = "pre",
) -> Backbone:
    """Build a backbone by lostreg name, alias, timm ViT name or timm DINOv3 name.

    Args:
        name: e.g. ``dinov2_reg``, ``dino_vitb16``, ``dinov3``, ``pixels``,
            ``vit_base_patch16_224.augreg_in21k``, ``vit_small_patch16_dinov3_qkvb.lvd1689m``.
        weights: ``pretrained`` (timm hub, cached as timm caches it), ``random`` (random init;
            boxes are meaningless), or a path to a timm-format or official DINO/DINOv2/DINOv3
            checkpoint.
        device: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``...
        rope: for RoPE backbones (DINOv3), whether q/k features are taken ``"pre"`` (default)
            or ``"post"`` rotation; other backbones accept only ``"pre"``.

    Raises:
        UnknownBackboneError, WeightsError, WeightsUnavailableError: one-line messages.
        ValueError: ``rope`` is not ``pre``/``post``, or ``post`` for a backbone without RoPE.
    """
    if rope not in ("pre", "post"):
        raise ValueError(f"features.rope must be pre or post, got {rope!r}")
    spec = resolve_backbone(name)
    return BUILDERS[spec.builder](spec, weights, resolve_device(device), rope=rope)


__all__ = [
    "ALIASES",
    "Backbone",
    "FEATURE_KINDS",
    "FeatureKey",
    "BackboneSpec",
    "FeatureKind",
    "RopeMode",
    "UnknownBackboneError",
    "WeightsError",
    "WeightsUnavailableError",
    "build_backbone",
    "list_backbones",
    "register_backbone",
    "register_builder",
    "resolve_backbone",
    "resolve_device",
]
