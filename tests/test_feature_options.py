"""Two feature settings beside q/k/v: the blocks' output tokens (``features.which=out``) and position
embeddings resized with antialiasing (``features.pos_embed_antialias``); and the presets that use them.

Small random models on CPU: these tests check which tensors lostreg reads, not what pretrained
weights show.
"""

from __future__ import annotations

import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

from lostreg.backbones import RandomWeightsWarning, build_backbone, resolve_backbone
from lostreg.backbones.dinov3 import build_timm_eva
from lostreg.backbones.vit import TimmViTBackbone
from lostreg.config import compose_config, protocol_from_config, run_identity
from lostreg.errors import ConfigError
from lostreg.evaluation.engine import DiscoveryEngine
from lostreg.protocol import DiscoveryProtocol, FeatureConfig, FeatureKey, LostConfig, describe_protocol

CPU = torch.device("cpu")


def _vit(timm_name: str, registry_name: str, **kwargs: object) -> TimmViTBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=3,
                                  **kwargs)
    return TimmViTBackbone(resolve_backbone(registry_name), model, CPU, random_weights=True)


@pytest.fixture(scope="module")
def dino() -> TimmViTBackbone:
    return _vit("vit_small_patch16_224", "dino_vits16")


@pytest.fixture(scope="module")
def dinov2() -> TimmViTBackbone:
    return _vit("vit_small_patch14_dinov2", "dinov2_vits14", img_size=70, init_values=1.0)


@pytest.fixture(scope="module")
def dinov2_reg() -> TimmViTBackbone:
    return _vit("vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg", img_size=70, init_values=1.0)


def _images(patch: int, rows: int = 3, cols: int = 5, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, rows * patch, cols * patch, generator=torch.Generator().manual_seed(4))


# --- output tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["dino", "dinov2_reg"])
def test_output_tokens_are_the_blocks_outputs(make: str, request: pytest.FixtureRequest) -> None:
    backbone: TimmViTBackbone = request.getfixturevalue(make)
    x = _images(backbone.patch_size)
    p = backbone.num_prefix_tokens
    with torch.inference_mode():
        last = backbone.extract(x, "out", -1)
        middle = backbone.extract(x, "out", 0)
        # The last block's output tokens after the final norm (where timm's resize is the family's,
        # DINOv2+reg, that is timm's forward_features), patch rows.
        final = backbone.model.norm(backbone.model.blocks[-1](backbone.block_input(x, -1)))
        assert torch.equal(last, final[:, p:])
        if make == "dinov2_reg":
            torch.testing.assert_close(last, backbone.model.forward_features(x)[:, p:], rtol=0, atol=1e-5)
        # An earlier block's: the residual stream entering the next block, no norm.
        assert torch.equal(middle, backbone.block_input(x, 1)[:, p:])
    assert last.shape == (2, 15, backbone.model.embed_dim)


def test_output_tokens_join_one_pass_without_changing_other_keys(dino: TimmViTBackbone) -> None:
    x = _images(16)
    keys = [FeatureKey("k", -1), FeatureKey("out", 1), FeatureKey("q", 0), FeatureKey("out", -1)]
    many = dino.extract_many(x, keys)
    assert list(many) == keys
    for key in keys:
        assert torch.equal(many[key], dino.extract(x, key.which, key.layer)), key
    # Every q/k/v alone is what it was before output tokens existed: the qkv slice of the block input.
    with torch.inference_mode():
        qkv = dino.qkv(x, -1)
    assert torch.equal(many[FeatureKey("k", -1)], qkv[:, 1:, 384:768])


def test_trace_gives_the_output_tokens_too() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        v3 = build_timm_eva(resolve_backbone("dinov3_vits16"), "random", CPU, model_kwargs={"depth": 2})
    x = _images(16, batch=1)
    for layer in (0, -1):
        trace = v3.trace(x, layer)
        assert torch.equal(trace.features("out"), v3.extract(x, "out", layer))
    assert torch.equal(trace.features("out"), trace.patches(trace.final))


