"""``lostreg artifacts``: the artifact study on a random ViT with a planted register neuron.

The setting (tests/planted.py, spec A8): random ``dinov2_vits14`` with LayerScale 1.0; twelve
112 x 112 uint8 noise images (8 x 8 patch grids), each with three flat mean-colour patches at
random cells (seed 0); in the planted twin, hidden unit 777 of block 8 fires on exactly those
patches, whose block outputs jump from ~10 to 80-150. With seed 0 the outlier rule (median + 5
MAD) flags no patch of the plain model at any block, and exactly the flat patches of the planted
one from block 8 on (checked below, not assumed). The test-time register comes from
``calibrate`` on the planted model's first four images.

Expectations measured, not assumed: the study's numbers are recomputed here from the backbone's
own block stepping, by hand, and compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from threadpoolctl import threadpool_limits

from planted import LAYER, MEAN_RGB, PATCH, layerscale_one_vit, planted_twin, prepare
from lostreg.artifacts import OutlierRule
from lostreg.study.probes import pixel_probe, position_probe
from lostreg.study.run import ArtifactStudy, StudyBatch, StudySettings, is_test_image
from lostreg.study.sketch import BottomKSample, Histogram
from lostreg.study.tokens import neighbour_cosine, rule_mask, token_norms
from lostreg.ttreg import apply_test_time_registers, calibrate

SIZE = 112
GRID = SIZE // PATCH
N_IMAGES = 12
TEST_IMAGES = [3, 7, 11]  # is_test_image with the default fraction 0.25
SETTINGS = StudySettings(norm_threshold=50.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch (and so scikit-learn BLAS) thread: these tensors are tiny, and on a shared CPU
    threads mostly wait for each other (the study follows torch's thread count)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _flat_images() -> tuple[list[np.ndarray], torch.Tensor]:
    """Twelve noise images with three flat patches each at random cells; (12, 64) bool flat mask."""
    rng = np.random.default_rng(0)
    images, flat = [], torch.zeros(N_IMAGES, GRID * GRID, dtype=torch.bool)
    for b in range(N_IMAGES):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for cell in rng.choice(GRID * GRID, 3, replace=False):
            r, c = divmod(int(cell), GRID)
            image[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = MEAN_RGB
            flat[b, int(cell)] = True
        images.append(image)
    return images, flat


def _study(backbone, x: torch.Tensor, batch_size: int = 5, settings: StudySettings = SETTINGS,
           labels: list[tuple[str, ...]] | None = None, classes: list[str] | None = None) -> ArtifactStudy:
    study = ArtifactStudy(backbone, settings, class_names=classes)
    for start in range(0, x.shape[0], batch_size):
        indices = list(range(start, min(start + batch_size, x.shape[0])))
        study.add(StudyBatch(x[indices], indices, None if labels is None else [labels[i] for i in indices]))
    return study


@pytest.fixture(scope="module")
def lab() -> dict:
    images, flat = _flat_images()
    base = layerscale_one_vit()
    x = prepare(base, images)
    planted = planted_twin(base, x, flat)
    neurons = calibrate(planted, [x[:4]], top_k=1, highest_layer=LAYER)
    fixed = apply_test_time_registers(planted, neurons)
    lab = {"images": images, "flat": flat, "x": x, "base": base, "planted": planted, "fixed": fixed,
           "neurons": neurons}
    for name in ("base", "planted", "fixed"):
        lab[f"study_{name}"] = study = _study(lab[name], x)
        lab[name + "_record"] = study.result()
    return lab


def _last_tokens(backbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n, D) patch tokens leaving the last block, and (B, n, D) entering block 0, by block stepping."""
    with torch.inference_mode():
        state = backbone.begin(x)
        entering = backbone.patch_tokens(state.tokens, state.grid_hw)
        state = backbone.advance(state, backbone.num_layers)
        return backbone.patch_tokens(state.tokens, state.grid_hw), entering


# --- the planted experiment -------------------------------------------------------------------------


