"""Diagnostics (lostreg.diagnostics) and ``lostreg inspect``: numbers, figures, summary, errors.

Random-weight models and small generated images; no downloads.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from lostreg.backbones import build_backbone, resolve_backbone
from lostreg.backbones.dinov3 import DinoV3Backbone, build_timm_eva
from lostreg.cli.inspect_cmd import backbone_names, parse_weights
from lostreg.cli.main import main
from lostreg.diagnostics import (
    MAD_TO_SIGMA,
    NormThreshold,
    find_outliers,
    inspect_image,
    pca_project,
    pca_rgb,
    prefix_attention,
    prefix_attention_qk,
    robust_threshold,
)
from lostreg.diagnostics import figures
from lostreg.discovery import ObjectDiscoverer
from lostreg.protocol import DiscoveryProtocol, TokenCutConfig
from lostreg.preprocess import to_padded_tensor
from lostreg.tokencut import tokencut

W, H = 112, 84  # small: 8x6 patches at p=14, 7x6 at p=16


def scene(width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """A dark rectangle on a bright noisy gradient, (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    image = np.broadcast_to(170 + 60 * x + rng.normal(0, 8, (height, width, 3)), (height, width, 3)).copy()
    image[height // 4: 3 * height // 4, width // 4: 2 * width // 3] = (40, 60, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def _build(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_backbone(name, weights="random", device="cpu")


@pytest.fixture(scope="module")
def backbones() -> dict:
    return {name: _build(name) for name in ("dino", "dinov2_reg", "pixels")}


@pytest.fixture(scope="module")
def image_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(scene()).save(path)
    return path


# --- outlier rule ------------------------------------------------------------------------------


def test_robust_threshold_on_a_hand_made_vector() -> None:
    norms = torch.tensor([10.0, 11, 12, 10, 11, 12, 10, 11, 12, 50])
    threshold, median, mad = robust_threshold(norms, k=5.0)
    # median 11; |deviations| sorted 0,0,0,1,1,1,1,1,1,39 -> MAD 1.
    assert (median, mad) == (11.0, 1.0)
    assert threshold == pytest.approx(11 + 5 * 1.4826)
    out = find_outliers(norms.reshape(2, 5))
    assert out.count == 1 and out.share == pytest.approx(0.1) and out.positions_rc == [(1, 4)]
    assert out.max_norm == 50.0 and out.mask.shape == (2, 5)
    # The paper's absolute cut: nothing here is above 150; 40 catches the 50.
    assert find_outliers(norms, NormThreshold.parse("150")).count == 0
    assert find_outliers(norms, NormThreshold.parse("40")).count == 1
    # k = 0: everything strictly above the median.
    assert find_outliers(norms, NormThreshold.parse("mad:0")).count == 4


def test_robust_threshold_even_count_and_zero_mad() -> None:
    _, median, _ = robust_threshold(np.array([1.0, 2, 3, 10]))
    assert median == 2.5, "the true median, not torch.median's lower one"
    threshold, median, mad = robust_threshold(np.array([5.0, 5, 5, 5, 9]))
    assert (threshold, median, mad) == (5.0, 5.0, 0.0)
    assert find_outliers(np.array([5.0, 5, 5, 5, 9])).count == 1
    assert MAD_TO_SIGMA == 1.4826


@pytest.mark.parametrize("text, expected", [
    ("mad", ("mad", 5.0)), ("MAD:3", ("mad", 3.0)), ("150", ("absolute", 150.0)), ("12.5", ("absolute", 12.5)),
])
def test_norm_threshold_parse(text: str, expected: tuple[str, float]) -> None:
    rule = NormThreshold.parse(text)
    assert (rule.kind, rule.value) == expected


@pytest.mark.parametrize("text", ["", "median", "mad:", "mad:-1", "0", "-3", "nan", "inf"])
def test_norm_threshold_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        NormThreshold.parse(text)


# --- attention ---------------------------------------------------------------------------------


def _peaked_copy(name: str):
    """A random-weight ViT whose last-block q/k are scaled up, so that attention is far from uniform
    (uniform attention would match a wrong scale or a wrong softmax axis too)."""
    backbone = _build(name)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # timm initialises CLS/register tokens near 0 (std 1e-6 for DINOv2): their LayerNorm output,
        # hence their queries, are ~0 and they attend uniformly. Give them unit-scale values.
        for token in (backbone.model.cls_token, backbone.model.reg_token):
            if token is not None:
                token.copy_(torch.randn(token.shape, generator=gen))
        qkv = backbone.model.blocks[-1].attn.qkv
        dim = qkv.weight.shape[0] // 3
        qkv.weight[: 2 * dim] *= 5.0
        qkv.bias[: 2 * dim] *= 5.0
    return backbone


@pytest.mark.parametrize("name, registers", [("dino", 0), ("dinov2_reg", 4)])
def test_prefix_attention_is_the_models_softmax(name: str, registers: int) -> None:
    backbone = _peaked_copy(name)
    images = to_padded_tensor(scene(), backbone.patch_size).tensor[None]
    trace = backbone.trace(images)
    block = backbone.model.blocks[-1]
    att = prefix_attention(trace.qkv, block.attn, trace.num_prefix_tokens, trace.grid_hw)
    rows, cols = trace.grid_hw
    heads = block.attn.num_heads
    prefix = trace.num_prefix_tokens
    assert prefix == 1 + registers and trace.num_registers == registers
    assert att.cls is not None and att.cls.shape == (1, heads, rows, cols)
    assert att.registers.shape == (1, registers, heads, rows, cols)

    # Direct per-head computation: softmax(q_h k_h^T / sqrt(d_h)) over all tokens.
    qkv = trace.qkv[0].double()
    dim = qkv.shape[1] // 3
    hd = dim // heads
    full = []
    for h in range(heads):
        q = qkv[:, h * hd:(h + 1) * hd]
        k = qkv[:, dim + h * hd: dim + (h + 1) * hd]
        full.append(torch.softmax(q @ k.T / math.sqrt(hd), dim=-1))
    full = torch.stack(full)  # (H, T, T)
    assert float(full[:, 0, prefix:].max()) > 5.0 / (rows * cols), "attention is peaked, not uniform"
    torch.testing.assert_close(att.cls[0].double(), full[:, 0, prefix:].reshape(heads, rows, cols),
                               rtol=1e-4, atol=1e-6)
    for r in range(registers):
        torch.testing.assert_close(att.registers[0, r].double(),
                                   full[:, 1 + r, prefix:].reshape(heads, rows, cols), rtol=1e-4, atol=1e-6)
    # A map sums to its query's attention mass on patches = 1 - mass on the prefix tokens.
    mass = att.cls[0].sum(dim=(-2, -1))
    torch.testing.assert_close(mass, att.patch_mass[0, 0])
    torch.testing.assert_close(mass.double(), 1 - full[:, 0, :prefix].sum(-1), rtol=1e-4, atol=1e-6)
    assert bool((mass <= 1 + 1e-6).all()) and bool((mass >= 0).all())

    # The same matrix reproduces the block's attention output: attn @ v, heads merged, proj.
    with torch.inference_mode():
        x = backbone.block_input(images, -1)
        expected = block.attn(block.norm1(x))[0].double()
    v = qkv[:, 2 * dim:].reshape(-1, heads, hd).transpose(0, 1)  # (H, T, hd)
    merged = (full @ v).transpose(0, 1).reshape(-1, dim)
    out = merged @ block.attn.proj.weight.double().T + block.attn.proj.bias.double()
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-4)


def test_register_maps_only_for_register_models(backbones: dict) -> None:
    reg = inspect_image(backbones["dinov2_reg"], scene(), "scene")
    assert reg.register_attention is not None and reg.register_attention.shape[0] == 4
    assert reg.prefix_patch_mass is not None and reg.prefix_patch_mass.shape == (5, 6)
    assert len(reg.summary()["attention"]["register_patch_mass"]) == 4
    dino = inspect_image(backbones["dino"], scene(), "scene")
    assert dino.register_attention is None and dino.cls_attention is not None
    assert dino.cls_attention.shape == (6, *dino.grid_hw)
    assert dino.summary()["attention"]["register_patch_mass"] == []


def test_trace_k_equals_lost_features(backbones: dict) -> None:
    backbone = backbones["dinov2_reg"]
    images = to_padded_tensor(scene(), backbone.patch_size).tensor[None]
    trace = backbone.trace(images, layer=-2)
    dim = trace.qkv.shape[-1] // 3
    k = trace.qkv[:, trace.num_prefix_tokens:, dim:2 * dim]
    assert torch.equal(k, backbone.extract(images, which="k", layer=-2))
    assert trace.layer == len(backbone.model.blocks) - 2
    # final = the model's own forward_features
    with torch.inference_mode():
        assert torch.allclose(trace.final, backbone.model.norm(trace.prenorm))


# --- PCA ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(48, 384), (300, 20)])  # both routes: N <= D and N > D
def test_pca_matches_svd_with_sign_convention(n: int, d: int) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(n, d, generator=gen) * torch.linspace(3, 0.1, d) + 5
    scores, ratios = pca_project(feats, 3)
    x = feats.double().numpy()
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    reference = u[:, :3] * s[:3]
    np.testing.assert_allclose(np.abs(scores.numpy()), np.abs(reference), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ratios.numpy(), s[:3] ** 2 / (s ** 2).sum(), rtol=1e-4)
    for j in range(3):
        column = scores[:, j]
        assert float(column[column.abs().argmax()]) > 0
    again, _ = pca_project(feats, 3)
    assert torch.equal(scores, again), "deterministic"


def test_pca_rgb_shape_and_range() -> None:
    feats = torch.randn(6 * 8, 32, generator=torch.Generator().manual_seed(1))
    rgb, ratios = pca_rgb(feats, (6, 8))
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.float32
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    np.testing.assert_array_equal(rgb.reshape(-1, 3).min(0), 0)  # each component spans [0, 1]
    np.testing.assert_array_equal(rgb.reshape(-1, 3).max(0), 1)
    assert ratios.shape == (3,) and np.all(np.diff(ratios) <= 0) and ratios.sum() <= 1 + 1e-6
    flat, flat_ratios = pca_rgb(torch.ones(4, 5), (2, 2))  # constant features: no variance
    assert np.all(flat == 0.5) and np.all(flat_ratios == 0)


# --- inspect_image -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dino", "dinov2_reg", "pixels"])
def test_inspection_box_is_the_discover_box(backbones: dict, name: str) -> None:
    backbone = backbones[name]
    image = scene(150, 100, seed=3)
    found = ObjectDiscoverer(backbone, DiscoveryProtocol(), max_size=96).discover(image, "x")
    insp = inspect_image(backbone, image, "x", DiscoveryProtocol(), max_size=96)
    assert insp.box_xyxy == found.box_xyxy and insp.lost.seed_rc == found.seed_rc
    assert insp.original_hw == (100, 150) and insp.processed_hw == found.processed_hw
    maps = insp.lost
    assert maps.similars[maps.seed_rc] and maps.mask[maps.seed_rc]
    assert maps.inverse_degree.shape == insp.grid_hw == insp.norms.shape == insp.pca.shape[:2]
    assert int(maps.potentials.sum()) == min(100, maps.degree.size)
    assert np.all(maps.potentials[maps.similars])
    np.testing.assert_allclose(maps.inverse_degree, 1 / (1 + maps.degree))


def test_pixels_norms_without_attention(backbones: dict) -> None:
    insp = inspect_image(backbones["pixels"], scene(), "scene")
    feats = backbones["pixels"].extract(to_padded_tensor(scene(), 16).tensor[None])[0]
    np.testing.assert_allclose(insp.norms.ravel(), feats.norm(dim=-1).numpy(), rtol=1e-6)
    assert insp.cls_attention is None and insp.register_attention is None
    assert "no attention" in insp.attention_note and insp.norm_source == "pixels"
    summary = insp.summary()
    assert summary["attention"] is None and summary["attention_note"] == insp.attention_note
    assert isinstance(figures.attention_figure(insp), Figure)  # a note, not a crash


def test_norm_source_prenorm_differs(backbones: dict) -> None:
    final = inspect_image(backbones["dinov2_reg"], scene(), "s", norm_source="final")
    pre = inspect_image(backbones["dinov2_reg"], scene(), "s", norm_source="prenorm")
    assert final.norm_source == "final" and pre.norm_source == "prenorm"
    assert not np.allclose(final.norms, pre.norms)
    assert final.box_xyxy == pre.box_xyxy
    with pytest.raises(ValueError):
        inspect_image(backbones["dinov2_reg"], scene(), "s", norm_source="middle")  # type: ignore[arg-type]


def test_figures_render(backbones: dict, tmp_path: Path) -> None:
    inspections = [inspect_image(backbones[n], scene(), "scene") for n in ("dino", "dinov2_reg", "pixels")]
    for insp in inspections[:2]:
        for make in (figures.norms_figure, figures.attention_figure, figures.pca_figure, figures.lost_figure):
            path = figures.save_figure(make(insp), tmp_path / f"{insp.backbone}_{make.__name__}.png")
            with Image.open(path) as im:
                assert im.format == "PNG" and im.width > 300 and im.height > 150
    path = figures.save_figure(figures.comparison_figure(inspections), tmp_path / "compare.png")
    with Image.open(path) as im:
        assert im.height > im.width > 600
    with pytest.raises(ValueError):
        figures.comparison_figure([])


# --- the command ------------------------------------------------------------------------------


def test_parse_weights() -> None:
    names = ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"]
    assert parse_weights("random", names) == dict.fromkeys(names, "random")
    assert parse_weights("dino=a.pth,dinov2_reg=b.pth", names) == {
        "dino_vits16": "a.pth", "dinov2_vits14": "pretrained", "dinov2_vits14_reg": "b.pth"}
    assert parse_weights("random, dinov2_vits14=c.pth", names)["dinov2_vits14"] == "c.pth"
    assert parse_weights("random, dinov2_vits14=c.pth", names)["dino_vits16"] == "random"
    for bad in ("nosuch=x", "dino_vitb16=x", "random,pretrained,dino=x", "dino="):
        with pytest.raises(ValueError):
            parse_weights(bad, names)
    assert backbone_names("dinov2_reg", "dino,dinov2_vits14_reg, dinov2") == names[2:] + names[:2]
    assert backbone_names(None, None) == ["dinov2_vits14_reg"]


@pytest.fixture(scope="module")
def compared(image_png: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, float, str, str]:
    """``lostreg inspect --compare dino,dinov2,dinov2_reg``, dino from a checkpoint file."""
    out = tmp_path_factory.mktemp("inspect")
    # The seeded random init, saved as a timm-format file: per-backbone --weights with a real path.
    checkpoint = out.parent / "dino_random.pth"
    torch.save(_build("dino").model.state_dict(), checkpoint)
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["inspect", str(image_png), "--compare", "dino,dinov2,dinov2_reg", "--device", "cpu",
                     "--weights", f"random,dino={checkpoint}", "--output", str(out)])
    return code, out, time.perf_counter() - start, stdout.getvalue(), stderr.getvalue()