def test_output_tokens_in_a_protocol() -> None:
    features = FeatureConfig(which="out")
    protocol = DiscoveryProtocol(method="tokencut", features=features)
    assert protocol.validate() is protocol
    assert protocol.name == "tokencut_out_layer-1_tau0.2"
    assert describe_protocol(protocol).startswith("TokenCut on raw output tokens of the last layer")
    assert protocol.departures() == ["method=tokencut", "which=out"]
    pixels = build_backbone("pixels", device="cpu")
    with pytest.raises(ConfigError, match="no attention layers"):
        pixels.check_feature_key(features.key)


# --- antialiased position embeddings ---------------------------------------------------------------


def _patch_positions(backbone: TimmViTBackbone, x: torch.Tensor, pos_antialias: bool) -> torch.Tensor:
    """The position embedding the backbone added to the patch tokens (tokens - patch embedding)."""
    with torch.inference_mode():
        tokens = backbone.begin(x, pos_antialias=pos_antialias).tokens
        return tokens[:, backbone.num_prefix_tokens:] - backbone.model.patch_embed(x).flatten(1, 2)


def _antialiased(pos_patch: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The DINOv2+registers code's resize, written out: bicubic to the exact size, antialiased."""
    g = math.isqrt(pos_patch.shape[1])
    grid = pos_patch.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)


@pytest.mark.parametrize("make", ["dino", "dinov2"])
def test_antialias_resizes_dino_and_dinov2_as_the_registers_code(make: str, request: pytest.FixtureRequest) -> None:
    backbone: TimmViTBackbone = request.getfixturevalue(make)
    x = _images(backbone.patch_size, rows=3, cols=4, batch=1)
    table = backbone.model.pos_embed.detach()[:, 1:]  # CLS has its own entry in these families
    torch.testing.assert_close(_patch_positions(backbone, x, True), _antialiased(table, 3, 4), rtol=0, atol=1e-5)
    assert not torch.allclose(_patch_positions(backbone, x, False), _patch_positions(backbone, x, True), atol=1e-3), \
        "the official (offset 0.1, no antialias) resize differs"
    plain = backbone.extract(x)
    assert torch.equal(plain, backbone.extract(x, pos_antialias=False)), "the default forward is unchanged"
    assert not torch.equal(plain, backbone.extract(x, pos_antialias=True))


def test_antialias_changes_nothing_where_the_resize_already_is_antialiased(dinov2_reg: TimmViTBackbone) -> None:
    x = _images(14)
    assert torch.equal(dinov2_reg.extract(x, pos_antialias=True), dinov2_reg.extract(x))


def test_antialias_is_refused_without_a_position_table() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        v3 = build_timm_eva(resolve_backbone("dinov3_vits16"), "random", CPU, model_kwargs={"depth": 1})
    for backbone in (v3, build_backbone("pixels", device="cpu")):
        with pytest.raises(ConfigError, match="pos_embed_antialias applies to backbones with a position-embedding"):
            backbone.extract(_images(16, batch=1), pos_antialias=True)