def test_outlier_share_jumps_at_the_planted_block(lab: dict) -> None:
    rows = lab["planted_record"]["layers"]
    assert [row["layer"] for row in rows] == list(range(12))
    total = N_IMAGES * GRID * GRID
    for row in rows:
        assert row["tokens"] == total and row["images"] == N_IMAGES
        if row["layer"] < LAYER:
            assert row["outlier_tokens"] == 0 and row["outlier_share"] == 0.0, row
            assert row["absolute_tokens"] == 0 and row["max_norm"] < 30, row
        else:
            assert row["outlier_tokens"] == 3 * N_IMAGES and row["outlier_share"] == pytest.approx(3 / 64), row
            assert row["images_with_outliers"] == N_IMAGES
            assert row["absolute_tokens"] == 3 * N_IMAGES, "every planted patch is above 50"
            assert row["max_norm"] > 80
    assert lab["planted_record"]["first_layer_with_outliers"] == LAYER
    assert lab["planted_record"]["outlier_share"] == pytest.approx(3 / 64)
    # The unplanted twin has none anywhere; both agree exactly before the plant.
    base_rows = lab["base_record"]["layers"]
    assert all(row["outlier_tokens"] == 0 for row in base_rows)
    assert lab["base_record"]["first_layer_with_outliers"] is None
    assert base_rows[:LAYER] == rows[:LAYER]


def test_quantiles_match_the_exact_ones(lab: dict) -> None:
    """Median/p90/p99 from the fixed bins are within one bin (0.46%) of torch.quantile; max exact."""
    with torch.inference_mode():
        state = lab["planted"].begin(lab["x"])
        for layer in range(12):
            state = lab["planted"].advance(state, layer + 1)
            norms = token_norms(lab["planted"].patch_tokens(state.tokens, state.grid_hw)).double().flatten()
            row = lab["planted_record"]["layers"][layer]
            for q, key in ((0.5, "median_norm"), (0.9, "p90_norm"), (0.99, "p99_norm")):
                exact = float(torch.quantile(norms, q))
                assert row[key] == pytest.approx(exact, rel=0.0047), (layer, key)
            assert row["max_norm"] == pytest.approx(float(norms.max()), rel=1e-6)


def test_the_outliers_are_exactly_the_planted_patches(lab: dict) -> None:
    planted, x, flat = lab["planted"], lab["x"], lab["flat"]
    with torch.inference_mode():
        state = planted.advance(planted.begin(x), LAYER + 1)
        mask = rule_mask(token_norms(planted.patch_tokens(state.tokens, state.grid_hw)), OutlierRule())
    assert torch.equal(mask, flat)


def _cosine_by_hand(tokens: torch.Tensor, b: int, cell: int) -> float:
    """Mean cosine of image b's patch ``cell`` to its 4-neighbours that exist, one pair at a time."""
    r, c = divmod(cell, GRID)
    sims = [float(F.cosine_similarity(tokens[b, cell], tokens[b, rr * GRID + cc], dim=0))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)) if 0 <= rr < GRID and 0 <= cc < GRID]
    return sum(sims) / len(sims)


def test_neighbour_cosine_is_computed_on_the_planted_patches(lab: dict) -> None:
    planted, flat = lab["planted"], lab["flat"]
    last, entering = _last_tokens(planted, lab["x"])
    for key, tokens in (("neighbour_cosine", last), ("neighbour_cosine_input", entering)):
        outliers = [_cosine_by_hand(tokens, b, int(cell)) for b in range(N_IMAGES) for cell in torch.nonzero(flat[b])]
        normals = [_cosine_by_hand(tokens, b, int(cell)) for b in range(N_IMAGES) for cell in torch.nonzero(~flat[b])]
        entry = lab["planted_record"][key]
        assert entry["outlier_tokens"] == len(outliers) == 36 and entry["normal_tokens"] == len(normals) == 732
        assert entry["outlier"] == pytest.approx(np.mean(outliers), abs=1e-5)
        assert entry["normal"] == pytest.approx(np.mean(normals), abs=1e-5)
    # A planted artifact points along the planted unit's output: it resembles its neighbours less.
    nc = lab["planted_record"]["neighbour_cosine"]
    assert nc["outlier"] < nc["normal"]


