"""``lostreg export`` with several boxes per image and their scores: every format round-trips them; filters.

The run: TokenCut with ``objects=3`` on generated scenes (several boxes per image, each with TokenCut's
confidence). COCO and detectron2 always carry the scores; YOLO and VOC with ``--with-score`` (other tests pin
them: tests/test_export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

import synthetic
from helpers import eval_pixels, run_command
from lostreg.export import (
    read_coco_json,
    read_detectron2_file,
    read_run_predictions,
    read_voc_xml,
    read_yolo_txt,
    select_objects,
)
from lostreg.export.formats import ExportError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SCORE_DECIMALS = 6  # YOLO and VOC write scores with 6 decimals


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    base = tmp_path_factory.mktemp("export_scores")
    synthetic.write_voc_dataset(base / "data", n_images=8, seed=6, scene="simple", max_objects=3,
                                sizes=((161, 121), (121, 163)))
    run_dir = eval_pixels(base / "data", base / "run", "method=tokencut", "objects=3")
    preds = {p["image_id"]: p for p in read_run_predictions(run_dir)}
    assert sum(len(p["boxes_xyxy"]) for p in preds.values()) > len(preds), "several boxes per image"
    return run_dir, preds


def export(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    return run_command(capsys, "export", *args)


def _expected(pred: dict, decimals: int | None = None) -> list[tuple[list[int], float]]:
    scores = pred["scores"] if decimals is None else [round(s, decimals) for s in pred["scores"]]
    return list(zip(pred["boxes_xyxy"], scores))


def test_coco_instances_and_results_carry_every_box_and_score(run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, preds = run
    out, results = tmp_path / "p.json", tmp_path / "r.json"
    code, _, err = export(capsys, run_dir, "--format", "coco", "--out", out, "--results", results)
    assert code == 0, err
    COCO(str(out))  # loads as COCO
    images = {im.lostreg_image_id: im for im in read_coco_json(out)}
    assert set(images) == set(preds)
    for key, pred in preds.items():
        assert [(list(b.box_xyxy), b.score) for b in images[key].boxes] == _expected(pred)
    by_id = {im.image_id: im.lostreg_image_id for im in images.values()}
    results_read = read_coco_json(results)
    assert sum(len(im.boxes) for im in results_read) == sum(len(p["boxes_xyxy"]) for p in preds.values())
    for im in results_read:
        assert [(list(b.box_xyxy), b.score) for b in im.boxes] == _expected(preds[by_id[im.image_id]])
    # COCO always carries the scores: --with-score (for yolo and voc) is refused, not ignored.
    code, _, err = export(capsys, run_dir, "--format", "coco", "--out", out, "--with-score")
    assert code == 2 and "--with-score goes with --format yolo or voc" in err


def test_detectron2_yolo_and_voc_round_trip_boxes_and_scores(run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, preds = run
    d2 = tmp_path / "d2.json"
    assert export(capsys, run_dir, "--format", "detectron2", "--out", d2)[0] == 0
    for image in read_detectron2_file(d2):
        assert [(list(b.box_xyxy), b.score) for b in image.boxes] == _expected(preds[image.image_id])
    yolo, voc = tmp_path / "yolo", tmp_path / "voc"
    assert export(capsys, run_dir, "--format", "yolo", "--out", yolo, "--with-score")[0] == 0
    assert export(capsys, run_dir, "--format", "voc", "--out", voc, "--with-score")[0] == 0
    for key, pred in preds.items():
        labels = read_yolo_txt(yolo / "labels" / f"{key}.txt", pred["width"], pred["height"])
        assert [(list(b.box_xyxy), b.score) for b in labels] == _expected(pred, SCORE_DECIMALS)
        objects = read_voc_xml(voc / "Annotations" / f"{key}.xml").objects
        assert [(list(o.box_xyxy), o.score) for o in objects] == _expected(pred, SCORE_DECIMALS)
    # Without --with-score, YOLO lines have the five values Ultralytics trains on.
    assert export(capsys, run_dir, "--format", "yolo", "--out", tmp_path / "y5")[0] == 0
    for path in (tmp_path / "y5" / "labels").iterdir():
        assert {len(line.split()) for line in path.read_text().splitlines()} == {5}


def test_min_score_and_top_k_keep_the_confident_boxes(run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, preds = run
    # The median of the images' best scores: about half of the images keep no box.
    top_scores = sorted(p["scores"][0] for p in preds.values())
    threshold = top_scores[len(top_scores) // 2]
    out = tmp_path / "f.json"
    code, _, err = export(capsys, run_dir, "--format", "detectron2", "--out", out,
                          "--min-score", threshold, "--top-k-objects", 2)
    assert code == 0, err
    written = {d["image_id"]: d for d in json.loads(out.read_text())}
    for key, pred in preds.items():
        kept = [(b, s) for b, s in _expected(pred) if s >= threshold][:2]
        if not kept:
            assert key not in written, "an image left without a box is not written"
            continue
        assert [(a["bbox"], a["score"]) for a in written[key]["annotations"]] == kept
    dropped = [k for k, p in preds.items() if max(p["scores"]) < threshold]
    assert dropped and f"{len(dropped)} images kept no box" in err
    code, _, err = export(capsys, run_dir, "--format", "coco", "--out", tmp_path / "x.json", "--top-k-objects", 0)
    assert code == 2 and "--top-k-objects must be >= 1" in err


def test_filters_on_records_without_scores() -> None:
    """Lines of earlier versions: top-k keeps the first boxes; --min-score has nothing to compare and says so."""
    old = [{"image_id": "1", "image": "a.jpg", "width": 10, "height": 10, "box_xyxy": [0, 0, 5, 5], "error": None}]
    kept = select_objects(old, top_k=1)
    assert kept.records[0]["boxes_xyxy"] == [[0, 0, 5, 5]] and kept.records[0]["scores"] is None
    with pytest.raises(ExportError, match="--min-score needs scores"):
        select_objects(old, min_score=0.5)