def test_one_engine_runs_both_resizes_each_as_alone(dino: TimmViTBackbone) -> None:
    """A sweep over pos_embed_antialias: one backbone pass per resize, each configuration's features its own."""
    plain = DiscoveryProtocol(lost=LostConfig(k_patches=5))
    smooth = plain.replace(features=FeatureConfig(pos_embed_antialias=True))
    engine = DiscoveryEngine(dino, [plain, smooth])
    assert engine.passes == {False: [FeatureKey("k", -1)], True: [FeatureKey("k", -1)]}
    calls: list[bool] = []
    real = dino.extract_many

    def counting(images, keys, precision="fp32", *, pos_antialias=False):  # type: ignore[no-untyped-def]
        calls.append(pos_antialias)
        return real(images, keys, precision, pos_antialias=pos_antialias)

    dino.extract_many = counting  # type: ignore[method-assign]
    try:
        from lostreg.preprocess import ImagePreparer

        preparer = ImagePreparer(16, dino.mean, dino.std)
        pictures = [(torch.rand(48, 80, 3) * 255).to(torch.uint8).numpy() for _ in range(2)]
        items = [preparer(p, f"im{i}") for i, p in enumerate(pictures)]
        found = engine.discover(items)
    finally:
        del dino.extract_many
    assert calls == [False, True]
    from lostreg.discovery import ObjectDiscoverer

    for protocol, discoveries in zip((plain, smooth), found):
        alone = ObjectDiscoverer(dino, protocol).discover_batch(items)
        assert [d.box_xyxy for d in discoveries] == [d.box_xyxy for d in alone]
        assert [d.result.seed for d in discoveries] == [d.result.seed for d in alone]


def test_antialias_names_and_identity() -> None:
    assert DiscoveryProtocol().identity()["features"] == {"which": "k", "layer": -1, "l2_normalize": False}, \
        "older run directories keep their identity"
    smooth = DiscoveryProtocol(features=FeatureConfig(pos_embed_antialias=True))
    assert smooth.identity()["features"]["pos_embed_antialias"] is True
    assert smooth.name == "k_layer-1_k100_bias0.0_aa" and smooth.departures() == ["antialias"]
    assert "antialiased position embeddings" in describe_protocol(smooth)
    cfg = compose_config(["backbone=dino", "dataset=voc07", "features.pos_embed_antialias=true"])
    assert cfg.run_dir.endswith("/dino_vits16/k_layer-1_k100_bias0.0_aa")
    old = {"backbone": {"name": "dino_vits16"}, "dataset": {"name": "voc07"}, "weights": "pretrained",
           "features": {"which": "k", "layer": -1}, "lost": {"k_patches": 100, "gram_bias": 0.0}}
    assert run_identity(old) == run_identity({**old, "features": {"which": "k", "layer": -1, "l2_normalize": False,
                                                                  "pos_embed_antialias": False}})


# --- presets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "which", "antialias"), [
    ("dinov2_vitl14", "k", True), ("dinov2_vitl14_reg", "k", True), ("deit3_vitb16", "v", False),
    ("openclip_vitb16", "v", False), ("dino_vits16", "k", False), ("dinov3_vits16", "k", False),
])
def test_registers_paper_preset_is_the_published_protocol(backbone: str, which: str, antialias: bool) -> None:
    """Keys for DINOv2 and values for DeiT-III and OpenCLIP (section 3.3); DINOv2's position embeddings
    resized with antialiasing (appendix A); the Gram bias swept (its value is not published)."""
    cfg = compose_config(["protocol=registers_paper", f"backbone={backbone}", "dataset=voc07"])
    protocol = protocol_from_config(cfg)
    assert (protocol.features.which, protocol.features.layer, protocol.features.pos_embed_antialias) == (
        which, -1, antialias)
    assert list(cfg.sweep.gram_bias) == [0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -0.9, -1.0]
    override = compose_config(["protocol=registers_paper", f"backbone={backbone}", "dataset=voc07",
                               "features.which=q"])
    assert protocol_from_config(override).features.which == "q", "a user's value still wins"


def test_dinov3_paper_preset_is_tokencut_on_output_tokens_with_tau_searched() -> None:
    cfg = compose_config(["protocol=dinov3_paper", "backbone=dinov3", "dataset=voc07"])
    protocol = protocol_from_config(cfg)
    assert protocol.method == "tokencut" and protocol.features.which == "out" and protocol.features.layer == -1
    assert len(cfg.sweep.tau) > 1 and 0.2 in list(cfg.sweep.tau)
    assert cfg.run_dir.endswith("/dinov3_vits16/tokencut_out_layer-1_tau0.2")