def test_probes_are_trained_and_scored_on_held_out_images(lab: dict) -> None:
    record, study, flat = lab["planted_record"], lab["study_planted"], lab["flat"]
    probes = record["probes"]
    assert [i for i in range(N_IMAGES) if is_test_image(i, 0.25)] == TEST_IMAGES
    assert probes["train_images"] == 9 and probes["test_images"] == 3
    assert probes["train_tokens_seen"] == 9 * 64
    assert probes["test_tokens_seen"] == {"normal": 3 * 61, "outlier": 3 * 3}
    last, _ = _last_tokens(lab["planted"], lab["x"])
    # The training sample is every token of the training images, and of no test image.
    train = [i for i in range(N_IMAGES) if i not in TEST_IMAGES]
    expected = last[train].reshape(-1, last.shape[-1]).numpy()
    kept = study.train.column("x")
    assert kept.shape == expected.shape
    assert np.allclose(np.sort(kept, axis=0), np.sort(expected, axis=0), atol=1e-5)
    # The outlier test sample is exactly the test images' planted patches (cells and features).
    outlier_cells = sorted(int(c) for i in TEST_IMAGES for c in torch.nonzero(flat[i]))
    assert sorted(study.test["outlier"].column("cell").tolist()) == outlier_cells
    expected_out = torch.cat([last[i][flat[i]] for i in TEST_IMAGES]).numpy()
    assert np.allclose(np.sort(study.test["outlier"].column("x"), axis=0), np.sort(expected_out, axis=0), atol=1e-5)
    # Scores: both kinds, with the tokens they rest on; the record's numbers are the probes' on these samples.
    position, pixels = probes["position"], probes["pixels"]
    assert position["train_tokens"] == pixels["train_tokens"] == 576 and position["classes"] == 64
    assert position["outlier"]["tokens"] == pixels["outlier"]["tokens"] == 9
    assert position["normal"]["tokens"] == pixels["normal"]["tokens"] == 183
    tests = {k: (study.test[k].column("x"), study.test[k].column("cell")) for k in ("normal", "outlier")}
    with threadpool_limits(limits=1):  # as the study ran them: the same BLAS, the same bits
        again = position_probe(study.train.column("x"), study.train.column("cell"), tests, (GRID, GRID))
        again_pix = pixel_probe(study.train.column("x"), study.train.column("pixels"),
                                {"normal": (study.test["normal"].column("x"), study.test["normal"].column("pixels"))})
    assert again["outlier"] == position["outlier"] and again["normal"] == position["normal"]
    for kind in ("normal", "outlier"):
        assert 0.0 <= position[kind]["top1"] <= 1.0 and 0.0 <= position[kind]["mean_distance"] <= math.hypot(7, 7)
    # The pixel probe learns something on held-out normal tokens: below the mean-patch baseline.
    assert pixels["normal"]["l2_error"] < 0.95 * pixels["normal"]["baseline_l2_error"]
    assert again_pix["normal"] == pixels["normal"]


def test_test_time_register_removes_the_outliers(lab: dict) -> None:
    assert lab["neurons"].units[0].layer == LAYER
    record = lab["fixed_record"]
    assert record["test_time_register"] is True
    assert all(row["outlier_tokens"] == 0 and row["absolute_tokens"] == 0 for row in record["layers"])
    assert record["outlier_share"] == 0.0 and record["first_layer_with_outliers"] is None
    for layer in (LAYER, 11):  # the patches are back to the unplanted model's norms
        assert record["layers"][layer]["max_norm"] == pytest.approx(lab["base_record"]["layers"][layer]["max_norm"],
                                                                    rel=0.02)


def test_no_outliers_means_null_and_a_note(lab: dict) -> None:
    record = lab["base_record"]
    text = json.dumps(record, allow_nan=False)  # no NaN or infinity anywhere
    assert "NaN" not in text
    assert record["neighbour_cosine"]["outlier"] is None and record["neighbour_cosine"]["notes"]
    assert record["neighbour_cosine"]["normal"] is not None
    for probe in ("position", "pixels"):
        assert record["probes"][probe]["outlier"] is None
        assert any("outlier" in note for note in record["probes"][probe]["notes"])
        assert record["probes"][probe]["normal"]["tokens"] == 192
    assert any("no outlier token" in note for note in record["notes"])


def test_final_norm_source_reads_the_output_features(lab: dict) -> None:
    """norm_source="final": at the last block, the norms of the features extract_many's output norms give."""
    from lostreg.protocol import OUTPUT_NORMS

    planted, x = lab["planted"], lab["x"]
    study = _study(planted, x, settings=StudySettings(norm_source="final", norm_threshold=50.0))
    last = study.result()["layers"][-1]
    with torch.inference_mode():
        norms = planted.extract_many(x, [OUTPUT_NORMS])[OUTPUT_NORMS].double().flatten()
    assert last["max_norm"] == pytest.approx(float(norms.max()), rel=1e-5)
    assert last["min_norm"] == pytest.approx(float(norms.min()), rel=1e-5)
    assert last["median_norm"] == pytest.approx(float(torch.quantile(norms, 0.5)), rel=0.0047)
    # The final LayerNorm (unit gains in this random model) rescales every token to about the same
    # norm: the planted artifacts no longer stand out above 50 there, unlike before it.
    assert last["absolute_tokens"] == 0 and lab["planted_record"]["layers"][-1]["absolute_tokens"] == 36


