"""Backbone registry, official position-embedding interpolation and q/k/v extraction.

All models are randomly initialised (no download); sizes are kept small.
"""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

from lostreg.backbones import (
    ALIASES,
    UnknownBackboneError,
    build_backbone,
    list_backbones,
    resolve_backbone,
)
from lostreg.backbones.base import FeatureKey
from lostreg.backbones.pos_embed import PosEmbedInterp, interpolate_with_offset
from lostreg.backbones.vit import TimmViTBackbone


def _random(name: str) -> TimmViTBackbone:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone(name, weights="random", device="cpu")
    assert isinstance(backbone, TimmViTBackbone)
    return backbone


@pytest.fixture(scope="module")
def dinov2_reg() -> TimmViTBackbone:
    return _random("dinov2_reg")


@pytest.fixture(scope="module")
def dino() -> TimmViTBackbone:
    return _random("dino")


# --- registry ---------------------------------------------------------------------------------


def test_required_names_and_aliases_resolve() -> None:
    required = [
        "dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8",
        "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14",
    ]
    required += [f"{n}_reg" for n in required if n.startswith("dinov2")]
    for name in required:
        spec = resolve_backbone(name)
        assert spec.name == name
        assert spec.timm_name is not None and "." in spec.timm_name, "always the tagged timm name"
    assert resolve_backbone("dino").name == "dino_vits16"
    assert resolve_backbone("dinov2").name == "dinov2_vits14"
    assert resolve_backbone("dinov2_reg").name == "dinov2_vits14_reg"
    assert set(ALIASES) <= set(list_backbones())


@pytest.mark.parametrize(
    "name", [n for n in list_backbones(include_aliases=False)
             if resolve_backbone(n).family in ("dino", "dinov2", "dinov2_reg")]
)
def test_spec_facts_agree_with_timm_model(name: str) -> None:
    """Published patch size / register count in the registry match the model timm builds.

    DINOv3 (builder ``timm_eva``: no position table, its own normalisation for .sat493m) is
    checked in tests/test_dinov3.py; DeiT-III and CLIP below.
    """
    spec = resolve_backbone(name)
    assert timm.models.get_pretrained_cfg(spec.timm_name) is not None, "tag must exist in timm"
    with torch.device("meta"):  # architecture only: no memory, no weights
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    assert model.patch_embed.patch_size == (spec.patch_size, spec.patch_size)
    assert model.num_prefix_tokens == 1 + spec.num_registers
    assert tuple(model.pretrained_cfg["mean"]) == (0.485, 0.456, 0.406)
    expected_interp = PosEmbedInterp.TIMM if spec.family == "dinov2_reg" else PosEmbedInterp.OFFSET_0_1
    assert spec.pos_embed_interp is expected_interp


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(UnknownBackboneError) as err:
        resolve_backbone("dinov3_regg")
    message = str(err.value)
    assert "dinov3_regg" in message and "dinov2_vits14_reg" in message and "dino_vitb8" in message
    with pytest.raises(UnknownBackboneError):
        resolve_backbone("resnet50")  # a timm model, but not a ViT with qkv


def test_any_timm_vit_name_works() -> None:
    spec = resolve_backbone("vit_tiny_patch16_224.augreg_in21k")
    assert spec.family == "timm" and spec.pos_embed_interp is PosEmbedInterp.TIMM
    backbone = _random("vit_tiny_patch16_224.augreg_in21k")
    assert backbone.patch_size == 16 and backbone.num_prefix_tokens == 1
    assert backbone.mean == (0.5, 0.5, 0.5), "normalisation comes from the model's pretrained config"
    feats = backbone.extract(torch.randn(1, 3, 32, 48))
    assert feats.shape == (1, 6, 192)


def test_prefix_tokens_are_read_from_the_model(dinov2_reg: TimmViTBackbone, dino: TimmViTBackbone) -> None:
    assert dinov2_reg.num_prefix_tokens == 5 and dinov2_reg.num_registers == 4
    assert dino.num_prefix_tokens == 1 and dino.num_registers == 0
    assert dinov2_reg.patch_size == 14 and dino.patch_size == 16


# --- position embeddings ----------------------------------------------------------------------


