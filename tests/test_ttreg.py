"""Test-time registers: the planted-register-neuron experiment of spec A8, and the plumbing around it.

Model: timm ``vit_small_patch14_dinov2`` with random weights (seed 0), built as
``build_backbone("dinov2", weights="random")`` builds it (default ``img_size`` 518, so the
position table is resized to each image's grid, ``dynamic_img_size=True``) except for
``init_values=1.0``: with timm's default LayerScale of 1e-5 every block is nearly the identity and
no unit can change a token's norm (DINOv2's released weights have LayerScales of order 1).

Planting: in block 8, hidden unit 777 is made to fire only on three flat (mean-colour) patches,
at grid (1, 2), (4, 6) and (6, 3), of 112 x 112 uint8 noise images: its ``fc1`` row is the
direction separating those patches' ``norm2`` features from every other token, scaled so that the
unit fires at ~43 on them (spec A8: 40-47), bias at the midpoint; its ``fc2`` column is a random
unit vector x 3.26. Their block outputs jump from ~10 to ~140, as high-norm artifacts do.
Departures from the spec's run, for speed on shared CPUs and for the CLI test: 112 x 112 images
(an 8 x 8 grid, 65 tokens) instead of 224 x 224 (16 x 16), uint8 noise (written as PNG files by the
CLI test) instead of float noise, and the fc1 scale set by the target activation instead of 7.3.

A random network forms no attention sinks, so this checks the relocation of norms and the
forward/slicing mechanics, not the attention-cleaning effect (that needs pretrained weights).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import planted
from lostreg.backbones import FeatureKey, resolve_backbone
from lostreg.backbones.vit import TimmViTBackbone
from lostreg.cli import calibrate_cmd
from lostreg.diagnostics.inspection import inspect_image
from lostreg.diagnostics.tokens import prefix_attention
from lostreg.discovery import ImagePreparer
from lostreg.precision import strict_fp32
from lostreg.ttreg import (
    NeuronFileError,
    NoOutliersError,
    OutlierRule,
    RegisterNeurons,
    SparsityFilter,
    TestTimeRegisters,
    apply_test_time_registers,
    calibrate,
    score_units,
    weights_sha256,
)
from lostreg.backbones.edits import hidden_activation_hook, mlp_hidden_dim, mlp_kind

SIZE = 112
GRID = SIZE // 14
CHOSEN_RC = [(1, 2), (4, 6), (6, 3)]
CHOSEN = torch.tensor([r * GRID + c for r, c in CHOSEN_RC])  # flat patch indices
OTHERS = torch.tensor([i for i in range(GRID * GRID) if i not in set(CHOSEN.tolist())])
LAYER, UNIT = 8, 777


# --- models and images ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """One torch thread for this module's tiny tensors (65 tokens), restored afterwards.

    On a CPU shared with other jobs, OpenMP threads spend most of their time waiting for each
    other on such small operations (measured: a calibration took 1.9 s of CPU with 2 threads,
    0.33 s with 1). Results do not depend on it.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)



def _layerscale_one_vit(name: str = "dinov2_vits14", timm_name: str = "vit_small_patch14_dinov2",
                        **kwargs: object) -> TimmViTBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, dynamic_img_size=True,
                                  init_values=1.0, **kwargs)
    return TimmViTBackbone(resolve_backbone(name), model, torch.device("cpu"), random_weights=True)


def _noise_images(n: int, seed: int, size: int = SIZE, chosen_rc: list[tuple[int, int]] = CHOSEN_RC
                  ) -> list[np.ndarray]:
    """(size, size, 3) uint8 noise with mean-colour patches at ``chosen_rc`` (tests/planted.py's images)."""
    return planted.noise_images(n, seed, size, chosen_rc)


def _prepare(backbone: TimmViTBackbone, images: list[np.ndarray]) -> torch.Tensor:
    preparer = ImagePreparer(backbone.patch_size, backbone.mean, backbone.std)
    return torch.stack([preparer(image, "x").padded.tensor for image in images])


