"""The backbone's seams: one trace API for every family, forward edits, the import boundary, warnings.

Small random models (3 blocks) on CPU: these tests check mechanics, not what pretrained weights show.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import lostreg
from lostreg.backbones import Backbone, ForwardEdit, RandomWeightsWarning, Trace, build_backbone, resolve_backbone
from lostreg.backbones.dinov3 import DinoV3Backbone, build_timm_eva
from lostreg.backbones.edits import run_with_hidden
from lostreg.backbones.vit import TimmViTBackbone
from lostreg.cli import common
from lostreg.errors import ConfigError
from lostreg.precision import strict_fp32
from lostreg.protocol import FeatureKey
from lostreg.ttreg import RegisterNeurons, TestTimeRegisters, attach_test_time_registers

CPU = torch.device("cpu")
DEPTH = 3


def _vit() -> TimmViTBackbone:
    """A 3-block DINOv2-S/14 layout with 4 registers; LayerScale 1.0 so that blocks do something."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
                                  dynamic_img_size=True, depth=DEPTH, img_size=56, init_values=1.0)
    return TimmViTBackbone(resolve_backbone("dinov2_vits14_reg"), model, CPU, random_weights=True)


def _dinov3(rope: str = "pre") -> DinoV3Backbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return build_timm_eva(resolve_backbone("dinov3_vits16"), "random", CPU, rope=rope,  # type: ignore[arg-type]
                              model_kwargs={"depth": DEPTH, "init_values": 1.0})


def _images(backbone: Backbone, rows: int = 3, cols: int = 4, batch: int = 2) -> torch.Tensor:
    p = backbone.patch_size
    return torch.randn(batch, 3, rows * p, cols * p, generator=torch.Generator().manual_seed(1))


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- one trace API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_vit, _dinov3, lambda: _dinov3("post")], ids=["vit", "dinov3", "dinov3-post"])
def test_trace_is_the_same_api_for_every_timm_family(make) -> None:
    backbone = make()
    x = _images(backbone)
    for layer in (-1, 1):
        trace = backbone.trace(x, layer, keep_layers=True)
        assert isinstance(trace, Trace) and trace.layer == layer % DEPTH and trace.has_attention
        keys = [FeatureKey(which, layer) for which in "qkv"]
        many = backbone.extract_many(x, keys)
        for key in keys:
            assert torch.equal(trace.features(key.which), many[key]), key
        # keep_layers: every block's output, the last one before the final norm.
        assert trace.layers is not None and len(trace.layers) == backbone.num_layers
        assert torch.equal(trace.layers[-1], trace.prenorm)
        tokens = backbone.num_prefix_tokens + 3 * 4
        assert all(t.shape == (2, tokens, backbone.token_width) and t.dtype == torch.float32 for t in trace.layers)
    with torch.inference_mode():
        torch.testing.assert_close(trace.final, backbone.model.norm(trace.prenorm))
    assert (trace.num_prefix_tokens, trace.num_registers, trace.has_class_token) == (5, 4, True)
    assert trace.grid_hw == (3, 4) and trace.num_trailing_tokens == 0
    assert trace.q is not None and trace.q.shape == (2, 6, tokens, 64) and trace.scale == pytest.approx(64 ** -0.5)
    assert backbone.trace(x).layers is None, "blocks are kept only on request"
    assert _hooks_left(backbone.model) == 0


def test_attention_tensors_are_what_the_softmax_sees() -> None:
    """ViT: q_attn is q. DINOv3: prefix rows are q's, patch rows rotated (RoPE)."""
    vit, v3 = _vit(), _dinov3()
    t = vit.trace(_images(vit), 1)
    assert torch.equal(t.q_attn, t.q) and torch.equal(t.k_attn, t.k)
    t = v3.trace(_images(v3), 1)
    p = t.num_prefix_tokens
    assert torch.equal(t.q_attn[:, :, :p], t.q[:, :, :p]) and not torch.allclose(t.k_attn[:, :, p:], t.k[:, :, p:])