def _official_offset_formula(pos_patch: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The DINO/DINOv2 hub formula, written out independently: scale by (n + 0.1) / sqrt(N)."""
    n = pos_patch.shape[1]
    side = math.sqrt(n)
    grid = pos_patch.reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(
        grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic"
    )
    return out.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)


@pytest.mark.parametrize("grid", [(24, 32), (27, 36), (5, 9), (14, 14), (40, 13)])
def test_offset_interpolation_matches_official_formula(grid: tuple[int, int]) -> None:
    torch.manual_seed(1)
    pos = torch.randn(1, 14 * 14, 8)
    ours = interpolate_with_offset(pos, grid)
    if grid == (14, 14):
        assert torch.equal(ours, pos), "official code returns the table untouched at the pretrained grid"
    else:
        assert torch.equal(ours, _official_offset_formula(pos, *grid))


def test_offset_interpolation_differs_from_timm_resize() -> None:
    """Why lostreg does the DINO/DINOv2 resize itself: timm's size-based resize is not the same."""
    torch.manual_seed(2)
    pos = torch.randn(1, 14 * 14, 8)
    timm_resized = timm.layers.resample_abs_pos_embed(pos, new_size=[24, 32], old_size=[14, 14], num_prefix_tokens=0)
    rel = (interpolate_with_offset(pos, (24, 32)) - timm_resized).norm() / timm_resized.norm()
    assert rel > 0.01


def _patch_pos_added(backbone: TimmViTBackbone, x: torch.Tensor) -> torch.Tensor:
    """Position embedding the backbone added to the patch tokens (tokens - patch embedding)."""
    with torch.no_grad():
        tokens = backbone.tokens(x)
        emb = backbone.model.patch_embed(x).flatten(1, 2)
    return tokens[:, backbone.num_prefix_tokens:] - emb


def test_dino_family_uses_official_interpolation(dino: TimmViTBackbone) -> None:
    x = torch.randn(1, 3, 16 * 5, 16 * 7)
    pos = dino.model.pos_embed.detach()
    expected = _official_offset_formula(pos[:, 1:], 5, 7)
    torch.testing.assert_close(_patch_pos_added(dino, x), expected, rtol=0, atol=1e-5)
    # The CLS token gets its own (un-interpolated) position embedding.
    with torch.no_grad():
        cls = dino.tokens(x)[:, 0]
    torch.testing.assert_close(cls, (dino.model.cls_token + pos[:, 0]).squeeze(1), rtol=0, atol=1e-6)


def test_plain_dinov2_uses_official_interpolation() -> None:
    backbone = _random("dinov2_vits14")
    x = torch.randn(1, 3, 14 * 6, 14 * 4)
    expected = _official_offset_formula(backbone.model.pos_embed.detach()[:, 1:], 6, 4)
    torch.testing.assert_close(_patch_pos_added(backbone, x), expected, rtol=0, atol=1e-5)


def test_dinov2_reg_uses_antialiased_size_resize(dinov2_reg: TimmViTBackbone) -> None:
    """Official DINOv2+reg: interpolate_offset=0, antialias=True -> F.interpolate(size=...)."""
    x = torch.randn(1, 3, 14 * 6, 14 * 4)
    pos = dinov2_reg.model.pos_embed.detach()  # timm: patches only (no_embed_class)
    g = int(math.isqrt(pos.shape[1]))
    grid = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 4), mode="bicubic", antialias=True)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 24, -1)
    torch.testing.assert_close(_patch_pos_added(dinov2_reg, x), expected, rtol=0, atol=1e-5)


