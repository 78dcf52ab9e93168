"""``lostreg eval method=tokencut`` end to end on a generated VOC set (pixels backbone, no weights).

The run's predictions are checked against :func:`lostreg.tokencut.tokencut` called here on the
pixels backbone's own features of each image, and the multirun table shows both methods.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import synthetic
from helpers import eval_pixels, preds_by_id
from lostreg.backbones import build_backbone
from lostreg.boxes import patch_box_to_pixels
from lostreg.cli.main import main
from lostreg.evaluation.compare import build_table, load_runs, to_markdown
from lostreg.io.images import load_image_rgb
from lostreg.preprocess import to_padded_tensor
from lostreg.tokencut import tokencut

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Sides that are multiples of 16 for all but the last size, so that padding is exercised on some
# images only; the flat image (degenerate) needs no padding, which would give it structure.
SIZES = ((160, 128), (128, 160), (150, 100))
FLAT_ID = "000002"


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This file's own set (not conftest's): sizes chosen for TokenCut's padding and one image
    replaced by a flat colour, which no other test wants."""
    root = tmp_path_factory.mktemp("voc_tokencut")
    images = synthetic.write_voc_dataset(root, n_images=9, seed=5, sizes=SIZES, max_objects=2, scene="simple")
    flat = next(im for im in images if im.image_id == FLAT_ID)
    assert (flat.width, flat.height) == (128, 160)
    # One image of a single colour: every patch alike, a complete graph, a degenerate spectrum.
    Image.fromarray(np.full((flat.height, flat.width, 3), (90, 140, 200), np.uint8)).save(flat.path, quality=95)
    return root


@pytest.mark.parametrize("eig", ["torch64", "scipy"])
def test_eval_boxes_are_tokencut_on_the_pixels_features(voc: Path, tmp_path: Path, eig: str) -> None:
    run_dir = eval_pixels(voc, tmp_path / eig, "batch_size=4", "method=tokencut", f"tokencut.eig={eig}")
    preds = preds_by_id(run_dir)
    assert len(preds) == 9
    backbone = build_backbone("pixels")
    for image_id, pred in preds.items():
        assert pred["error"] is None, pred
        image = load_image_rgb(pred["image"])
        padded = to_padded_tensor(image, backbone.patch_size, backbone.mean, backbone.std)
        features = backbone.extract(padded.tensor[None])[0]  # the patch pixels, (rows*cols, 768)
        expected = tokencut(features, padded.grid_hw, tau=0.2, eps=1e-5, eig=eig)  # type: ignore[arg-type]
        box = patch_box_to_pixels(expected.box, backbone.patch_size, (image.shape[0], image.shape[1]))
        assert pred["box_xyxy"] == list(box), image_id
        assert pred["seed_rc"] == list(expected.seed_rc), image_id
        assert pred["degenerate"] is expected.degenerate, image_id
    flat = preds[FLAT_ID]
    assert flat["degenerate"] is True and flat["box_xyxy"] == [0, 0, flat["width"], flat["height"]]
    assert sum(p["degenerate"] for p in preds.values()) == 1

    metrics = json.loads((run_dir / "metrics.json").read_text())
    hits = sum(bool(p["hit"]) for p in preds.values())
    assert (metrics["hits"], metrics["total"], metrics["complete"]) == (hits, 9, True)
    config = (run_dir / "config.yaml").read_text()
    assert "method: tokencut" in config and f"eig: {eig}" in config


def test_multirun_table_across_methods(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--multirun", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc}",
                 "method=lost,tokencut", "num_workers=0", f"run_dir={tmp_path}/${{method}}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("CorLoc: ") == 2
    table_lines = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert table_lines[0].startswith("| method | backbone | protocol | VOC07 ours")
    for method, label in (("lost", "LOST"), ("tokencut", "TokenCut")):
        corloc = json.loads((tmp_path / method / "metrics.json").read_text())["corloc"]
        assert sum(line.startswith(f"| {label} | pixels | default | {corloc:.2f} |") for line in table_lines) == 1
    # A 9-image VOC07 is not the published trainval: no published number beside either run.
    table = build_table(load_runs([tmp_path / "lost", tmp_path / "tokencut"]))
    assert [row.method for row in table.rows if not row.is_published_only] == ["lost", "tokencut"]
    assert "not comparable with published numbers: TokenCut pixels [default] VOC07" in to_markdown(table)