def _plant(backbone: TimmViTBackbone, x: torch.Tensor, layer: int, unit: int, chosen: torch.Tensor,
           target: float = 43.0, out_norm: float = 3.26, seed: int = 5) -> None:
    """Make ``unit`` of block ``layer`` fire (at ~``target`` on average) on the ``chosen`` patches only.

    The direction is the difference of means between the chosen patches' ``norm2`` features and
    all other tokens', made orthogonal to the CLS token's offset from the other patches (CLS
    would otherwise sit close to the chosen patches on it). GELU Mlp: the fc1 row is that
    direction. GluMlp (act(x1) * x2): the gate row x1 gets it and the value row x2 is the
    constant 1, so the hidden unit is act(projection) there too.
    """
    block = backbone.model.blocks[layer]
    prefix = backbone.num_prefix_tokens
    with torch.no_grad():
        h = backbone.block_input(x, layer)
        features = block.norm2(h + block.ls1(block.attn(block.norm1(h))))
        is_chosen = torch.zeros(features.shape[1], dtype=torch.bool)
        is_chosen[prefix + chosen] = True
        on, off = features[:, is_chosen].flatten(0, 1), features[:, ~is_chosen].flatten(0, 1)
        direction = on.mean(0) - off.mean(0)
        other_patches = features[:, prefix:][:, ~is_chosen[prefix:]].flatten(0, 1)
        cls_offset = F.normalize(features[:, 0].mean(0) - other_patches.mean(0), dim=0)
        direction = F.normalize(direction - (direction @ cls_offset) * cls_offset, dim=0)
        low, high = float((off @ direction).max()), float((on @ direction).min())
        assert high - low > 5, "the flat patches must be separable for the plant to be clean"
        mid = (low + high) / 2
        scale = target / (float((on @ direction).mean()) - mid)
        mlp = block.mlp
        hidden = mlp_hidden_dim(block)
        mlp.fc1.weight[unit] = direction * scale
        mlp.fc1.bias[unit] = -mid * scale
        if mlp_kind(block) == "glu":
            mlp.fc1.weight[hidden + unit] = 0
            mlp.fc1.bias[hidden + unit] = 1
        column = torch.randn(mlp.fc2.weight.shape[0], generator=torch.Generator().manual_seed(seed))
        mlp.fc2.weight[:, unit] = F.normalize(column, dim=0) * out_norm