def test_reg_forward_equals_timm_forward(dinov2_reg: TimmViTBackbone) -> None:
    """Where timm's interpolation is the official one, our token assembly is timm's exactly."""
    x = torch.randn(2, 3, 14 * 3, 14 * 5)
    with torch.no_grad():
        ours = dinov2_reg.block_input(x, layer=-1)
        ours = dinov2_reg.model.norm(dinov2_reg.model.blocks[-1](ours))
        ref = dinov2_reg.model.forward_features(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


# --- q / k / v ----------------------------------------------------------------------------------


def test_qkv_reproduce_the_blocks_attention(dinov2_reg: TimmViTBackbone) -> None:
    """softmax(q k^T / sqrt(d)) v from the extracted q, k, v equals the block's own attention."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, 14 * 3, 14 * 5)  # non-square: 3 x 5 patches + 5 prefix tokens
    layer = -1
    block = dinov2_reg.model.blocks[layer]
    attn = block.attn
    with torch.no_grad():
        inp = dinov2_reg.block_input(x, layer)
        reference = attn(block.norm1(inp))
        qkv = dinov2_reg.qkv(x, layer)
    n_tokens, dim = inp.shape[1], inp.shape[2]
    heads = attn.num_heads
    q, k, v = (t.reshape(1, n_tokens, heads, dim // heads).transpose(1, 2) for t in qkv.split(dim, dim=-1))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(dim // heads)).softmax(dim=-1)
    out = attn.proj((weights @ v).transpose(1, 2).reshape(1, n_tokens, dim))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    # extract() returns exactly the patch part of each slice, prefix tokens dropped.
    for i, which in enumerate("qkv"):
        feats = dinov2_reg.extract(x, which=which, layer=layer)
        assert feats.shape == (1, 15, dim)
        assert torch.equal(feats, qkv[:, 5:, i * dim:(i + 1) * dim])


def test_layer_selection_and_errors(dino: TimmViTBackbone) -> None:
    x = torch.randn(1, 3, 32, 48)
    last = dino.extract(x, "k", -1)
    assert torch.equal(last, dino.extract(x, "k", dino.num_layers - 1))
    assert not torch.equal(last, dino.extract(x, "k", 0))
    with pytest.raises(ValueError, match="layer must be in"):
        dino.extract(x, "k", dino.num_layers)
    with pytest.raises(ValueError, match="one of q, k, v"):
        dino.extract(x, "z")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        dino.extract(torch.randn(1, 3, 30, 48))


def test_extract_many_is_one_pass_with_each_key_exact(dino: TimmViTBackbone) -> None:
    """Every (which, layer) of a sweep from one forward pass, each equal to its own extract()."""
    x = torch.randn(2, 3, 32, 48)
    keys = [FeatureKey("k", -1), FeatureKey("q", -2), FeatureKey("v", -2), FeatureKey("k", 0),
            FeatureKey("k", dino.num_layers - 1)]
    calls = []
    handles = [block.register_forward_hook(lambda *a: calls.append(1)) for block in dino.model.blocks]
    try:
        many = dino.extract_many(x, keys)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == dino.num_layers - 1, "blocks after the deepest requested qkv are not run"
    assert list(many) == keys
    for key in keys:
        assert torch.equal(many[key], dino.extract(x, key.which, key.layer))
    with pytest.raises(ValueError, match="layer must be in"):
        dino.extract_many(x, [FeatureKey("k", -1), FeatureKey("k", 99)])


def test_capability_flags() -> None:
    pixels = build_backbone("pixels", device="cpu")
    assert not pixels.has_attention and not pixels.has_weights and pixels.num_layers == 1
    vit = _random("dino")
    assert vit.has_attention and vit.has_weights and vit.num_layers == 12


def test_batch_items_are_independent(dinov2_reg: TimmViTBackbone) -> None:
    x = torch.randn(3, 3, 28, 42)
    batched = dinov2_reg.extract(x)
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], dinov2_reg.extract(x[i:i + 1]), rtol=0, atol=1e-5)


def test_no_hooks_left_behind(dinov2_reg: TimmViTBackbone) -> None:
    dinov2_reg.extract(torch.randn(1, 3, 28, 28))
    for module in dinov2_reg.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


# --- pixels baseline ----------------------------------------------------------------------------


def test_pixels_backbone_features_are_patch_pixels() -> None:
    backbone = build_backbone("pixels", device="cpu")
    x = torch.randn(1, 3, 32, 48)
    feats = backbone.extract(x)
    assert feats.shape == (1, 6, 3 * 16 * 16)
    # patch (row 1, col 2) is flat index 1 * 3 + 2 = 5
    patch = x[0, :, 16:32, 32:48].reshape(-1)
    torch.testing.assert_close(feats[0, 5], patch, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no attention layers"):
        backbone.extract(x, which="q")


# --- DeiT-III and CLIP ------------------------------------------------------------------------------

_NEW_FAMILIES = ("deit3", "openclip", "clip")


@pytest.mark.parametrize(
    "name", [n for n in list_backbones(include_aliases=False) if resolve_backbone(n).family in _NEW_FAMILIES]
)
def test_deit3_and_clip_specs_agree_with_timm(name: str) -> None:
    """Patch size and prefix tokens as timm builds them; normalisation from the tag's pretrained config;
    every DeiT-III has layer scale and patch-only position embeddings, every CLIP a pre-norm."""
    spec = resolve_backbone(name)
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    assert cfg is not None and spec.pos_embed_interp is PosEmbedInterp.TIMM and spec.num_registers == 0
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    assert model.patch_embed.patch_size == (spec.patch_size, spec.patch_size) and model.num_prefix_tokens == 1
    assert tuple(model.pretrained_cfg["mean"]) == tuple(cfg.mean)
    if spec.family == "deit3":
        assert model.no_embed_class and not isinstance(model.blocks[0].ls1, torch.nn.Identity)
        assert cfg.mean == (0.485, 0.456, 0.406)
    else:
        assert isinstance(model.norm_pre, torch.nn.LayerNorm) and cfg.mean != (0.485, 0.456, 0.406)


def test_new_family_aliases_and_full_timm_names() -> None:
    assert resolve_backbone("deit3").timm_name == "deit3_base_patch16_224.fb_in22k_ft_in1k"
    assert resolve_backbone("deit3_vitb16").timm_name == "deit3_base_patch16_224.fb_in22k_ft_in1k"
    assert resolve_backbone("openclip").timm_name == "vit_base_patch16_clip_224.laion2b"
    assert resolve_backbone("openclip_vitb16").family == "openclip"
    # timm defines DeiT-III in its deit module: its full names resolve too, with their family.
    assert resolve_backbone("deit3_base_patch16_224").family == "deit3"
    assert resolve_backbone("deit3_small_patch16_384.fb_in1k").family == "deit3"
    assert resolve_backbone("vit_large_patch14_clip_224.laion2b").family == "openclip"
    assert resolve_backbone("vit_base_patch16_clip_224.openai").family == "clip"


def test_distilled_deit_is_refused_when_built() -> None:
    """Its distillation token is a prefix token lostreg does not assemble: refused, not silently dropped."""
    with pytest.raises(ValueError, match="distilled DeiT"):
        _random("deit_tiny_distilled_patch16_224")


def _small(timm_name: str, registry_name: str) -> TimmViTBackbone:
    """A 2-block model of the family's layout (LayerScale 1.0 where the family has it, so blocks act)."""
    extra = {"init_values": 1.0} if registry_name.startswith("deit3") else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=2,
                                  embed_dim=64, num_heads=4, **extra)
    return TimmViTBackbone(resolve_backbone(registry_name), model, torch.device("cpu"), random_weights=True)


