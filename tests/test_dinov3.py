"""DINOv3 (timm Eva) backbones: registry, exact q/k/v before and after RoPE, weights, end to end.

Random weights only (no download). Most tests shrink timm's S/16 models to 3 blocks with
LayerScale 1.0 (timm's default 1e-5 makes every block almost the identity, which would hide a
wrong block input); the registry-level builds use the real depth.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import synthetic
from lostreg.backbones import (
    ALIASES,
    UnknownBackboneError,
    WeightsError,
    build_backbone,
    list_backbones,
    resolve_backbone,
)
from lostreg.backbones.base import FeatureKey
from lostreg.backbones.dinov3 import AttentionInputs, DinoV3Backbone, build_timm_eva, merge_heads
from lostreg.backbones.pos_embed import PosEmbedInterp
from lostreg.cli.main import main

CPU = torch.device("cpu")
FUSED = "dinov3_vits16"  # vit_small_patch16_dinov3.lvd1689m: qkv Linear, no q/k/v bias
QKVB = "vit_small_patch16_dinov3_qkvb.lvd1689m"  # q_bias/k_bias/v_bias applied outside the Linear
SWIGLU = "dinov3_vits16plus"  # SwiGLU MLP (Meta layout w1/w2/w3)
SMALL = {"depth": 3, "init_values": 1.0}

EXPECTED_TAGS = {
    "dinov3_vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3_vits16plus": "vit_small_plus_patch16_dinov3.lvd1689m",
    "dinov3_vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3_vitl16": "vit_large_patch16_dinov3.lvd1689m",
    "dinov3_vith16plus": "vit_huge_plus_patch16_dinov3.lvd1689m",
    "dinov3_vit7b16": "vit_7b_patch16_dinov3.lvd1689m",
    "dinov3_vitl16_sat": "vit_large_patch16_dinov3.sat493m",
    "dinov3_vit7b16_sat": "vit_7b_patch16_dinov3.sat493m",
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SAT493M = ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))


def _small(name: str, rope: str = "pre", bias_seed: int | None = None, **kwargs: object) -> DinoV3Backbone:
    """A 3-block random backbone; ``bias_seed`` gives a ``_qkvb`` model non-zero q/v biases.

    timm initialises ``q_bias``/``v_bias`` to zero (as in the released weights), which would let
    an extractor that ignores them pass; random biases make the bias path observable.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_timm_eva(resolve_backbone(name), "random", CPU, rope=rope,  # type: ignore[arg-type]
                                  model_kwargs={**SMALL, **kwargs})
    if bias_seed is not None:
        generator = torch.Generator().manual_seed(bias_seed)
        with torch.no_grad():
            for block in backbone.model.blocks:
                for bias in (block.attn.q_bias, block.attn.v_bias):
                    bias.copy_(0.2 * torch.randn(bias.shape, generator=generator))
    return backbone


def _with_rope(backbone: DinoV3Backbone, rope: str) -> DinoV3Backbone:
    """The same model, features taken at the other RoPE position."""
    return DinoV3Backbone(backbone.spec, backbone.model, CPU, random_weights=True, rope=rope)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fused() -> DinoV3Backbone:
    return _small(FUSED)


@pytest.fixture(scope="module")
def qkvb() -> DinoV3Backbone:
    return _small(QKVB, bias_seed=1)


@pytest.fixture(scope="module", params=["fused", "qkvb", "swiglu"])
def any_layout(request: pytest.FixtureRequest) -> DinoV3Backbone:
    if request.param == "fused":
        return request.getfixturevalue("fused")
    if request.param == "qkvb":
        return request.getfixturevalue("qkvb")
    return _small(SWIGLU)


def _images(batch: int = 2, rows: int = 3, cols: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 16 * rows, 16 * cols, generator=torch.Generator().manual_seed(seed))


# --- registry -----------------------------------------------------------------------------------


def test_names_tags_and_alias() -> None:
    assert {n for n in list_backbones(include_aliases=False) if n.startswith("dinov3")} == set(EXPECTED_TAGS)
    assert ALIASES["dinov3"] == "dinov3_vits16" and resolve_backbone("dinov3").name == "dinov3_vits16"
    published = set(timm.list_pretrained("*dinov3*"))
    for name, tag in EXPECTED_TAGS.items():
        spec = resolve_backbone(name)
        assert (spec.timm_name, spec.family, spec.builder) == (tag, "dinov3", "timm_eva")
        assert tag in published
        # The hub path downloads exactly this file id (weights.hub_weights_file).
        assert timm.models.get_pretrained_cfg(tag).hf_hub_id == f"timm/{tag}"


