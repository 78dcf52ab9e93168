"""Several objects per image (``objects=N``): N=1 is today's result bit for bit, N>1 finds more, and stops.

LOST: after each object its patches can no longer seed or expand (lostreg.lost.lost_objects).
TokenCut: after each object its patches leave the graph and the cut is solved again, MaskCut's
rule (lostreg.tokencut.tokencut_objects). Features are the weight-free ``pixels`` backbone's on
generated scenes with known objects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import synthetic
from helpers import eval_pixels, run_command
from lostreg.backbones import build_backbone
from lostreg.boxes import iou_matrix, patch_box_to_pixels
from lostreg.config import compose_config, protocol_from_config
from lostreg.knobs import ProtocolError
from lostreg.lost import lost_batch, lost_objects
from lostreg.methods import find_objects, run_method
from lostreg.preprocess import to_padded_tensor
from lostreg.protocol import DiscoveryProtocol, FeatureConfig, LostConfig, TokenCutConfig
from lostreg.tokencut import tokencut_batch, tokencut_objects

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SOLVERS = ("torch64", "scipy", "torch32")
# Three dark shapes far apart on a bright 160 x 120 background: 10 x 8 patches of 16 px.
SCENES = [
    [(10, 10, 60, 50)],
    [(10, 10, 60, 50), (96, 64, 150, 110)],
    [(10, 10, 60, 50), (96, 64, 150, 110), (16, 72, 60, 116)],
    [(100, 8, 150, 48), (16, 72, 64, 112)],
]


@pytest.fixture(scope="module")
def scenes() -> tuple[torch.Tensor, tuple[int, int], list[list[tuple[int, int, int, int]]]]:
    """(4, 80, 768) pixel features of four scenes with 1-3 objects, their grid, and the objects' boxes."""
    backbone = build_backbone("pixels")
    rng = np.random.default_rng(3)
    features, truths = [], []
    for boxes in SCENES:
        image, extents = synthetic.render_image(160, 120, boxes, rng, kinds=["rect"] * len(boxes), scene="simple")
        padded = to_padded_tensor(image, backbone.patch_size, backbone.mean, backbone.std)
        features.append(backbone.extract(padded.tensor[None])[0])
        truths.append(extents)
    return torch.stack(features), padded.grid_hw, truths