@pytest.mark.parametrize(("timm_name", "registry_name"), [
    ("deit3_small_patch16_224", "deit3_vits16"),
    ("vit_base_patch16_clip_224", "openclip_vitb16"),
    ("vit_base_patch16_clip_quickgelu_224", "clip_vitb16"),
])
def test_deit3_and_clip_qkv_reproduce_the_blocks_attention(timm_name: str, registry_name: str) -> None:
    """As for DINOv2+reg: the extracted q, k, v give the block's own attention output, and the token
    assembly (no_embed_class, norm_pre) is timm's forward exactly (timm's resize is these families')."""
    backbone = _small(timm_name, registry_name)
    x = torch.randn(2, 3, 16 * 3, 16 * 5, generator=torch.Generator().manual_seed(3))
    dim, heads = backbone.model.embed_dim, backbone.model.blocks[0].attn.num_heads
    for layer in (0, -1):
        block = backbone.model.blocks[layer]
        with torch.no_grad():
            inp = backbone.block_input(x, layer)
            reference = block.attn(block.norm1(inp))
            qkv = backbone.qkv(x, layer)
        n_tokens = inp.shape[1]
        q, k, v = (t.reshape(2, n_tokens, heads, dim // heads).transpose(1, 2) for t in qkv.split(dim, dim=-1))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(dim // heads)).softmax(dim=-1)
        out = block.attn.proj((weights @ v).transpose(1, 2).reshape(2, n_tokens, dim))
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
        for i, which in enumerate("qkv"):
            assert torch.equal(backbone.extract(x, which=which, layer=layer), qkv[:, 1:, i * dim:(i + 1) * dim])
    with torch.no_grad():
        ours = backbone.model.norm(backbone.model.blocks[-1](backbone.block_input(x, -1)))
        torch.testing.assert_close(ours, backbone.model.forward_features(x), rtol=0, atol=1e-5)
