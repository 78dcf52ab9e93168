"""Artifact-aware LOST (``lost.exclude_outliers``): the outlier rule, the output norms, the seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lostreg.artifacts import outlier_mask
from lostreg.backbones import build_backbone
from lostreg.diagnostics.tokens import find_outliers
from lostreg.discovery import ObjectDiscoverer
from lostreg.lost import lost
from lostreg.protocol import OUTPUT_NORMS, DiscoveryProtocol, FeatureKey, LostConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_batched_rule_is_the_diagnostics_rule() -> None:
    rng = np.random.default_rng(0)
    norms = rng.normal(10, 1, size=(4, 60))
    norms[0, [3, 40]] = 80.0
    norms[2, 7] = 13.5
    norms[3] = 5.0  # MAD 0: the threshold is the median, nothing is above it
    mask = outlier_mask(torch.from_numpy(norms))
    for i in range(4):
        assert np.array_equal(mask[i].numpy(), find_outliers(norms[i].reshape(6, 10)).mask.reshape(-1))
    assert mask[0, 3] and mask[0, 40] and mask.sum(dim=1)[3] == 0


def test_output_norms_are_the_final_tokens_norms() -> None:
    backbone = build_backbone("dino", weights="random", device="cpu")
    x = torch.randn(2, 3, 224, 224)  # the pretrained grid: timm's forward needs no resize here
    many = backbone.extract_many(x, [FeatureKey("k", -2), OUTPUT_NORMS])
    with torch.inference_mode():
        expected = backbone.model.forward_features(x)[:, 1:].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(many[OUTPUT_NORMS], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(many[FeatureKey("k", -2)], backbone.extract(x, "k", -2))


def _scene_features(seed: int = 0) -> tuple[torch.Tensor, tuple[int, int], list[int], list[int]]:
    """A 8x10 grid: background along one direction, a 3x3 object along another, and two artifact
    tokens of huge norm pointing against everything (degree 0: plain LOST's seed)."""
    rng = np.random.default_rng(seed)
    rows, cols, dim = 8, 10, 16
    background, obj = np.eye(dim)[0], np.eye(dim)[1]
    features = background + 0.05 * rng.normal(size=(rows * cols, dim))
    object_ids = [r * cols + c for r in range(2, 5) for c in range(3, 6)]
    features[object_ids] = obj + 0.4 * background * -1 + 0.05 * rng.normal(size=(len(object_ids), dim))
    artifact_ids = [0, rows * cols - 1]
    features[artifact_ids] = -60.0 * (background + obj) + rng.normal(size=(2, dim))
    return torch.tensor(features, dtype=torch.float32), (rows, cols), object_ids, artifact_ids


def test_excluded_patches_are_never_the_seed() -> None:
    from lostreg.methods import run_method

    features, grid, object_ids, artifact_ids = _scene_features()
    norms = features.norm(dim=-1, keepdim=True)[None]
    assert outlier_mask(norms)[0].nonzero().flatten().tolist() == artifact_ids
    plain = run_method(DiscoveryProtocol(), features[None], grid, norms)[0]
    aware = run_method(DiscoveryProtocol(lost=LostConfig(exclude_outliers=True)), features[None], grid, norms)[0]
    assert plain.seed in artifact_ids, "the artifact has the lowest degree: plain LOST seeds on it"
    assert aware.seed in object_ids and aware.box == (3, 2, 6, 5)
    expected = lost(features, grid, excluded=outlier_mask(norms)[0])
    assert aware.seed == expected.seed and torch.equal(aware.mask, expected.mask)
    with pytest.raises(ValueError, match="needs the output tokens' norms"):
        run_method(DiscoveryProtocol(lost=LostConfig(exclude_outliers=True)), features[None], grid)
    assert DiscoveryProtocol(lost=LostConfig(exclude_outliers=True)).name.endswith("_xo")


def test_discoverer_asks_for_the_norms_only_when_needed() -> None:
    backbone = build_backbone("dino", weights="random", device="cpu")
    plain = ObjectDiscoverer(backbone)
    aware = ObjectDiscoverer(backbone, DiscoveryProtocol(lost=LostConfig(exclude_outliers=True)))
    assert plain.feature_keys == [FeatureKey("k", -1)]
    assert aware.feature_keys == [FeatureKey("k", -1), OUTPUT_NORMS]
    image = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    found = aware.discover(image)
    item = aware.prepare(image, "x")
    many = backbone.extract_many(item.padded.tensor[None], aware.feature_keys)
    expected = lost(many[FeatureKey("k", -1)][0], item.grid_hw, excluded=outlier_mask(many[OUTPUT_NORMS])[0])
    assert found.result.seed == expected.seed and found.result.box == expected.box
