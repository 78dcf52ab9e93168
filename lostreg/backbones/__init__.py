"""Backbones: registry of names, weights loading, and patch-feature extraction."""

from __future__ import annotations

import torch

from lostreg.backbones.base import FEATURE_KINDS, Backbone, FeatureKey, FeatureKind
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
    name: str, weights: str | None = "pretrained", device: str | torch.device | None = "auto"
) -> Backbone:
    """Build a backbone by lostreg name, alias or timm ViT name.

    Args:
        name: e.g. ``dinov2_reg``, ``dino_vitb16``, ``pixels``, ``vit_base_patch16_224.augreg_in21k``.
        weights: ``pretrained`` (timm hub, cached as timm caches it), ``random`` (random init;
            boxes are meaningless), or a path to a timm-format or official DINO/DINOv2 checkpoint.
        device: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``...

    Raises:
        UnknownBackboneError, WeightsError, WeightsUnavailableError: one-line messages.
    """
    spec = resolve_backbone(name)
    return BUILDERS[spec.builder](spec, weights, resolve_device(device))


__all__ = [
    "ALIASES",
    "Backbone",
    "FEATURE_KINDS",
    "FeatureKey",
    "BackboneSpec",
    "FeatureKind",
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