def test_pixels_trace_gives_what_applies() -> None:
    pixels = build_backbone("pixels", device="cpu")
    x = _images(pixels, batch=1)
    trace = pixels.trace(x, keep_layers=True)
    assert not trace.has_attention and trace.q is None and trace.scale is None
    assert torch.equal(trace.features("k"), pixels.extract(x, "k", -1))
    assert trace.layers is not None and len(trace.layers) == 1 and torch.equal(trace.layers[-1], trace.prenorm)
    with pytest.raises(ConfigError, match="features.which"):
        trace.features("q")
    with pytest.raises(ConfigError, match="no attention"):
        trace.qkv  # noqa: B018


# --- forward edits -------------------------------------------------------------------------------------


class AppendAndZero:
    """A toy forward edit: appends one token of ones, and zeroes one MLP hidden unit in one block."""

    num_tokens = 1

    def __init__(self, layer: int, unit: int) -> None:
        self.layer, self.unit = layer, unit
        self.edited: list[int] = []

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def check_model(self, model: nn.Module, name: str) -> None:
        if self.layer >= len(model.blocks):
            raise ConfigError(f"{name} has no block {self.layer}")

    def append_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens, tokens.new_ones(tokens.shape[0], 1, tokens.shape[2])], dim=1)

    def edit_hidden(self, hidden: torch.Tensor, layer: int, num_prefix_tokens: int) -> torch.Tensor:
        self.edited.append(layer)
        out = hidden.clone()
        out[..., self.unit] = 0
        return out


def test_a_toy_forward_edit_runs_through_the_generic_hook() -> None:
    plain = _vit()
    x = _images(plain)
    edit = AppendAndZero(layer=1, unit=5)
    registers = TestTimeRegisters(RegisterNeurons.from_layer_units(plain, {1: [3]}))
    assert isinstance(edit, ForwardEdit) and isinstance(registers, ForwardEdit)
    assert plain.supports_forward_edits
    before = plain.extract(x, "k", -1)
    edited = plain.with_forward_edit(edit)
    assert edited.model is plain.model and edited.forward_edit is edit and plain.forward_edit is None
    assert edited.num_trailing_tokens == 1

    # The token is appended after the patches; features stay the patch rows.
    trace = edited.trace(x, -1)
    assert trace.num_trailing_tokens == 1 and trace.prenorm.shape[1] == plain.num_prefix_tokens + 12 + 1
    keys = edited.extract(x, "k", -1)
    assert keys.shape == before.shape and not torch.equal(keys, before), "the edit changes the tokens"
    assert torch.equal(trace.features("k"), keys)

    # The hidden unit is zero in the edited block (read after the edit), untouched elsewhere.
    seen: dict[int, torch.Tensor] = {}
    with torch.inference_mode(), strict_fp32():
        state = edited.begin(x)
        assert torch.equal(state.tokens[:, -1], torch.ones_like(state.tokens[:, -1]))
        edited.advance(state, DEPTH, read_hidden=lambda layer, h: seen.setdefault(layer, h.clone()),
                       hidden_layers=range(DEPTH))
    assert not bool(seen[1][..., 5].any()) and bool(seen[0][..., 5].any()) and bool(seen[2][..., 5].any())
    assert edit.edited and set(edit.edited) == {1}

    # No hook left behind, and the plain view is the plain model again.
    assert _hooks_left(plain.model) == 0
    assert torch.equal(plain.extract(x, "k", -1), before)
    assert torch.equal(edited.with_forward_edit(None).extract(x, "k", -1), before)