def _forward(backbone: TimmViTBackbone, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One pass through the backbone's public pieces.

    Returns:
        Per block the (B, T) L2 norms of its output (residual stream, before the final norm), and
        the last block's patch keys (B, rows*cols, D).
    """
    norms = []
    with torch.inference_mode(), strict_fp32():
        tokens = backbone.tokens(x)
        for i in range(backbone.num_layers):
            if i == backbone.num_layers - 1:
                block = backbone.model.blocks[i]
                dim = tokens.shape[-1]
                keys = backbone.patch_tokens(block.attn.qkv(block.norm1(tokens))[..., dim:2 * dim], (GRID, GRID))
            tokens = backbone.run_block(i, tokens)
            norms.append(torch.linalg.vector_norm(tokens, dim=-1))
    return norms, keys


def _block_norms(backbone: TimmViTBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    return _forward(backbone, x)[0]


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def lab() -> dict:
    """The A8 setting, computed once (CPU time is scarce): models, images, norms, calibration."""
    base = _layerscale_one_vit()
    planted = TimmViTBackbone(base.spec, copy.deepcopy(base.model), base.device, random_weights=True)
    batch = _prepare(base, _noise_images(2, seed=1) + _noise_images(1, seed=2))
    _plant(planted, batch, LAYER, UNIT, CHOSEN)
    # Calibration sees the first two images only; the third is fixed with what they gave.
    fit = batch[:2]
    neurons = calibrate(planted, [fit], detect_layer=-2, threshold="mad", top_k=5)
    # The paper's cut (highest_layer = the block where outliers appear), top 1: the planted unit
    # if it ranks first, which test_calibration_ranks_the_planted_unit_first checks.
    one = RegisterNeurons(neurons.model, neurons.units[:1], {"top_k": 1, "highest_layer": LAYER, "lowest_layer": 0},
                          neurons.calibration)
    fixed = apply_test_time_registers(planted, one)
    lab = {"base": base, "planted": planted, "fixed": fixed, "fit": fit, "batch": batch, "neurons": neurons, "one": one}
    for name in ("base", "planted", "fixed"):
        lab[f"norms_{name}"], lab[f"keys_{name}"] = _forward(lab[name], batch)
    return lab


# --- the planted experiment (spec A8) ----------------------------------------------------------------


def test_plant_makes_outliers(lab: dict) -> None:
    """Sanity of the setting: the chosen patches jump ~10x at block 8 and stay high; others do not move."""
    p = lab["base"].num_prefix_tokens
    base, planted = lab["norms_base"], lab["norms_planted"]
    assert torch.equal(base[LAYER - 1], planted[LAYER - 1]), "blocks before the plant are untouched"
    ratio = planted[LAYER][:, p + CHOSEN] / base[LAYER][:, p + CHOSEN]
    assert ratio.min() > 8 and ratio.max() < 20, ratio
    assert planted[-1][:, p + CHOSEN].min() > 100
    assert planted[-1][:, p + OTHERS].max() < 30


def test_calibration_ranks_the_planted_unit_first(lab: dict) -> None:
    units = lab["neurons"].units
    assert (units[0].layer, units[0].unit) == (LAYER, UNIT)
    assert 30 < units[0].score < 60  # spec A8: 43.5
    assert units[1].score < units[0].score / 10
    assert [u.score for u in units] == sorted((u.score for u in units), reverse=True)
    # The spec's other detection layer and rule (last block, mean + 3 std) on one image, with the
    # paper's cut at the plant's block: the same unit.
    one_image = lab["fit"][:1]
    other = calibrate(lab["planted"], [one_image], detect_layer=-1, threshold="mean3std", top_k=1, highest_layer=LAYER)
    assert (other.units[0].layer, other.units[0].unit) == (LAYER, UNIT)
    assert other.selection == {"top_k": 1, "highest_layer": LAYER, "lowest_layer": 0}
    # highest_layer below the plant excludes it; lowest_layer above it leaves only later blocks.
    below = calibrate(lab["planted"], [one_image], top_k=10, highest_layer=LAYER - 1)
    assert all(u.layer <= LAYER - 1 for u in below.units) and len(below.units) == 10
    above = calibrate(lab["planted"], [one_image], top_k=10, lowest_layer=-3)
    assert all(u.layer >= LAYER + 1 for u in above.units)


def test_scores_are_the_mean_activation_over_outlier_patches(lab: dict) -> None:
    """Recompute two scores by hand from the hidden activations and the detected outliers."""
    planted, fit = lab["planted"], lab["fit"]
    p = planted.num_prefix_tokens
    detect = planted.num_layers - 2
    norms = lab["norms_planted"][detect][:2, p:]
    # The MAD rule flags exactly the three planted patches in every image.
    for b in range(fit.shape[0]):
        cut = OutlierRule.parse("mad").threshold(norms[b])
        assert torch.equal(torch.nonzero(norms[b] > cut).flatten(), CHOSEN.sort().values)
    captured: list[torch.Tensor] = []
    with torch.inference_mode(), strict_fp32(), hidden_activation_hook(planted.model.blocks[LAYER], captured.append):
        planted.block_input(fit, LAYER + 1)
    hidden = captured[0]  # (B, T, H)
    scores = score_units(planted, [fit], lowest_layer=LAYER, highest_layer=LAYER)
    for unit in (UNIT, 15):
        by_hand = hidden[:, p + CHOSEN, unit].abs().mean(dim=1).double().mean()
        assert scores.score(LAYER, unit) == pytest.approx(float(by_hand), rel=1e-6)
    assert scores.images == scores.images_with_outliers == 2 and scores.outlier_tokens == 6
    # The sparsity filter zeroes, per image, units at or above the activation threshold on more
    # than half the tokens. Random GELU units rarely reach the default 0.5, hence 0.05 here.
    rule = SparsityFilter(frac_threshold=0.5, activation_threshold=0.05)
    sparse = score_units(planted, [fit], lowest_layer=LAYER, highest_layer=LAYER, sparsity=rule)
    quiet = (hidden < 0.05).float().mean(dim=1) >= 0.5  # (B, H): kept per image
    dense, sparse_everywhere = (~quiet).all(dim=0), quiet.all(dim=0)
    assert dense.any() and sparse_everywhere.any()
    assert torch.all(sparse.scores[0][dense] == 0)
    torch.testing.assert_close(sparse.scores[0][sparse_everywhere], scores.scores[0][sparse_everywhere], rtol=0, atol=0)
    assert sparse.score(LAYER, UNIT) == scores.score(LAYER, UNIT), "a unit firing on 3 tokens is sparse"


def test_test_time_register_restores_the_norms(lab: dict) -> None:
    """Chosen patches come back within 1% of the unplanted model; the register takes the norm."""
    p = lab["base"].num_prefix_tokens
    base, planted, fixed = lab["norms_base"], lab["norms_planted"], lab["norms_fixed"]
    for layer in (LAYER, lab["base"].num_layers - 1):
        rel = (fixed[layer][:, p + CHOSEN] - base[layer][:, p + CHOSEN]).abs() / base[layer][:, p + CHOSEN]
        assert rel.max() < 0.01, (layer, rel.max())
        assert fixed[layer][:, -1].min() > 100, "the register carries the moved norm"
    # Before the edited block the (zero-started) register only takes part in attention.
    before = (fixed[LAYER - 1][:, p:-1] - planted[LAYER - 1][:, p:]).abs() / planted[LAYER - 1][:, p:]
    assert before.max() < 0.01, before.max()
    # The third image, which calibration never saw, is fixed too.
    assert planted[-1][2, p + CHOSEN].min() > 100


def test_other_patches_keys_barely_change(lab: dict) -> None:
    k_fixed, k_planted, k_base = lab["keys_fixed"], lab["keys_planted"], lab["keys_base"]
    assert k_fixed.shape == k_planted.shape == (3, GRID * GRID, 384), "the register never reaches the features"
    cos_planted = F.cosine_similarity(k_fixed[:, OTHERS], k_planted[:, OTHERS], dim=-1)
    cos_base = F.cosine_similarity(k_fixed[:, OTHERS], k_base[:, OTHERS], dim=-1)
    assert cos_planted.min() >= 0.999, cos_planted.min()
    assert cos_base.min() >= 0.999, cos_base.min()


def test_published_mode_fixes_only_the_first_image(lab: dict) -> None:
    p = lab["base"].num_prefix_tokens
    published = lab["planted"].with_test_time_registers(TestTimeRegisters(lab["one"], mode="published"))
    norms = _block_norms(published, lab["batch"])[-1]
    base = lab["norms_base"][-1]
    rel0 = (norms[0, p + CHOSEN] - base[0, p + CHOSEN]).abs() / base[0, p + CHOSEN]
    assert rel0.max() < 0.01
    assert norms[1:, p + CHOSEN].min() > 100, "images 1..B-1 keep their outliers (the released code's bug)"
    assert norms[0, -1] > 100 and norms[1:, -1].max() < 30, "only image 0's register is filled"


def test_batch_equals_single_images(lab: dict) -> None:
    """Each image alone through extract_many gives what it got in the batch of three."""
    fixed, x = lab["fixed"], lab["batch"]
    for i in range(x.shape[0]):
        single = fixed.extract_many(x[i:i + 1], [FeatureKey("k", -1)])[FeatureKey("k", -1)]
        torch.testing.assert_close(lab["keys_fixed"][i:i + 1], single, rtol=0, atol=1e-5)


def test_token_layout_and_slicing(lab: dict) -> None:
    """[CLS, patches, TTR]: the register is a zero row at the END; features are [P : P + rows*cols]."""
    plain, fixed, x = lab["planted"], lab["fixed"], lab["fit"][:1]
    assert fixed.num_trailing_tokens == 1 and plain.num_trailing_tokens == 0
    assert fixed.test_time_registers is not None and fixed.test_time_registers.layers == (LAYER,)
    assert fixed.model is plain.model, "a configured view, not a copy"
    with torch.inference_mode():
        t_plain, t_fixed = plain.tokens(x), fixed.tokens(x)
        assert t_fixed.shape[1] == t_plain.shape[1] + 1
        assert torch.equal(t_fixed[:, :-1], t_plain) and torch.equal(t_fixed[:, -1], torch.zeros_like(t_fixed[:, -1]))
        qkv = fixed.qkv(x, -1)
    assert qkv.shape[1] == 1 + GRID * GRID + 1
    keys = fixed.extract(x, "k", -1)
    assert torch.equal(keys, qkv[:, 1:1 + GRID * GRID, 384:768])
    assert not torch.equal(keys, qkv[:, 2:, 384:768])
    # Without a register the backbone is the plain one again.
    again = fixed.with_test_time_registers(None)
    assert again.test_time_registers is None and again.num_trailing_tokens == 0
    with torch.inference_mode():
        assert torch.equal(again.tokens(x), t_plain)


def test_edit_semantics_on_a_hand_made_activation(lab: dict) -> None:
    """Per image and unit: signed max-|value| into the register, zero on patches only.

    With P = 5 prefix tokens (CLS + 4 trained registers, as in DINOv2+reg) to show those are kept.
    """
    neurons = RegisterNeurons.from_layer_units(lab["base"], {3: [7, 2]})
    ttr = TestTimeRegisters(neurons)
    prefix, patches = 5, 6
    hidden = torch.randn(3, prefix + patches + 1, 16, generator=torch.Generator().manual_seed(0))
    hidden[1, 0, 7] = -50.0  # image 1's extreme of unit 7 sits on CLS and is negative
    hidden[2, prefix + 3, 2] = 40.0  # image 2's extreme of unit 2 is a patch
    out = ttr.edit_hidden(hidden, 3, prefix)
    assert torch.equal(out[:, prefix:prefix + patches][..., [2, 7]], torch.zeros(3, patches, 2))
    assert torch.equal(out[:, :prefix], hidden[:, :prefix]), "CLS and trained registers untouched"
    others = [u for u in range(16) if u not in (2, 7)]
    assert torch.equal(out[..., others], hidden[..., others])
    for b in range(3):
        for u in (2, 7):
            column = hidden[b, :, u]
            assert out[b, -1, u] == column[column.abs().argmax()]
    assert out[1, -1, 7] == -50.0 and out[2, -1, 2] == 40.0
    published = TestTimeRegisters(neurons, mode="published").edit_hidden(hidden, 3, prefix)
    block = hidden[0][:, [2, 7]].reshape(-1)
    assert torch.equal(published[0, -1, [2, 7]], block[block.abs().argmax()].repeat(2)), "one value per layer"
    assert torch.equal(published[1:], hidden[1:]), "images 1.. untouched"
    with pytest.raises(ValueError, match="mode"):
        TestTimeRegisters(neurons, mode="shared")  # type: ignore[arg-type]


# --- diagnostics use the same forward --------------------------------------------------------------


def test_trace_and_inspect_use_the_register(lab: dict) -> None:
    fixed, x = lab["fixed"], lab["fit"][:1]
    trace = fixed.trace(x, layer=-1)
    assert trace.num_trailing_tokens == 1 and trace.prenorm.shape[1] == 1 + GRID * GRID + 1
    torch.testing.assert_close(trace.qkv[:, 1:1 + GRID * GRID, 384:768], fixed.extract(x, "k", -1), rtol=0, atol=0)
    torch.testing.assert_close(torch.linalg.vector_norm(trace.prenorm, dim=-1), lab["norms_fixed"][-1][:1],
                               rtol=0, atol=1e-4)
    block = fixed.model.blocks[-1]
    att = prefix_attention(trace.qkv, block.attn, 1, (GRID, GRID), num_trailing_tokens=1)
    assert att.cls is not None and att.cls.shape == (1, 6, GRID, GRID)
    assert float(att.patch_mass.max()) < 1.0  # part of the softmax goes to CLS and the register
    image = _noise_images(1, seed=1)[0]
    inspection = inspect_image(fixed, image, "x", norm_source="prenorm")
    assert inspection.norms.shape == (GRID, GRID)
    assert float(inspection.norms.max()) < 30, "the 'after' norm map has no planted outliers"
    assert float(lab["norms_planted"][-1][0].max()) > 100, "the 'before' map had them"


# --- the neuron file ----------------------------------------------------------------------------------


def test_file_round_trip_and_determinism(lab: dict, tmp_path: Path) -> None:
    neurons = lab["neurons"]
    path = neurons.save(tmp_path / "n.json")
    loaded = RegisterNeurons.load(path)
    assert loaded.to_json() == neurons.to_json()
    assert loaded.dumps() == path.read_text()
    data = json.loads(path.read_text())
    assert data["backbone"] == "dinov2_vits14" and data["timm_id"] == "vit_small_patch14_dinov2.lvd142m"
    assert data["weights_sha256"] == weights_sha256(lab["planted"].model)
    assert data["calibration"]["detect_layer"] == 10 and data["calibration"]["threshold"] == "mad:5"
    assert data["calibration"]["images"] == 2 and data["selection"]["top_k"] == 5
    assert data["units"][0] == {"layer": LAYER, "unit": UNIT, "score": data["units"][0]["score"]}
    again = calibrate(lab["planted"], [lab["fit"]], detect_layer=-2, threshold="mad", top_k=5)
    assert again.dumps() == path.read_text(), "same images, same order: byte-identical file"
    by_layer = loaded.layer_units()
    assert list(by_layer) == sorted(by_layer) and all(list(us) == sorted(us) for us in by_layer.values())
    assert sorted((layer, u) for layer, us in by_layer.items() for u in us) == sorted((u.layer, u.unit) for u in loaded.units)


def test_weights_hash(lab: dict) -> None:
    model = lab["base"].model
    digest = weights_sha256(model)
    assert len(digest) == 64 and digest == weights_sha256(model)
    assert digest != weights_sha256(lab["planted"].model), "one planted unit changes the hash"
    twin = copy.deepcopy(model)
    assert weights_sha256(twin) == digest
    with torch.no_grad():
        twin.blocks[0].mlp.fc1.bias[0] += 1e-6
    assert weights_sha256(twin) != digest


def test_mismatching_files_are_refused(lab: dict, tmp_path: Path) -> None:
    path = lab["one"].save(tmp_path / "planted.json")
    neurons = RegisterNeurons.load(path)
    with pytest.raises(NeuronFileError, match=r"planted\.json: calibrated on random weights .* sha256"):
        apply_test_time_registers(lab["base"], neurons, source=str(path))
    apply_test_time_registers(lab["base"], neurons, source=str(path), check_weights=False)

    def edited(**changes: object) -> Path:
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if key in data["architecture"]:
                data["architecture"][key] = value
            else:
                data[key] = value
        out = tmp_path / f"{'_'.join(changes)}.json"
        out.write_text(json.dumps(data))
        return out

    other = edited(backbone="dinov2_vitl14", timm_id="vit_large_patch14_dinov2.lvd142m")
    with pytest.raises(NeuronFileError, match=r"backbone_timm_id\.json: made for backbone dinov2_vitl14"):
        apply_test_time_registers(lab["planted"], RegisterNeurons.load(other), source=str(other))
    deeper = edited(depth=24)
    with pytest.raises(NeuronFileError, match=r"depth\.json: made for a model with depth=24"):
        apply_test_time_registers(lab["planted"], RegisterNeurons.load(deeper), source=str(deeper))
    wide = edited(mlp_hidden_dim=4096, embed_dim=1024)
    with pytest.raises(NeuronFileError, match="embed_dim=1024"):
        apply_test_time_registers(lab["planted"], RegisterNeurons.load(wide), source=str(wide))
    # Malformed files: one line naming the file.
    bad_unit = tmp_path / "bad_unit.json"
    data = json.loads(path.read_text())
    data["units"][0]["unit"] = 1536
    bad_unit.write_text(json.dumps(data))
    for bad, pattern in [
        (bad_unit, r"bad_unit\.json: units\[0\]: unit 1536 outside"),
        (tmp_path / "missing.json", r"missing\.json: no such"),
    ]:
        with pytest.raises(NeuronFileError, match=pattern) as err:
            RegisterNeurons.load(bad)
        assert "\n" not in str(err.value)
    (tmp_path / "text.json").write_text("layer 8: 777")
    with pytest.raises(NeuronFileError, match=r"text\.json: not JSON"):
        RegisterNeurons.load(tmp_path / "text.json")
    (tmp_path / "other.json").write_text(json.dumps({"17": [884]}))
    with pytest.raises(NeuronFileError, match="not a register-neuron file"):
        RegisterNeurons.load(tmp_path / "other.json")


def test_hand_made_list_applies_to_any_weights(lab: dict, tmp_path: Path) -> None:
    neurons = RegisterNeurons.from_layer_units(lab["planted"], {LAYER: [UNIT]}, note="typed in")
    assert neurons.model.weights_sha256 is None and neurons.units[0].score is None
    loaded = RegisterNeurons.load(neurons.save(tmp_path / "hand.json"))
    for backbone in (lab["base"], lab["planted"]):
        apply_test_time_registers(backbone, loaded)
    with pytest.raises(ValueError, match="outside"):
        RegisterNeurons.from_layer_units(lab["planted"], {12: [0]})


def test_no_outliers_is_a_clear_error(lab: dict) -> None:
    with pytest.raises(NoOutliersError, match="none of the 1 images"):
        calibrate(lab["base"], [lab["fit"][:1]], threshold="1e6")
    with pytest.raises(ValueError, match="plain model"):
        calibrate(lab["fixed"], [lab["fit"]])


# --- hooks ---------------------------------------------------------------------------------------------


def test_no_hooks_left_behind(lab: dict) -> None:
    fixed, x = lab["fixed"], lab["fit"][:1]
    fixed.trace(x)  # every block through run_block, the edited one included
    score_units(lab["planted"], [x], lowest_layer=LAYER, highest_layer=LAYER)
    assert _hooks_left(fixed.model) == 0

    def explode(_hidden: torch.Tensor) -> None:
        raise RuntimeError("boom")

    block = fixed.model.blocks[LAYER]
    with pytest.raises(RuntimeError, match="boom"), torch.inference_mode(), hidden_activation_hook(block, explode):
        block(fixed.block_input(x, LAYER))
    assert _hooks_left(fixed.model) == 0


# --- SwiGLU (GluMlp) ------------------------------------------------------------------------------------


def test_swiglu_path() -> None:
    """A small DINOv2-g-like model (SwiGLUPacked MLP): plant, find, fix, batch-safe."""
    from timm.layers import SwiGLUPacked

    backbone = _layerscale_one_vit(
        "vit_small_patch14_dinov2", "vit_small_patch14_dinov2", depth=6, embed_dim=192, num_heads=3, img_size=112,
        mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2.66667 * 2,
    )
    layer, unit, chosen_rc = 3, 50, [(1, 2), (6, 5)]
    block = backbone.model.blocks[layer]
    assert mlp_kind(block) == "glu" and mlp_hidden_dim(block) == block.mlp.fc1.out_features // 2
    x = _prepare(backbone, _noise_images(3, seed=3, size=112, chosen_rc=chosen_rc))
    chosen = torch.tensor([r * 8 + c for r, c in chosen_rc])

    # The hook point is the gated product act(x1) * x2 (what fc2 sees), not the gate half.
    captured: list[torch.Tensor] = []
    with torch.inference_mode(), hidden_activation_hook(block, captured.append):
        h = backbone.block_input(x, layer)
        mid = h + block.ls1(block.attn(block.norm1(h)))
        block.mlp(block.norm2(mid))
        gate, value = block.mlp.fc1(block.norm2(mid)).chunk(2, dim=-1)
        torch.testing.assert_close(captured[0], F.silu(gate) * value, rtol=0, atol=1e-6)

    plain_norms = _block_norms(backbone, x)[-1]
    _plant(backbone, x, layer, unit, chosen, out_norm=6.0)
    planted_norms = _block_norms(backbone, x)[-1]
    assert (planted_norms[:, 1 + chosen] / plain_norms[:, 1 + chosen]).min() > 5
    neurons = calibrate(backbone, [x], detect_layer=-1, top_k=1, highest_layer=layer)
    assert (neurons.units[0].layer, neurons.units[0].unit) == (layer, unit)
    assert neurons.model.mlp == "glu"
    fixed = apply_test_time_registers(backbone, neurons)
    fixed_norms = _block_norms(fixed, x)[-1]
    rel = (fixed_norms[:, 1 + chosen] - plain_norms[:, 1 + chosen]).abs() / plain_norms[:, 1 + chosen]
    assert rel.max() < 0.02, rel.max()
    assert _hooks_left(backbone.model) == 0


def test_unsupported_mlp_is_refused() -> None:
    from timm.layers import GatedMlp

    backbone = _layerscale_one_vit("vit_small_patch14_dinov2", "vit_small_patch14_dinov2", depth=2, embed_dim=64,
                                   num_heads=2, img_size=28, mlp_layer=GatedMlp)
    with pytest.raises(ValueError, match="GatedMlp is not supported"):
        RegisterNeurons.from_layer_units(backbone, {0: [1]})


# --- the CLI -------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lostreg calibrate")
    calibrate_cmd.add_arguments(parser)
    return calibrate_cmd.run(parser.parse_args(argv))


def test_calibrate_cli_end_to_end(lab: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checkpoint of the planted model + PNG images -> the same neuron file as the library call."""
    images = _noise_images(2, seed=1)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    weights = tmp_path / "planted.pth"
    torch.save(lab["planted"].model.state_dict(), weights)
    out = tmp_path / "out" / "neurons.json"
    argv = ["--backbone", "dinov2", "--weights", str(weights), "--images", str(folder), "--output", str(out),
            "--top-k", "3", "--highest-layer", str(LAYER), "--device", "cpu", "--no-progress"]
    assert _cli(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary["top"][0][:2] == [LAYER, UNIT] and summary["images"] == 2
    written = RegisterNeurons.load(out)
    assert written.model.weights_sha256 == weights_sha256(lab["planted"].model), "the loaded weights are hashed"
    assert not written.model.random_weights and written.calibration["max_size"] == 1024
    library = calibrate(lab["planted"], [lab["fit"]], top_k=3, highest_layer=LAYER)
    assert written.to_json()["units"] == library.to_json()["units"]


@pytest.mark.parametrize("extra, code, text", [
    (["--threshold", "lots"], 2, "--threshold: threshold must be"),
    (["--top-k", "0"], 2, "--top-k must be >= 1"),
    (["--highest-layer", "12"], 2, "--highest-layer: dinov2_vits14 has 12 blocks"),
    (["--backbone", "pixels"], 2, "pixels has no transformer blocks"),
    (["--threshold", "1e9"], 1, "none of the 1 images"),
])
def test_calibrate_cli_errors(extra: list[str], code: int, text: str, lab: dict, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The end-to-end test builds through the real path; here the lab's plain model stands in
    # for a random dinov2_vits14 (same name and depth) to save CPU time.
    real_build = calibrate_cmd.build_backbone_loudly
    monkeypatch.setattr(calibrate_cmd, "build_backbone_loudly",
                        lambda name, weights, device: lab["base"] if name == "dinov2" else real_build(name, weights, device))
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    argv = ["--backbone", "dinov2", "--weights", "random", "--images", str(tmp_path / "a.png"),
            "--output", str(tmp_path / "n.json"), "--device", "cpu", "--no-progress"] + extra
    assert _cli(argv) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lostreg: error:")]
    assert len(err) == 1 and text in err[0], err
    assert not (tmp_path / "n.json").exists()


def test_calibrate_cli_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["--backbone", "dinov2", "--images", str(tmp_path / "none*.jpg"), "--output", str(tmp_path / "n.json")]) == 2
    assert "no images to calibrate on" in capsys.readouterr().err


# --- ttreg=FILE / --ttreg FILE through eval and discover ------------------------------------------


def test_eval_and_discover_run_with_a_neuron_file(lab: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """eval ttreg=FILE and discover --ttreg FILE give the same boxes, and other boxes than without the register.

    The lab's planted model (as a checkpoint file), its one-unit neuron file and its three images
    (PNG): without the register LOST's seed is a planted artifact patch on every image. LOST with
    k = 5: with the default k = 100 the seed expansion takes all 64 patches of these 8 x 8 grids
    and the box is the whole image with or without the register. (A random ``dinov2`` as
    build_backbone makes it has LayerScale 1e-5: a register moves its keys by ~1e-6 and no box.)
    """
    import json as _json

    from lostreg.backbones import build_backbone
    from lostreg.cli.main import main

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_noise_images(2, seed=1) + _noise_images(1, seed=2)):  # the lab's batch
        Image.fromarray(image).save(folder / f"{i}.png")
    weights = tmp_path / "planted.pth"
    torch.save(lab["planted"].model.state_dict(), weights)
    neurons = lab["one"].save(tmp_path / "planted_unit.json")
    args = ["eval", "--no-progress", "backbone=dinov2", f"weights={weights}", "dataset=folder",
            f"dataset.root={folder}", "lost.k_patches=5", "num_workers=0"]
    assert main(args + [f"ttreg={neurons}"]) == 0
    run = (tmp_path / "outputs" / "folder_images" / "dinov2_vits14-planted-ttreg-planted_unit"
           / "k_layer-1_k5_bias0.0_max1024")
    preds = [_json.loads(line) for line in (run / "preds.jsonl").read_text().splitlines()]
    assert len(preds) == 3

    def discover(*extra: str) -> dict[str, dict]:
        capsys.readouterr()
        assert main(["discover", *map(str, sorted(folder.iterdir())), "--backbone", "dinov2", "--weights",
                     str(weights), "--k-patches", "5", "--no-progress", *extra]) == 0
        return {Path(r["image"]).name: r for r in map(_json.loads, capsys.readouterr().out.splitlines())}

    with_register, without = discover("--ttreg", str(neurons)), discover()
    # The same boxes as discover --ttreg on each image ...
    assert ({Path(p["image"]).name: p["box_xyxy"] for p in preds}
            == {k: r["box_xyxy"] for k, r in with_register.items()})
    # ... and other boxes than without the register, on every image: there the seed is an artifact.
    differ = {k for k in without if without[k]["box_xyxy"] != with_register[k]["box_xyxy"]}
    assert differ == {"0.png", "1.png", "2.png"}
    assert all(tuple(r["seed_rc"]) in CHOSEN_RC for r in without.values())
    assert not any(tuple(r["seed_rc"]) in CHOSEN_RC for r in with_register.values())
    # A file for another model is refused before anything is written.
    other = tmp_path / "b14.json"
    RegisterNeurons.from_layer_units(build_backbone("dinov2_vitb14", weights="random", device="cpu"),
                                     {3: [5]}).save(other)
    assert main(args + [f"ttreg={other}", f"run_dir={tmp_path / 'refused'}"]) == 2
    assert str(other) in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_inspect_shows_each_backbone_before_and_after_the_register(tmp_path: Path) -> None:
    import json as _json

    from PIL import Image

    from lostreg.backbones import build_backbone
    from lostreg.cli.main import main

    backbone = build_backbone("dinov2", weights="random", device="cpu")
    neurons = tmp_path / "s14.json"
    RegisterNeurons.from_layer_units(backbone, {3: [5, 9]}).save(neurons)
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 70, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["inspect", str(image), "--backbone", "dinov2", "--weights", "random", "--ttreg", str(neurons),
                 "--output", str(out)]) == 0
    summary = _json.loads((out / "summary.json").read_text())
    names = [b["backbone"] for b in summary["backbones"]]
    assert names == ["dinov2_vits14", "dinov2_vits14-ttreg"]
    assert {"dinov2_vits14_norms.png", "dinov2_vits14-ttreg_norms.png", "compare.png"} <= {p.name for p in out.iterdir()}
    plain, fixed = summary["backbones"]
    assert plain["attention"]["register_patch_mass"] == []
    assert len(fixed["attention"]["register_patch_mass"]) == 1, "the test-time register's attention is shown"