def test_inspect_compare_writes_figures_and_summary(compared: tuple) -> None:
    code, out, seconds, stdout, stderr = compared
    assert code == 0, stderr
    names = ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"]
    expected = {f"{n}_{kind}.png" for n in names for kind in ("norms", "attention", "pca", "lost")}
    expected |= {"compare.png", "summary.json"}
    assert {p.name for p in out.iterdir()} == expected
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"image", "width", "height", "max_size", "norm_threshold", "norm_source", "method", "lost",
                            "backbones", "comparison_figure"}
    assert summary["method"] == "lost" and summary["lost"] == {
        "method": "lost", "which": "k", "layer": -1, "l2_normalize": False, "k_patches": 100, "gram_bias": 0.0,
        "exclude_outliers": False}
    assert (summary["width"], summary["height"], summary["comparison_figure"]) == (W, H, "compare.png")
    assert [b["backbone"] for b in summary["backbones"]] == names
    for record in summary["backbones"]:
        for key in ("outlier_share", "max_norm", "seed_rc", "box_xyxy", "outlier_count", "outliers_rc",
                    "norm_threshold", "attention", "figures", "random_weights"):
            assert key in record
        assert 0 <= record["outlier_share"] <= 1 and record["max_norm"] > 0
        x1, y1, x2, y2 = record["box_xyxy"]
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    reg = summary["backbones"][2]
    assert reg["num_registers"] == 4 and len(reg["attention"]["register_patch_mass"]) == 4
    # dino came from the checkpoint file: same numbers as random, but not flagged random.
    assert [b["random_weights"] for b in summary["backbones"]] == [False, True, True]
    assert "RANDOM weights" in stderr and "dino_vits16 has RANDOM" not in stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["backbone"] for line in lines] == names
    assert lines[0]["box_xyxy"] == summary["backbones"][0]["box_xyxy"]
    print(f"inspect --compare (3 random ViT-S, {W}x{H}): {seconds:.1f} s")
    assert seconds < 60