@pytest.mark.parametrize("name", sorted(EXPECTED_TAGS))
def test_spec_facts_agree_with_timm_model(name: str) -> None:
    """Patch size, registers, no position table, RoPE and normalisation, as the registry says."""
    spec = resolve_backbone(name)
    with torch.device("meta"):  # architecture only: the 7B costs nothing
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    assert model.patch_embed.patch_size == (spec.patch_size, spec.patch_size) == (16, 16)
    assert model.num_prefix_tokens == 1 + spec.num_registers == 5
    assert model.pos_embed is None and model.rope is not None
    assert spec.pos_embed_interp is PosEmbedInterp.NONE_ROPE
    expected = SAT493M if name.endswith("_sat") else IMAGENET
    assert (tuple(model.pretrained_cfg["mean"]), tuple(model.pretrained_cfg["std"])) == expected


def test_qkvb_twins_resolve_by_timm_name_other_eva_models_do_not() -> None:
    for tag in ("vit_small_patch16_dinov3_qkvb.lvd1689m", "vit_large_patch16_dinov3_qkvb.sat493m"):
        spec = resolve_backbone(tag)
        assert (spec.family, spec.builder, spec.timm_name) == ("dinov3", "timm_eva", tag)
    with pytest.raises(UnknownBackboneError, match="any timm DINOv3 name"):
        resolve_backbone("eva02_tiny_patch14_224.mim_in22k")  # an Eva with an absolute position table


def test_unsupported_eva_model_is_refused() -> None:
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=0, depth=1)
    with pytest.raises(ValueError, match="not a DINOv3-layout timm model"):
        DinoV3Backbone(resolve_backbone(FUSED), model, CPU, random_weights=True)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_properties_are_read_from_the_model(fused: DinoV3Backbone, qkvb: DinoV3Backbone) -> None:
    for backbone in (fused, qkvb):
        assert backbone.patch_size == 16 and backbone.num_prefix_tokens == 5 and backbone.num_registers == 4
        assert backbone.num_layers == 3 and backbone.has_attention and backbone.has_weights
        assert backbone.is_random and backbone.rope == "pre"
    full = build_backbone("dinov3", weights="random", device="cpu")
    assert full.num_layers == 12 and full.name == "dinov3_vits16"


# --- RoPE, q/k/v and the attention ---------------------------------------------------------------


def test_rope_table_is_the_specified_one(fused: DinoV3Backbone) -> None:
    """Spec B3 written out independently: patch centres normalised per axis to [-1, 1], periods
    100^(2j/32) for j < 16, angle 2*pi*coord/period per axis, sin and cos in the 'half' layout."""
    rows, cols = 3, 7
    _, rope = fused.tokens(_images(1, rows, cols))
    head_dim = fused.model.blocks[0].attn.head_dim
    periods = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2))
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows * 2 - 1
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols * 2 - 1
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    angles = (2 * math.pi * torch.stack([cy.flatten(), cx.flatten()], dim=-1)[:, :, None] / periods).flatten(1)
    expected = torch.cat([angles.sin(), angles.sin(), angles.cos(), angles.cos()], dim=-1)
    assert rope.shape == (rows * cols, 2 * head_dim)
    torch.testing.assert_close(rope.double(), expected, rtol=0, atol=1e-6)


def test_rotation_matches_the_half_layout_formula(fused: DinoV3Backbone) -> None:
    """Post-RoPE = x*cos + (-x2, x1)*sin on the patch rows, prefix rows bit-identical."""
    inputs = fused.attention_inputs(_images(1), layer=1)
    sin, cos = inputs.rope.chunk(2, dim=-1)
    k = inputs.k[:, :, 5:]
    first, second = k.chunk(2, dim=-1)
    expected = k * cos + torch.cat([-second, first], dim=-1) * sin
    torch.testing.assert_close(inputs.k_rot[:, :, 5:], expected, rtol=0, atol=1e-6)
    assert torch.equal(inputs.k_rot[:, :, :5], inputs.k[:, :, :5])
    assert torch.equal(inputs.q_rot[:, :, :5], inputs.q[:, :, :5])
    assert not torch.allclose(inputs.k_rot[:, :, 5:], k, atol=1e-3), "the patch rows really are rotated"


