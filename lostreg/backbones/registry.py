"""The backbone registry: lostreg names -> how to build the model and feed it.

Names follow timm's grammar, shortened: ``<method>_vit<size><patch>[_reg]``, e.g.
``dinov2_vits14_reg`` = DINOv2 ViT-S/14 with 4 registers = timm
``vit_small_patch14_reg4_dinov2.lvd142m``. Always the *tagged* timm name: the untagged one is a
supervised model with other weights and normalisation (for DINOv3 the tag picks the training
data, and with it the normalisation: ``.lvd1689m`` web images, ``.sat493m`` satellite images).

Nothing here builds or downloads a model (:func:`lostreg.backbones.build_backbone` does), and
nothing here imports torch or timm at import time: listing backbones stays instant.
Patch size and register count in a spec are the published facts used for listings; the
feature extractor reads both from the built model (tests check they agree).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lostreg.errors import LostregError

#: A builder: ``(spec, weights, device, *, rope) -> Backbone`` (:class:`lostreg.backbones.base.Backbone`;
#: not imported here, so that the registry stays below the classes it lists).
Builder = Callable[..., Any]


class PosEmbedInterp(str, Enum):
    """How a backbone family resizes its patch position embeddings (see :mod:`lostreg.backbones.pos_embed`)."""

    #: Official DINO v1 / DINOv2 (no registers): bicubic, scale factor (n + 0.1) / g, no antialias.
    OFFSET_0_1 = "offset_0.1"
    #: timm's resize (bicubic, exact size, antialias); equals the official DINOv2+reg one.
    TIMM = "timm"
    #: No absolute position table to resize: rotary embeddings (DINOv3) are recomputed per grid.
    NONE_ROPE = "none (rope)"


class UnknownBackboneError(LostregError, ValueError):
    """Raised for a backbone name that is neither registered nor a timm ViT."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Attributes:
        name: lostreg name (``dinov2_vits14_reg``).
        family: ``dino``, ``dinov2``, ``dinov2_reg``, ``deit3``, ``openclip``, ``clip``, ``dinov3``,
            ``timm`` (any other timm ViT) or ``pixels``.
        timm_name: tagged timm model name, None for weight-free backbones.
        patch_size: published patch size in pixels (informative; the model is the authority).
        num_registers: published register count (informative; the model is the authority).
        pos_embed_interp: position-embedding resize of the family's official code.
        builder: name of the builder in :data:`BUILDERS` that makes the :class:`Backbone`.
        official_url: where the family's official checkpoint lives (for error messages).
        has_weights: False for weight-free backbones (``pixels``), whose ``weights`` setting is
            meaningless and which random weights cannot affect.
    """

    name: str
    family: str
    timm_name: str | None
    patch_size: int | None
    num_registers: int
    pos_embed_interp: PosEmbedInterp = PosEmbedInterp.TIMM
    builder: str = "timm_vit"
    official_url: str | None = None
    has_weights: bool = True


_REGISTRY: dict[str, BackboneSpec] = {}
ALIASES: dict[str, str] = {
    "dino": "dino_vits16",
    "dinov2": "dinov2_vits14",
    "dinov2_reg": "dinov2_vits14_reg",
    "dinov3": "dinov3_vits16",
    "deit3": "deit3_vitb16",
    "openclip": "openclip_vitb16",
    "clip": "clip_vitb16",
}

#: What a listing says about a family besides its rows (``lostreg backbones``, docs).
FAMILY_NOTES: dict[str, str] = {
    "deit3": "DeiT-III with registers (the registers paper's own ViT-B) was never released: no lostreg name.",
    "openclip": "OpenCLIP with registers (the registers paper's own ViT-B/16) was never released: no lostreg name.",
}
#: builder name -> callable(spec, weights, device, *, rope) -> Backbone; filled by the builder
#: modules. ``rope`` is ``"pre"`` or ``"post"`` (see :func:`lostreg.backbones.build_backbone`);
#: builders of backbones without rotary embeddings refuse ``"post"``.
BUILDERS: dict[str, Builder] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry under ``spec.name`` (names are unique)."""
    if spec.name in _REGISTRY or spec.name in ALIASES:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator that makes a backbone builder available to specs with ``builder=name``."""

    def wrap(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return wrap


_DINO_URL = "https://dl.fbaipublicfiles.com/dino/"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/"

# DINO v1 (Caron et al. 2021): the LOST paper's backbones.
for _size, _patch, _timm in [
    ("s", 16, "vit_small_patch16_224.dino"),
    ("s", 8, "vit_small_patch8_224.dino"),
    ("b", 16, "vit_base_patch16_224.dino"),
    ("b", 8, "vit_base_patch8_224.dino"),
]:
    register_backbone(BackboneSpec(
        name=f"dino_vit{_size}{_patch}", family="dino", timm_name=_timm, patch_size=_patch,
        num_registers=0, pos_embed_interp=PosEmbedInterp.OFFSET_0_1, official_url=_DINO_URL,
    ))

# DINOv2 (Oquab et al. 2023) and DINOv2 with 4 registers (Darcet et al. 2024).
for _size, _timm_size in [("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")]:
    register_backbone(BackboneSpec(
        name=f"dinov2_vit{_size}14", family="dinov2", timm_name=f"vit_{_timm_size}_patch14_dinov2.lvd142m",
        patch_size=14, num_registers=0, pos_embed_interp=PosEmbedInterp.OFFSET_0_1, official_url=_DINOV2_URL,
    ))
    register_backbone(BackboneSpec(
        name=f"dinov2_vit{_size}14_reg", family="dinov2_reg",
        timm_name=f"vit_{_timm_size}_patch14_reg4_dinov2.lvd142m", patch_size=14, num_registers=4,
        pos_embed_interp=PosEmbedInterp.TIMM, official_url=_DINOV2_URL,
    ))

# DeiT-III (Touvron et al. 2022): supervised timm VisionTransformers of timm's ``deit`` module, with
# layer scale and position embeddings for the patches only (``no_embed_class``). The ImageNet-22k
# pretrained, ImageNet-1k fine-tuned weights (``fb_in22k_ft_in1k``). timm's resize (bicubic,
# antialias) is used at other resolutions: the official DeiT code defines none for inference.
_DEIT_URL = "https://github.com/facebookresearch/deit"
for _name, _timm in [
    ("deit3_vits16", "deit3_small_patch16_224.fb_in22k_ft_in1k"),
    ("deit3_vitm16", "deit3_medium_patch16_224.fb_in22k_ft_in1k"),
    ("deit3_vitb16", "deit3_base_patch16_224.fb_in22k_ft_in1k"),
    ("deit3_vitl16", "deit3_large_patch16_224.fb_in22k_ft_in1k"),
    ("deit3_vith14", "deit3_huge_patch14_224.fb_in22k_ft_in1k"),
]:
    register_backbone(BackboneSpec(
        name=_name, family="deit3", timm_name=_timm, patch_size=int(_name[-2:]), num_registers=0,
        official_url=_DEIT_URL,
    ))

# CLIP image towers in timm's vision_transformer module: pre-norm ViTs (``norm_pre`` before block 0)
# with CLIP's own mean/std (read from timm's pretrained config). OpenCLIP (LAION-2B, Cherti et al.
# 2023) and OpenAI CLIP (Radford et al. 2021, QuickGELU). open_clip resizes position embeddings
# bicubically with antialias, as timm does.
_OPENCLIP_URL = "https://github.com/mlfoundations/open_clip"
for _name, _family, _timm in [
    ("openclip_vitb32", "openclip", "vit_base_patch32_clip_224.laion2b"),
    ("openclip_vitb16", "openclip", "vit_base_patch16_clip_224.laion2b"),
    ("openclip_vitl14", "openclip", "vit_large_patch14_clip_224.laion2b"),
    ("openclip_vith14", "openclip", "vit_huge_patch14_clip_224.laion2b"),
    ("openclip_vitg14", "openclip", "vit_giant_patch14_clip_224.laion2b"),
    ("clip_vitb32", "clip", "vit_base_patch32_clip_quickgelu_224.openai"),
    ("clip_vitb16", "clip", "vit_base_patch16_clip_quickgelu_224.openai"),
    ("clip_vitl14", "clip", "vit_large_patch14_clip_quickgelu_224.openai"),
]:
    register_backbone(BackboneSpec(
        name=_name, family=_family, timm_name=_timm, patch_size=int(_name[-2:]), num_registers=0,
        official_url=_OPENCLIP_URL if _family == "openclip" else "https://github.com/openai/CLIP",
    ))

# DINOv3 (Simeoni et al. 2025): timm Eva models, 4 registers, RoPE inside attention, patch 16.
# timm also carries each of S, S+, B, L, H+ as a ``*_dinov3_qkvb`` twin: the same released
# weights in another layout, with separate q/v bias Parameters that timm documents as zero. They
# get no short names (they would duplicate these rows), but their full timm names resolve (see
# resolve_backbone), and either layout loads the other's files (lostreg.backbones.dinov3).
_DINOV3_URL = "https://github.com/facebookresearch/dinov3"
for _name, _timm in [
    ("dinov3_vits16", "vit_small_patch16_dinov3.lvd1689m"),
    ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3.lvd1689m"),
    ("dinov3_vitb16", "vit_base_patch16_dinov3.lvd1689m"),
    ("dinov3_vitl16", "vit_large_patch16_dinov3.lvd1689m"),
    ("dinov3_vith16plus", "vit_huge_plus_patch16_dinov3.lvd1689m"),
    ("dinov3_vit7b16", "vit_7b_patch16_dinov3.lvd1689m"),
    # Satellite-imagery pretraining (SAT-493M): own normalisation in timm's pretrained config.
    ("dinov3_vitl16_sat", "vit_large_patch16_dinov3.sat493m"),
    ("dinov3_vit7b16_sat", "vit_7b_patch16_dinov3.sat493m"),
]:
    register_backbone(BackboneSpec(
        name=_name, family="dinov3", timm_name=_timm, patch_size=16, num_registers=4,
        pos_embed_interp=PosEmbedInterp.NONE_ROPE, builder="timm_eva", official_url=_DINOV3_URL,
    ))

# Weight-free baseline: LOST on raw normalised pixels (see lostreg.backbones.pixels).
register_backbone(BackboneSpec(
    name="pixels", family="pixels", timm_name=None, patch_size=16, num_registers=0, builder="pixels",
    has_weights=False,
))


def list_backbones(include_aliases: bool = True) -> list[str]:
    """Registered names (and aliases), sorted."""
    names = sorted(_REGISTRY)
    return names + sorted(ALIASES) if include_aliases else names


def registered_spec(name: str) -> BackboneSpec | None:
    """The registry entry of a registered name or alias, or None (never looks at timm)."""
    return _REGISTRY.get(ALIASES.get(name, name))


def family_of(name: str) -> str:
    """The family of a backbone name (registered name, alias or timm name), from the registry or the
    name alone (never imports timm): ``dinov2_reg``, ``deit3``, ``openclip``, ..., else ``timm``."""
    spec = registered_spec(name)
    if spec is not None:
        return spec.family
    return "dinov3" if "dinov3" in name else _timm_family(name)


def is_weight_free(name: str) -> bool:
    """Whether the backbone ``name`` has no learned weights (``pixels``); False for unknown names."""
    spec = registered_spec(name)
    return spec is not None and not spec.has_weights


def resolve_backbone(name: str) -> BackboneSpec:
    """Look up a registered name or alias; otherwise accept any timm VisionTransformer name, or
    any timm DINOv3 Eva name (``vit_small_patch16_dinov3_qkvb.lvd1689m``).

    Raises:
        UnknownBackboneError: listing the valid names (and close matches).
    """
    key = ALIASES.get(name, name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    if _is_timm_vit(name):
        return BackboneSpec(name=name, family=_timm_family(name), timm_name=name, patch_size=None, num_registers=0)
    if _is_timm_dinov3(name):
        return BackboneSpec(
            name=name, family="dinov3", timm_name=name, patch_size=None, num_registers=4,
            pos_embed_interp=PosEmbedInterp.NONE_ROPE, builder="timm_eva", official_url=_DINOV3_URL,
        )
    close = difflib.get_close_matches(name, list_backbones(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}.{hint} Valid names: {', '.join(list_backbones())}, "
        "or any timm VisionTransformer name such as vit_base_patch16_224.augreg_in21k, "
        "or any timm DINOv3 name such as vit_small_patch16_dinov3_qkvb.lvd1689m."
    )


#: timm modules whose models :class:`~lostreg.backbones.vit.TimmViTBackbone` reads (timm
#: ``VisionTransformer`` with ``blocks[i].attn.qkv``); a family built on VisionTransformer in another
#: timm module joins by being listed here. ``deit`` holds DeiT and DeiT-III; its distilled models
#: (an extra distillation token) are refused when built (:meth:`TimmViTBackbone._check_model`).
TIMM_VIT_MODULES: tuple[str, ...] = ("vision_transformer", "deit")


def _timm_family(name: str) -> str:
    """The family of an unregistered timm ViT name, as far as its name tells (``deit3``, ``openclip``,
    ``clip``), else ``timm``: tables group runs and published rows by family."""
    arch, _, tag = name.partition(".")
    if arch.startswith("deit3_"):
        return "deit3"
    if "_clip_" in arch:
        return "clip" if tag.startswith("openai") else "openclip"
    return "timm"


def _is_timm_vit(name: str) -> bool:
    import timm

    arch = name.split(".")[0]
    if not timm.is_model(arch):
        return False
    # Only these modules' models expose the blocks[i].attn.qkv layout LOST reads.
    return timm.models.is_model_in_modules(arch, list(TIMM_VIT_MODULES))


def _is_timm_dinov3(name: str) -> bool:
    import timm

    arch = name.split(".")[0]
    # DINOv3 lives in timm's Eva module; other Eva models (EVA-02, PE, ...) use absolute position
    # tables or other attention types that the DINOv3 extractor does not handle.
    return "dinov3" in arch and timm.is_model(arch) and timm.models.is_model_in_modules(arch, ["eva"])