def test_inspect_pixels_skips_attention(image_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", str(image_png), "--backbone", "pixels", "--output", str(tmp_path),
                 "--norm-threshold", "150"])
    assert code == 0
    assert {p.name for p in tmp_path.iterdir()} == {"pixels_norms.png", "pixels_pca.png", "pixels_lost.png",
                                                    "summary.json"}
    record = json.loads((tmp_path / "summary.json").read_text())["backbones"][0]
    assert record["attention"] is None and "no attention" in record["attention_note"]
    assert record["norm_threshold"] == {"rule": "150", "value": 150.0}
    assert "attention" not in record["figures"]


@pytest.mark.parametrize("args, code, text", [
    (["missing.png"], 1, "missing.png: "),
    (["skimage:nosuch"], 1, "skimage:nosuch: unknown sample"),
    (["{img}", "--backbone", "nosuch"], 2, "unknown backbone 'nosuch'"),
    (["{img}", "--norm-threshold", "huge"], 2, "norm threshold"),
    (["{img}", "--compare", "dino", "--weights", "dinov2=x.pth"], 2, "not among the inspected"),
    (["{img}", "--backbone", "dino", "--weights", "/no/such/file.pth"], 2, "/no/such/file.pth"),
    (["{img}", "--backbone", "dino", "--weights", "random", "--layer", "12"], 2, "--layer must be in [-12, 11]"),
    (["{img}", "--k-patches", "0"], 2, "--k-patches must be >= 1"),
])
def test_inspect_errors_are_one_line(args: list[str], code: int, text: str, image_png: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["inspect", *(a.replace("{img}", str(image_png)) for a in args), "--output", str(tmp_path / "o")]
    assert main(argv) == code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1 and err[0].startswith("lostreg: error: ") and text in err[0], err


# --- TokenCut in inspect -----------------------------------------------------------------------

TOKENCUT = DiscoveryProtocol(method="tokencut")


@pytest.mark.parametrize("name", ["dino", "pixels"])
def test_tokencut_inspection_is_tokencut_on_the_discover_features(backbones: dict, name: str) -> None:
    """The maps are tokencut()'s on the very features discover uses, and the box is discover's."""
    backbone = backbones[name]
    image = scene(150, 100, seed=3)
    protocol = DiscoveryProtocol(method="tokencut", tokencut=TokenCutConfig(eig="scipy"))
    found = ObjectDiscoverer(backbone, protocol, max_size=96).discover(image, "x")
    insp = inspect_image(backbone, image, "x", protocol, max_size=96)
    assert insp.method == "tokencut" and insp.lost is None and insp.tokencut is not None
    assert insp.box_xyxy == found.box_xyxy and insp.seed_rc == found.seed_rc

    # insp.picture is the downscaled image discover prepares; its features, computed here anew.
    tensor = to_padded_tensor(insp.picture, backbone.patch_size, backbone.mean, backbone.std)
    feats = backbone.extract(tensor.tensor[None], "k", -1)[0]
    expected = tokencut(feats, tensor.grid_hw, eig="scipy")
    cut = insp.tokencut
    np.testing.assert_array_equal(cut.eigenvector, expected.eigenvector.numpy())
    np.testing.assert_array_equal(cut.bipartition, expected.bipartition.numpy())
    np.testing.assert_array_equal(cut.mask, expected.mask.numpy())
    assert cut.seed_rc == expected.seed_rc and cut.box == expected.box
    assert (cut.degenerate, cut.eigenvalues) == (expected.degenerate, expected.eigenvalues)
    assert cut.threshold == pytest.approx(float(expected.eigenvector.mean()))
    # The seed is on the positive side of the split, inside its component.
    assert cut.eigenvector[cut.seed_rc] > cut.threshold and cut.mask[cut.seed_rc] and cut.bipartition[cut.seed_rc]
    assert np.all(cut.bipartition[cut.mask])

    summary = insp.summary()
    assert summary["method"] == "tokencut" and summary["degenerate"] is False
    assert summary["eigenvalues"] == list(expected.eigenvalues)
    assert summary["eigenvalues"][0] <= summary["eigenvalues"][1]
    assert summary["mask_patches"] == int(expected.mask.sum())
    assert summary["bipartition_patches"] == int(expected.bipartition.sum())
    assert "num_similars" not in summary and "seed_in_mask" not in summary, "LOST's numbers only for LOST"

    for make in (figures.tokencut_figure, figures.method_figure, figures.norms_figure):
        assert isinstance(make(insp), Figure)
    with pytest.raises(ValueError, match="not LOST"):
        figures.lost_figure(insp)
    with pytest.raises(ValueError, match="not TokenCut"):
        figures.tokencut_figure(inspect_image(backbone, image, "x"))


def test_tokencut_inspection_of_a_flat_image_is_degenerate(backbones: dict, tmp_path: Path) -> None:
    flat = np.full((H, W, 3), (200, 30, 60), np.uint8)
    insp = inspect_image(backbones["pixels"], flat, "flat", TOKENCUT)
    cut = insp.tokencut
    assert cut is not None and cut.degenerate
    assert insp.box_xyxy == (0, 0, W, H), "the fixed whole-image result"
    assert np.all(cut.mask) and np.all(cut.eigenvector == 0)
    assert insp.summary()["degenerate"] is True
    path = figures.save_figure(figures.tokencut_figure(insp), tmp_path / "flat.png")
    assert path.stat().st_size > 0
    assert "DEGENERATE" in figures.tokencut_figure(insp)._suptitle.get_text()  # type: ignore[union-attr]
    assert isinstance(figures.comparison_figure([insp, inspect_image(backbones["pixels"], scene(), "s", TOKENCUT)]),
                      Figure)


def test_comparison_rows_follow_the_method(backbones: dict) -> None:
    assert figures.comparison_rows(["lost", "lost"]) == figures.COMPARISON_ROWS
    rows = figures.comparison_rows(["tokencut"])
    assert rows[0] == "TokenCut box + seed" and rows[-2:] == ("Fiedler vector", "bipartition + component")
    mixed = figures.comparison_rows(["lost", "tokencut"])
    assert mixed[0] == "LOST / TokenCut box + seed" and mixed[-1] == "expansion + mask / bipartition + component"
    lost = inspect_image(backbones["pixels"], scene(), "s")
    cut = inspect_image(backbones["pixels"], scene(), "s", TOKENCUT)
    fig = figures.comparison_figure([lost, cut])
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels[0] == "LOST / TokenCut box + seed"


def test_inspect_cli_tokencut(image_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cut"
    code = main(["inspect", str(image_png), "--compare", "pixels,dino", "--weights", "random", "--device", "cpu",
                 "--method", "tokencut", "--tau", "0.25", "--eig", "scipy", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert {p.name for p in out.iterdir()} == {
        "pixels_norms.png", "pixels_pca.png", "pixels_tokencut.png", "dino_vits16_norms.png",
        "dino_vits16_attention.png", "dino_vits16_pca.png", "dino_vits16_tokencut.png", "compare.png", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "tokencut"
    assert summary["lost"] == {"method": "tokencut", "which": "k", "layer": -1, "l2_normalize": False,
                               "tau": 0.25, "eps": 1e-5, "eig": "scipy"}
    for record in summary["backbones"]:
        assert record["method"] == "tokencut" and record["degenerate"] is False
        assert len(record["eigenvalues"]) == 2 and record["figures"]["tokencut"].endswith("_tokencut.png")
        assert "lost" not in record["figures"]
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [(line["method"], line["degenerate"]) for line in lines] == [("tokencut", False)] * 2
    # The same box as discover with the same knobs.
    found = ObjectDiscoverer(_build("pixels"), DiscoveryProtocol(
        method="tokencut", tokencut=TokenCutConfig(tau=0.25, eig="scipy"))).discover_path(image_png)
    assert summary["backbones"][0]["box_xyxy"] == list(found.box_xyxy)


def test_inspect_pixels_keeps_tokencut_knobs_when_layer_is_dropped(image_png: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """pixels has no layers: --layer is dropped with a note, TokenCut's knobs are not."""
    code = main(["inspect", str(image_png), "--backbone", "pixels", "--method", "tokencut", "--layer", "-2",
                 "--tau", "0.9", "--output", str(tmp_path)])
    assert code == 0
    record = json.loads((tmp_path / "summary.json").read_text())["backbones"][0]
    assert "--which/--layer do not apply" in record["note"]
    insp = inspect_image(_build("pixels"), scene(), "s",
                         DiscoveryProtocol(method="tokencut", tokencut=TokenCutConfig(tau=0.9)))
    assert record["box_xyxy"] == list(insp.box_xyxy) and record["eigenvalues"] == list(insp.tokencut.eigenvalues)
    default = inspect_image(_build("pixels"), scene(), "s", TOKENCUT)
    assert default.tokencut.eigenvalues != insp.tokencut.eigenvalues, "tau=0.9 gives another graph"


# --- DINOv3 in inspect -------------------------------------------------------------------------

V3_SMALL = {"depth": 3, "init_values": 1.0}  # LayerScale 1.0: timm's 1e-5 makes blocks near-identities


def _small_dinov3(rope: str = "pre", peaked_layer: int | None = None) -> DinoV3Backbone:
    """A 3-block random DINOv3 S/16; ``peaked_layer``: that block's q/k scaled up and the prefix
    tokens given unit-scale values, so its attention is far from uniform (see ``_peaked_copy``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_timm_eva(resolve_backbone("dinov3_vits16"), "random", torch.device("cpu"),
                                  rope=rope, model_kwargs=V3_SMALL)  # type: ignore[arg-type]
    if peaked_layer is not None:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for token in (backbone.model.cls_token, backbone.model.reg_token):
                token.copy_(torch.randn(token.shape, generator=gen))
            qkv = backbone.model.blocks[peaked_layer].attn.qkv
            dim = qkv.weight.shape[0] // 3
            qkv.weight[: 2 * dim] *= 5.0
    return backbone


def _no_hooks(model: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("layer", [-1, 1])
def test_dinov3_prefix_attention_is_the_blocks_softmax(layer: int) -> None:
    """CLS and register maps are softmax(scale q_rot k_rotᵀ) of the block, and reproduce its output."""
    from timm.layers import apply_rot_embed_cat

    backbone = _small_dinov3(peaked_layer=layer)
    images = to_padded_tensor(scene(), backbone.patch_size).tensor[None]
    trace = backbone.trace(images, layer)
    assert _no_hooks(backbone.model)
    rows, cols = trace.grid_hw
    prefix = trace.num_prefix_tokens
    block = backbone.model.blocks[trace.layer]
    attn = block.attn
    heads, hd = attn.num_heads, trace.q.shape[-1]
    assert (prefix, trace.num_registers, trace.has_class_token) == (5, 4, True)
    att = prefix_attention_qk(trace.q_rot, trace.k_rot, trace.scale, prefix, trace.grid_hw, trace.has_class_token)
    assert att.cls is not None and att.cls.shape == (1, heads, rows, cols)
    assert att.registers.shape == (1, 4, heads, rows, cols) and att.patch_mass.shape == (1, 5, heads)

    # Recomputed here in float64 from the block input: the fused projection (DINOv3 S/16 has no
    # qkv bias), heads split, patch rows rotated by the block's RoPE table, prefix rows not.
    with torch.inference_mode():
        x, rope = backbone.block_input(images, layer)
        xn = block.norm1(x)[0].double()
        qkv = (xn @ attn.qkv.weight.double().T).reshape(-1, 3, heads, hd).permute(1, 2, 0, 3)  # (3, H, T, hd)
        q, k, v = qkv.unbind(0)

        def rotate(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[:, :prefix], apply_rot_embed_cat(t[:, prefix:], rope.double(), half=True)], dim=1)

        probs = torch.softmax(rotate(q) @ rotate(k).transpose(-2, -1) / math.sqrt(hd), dim=-1)  # (H, T, T)
        unrotated = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        expected_out = attn(block.norm1(x), rope=rope)[0].double()
    assert float(probs[:, 0, prefix:].max()) > 5.0 / (rows * cols), "attention is peaked, not uniform"
    torch.testing.assert_close(att.cls[0].double(), probs[:, 0, prefix:].reshape(heads, rows, cols),
                               rtol=1e-4, atol=1e-6)
    for r in range(4):
        torch.testing.assert_close(att.registers[0, r].double(),
                                   probs[:, 1 + r, prefix:].reshape(heads, rows, cols), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(att.patch_mass[0, 0].double(), 1 - probs[:, 0, :prefix].sum(-1), rtol=1e-4, atol=1e-6)

    # The same probabilities give the block's own attention output (probs @ v, heads merged, norm, proj) ...
    def output(p: torch.Tensor) -> torch.Tensor:
        merged = (p @ v).transpose(0, 1).reshape(-1, heads * hd)
        return attn.proj(attn.norm(merged.float())).double()

    torch.testing.assert_close(output(probs), expected_out, rtol=1e-3, atol=1e-4)
    # ... and the probabilities of unrotated q/k do not: RoPE is part of what the maps show.
    assert not torch.allclose(output(unrotated), expected_out, rtol=1e-3, atol=1e-4)
    assert not torch.allclose(unrotated[:, 0, prefix:], probs[:, 0, prefix:], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_dinov3_trace_equals_extract_and_forward_features(rope: str) -> None:
    backbone = _small_dinov3(rope)
    images = to_padded_tensor(scene(), 16).tensor[None]
    for layer in (-1, 0):
        trace = backbone.trace(images, layer)
        for which in ("q", "k", "v"):
            assert torch.equal(trace.features(which), backbone.extract(images, which, layer)), (which, layer)
    # Prefix q/k are never rotated; patch rows are.
    npt = trace.num_prefix_tokens
    assert torch.equal(trace.q_rot[:, :, :npt], trace.q[:, :, :npt]) and torch.equal(trace.k_rot[:, :, :npt],
                                                                                      trace.k[:, :, :npt])
    assert not torch.allclose(trace.k_rot[:, :, npt:], trace.k[:, :, npt:])
    with torch.inference_mode():
        expected = backbone.model.forward_features(images)
        renormed = backbone.model.norm(trace.prenorm)
    torch.testing.assert_close(trace.final, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trace.final, renormed)
    assert _no_hooks(backbone.model)


@pytest.mark.parametrize("method", ["lost", "tokencut"])
def test_dinov3_inspection_has_cls_and_register_maps(method: str) -> None:
    backbone = _small_dinov3(peaked_layer=2)
    protocol = DiscoveryProtocol(method=method)
    image = scene(150, 100, seed=3)
    insp = inspect_image(backbone, image, "x", protocol)
    rows, cols = insp.grid_hw
    assert insp.attention_note is None and insp.attention_layer == 2
    assert insp.cls_attention is not None and insp.cls_attention.shape == (6, rows, cols)
    assert insp.register_attention is not None and insp.register_attention.shape == (4, 6, rows, cols)
    assert insp.prefix_patch_mass is not None and insp.prefix_patch_mass.shape == (5, 6)
    images = to_padded_tensor(image, 16).tensor[None]
    trace = backbone.trace(images)
    att = prefix_attention_qk(trace.q_rot, trace.k_rot, trace.scale, 5, trace.grid_hw)
    np.testing.assert_array_equal(insp.cls_attention, att.cls[0].numpy())
    np.testing.assert_array_equal(insp.register_attention, att.registers[0].numpy())
    # Norms of the final-LayerNorm patch tokens (prefix dropped), like the ViT path.
    np.testing.assert_allclose(insp.norms.ravel(), trace.final[0, 5:].norm(dim=-1).numpy(), rtol=1e-6)
    pre = inspect_image(backbone, image, "x", protocol, norm_source="prenorm")
    np.testing.assert_allclose(pre.norms.ravel(), trace.prenorm[0, 5:].norm(dim=-1).numpy(), rtol=1e-6)
    # The box is discover's, from the same (pre-RoPE) keys.
    found = ObjectDiscoverer(backbone, protocol).discover(image, "x")
    assert insp.box_xyxy == found.box_xyxy and insp.seed_rc == found.seed_rc
    summary = insp.summary()
    assert summary["attention"]["layer"] == 2 and len(summary["attention"]["register_patch_mass"]) == 4
    assert isinstance(figures.attention_figure(insp), Figure)
    assert _no_hooks(backbone.model)


def test_inspect_cli_dinov3_writes_attention(image_png: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", str(image_png), "--backbone", "dinov3", "--weights", "random", "--device", "cpu",
                 "--method", "tokencut", "--output", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert "dinov3_vits16_attention.png" in {p.name for p in tmp_path.iterdir()}
    record = json.loads((tmp_path / "summary.json").read_text())["backbones"][0]
    assert record["attention_note"] is None and record["attention"]["layer"] == 11
    assert record["num_registers"] == 4 and len(record["attention"]["register_patch_mass"]) == 4