def _same_lost(a, b) -> None:  # type: ignore[no-untyped-def]
    assert (a.seed, a.box, a.seed_in_mask, a.score) == (b.seed, b.box, b.seed_in_mask, b.score)
    for name in ("mask", "similars", "degree", "expansion"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _same_cut(a, b) -> None:  # type: ignore[no-untyped-def]
    assert (a.seed, a.box, a.degenerate, a.eigenvalues, a.score) == (b.seed, b.box, b.degenerate, b.eigenvalues,
                                                                    b.score)
    for name in ("mask", "eigenvector", "bipartition"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_one_object_is_the_single_object_result_bit_for_bit(scenes) -> None:  # type: ignore[no-untyped-def]
    features, grid, _ = scenes
    for found, single in zip(lost_objects(features, grid, objects=1), lost_batch(features, grid)):
        assert len(found) == 1
        _same_lost(found[0], single)
    for eig in SOLVERS:
        for found, single in zip(tokencut_objects(features, grid, eig=eig, objects=1),
                                 tokencut_batch(features, grid, eig=eig)):
            assert len(found) == 1
            _same_cut(found[0], single)
    # Through the registry: objects=1 is run_method itself (the code the single-object protocol always ran).
    for protocol, same in ((DiscoveryProtocol(), _same_lost), (DiscoveryProtocol(method="tokencut"), _same_cut)):
        assert protocol.objects == 1
        for found, single in zip(find_objects(protocol, features, grid), run_method(protocol, features, grid)):
            assert len(found) == 1
            same(found[0], single)


def test_the_first_of_several_objects_is_the_single_object_result(scenes) -> None:  # type: ignore[no-untyped-def]
    features, grid, _ = scenes
    for found, single in zip(lost_objects(features, grid, objects=4), lost_batch(features, grid)):
        _same_lost(found[0], single)
    for eig in SOLVERS:
        for found, single in zip(tokencut_objects(features, grid, eig=eig, objects=4),
                                 tokencut_batch(features, grid, eig=eig)):
            _same_cut(found[0], single)


def _covered(boxes: list[tuple[int, int, int, int]], truth: list[tuple[int, int, int, int]]) -> int:
    """Ground-truth objects that some box hits (IoU >= 0.5)."""
    if not boxes:
        return 0
    return int((iou_matrix(np.array(boxes), np.array(truth)) >= 0.5).any(axis=0).sum())


@pytest.mark.parametrize("method", ["lost", "torch64", "scipy"])
def test_several_objects_find_more_objects_with_disjoint_masks(scenes, method: str) -> None:  # type: ignore[no-untyped-def]
    features, grid, truths = scenes
    if method == "lost":
        found = lost_objects(features, grid, objects=4)
    else:
        found = tokencut_objects(features, grid, eig=method, objects=4)
    one = [_covered([patch_box_to_pixels(objs[0].box, 16, (120, 160))], truth) for objs, truth in zip(found, truths)]
    many = [_covered([patch_box_to_pixels(o.box, 16, (120, 160)) for o in objs], truth)
            for objs, truth in zip(found, truths)]
    assert sum(many) > sum(one), (one, many)
    assert many[2] >= 2, "the three-object scene: at least two objects found"
    for objs in found:
        assert 1 <= len(objs) <= 4
        assert int(torch.stack([o.mask for o in objs]).sum(dim=0).max()) == 1, "masks are disjoint"


def test_several_objects_batched_equal_one_image_at_a_time(scenes) -> None:  # type: ignore[no-untyped-def]
    features, grid, _ = scenes
    for method in ("lost", "torch64", "scipy"):
        run = (lambda f: lost_objects(f, grid, objects=3)) if method == "lost" else \
            (lambda f, e=method: tokencut_objects(f, grid, eig=e, objects=3))
        batch = run(features)
        for b in range(features.shape[0]):
            alone = run(features[b:b + 1])[0]
            assert [o.box for o in alone] == [o.box for o in batch[b]], (method, b)
            assert [o.score for o in alone] == [o.score for o in batch[b]], (method, b)


def _two_groups(rows: int = 6, cols: int = 8) -> tuple[torch.Tensor, tuple[int, int]]:
    """An object block (one direction) on a background whose patches are all alike (another direction)."""
    features = torch.zeros(rows * cols, 4)
    features[:, 0] = 1.0
    obj = torch.zeros(rows, cols, dtype=torch.bool)
    obj[1:3, 2:5] = True
    features[obj.reshape(-1)] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return features, (rows, cols)


@pytest.mark.parametrize("eig", SOLVERS)
def test_tokencut_stops_on_a_degenerate_cut(eig: str) -> None:
    """Once the object is out, the remaining graph is complete (all patches alike): degenerate, no object."""
    features, grid = _two_groups()
    (found,) = tokencut_objects(features[None], grid, eig=eig, objects=4)
    assert len(found) == 1 and found[0].box == (2, 1, 5, 3) and not found[0].degenerate


def test_lost_stops_when_no_patch_is_left() -> None:
    """Object, then the whole (alike) background, then nothing is left: two objects for objects=5."""
    features, grid = _two_groups()
    (found,) = lost_objects(features[None], grid, objects=5)
    assert [o.box for o in found] == [(2, 1, 5, 3), (0, 0, 8, 6)]
    assert found[0].score > 0.5 and found[1].score == 0.0, "the background is no more singular than the average"
    assert int(found[0].mask.sum() + found[1].mask.sum()) == 48


def test_lost_scores_never_increase_so_its_corloc_box_is_the_single_object_one(scenes) -> None:  # type: ignore[no-untyped-def]
    """Later seeds come later in the ascending-degree order: their scores are not higher (ties keep order)."""
    features, grid, _ = scenes
    for objs in lost_objects(features, grid, objects=4):
        scores = [o.score for o in objs]
        assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------------------- the setting


def test_objects_is_a_protocol_setting_left_out_at_one() -> None:
    protocol = DiscoveryProtocol(method="tokencut", objects=3)
    assert protocol.name == "tokencut_k_layer-1_tau0.2_obj3"
    assert protocol.departures() == ["method=tokencut", "objects=3"]
    assert protocol.identity()["objects"] == 3 and protocol.as_dict()["objects"] == 3
    # One object: names, identities and dumps of earlier versions, unchanged.
    assert "objects" not in DiscoveryProtocol().identity() and "objects" not in DiscoveryProtocol().as_dict()
    assert DiscoveryProtocol(objects=1) == DiscoveryProtocol() and DiscoveryProtocol(objects=2) != DiscoveryProtocol()
    cfg = compose_config(["objects=2", "lost.k_patches=50"])
    assert protocol_from_config(cfg) == DiscoveryProtocol(lost=LostConfig(k_patches=50), objects=2)
    assert cfg.run_dir.endswith("/k_layer-1_k50_bias0.0_obj2")
    with pytest.raises(ProtocolError, match="objects must be an integer >= 1, got 0"):
        protocol_from_config(compose_config(["objects=0"]))
    with pytest.raises(ProtocolError, match="'objects' must be int"):
        DiscoveryProtocol.from_mapping({"objects": True}, typed=True)
    assert DiscoveryProtocol.from_mapping({"features": {"which": "k"}}).objects == 1  # older config.yaml
    assert DiscoveryProtocol(features=FeatureConfig(), tokencut=TokenCutConfig(), objects=2).objects == 2


def test_a_method_without_several_objects_refuses_more_than_one() -> None:
    import toy_method

    toy_method.register()
    try:
        with pytest.raises(ProtocolError, match="objects=2: method brightest finds one object per image"):
            DiscoveryProtocol(method="brightest", objects=2).validate()
        assert DiscoveryProtocol(method="brightest").validate().objects == 1
    finally:
        toy_method.unregister()


def test_eval_writes_every_object_and_discover_prints_them(voc_simple12: synthetic.SyntheticVoc, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    one = eval_pixels(voc_simple12.root, tmp_path / "one", "method=tokencut")
    three = eval_pixels(voc_simple12.root, tmp_path / "three", "method=tokencut", "objects=3")
    lines_one = {p["image_id"]: p for p in map(json.loads, (one / "preds.jsonl").read_text().splitlines())}
    lines_three = {p["image_id"]: p for p in map(json.loads, (three / "preds.jsonl").read_text().splitlines())}
    assert sum(len(p["boxes_xyxy"]) for p in lines_three.values()) > len(lines_three)
    for key, line in lines_one.items():
        assert line["boxes_xyxy"] == [line["box_xyxy"]] and len(line["scores"]) == 1
        more = lines_three[key]
        assert more["box_xyxy"] == more["boxes_xyxy"][0] and more["scores"] == sorted(more["scores"], reverse=True)
        assert line["box_xyxy"] in more["boxes_xyxy"], "the single object is among the several"
    # A sweep runs one object per image.
    code, _, err = run_command(capsys, "sweep", "--no-progress", "backbone=pixels", "dataset=voc07",
                               f"dataset.root={voc_simple12.root}", "objects=2", f"run_dir={tmp_path / 's'}")
    assert code == 2 and "objects=2: a sweep runs one object per image" in err
    # discover: the same boxes and scores, only when asked (the JSON line of earlier versions otherwise).
    image = voc_simple12.images[0]
    code, out, err = run_command(capsys, "discover", image.path, "--backbone", "pixels", "--method", "tokencut",
                                 "--objects", "3", "--max-size", "0")
    assert code == 0, err
    record = json.loads(out)
    assert (record["boxes_xyxy"], record["scores"]) == (lines_three[image.image_id]["boxes_xyxy"],
                                                        lines_three[image.image_id]["scores"])
    code, out, _ = run_command(capsys, "discover", image.path, "--backbone", "pixels", "--max-size", "0")
    assert "scores" not in json.loads(out)
    code, out, _ = run_command(capsys, "discover", image.path, "--backbone", "pixels", "--max-size", "0", "--with-score")
    assert len(json.loads(out)["scores"]) == 1
    code, _, err = run_command(capsys, "discover", image.path, "--backbone", "pixels", "--objects", "0")
    assert code == 2 and "--objects must be an integer >= 1" in err