def test_batching_does_not_change_the_study(lab: dict) -> None:
    one = _study(lab["planted"], lab["x"], batch_size=N_IMAGES)
    record = one.result()
    reference = lab["planted_record"]
    for a, b in zip(record["layers"], reference["layers"]):
        for key in ("outlier_tokens", "images_with_outliers", "absolute_tokens", "tokens"):
            assert a[key] == b[key]
        assert a["median_norm"] == pytest.approx(b["median_norm"], rel=1e-4)
    assert np.allclose(one.train.column("x"), lab["study_planted"].train.column("x"), atol=1e-4)
    assert np.array_equal(one.train.column("cell"), lab["study_planted"].train.column("cell"))


def test_memory_is_bounded_by_the_sample_sizes(lab: dict) -> None:
    small = _study(lab["planted"], lab["x"], settings=StudySettings(norm_threshold=50.0, train_tokens=100,
                                                                    test_tokens=5))
    assert len(small.train) == 100 and small.train.seen == 576
    assert len(small.test["outlier"]) == 5 and len(small.test["normal"]) == 5
    record = small.result()
    assert record["probes"]["position"]["train_tokens"] == 100
    assert record["probes"]["position"]["outlier"]["tokens"] == 5
    assert all(h.counts.size == 5002 for h in (layer.histogram for layer in small.layers))


def test_global_probe_from_labels(lab: dict) -> None:
    """Two classes: the images as they are, and brightened by 15 outside their flat patches (kept
    mean-colour, so that the planted unit still fires there)."""
    flat_pixels = lab["flat"].reshape(-1, GRID, GRID).repeat_interleave(PATCH, 1).repeat_interleave(PATCH, 2).numpy()
    images = [np.where(flat_pixels[i][..., None], im, np.clip(im.astype(int) + 15, 0, 255)).astype(np.uint8)
              if i % 2 else im for i, im in enumerate(lab["images"])]
    x = prepare(lab["base"], images)
    labels = [("bright",) if i % 2 else ("plain",) for i in range(N_IMAGES)]
    study = _study(lab["planted"], x, labels=labels, classes=["bright", "plain"])
    g = study.result()["global"]
    assert g["metric"] == "top1" and g["classes"] == 2 and not g["multilabel"]
    assert g["train_images_seen"] == 9 and g["test_images_seen"] == 3
    for token in ("cls", "normal"):
        assert g[token]["train_images"] == 9 and g[token]["test_images"] == 3
        assert 0.0 <= g[token]["value"] <= 1.0
    # Brightness is a global property every token sees: CLS separates it on held-out images.
    assert g["cls"]["value"] == 1.0
    # Every image keeps its three planted outliers: the outlier-token probe rests on all of them.
    assert g["outlier"]["train_images"] == 9 and g["outlier"]["test_images"] == 3
    assert g["on_outlier_images"]["cls"] == g["cls"]


# --- the pieces -------------------------------------------------------------------------------------


def test_histogram_quantiles_and_moments() -> None:
    values = torch.from_numpy(np.random.default_rng(0).lognormal(2.0, 1.0, 20000))
    h = Histogram.log_spaced()
    for chunk in values.split(3000):
        h.add(chunk)
    assert h.total == 20000 and h.max == float(values.max()) and h.min == float(values.min())
    assert h.mean == pytest.approx(float(values.mean()), rel=1e-12)
    for q in (0.01, 0.5, 0.9, 0.99):
        assert h.quantile(q) == pytest.approx(float(torch.quantile(values, q)), rel=0.0047)
    assert Histogram.log_spaced().quantile(0.5) is None and Histogram.log_spaced().mean is None
    cosines = Histogram.linear(-1.0, 1.0, 100)
    cosines.add(torch.tensor([-1.0, 1.0, 0.0]))
    assert cosines.counts[0] == cosines.counts[-1] == 0, "-1 and 1 are inside the bins"
    with pytest.raises(ValueError):
        cosines.add(torch.tensor([float("nan")]))