def _attention_core_input(backbone: DinoV3Backbone, images: torch.Tensor, layer: int) -> torch.Tensor:
    """The block's own attention output before ``attn.proj`` (the hook is removed at once)."""
    block = backbone.model.blocks[layer]
    captured: list[torch.Tensor] = []
    handle = block.attn.proj.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with torch.no_grad():
            x, rope = backbone.block_input(images, layer)
            block(x, rope=rope)
    finally:
        handle.remove()
    return captured[0]


def _softmax_attention(inputs: AttentionInputs, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    return merge_heads((q @ k.transpose(-1, -2) * scale).softmax(dim=-1) @ inputs.v)


@pytest.mark.parametrize("layer", [0, 2])
def test_qkv_reproduce_the_blocks_attention(any_layout: DinoV3Backbone, layer: int) -> None:
    """softmax(q_rot k_rot^T * scale) v, heads re-merged, is the input of ``attn.proj`` (spec B5)."""
    images = _images(2, 4, 5, seed=layer)
    inputs = any_layout.attention_inputs(images, layer)
    reference = _attention_core_input(any_layout, images, layer)
    scale = any_layout.model.blocks[layer].attn.scale
    post = _softmax_attention(inputs, inputs.q_rot, inputs.k_rot, scale)
    torch.testing.assert_close(post, reference, rtol=0, atol=1e-5)
    # Without the rotation the result is far off: RoPE really is applied inside the attention.
    pre = _softmax_attention(inputs, inputs.q, inputs.k, scale)
    assert (pre - reference).abs().max() > 1e-3


def test_qkv_are_bit_identical_to_the_tensors_the_attention_uses(
    any_layout: DinoV3Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rotated q/k and v are exactly what reaches ``scaled_dot_product_attention``."""
    images = _images(1, 3, 4, seed=5)
    layer = 1
    attn = any_layout.model.blocks[layer].attn
    seen: list[tuple[torch.Tensor, ...]] = []
    real = F.scaled_dot_product_attention

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> torch.Tensor:
        seen.append((q, k, v))
        return real(q, k, v, **kwargs)

    with torch.no_grad():
        x, rope = any_layout.block_input(images, layer)
    monkeypatch.setattr(attn, "fused_attn", True)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    with torch.no_grad():
        any_layout.model.blocks[layer](x, rope=rope)
    monkeypatch.undo()
    inputs = any_layout.attention_inputs(images, layer)
    (q, k, v), = seen
    assert torch.equal(inputs.q_rot, q) and torch.equal(inputs.k_rot, k) and torch.equal(inputs.v, v)


def test_qkvb_biases_are_applied(qkvb: DinoV3Backbone) -> None:
    """The _qkvb layout's q/v biases enter the features (a hook on attn.qkv would miss them)."""
    images = _images(1)
    block = qkvb.model.blocks[0]
    with torch.no_grad():
        x, _ = qkvb.tokens(images)
        no_bias = F.linear(block.norm1(x), block.attn.qkv.weight)[:, 5:]
    dim = no_bias.shape[-1] // 3
    q, k, v = (qkvb.extract(images, which, 0) for which in "qkv")
    torch.testing.assert_close(q, no_bias[..., :dim] + block.attn.q_bias, rtol=0, atol=1e-5)
    torch.testing.assert_close(k, no_bias[..., dim:2 * dim], rtol=0, atol=1e-5)  # k bias is fixed at 0
    torch.testing.assert_close(v, no_bias[..., 2 * dim:] + block.attn.v_bias, rtol=0, atol=1e-5)
    assert block.attn.q_bias.abs().min() > 0


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_features_are_patch_rows_of_the_attention_inputs(any_layout: DinoV3Backbone, rope: str) -> None:
    """extract = the patch rows (prefix dropped) of q/k before or after RoPE, heads concatenated."""
    backbone = _with_rope(any_layout, rope)
    images = _images(2, 3, 4, seed=7)
    inputs = backbone.attention_inputs(images, -1)
    expected = {
        "q": inputs.q_rot if rope == "post" else inputs.q,
        "k": inputs.k_rot if rope == "post" else inputs.k,
        "v": inputs.v,
    }
    for which, heads in expected.items():
        features = backbone.extract(images, which, -1)  # type: ignore[arg-type]
        assert features.shape == (2, 12, 384) and features.dtype == torch.float32
        assert torch.equal(features, merge_heads(heads[:, :, 5:]))
    if rope == "pre":
        # Pre-RoPE q/k/v of the fused layout are the plain qkv projection's channel thirds.
        block = backbone.model.blocks[-1]
        if block.attn.q_bias is None:
            with torch.no_grad():
                x, _ = backbone.block_input(images, -1)
                qkv = block.attn.qkv(block.norm1(x))
            for i, which in enumerate("qkv"):
                assert torch.equal(backbone.extract(images, which, -1), qkv[:, 5:, i * 384:(i + 1) * 384])


def test_pre_and_post_share_values_and_differ_on_keys(fused: DinoV3Backbone) -> None:
    post = _with_rope(fused, "post")
    images = _images(1)
    assert torch.equal(fused.extract(images, "v"), post.extract(images, "v"))
    assert not torch.allclose(fused.extract(images, "k"), post.extract(images, "k"), atol=1e-3)


def test_forward_equals_timm_forward(any_layout: DinoV3Backbone) -> None:
    """Token assembly and RoPE table are timm's: the written-out forward is forward_features."""
    images = _images(2, 4, 3, seed=2)
    with torch.no_grad():
        x, rope = any_layout.block_input(images, -1)
        ours = any_layout.model.norm(any_layout.model.blocks[-1](x, rope=rope))
        reference = any_layout.model.forward_features(images)
    assert torch.equal(ours, reference)


# --- extract_many, batches, sizes, hooks ----------------------------------------------------------


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_extract_many_is_one_pass_with_each_key_exact(qkvb: DinoV3Backbone, rope: str) -> None:
    backbone = _with_rope(qkvb, rope)
    images = _images(2, 3, 4, seed=3)
    keys = [FeatureKey("k", -1), FeatureKey("q", 1), FeatureKey("v", 1), FeatureKey("k", 0),
            FeatureKey("k", backbone.num_layers - 1), FeatureKey("q", -1)]
    calls: list[int] = []
    handles = [block.register_forward_hook(lambda *a: calls.append(1)) for block in backbone.model.blocks]
    try:
        many = backbone.extract_many(images, keys)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == backbone.num_layers - 1, "the last block's q/k/v need no pass through it"
    assert list(many) == keys
    for key in keys:
        assert torch.equal(many[key], backbone.extract(images, key.which, key.layer))
    calls.clear()
    handles = [block.register_forward_hook(lambda *a: calls.append(1)) for block in backbone.model.blocks]
    try:
        backbone.extract_many(images, [FeatureKey("k", 0)])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [], "blocks after the deepest requested layer are not run"
    with pytest.raises(ValueError, match="layer must be in"):
        backbone.extract_many(images, [FeatureKey("k", -1), FeatureKey("k", 3)])
    with pytest.raises(ValueError, match="one of q, k, v"):
        backbone.extract(images, "z")  # type: ignore[arg-type]


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_batch_items_are_independent(qkvb: DinoV3Backbone, rope: str) -> None:
    backbone = _with_rope(qkvb, rope)
    images = _images(3, 3, 4, seed=4)
    batched = backbone.extract(images)
    for i in range(3):
        torch.testing.assert_close(batched[i:i + 1], backbone.extract(images[i:i + 1]), rtol=0, atol=1e-5)
    # Changing one image changes nothing in the others' features (same batch size: bit for bit).
    other = images.clone()
    other[1] = torch.randn(other[1].shape, generator=torch.Generator().manual_seed(9))
    changed = backbone.extract(other)
    assert torch.equal(changed[0], batched[0]) and torch.equal(changed[2], batched[2])
    assert not torch.equal(changed[1], batched[1])


@pytest.mark.parametrize("hw", [(40, 48), (48, 40), (8, 16)])
def test_sizes_not_multiple_of_16_are_refused(fused: DinoV3Backbone, hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        fused.extract(torch.randn(1, 3, *hw))


def test_any_multiple_of_16_works(fused: DinoV3Backbone) -> None:
    for rows, cols in [(1, 1), (2, 9), (7, 3)]:
        assert fused.extract(_images(1, rows, cols)).shape == (1, rows * cols, 384)


def test_no_hooks_left_behind(qkvb: DinoV3Backbone) -> None:
    images = _images(1)
    qkvb.extract_many(images, [FeatureKey("k", -1), FeatureKey("v", 0)])
    _with_rope(qkvb, "post").extract(images)
    qkvb.attention_inputs(images, 1)
    for module in qkvb.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


# --- options and normalisation -------------------------------------------------------------------


def test_normalisation_comes_from_the_pretrained_config() -> None:
    """.sat493m has its own mean/std; .lvd1689m is ImageNet's (1-block L/16 models: fast)."""
    sat = _small("dinov3_vitl16_sat", depth=1)
    web = _small("dinov3_vitl16", depth=1)
    assert (sat.mean, sat.std) == SAT493M
    assert (web.mean, web.std) == IMAGENET


@pytest.mark.parametrize("name", ["dino", "dinov2_reg", "pixels"])
def test_rope_post_is_refused_for_backbones_without_rope(name: str) -> None:
    with pytest.raises(ValueError) as err:
        build_backbone(name, weights="random", device="cpu", rope="post")
    assert str(err.value) == "features.rope=post applies only to RoPE backbones (dinov3)"


def test_rope_option_values() -> None:
    with pytest.raises(ValueError, match="features.rope must be pre or post"):
        build_backbone("dinov3", weights="random", device="cpu", rope="both")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert build_backbone("dinov3", weights="random", device="cpu", rope="post").rope == "post"


# --- weights -------------------------------------------------------------------------------------


def _same_model(a: DinoV3Backbone, b: DinoV3Backbone) -> bool:
    """Bit-identical q/k/v of the first and last block."""
    images = _images(1, 3, 4, seed=11)
    keys = [FeatureKey(w, layer) for w in "qkv" for layer in (0, -1)]  # type: ignore[arg-type]
    ours, theirs = a.extract_many(images, keys), b.extract_many(images, keys)
    return all(torch.equal(ours[key], theirs[key]) for key in keys)


def _meta_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm DINOv3 model's weights in the official Meta (facebookresearch/dinov3) key layout.

    Inferred by inverting timm 1.0.31's eva ``checkpoint_filter_fn`` (not checked against a real
    Meta file): registers are ``storage_tokens``; LayerScale is ``ls1.gamma``/``ls2.gamma``; the
    attention has one ``qkv.bias`` of size 3*D whose middle (k) third is masked off at run time
    by ``qkv.bias_mask`` (so it may hold anything), also when timm's layout has no bias at all
    (then q and v thirds are zero); SwiGLU MLPs are ``w1`` (gate), ``w2``, ``w3``;
    ``mask_token`` and the bf16 ``rope_embed.periods`` are stored but unused.
    """
    generator = torch.Generator().manual_seed(seed)
    dim = model.embed_dim
    renames = {"reg_token": "storage_tokens", "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma"}
    if hasattr(model.blocks[0].mlp, "fc1_g"):  # SwiGLU
        renames.update({"mlp.fc1_g.": "mlp.w1.", "mlp.fc1_x.": "mlp.w2.", "mlp.fc2.": "mlp.w3."})
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith(("attn.q_bias", "attn.v_bias")):
            continue  # folded into qkv.bias below
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value.clone()
    for index, block in enumerate(model.blocks):
        attn = block.attn
        q_bias = attn.q_bias.detach() if attn.q_bias is not None else torch.zeros(dim)
        v_bias = attn.v_bias.detach() if attn.v_bias is not None else torch.zeros(dim)
        masked_k = torch.randn(dim, generator=generator)
        out[f"blocks.{index}.attn.qkv.bias"] = torch.cat([q_bias, masked_k, v_bias])
        out[f"blocks.{index}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = (100.0 ** (2 * torch.arange(16) / 32)).to(torch.bfloat16)
    return out


def _load(name: str, weights: Path) -> DinoV3Backbone:
    return build_timm_eva(resolve_backbone(name), str(weights), CPU, model_kwargs=SMALL)


def test_official_meta_checkpoint_qkvb(tmp_path: Path, qkvb: DinoV3Backbone) -> None:
    """Meta layout with non-zero q/v biases: loads exactly into _qkvb, refused by the fused layout."""
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth"
    torch.save(_meta_state(qkvb.model), path)
    loaded = _load(QKVB, path)
    assert not loaded.is_random and _same_model(loaded, qkvb)
    with pytest.raises(WeightsError) as err:
        _load(FUSED, path)
    message = str(err.value)
    assert "non-zero q/v biases" in message and QKVB in message and str(path) in message
    assert "\n" not in message


def test_official_meta_checkpoint_swiglu_into_both_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Meta layout of a fused S+/16 (zero q/v biases, masked k garbage): both timm layouts load it."""
    source = _small(SWIGLU)
    path = tmp_path / "dinov3_vits16plus_pretrain_lvd1689m.pth"
    torch.save(_meta_state(source.model, seed=3), path)
    assert _same_model(_load(SWIGLU, path), source)
    twin = _load("vit_small_plus_patch16_dinov3_qkvb.lvd1689m", path)
    assert twin.model.blocks[0].attn.q_bias is not None and _same_model(twin, source)
    assert capsys.readouterr().out == "", "nothing printed on stdout (discover's JSON lines go there)"


def test_timm_files_load_across_bias_layouts(tmp_path: Path, fused: DinoV3Backbone) -> None:
    fused_file = tmp_path / "fused.safetensors"
    save_file({k: v.contiguous() for k, v in fused.model.state_dict().items()}, str(fused_file))
    assert _same_model(_load(FUSED, fused_file), fused)
    as_qkvb = _load(QKVB, fused_file)  # zero biases added
    assert _same_model(as_qkvb, fused)
    qkvb_file = tmp_path / "qkvb.safetensors"
    save_file({k: v.contiguous() for k, v in as_qkvb.model.state_dict().items()}, str(qkvb_file))
    assert _same_model(_load(FUSED, qkvb_file), fused)  # zero biases dropped


def test_weights_for_another_architecture(tmp_path: Path, fused: DinoV3Backbone) -> None:
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in fused.model.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="different architecture") as err:
        _load(SWIGLU, path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_pretrained_asks_the_hub_for_the_tagged_file(
    tmp_path: Path, fused: DinoV3Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lostreg.backbones.timm_base as timm_base

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in fused.model.state_dict().items()}, str(path))
    asked: list[str] = []
    monkeypatch.setattr(timm_base, "hub_weights_file", lambda name: asked.append(name) or path)
    loaded = build_timm_eva(resolve_backbone("dinov3"), "pretrained", CPU, model_kwargs=SMALL)
    assert asked == ["vit_small_patch16_dinov3.lvd1689m"]
    assert not loaded.is_random and _same_model(loaded, fused)


@pytest.mark.slow
def test_cached_hub_weights_are_used_offline(tmp_path: Path) -> None:
    """The real hub path, through a Hugging Face cache and no network (full-depth S/16)."""
    repo = tmp_path / "hf" / "models--timm--vit_small_patch16_dinov3.lvd1689m"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = build_timm_eva(resolve_backbone("dinov3"), "random", CPU)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    state["blocks.11.attn.qkv.weight"] = state["blocks.11.attn.qkv.weight"] + 1.0  # not the seeded init
    save_file(state, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    code = (
        "from lostreg.backbones import build_backbone;"
        "b = build_backbone('dinov3', device='cpu');"
        "print(b.is_random, b.model.blocks[11].attn.qkv.weight.sum().item())"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    is_random, total = out.stdout.split()
    assert is_random == "False"
    assert float(total) == pytest.approx(state["blocks.11.attn.qkv.weight"].sum().item(), rel=1e-6)


# --- end to end ----------------------------------------------------------------------------------


def _scene(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = 170 + 60 * np.linspace(0, 1, width)[None, :, None] + rng.normal(0, 8, (height, width, 3))
    image[20:50, 30:70] = (40, 60, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_discover_cli_with_random_dinov3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scene.png"
    Image.fromarray(_scene(100, 70)).save(path)  # 100 x 70: padded to 112 x 80, a 5 x 7 grid
    code = main(["discover", str(path), "--backbone", "dinov3", "--weights", "random", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "RANDOM weights" in captured.err
    (record,) = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    assert record["backbone"] == "dinov3_vits16" and (record["width"], record["height"]) == (100, 70)
    x1, y1, x2, y2 = record["box_xyxy"]
    assert 0 <= x1 < x2 <= 100 and 0 <= y1 < y2 <= 70
    assert x1 % 16 == 0 and y1 % 16 == 0, "boxes start on the 16-pixel patch grid"
    row, col = record["seed_rc"]
    assert 0 <= row < 5 and 0 <= col < 7


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_cli_with_random_dinov3_on_a_folder(voc_two_sizes: synthetic.SyntheticVoc, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = voc_two_sizes.image_dir
    run_dir = tmp_path / "run"
    code = main(["eval", "--no-progress", "backbone=dinov3", "weights=random", "dataset=folder",
                 f"dataset.root={folder}", "num_workers=0", f"run_dir={run_dir}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["total"] == 2 and metrics["failed"] == 0
    preds = [json.loads(line) for line in (run_dir / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 2
    for p in preds:
        x1, y1, x2, y2 = p["box_xyxy"]
        assert 0 <= x1 < x2 <= p["width"] and 0 <= y1 < y2 <= p["height"]
        assert x1 % 16 == 0 and y1 % 16 == 0