def test_a_hidden_hook_must_fire_exactly_once() -> None:
    """An edit that did not run (or ran twice) is an error, not a silent change of results."""
    block = _vit().model.blocks[0]
    x = torch.randn(1, 3, 384)
    with torch.inference_mode():
        run_with_hidden(block, lambda h: None, lambda: block(x), "block 0")
        with pytest.raises(RuntimeError, match="block 0: MLP hidden activation seen 0 times"):
            run_with_hidden(block, lambda h: None, lambda: block.attn(block.norm1(x)), "block 0")
        with pytest.raises(RuntimeError, match="seen 2 times"):
            run_with_hidden(block, lambda h: None, lambda: block(block(x)), "block 0")
    assert _hooks_left(block) == 0


@pytest.mark.parametrize("make", [_dinov3, lambda: build_backbone("pixels", device="cpu")], ids=["dinov3", "pixels"])
def test_backbones_without_edits_refuse_them(make) -> None:
    backbone = make()
    assert not backbone.supports_forward_edits
    with pytest.raises(ConfigError, match="cannot run forward edits"):
        backbone.with_forward_edit(AppendAndZero(0, 0))
    plain = backbone.with_forward_edit(None)
    assert plain.forward_edit is None and getattr(plain, "model", None) is getattr(backbone, "model", None)


@pytest.mark.parametrize("make, what", [(_dinov3, "dinov3_vits16 cannot run an extra token"),
                                        (lambda: build_backbone("pixels", device="cpu"), "pixels has no transformer blocks")],
                         ids=["dinov3", "pixels"])
def test_attach_test_time_registers_refuses_what_cannot_take_one(make, what: str, tmp_path: Path) -> None:
    # The backbone is checked before the file is read: this file does not even exist.
    with pytest.raises(ConfigError) as err:
        attach_test_time_registers(make(), tmp_path / "missing.json")
    message = str(err.value)
    assert message.startswith(what) and "\n" not in message
    assert "any timm VisionTransformer" in message and "DINOv3 ships trained registers" in message


# --- the import boundary -------------------------------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, anywhere (top level, functions, TYPE_CHECKING blocks)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            found.add(node.module or "")
    return found


def test_backbones_import_nothing_from_the_layers_above() -> None:
    root = Path(lostreg.__file__).parent
    forbidden = ("lostreg.ttreg", "lostreg.evaluation", "lostreg.diagnostics")
    files = sorted((root / "backbones").glob("*.py"))
    assert len(files) >= 8
    for path in files:
        bad = {m for m in _imported_modules(path) if m.startswith(forbidden)}
        assert not bad, f"backbones/{path.name} imports {sorted(bad)}"
    for path in sorted((root / "ttreg").glob("*.py")):
        bad = {m for m in _imported_modules(path) if m.startswith(("lostreg.diagnostics", "lostreg.evaluation"))}
        assert not bad, f"ttreg/{path.name} imports {sorted(bad)}"


# --- warnings --------------------------------------------------------------------------------------------


def test_random_weights_warn_with_their_own_category() -> None:
    with pytest.warns(RandomWeightsWarning, match="RANDOM weights"):
        build_timm_eva(resolve_backbone("dinov3_vits16"), "random", CPU, model_kwargs={"depth": 1})


def test_build_backbone_loudly_silences_only_the_random_weights_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lostreg.backbones

    class RandomPixels:
        name = "fake"
        is_random = True

    def warning_builder(name: str, weights: str | None = None, device: str = "auto") -> RandomPixels:
        warnings.warn("timm: something worth seeing", UserWarning)
        warnings.warn("a deprecation from a dependency", DeprecationWarning)
        warnings.warn("fake: RANDOM weights", RandomWeightsWarning)
        return RandomPixels()

    monkeypatch.setattr(lostreg.backbones, "build_backbone", warning_builder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = common.build_backbone_loudly("fake", "random", "cpu")
    assert backbone.is_random
    categories = [w.category for w in caught]
    assert UserWarning in categories and DeprecationWarning in categories
    assert RandomWeightsWarning not in categories, "announced by the louder line instead"
    assert "WARNING: fake has RANDOM weights" in capsys.readouterr().err