def test_bottom_k_sample_is_the_smallest_keys_whatever_the_batching() -> None:
    rng = np.random.default_rng(1)
    keys, rows = rng.random(1000), np.arange(1000)
    whole, pieces = BottomKSample(50), BottomKSample(50)
    whole.add(keys, row=rows)
    for start in range(0, 1000, 77):
        pieces.add(keys[start:start + 77], row=rows[start:start + 77])
    expected = np.sort(rows[np.argsort(keys)[:50]])
    assert np.array_equal(np.sort(whole.column("row")), expected)
    assert np.array_equal(np.sort(pieces.column("row")), expected)
    assert len(pieces) == 50 and pieces.seen == 1000


def test_neighbour_cosine_on_a_small_grid() -> None:
    tokens = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(0))  # 2 x 3 grids
    got = neighbour_cosine(tokens, (2, 3))
    for b in range(2):
        for cell in range(6):
            r, c = divmod(cell, 3)
            sims = [float(F.cosine_similarity(tokens[b, cell], tokens[b, rr * 3 + cc], dim=0))
                    for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)) if 0 <= rr < 2 and 0 <= cc < 3]
            assert float(got[b, cell]) == pytest.approx(sum(sims) / len(sims), abs=1e-6)


def test_the_split_is_by_image_and_proportional() -> None:
    for n, f in ((12, 0.25), (100, 0.2), (7, 0.5)):
        test = [i for i in range(n) if is_test_image(i, f)]
        assert len(test) == math.floor(n * f)


def test_label_files_and_folders(tmp_path: Path) -> None:
    from lostreg.study.inputs import LabelError, folder_labels, read_label_file

    images = [tmp_path / "a" / "x.png", tmp_path / "b" / "y.png", tmp_path / "b" / "z.png"]
    (tmp_path / "l.json").write_text(json.dumps({"x.png": "cat", str(images[1]): ["dog", "cat"], "z.png": ["dog"]}))
    assert read_label_file(tmp_path / "l.json", images) == [("cat",), ("cat", "dog"), ("dog",)]
    (tmp_path / "l.csv").write_text("x.png,cat\ny.png,dog\ny.png,cat\nz.png,dog\n")
    assert read_label_file(tmp_path / "l.csv", images) == [("cat",), ("cat", "dog"), ("dog",)]
    (tmp_path / "short.csv").write_text("x.png,cat\n")
    with pytest.raises(LabelError, match="no labels for 2 image"):
        read_label_file(tmp_path / "short.csv", images)
    twins = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    with pytest.raises(LabelError, match="names several images"):
        read_label_file(tmp_path / "l.csv", twins)
    (tmp_path / "bad.csv").write_text("x.png\n")
    with pytest.raises(LabelError, match="line 1: expected 'image,label'"):
        read_label_file(tmp_path / "bad.csv", images)
    assert folder_labels(images, tmp_path) == [("a",), ("b",), ("b",)]
    with pytest.raises(LabelError, match="not in a class sub-folder"):
        folder_labels([tmp_path / "top.png"], tmp_path)


def test_square_crop() -> None:
    from lostreg.study.inputs import square_crop

    wide = np.zeros((375, 500, 3), np.uint8)
    wide[:, 250:] = 255  # right half white
    out = square_crop(wide, 224)
    assert out.shape == (224, 224, 3)
    # Shorter side 375 -> 224, longer 500 -> 299; the centre crop keeps the middle, where the edge is.
    assert out[:, 0].max() < 10 and out[:, -1].min() > 245
    same = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(square_crop(same, 112), same), "an image of the study size is not resampled"


def test_pixels_are_refused_clearly() -> None:
    from lostreg.backbones import build_backbone
    from lostreg.errors import ConfigError

    with pytest.raises(ConfigError, match="pixels has no transformer blocks"):
        ArtifactStudy(build_backbone("pixels", device="cpu"))


# --- the command --------------------------------------------------------------------------------------


def _write_images(folder: Path, images: list[np.ndarray]) -> None:
    for i, image in enumerate(images):
        sub = folder / ("bright" if i % 2 else "plain")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:02d}.png")


