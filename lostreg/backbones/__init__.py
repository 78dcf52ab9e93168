"""Backbones: registry of names, weights loading, and patch-feature extraction.

Importing this package is light (no torch, no timm): the registry is plain data, and the
feature extractors, weights loaders and their torch imports load on first use
(:func:`build_backbone`, or an attribute such as :class:`Backbone`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lostreg.errors import ConfigError
from lostreg.backbones.registry import (
    ALIASES,
    BUILDERS,
    FAMILY_NOTES,
    BackboneSpec,
    PosEmbedInterp,
    UnknownBackboneError,
    is_weight_free,
    list_backbones,
    register_backbone,
    register_builder,
    registered_spec,
    resolve_backbone,
)
from lostreg.protocol import FEATURE_KINDS, FeatureKey, FeatureKind, RopeMode

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lostreg.backbones.base import Backbone
    from lostreg.backbones.edits import ForwardEdit
    from lostreg.backbones.trace import Trace
    from lostreg.backbones.weights import RandomWeightsWarning, WeightsError, WeightsUnavailableError

#: Modules whose import registers a builder in BUILDERS (``@register_builder``).
BUILDER_MODULES = ("lostreg.backbones.vit", "lostreg.backbones.pixels", "lostreg.backbones.dinov3")

_LAZY = {
    "Backbone": "lostreg.backbones.base",
    "ForwardEdit": "lostreg.backbones.edits",
    "RandomWeightsWarning": "lostreg.backbones.weights",
    "Trace": "lostreg.backbones.trace",
    "WeightsError": "lostreg.backbones.weights",
    "WeightsUnavailableError": "lostreg.backbones.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lostreg.backbones' has no attribute {name!r}")


def resolve_device(device: "str | torch.device | None" = "auto") -> "torch.device":
    """``auto``/None -> cuda if available else cpu; otherwise ``torch.device(device)``.

    Raises:
        ValueError: not a device string torch knows, or a CUDA device this machine lacks.
    """
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {str(device)!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {str(device)!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r} requested but MPS is not available on this machine")
    return dev


def build_backbone(
    name: str,
    weights: str | None = "pretrained",
    device: "str | torch.device | None" = "auto",
    *,
    rope: RopeMode = "pre",
) -> "Backbone":
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

    Warns:
        RandomWeightsWarning: for ``weights="random"`` (its own category, so callers can silence
            exactly it).

    Raises:
        UnknownBackboneError, WeightsError, WeightsUnavailableError: one-line messages.
        ConfigError: ``rope`` is not ``pre``/``post``, or ``post`` for a backbone without RoPE; a bad device.
    """
    if rope not in ("pre", "post"):
        raise ConfigError(f"features.rope must be pre or post, got {rope!r}")
    for module in BUILDER_MODULES:
        importlib.import_module(module)
    spec = resolve_backbone(name)
    return BUILDERS[spec.builder](spec, weights, resolve_device(device), rope=rope)


__all__ = [
    "ALIASES",
    "BUILDER_MODULES",
    "Backbone",
    "BackboneSpec",
    "FAMILY_NOTES",
    "FEATURE_KINDS",
    "FeatureKey",
    "FeatureKind",
    "ForwardEdit",
    "PosEmbedInterp",
    "RandomWeightsWarning",
    "RopeMode",
    "Trace",
    "UnknownBackboneError",
    "WeightsError",
    "WeightsUnavailableError",
    "build_backbone",
    "is_weight_free",
    "list_backbones",
    "register_backbone",
    "register_builder",
    "registered_spec",
    "resolve_backbone",
    "resolve_device",
]