def test_command_end_to_end_with_the_test_time_register(lab: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lostreg.cli.main import main

    _write_images(tmp_path / "images", lab["images"])
    weights = tmp_path / "planted.pth"
    torch.save(lab["planted"].model.state_dict(), weights)
    neurons = lab["neurons"].save(tmp_path / "neurons.json")
    out = tmp_path / "out"
    code = main(["artifacts", "--backbone", "dinov2", "--weights", str(weights), "--images", str(tmp_path / "images"),
                 "--labels", "folders", "--image-size", str(SIZE), "--norm-threshold", "50", "--ttreg", str(neurons),
                 "--batch-size", "5", "--device", "cpu", "--no-progress", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    labels = ["dinov2_vits14-planted", "dinov2_vits14-planted-ttreg-neurons"]  # as eval names run folders
    assert [line["label"] for line in lines] == labels
    assert lines[0]["outlier_share"] == pytest.approx(3 / 64) and lines[1]["outlier_share"] == 0.0
    for name in ("compare.md", "compare.json", "report.html", "outlier_share_by_size.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / labels[0] / "artifacts.json").read_text())
    # Files sorted by folder (bright/, plain/): the study's images are in that order, same numbers.
    assert [row["outlier_tokens"] for row in record["layers"]] == [0] * LAYER + [36] * (12 - LAYER)
    assert record["images"] == N_IMAGES and record["labels"] == {"classes": ["bright", "plain"], "multilabel": False}
    assert record["weights"] == "planted.pth" and record["ttreg"] is None
    assert record["global"]["cls"]["test_images"] == 3
    assert record["cost"]["seconds_per_image"] > 0 and "cpu" in record["cost"]["device"]
    for name in ("summary.md", "report.html", "norms_by_layer.png", "norm_histogram.png", "neighbour_cosine.png"):
        assert (out / labels[0] / name).is_file(), name
    summary = (out / "compare.md").read_text()
    assert "4.69% (36/768)" in summary and "0.00% (0/768)" in summary and "test-time register" in summary
    # The comparison again, from the folders alone.
    again = tmp_path / "again"
    assert main(["artifacts", "--compare", str(out), "--output", str(again)]) == 0
    assert (again / "compare.md").read_text() == summary


def test_command_on_a_voc_dataset_is_multilabel(voc6, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lostreg.cli.main import main

    out = tmp_path / "voc"
    code = main(["artifacts", "dataset=voc07", f"dataset.root={voc6.root}", "--backbone", "dinov2", "--weights",
                 "random", "--image-size", "56", "--device", "cpu", "--no-progress", "--output", str(out),
                 "--test-fraction", "0.5"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "artifacts.json").read_text())
    assert record["label"] == "dinov2_vits14-random" and record["weights"] == "random"
    assert record["images"] == 6 and record["grid"] == [4, 4] and record["random_weights"]
    assert record["labels"]["multilabel"] is True
    classes = sorted({obj.name for image in voc6.images for obj in image.gt_objects()})
    assert record["labels"]["classes"] == classes
    assert record["global"]["metric"] == "mAP"
    assert record["probes"]["train_images"] == 3 and record["probes"]["test_images"] == 3


@pytest.mark.parametrize("argv, text", [
    (["--images", "{empty}"], "no images to study"),
    (["--images", "{img}", "--output", "{file}"], "exists and is not a folder"),
    (["--images", "{img}", "--backbone", "no_such_vit"], "unknown backbone 'no_such_vit'"),
    (["--images", "{img}", "--backbone", "pixels"], "pixels has no transformer blocks"),
    (["--images", "{img}", "--image-size", "100"], "--image-size 100 is not a multiple of dinov2_vits14's patch size 14"),
    (["--images", "{img}", "--outlier-rule", "lots"], "outlier rule (--outlier-rule) must be"),
    (["--images", "{img}", "--labels", "{file}"], "no labels for 1 image(s)"),
    (["--images", "{img}", "--layer", "12"], "--layer: dinov2_vits14 has 12 blocks"),
    (["dataset=voc07", "backbone=dino", "--images", "{img}"], "give --images or dataset=... overrides, not both"),
])
def test_bad_inputs_are_one_line_errors(argv: list[str], text: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lostreg.cli.main import main

    (tmp_path / "empty").mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "file.csv").write_text("other.png,cat\n")
    places = {"empty": tmp_path / "empty", "img": tmp_path / "a.png", "file": tmp_path / "file.csv"}
    argv = [a.format(**places) for a in argv]
    defaults = ["--weights", "random", "--device", "cpu", "--no-progress"]
    if "--backbone" not in argv:
        defaults += ["--backbone", "dinov2"]
    if "--output" not in argv:
        defaults += ["--output", str(tmp_path / "out")]
    assert main(["artifacts", *argv, *defaults]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lostreg: error:")]
    assert errors and text in errors[-1], errors
    assert "Traceback" not in "\n".join(errors)
    assert not (tmp_path / "out" / "artifacts.json").exists()
