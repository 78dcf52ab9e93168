"""``lostreg score``: a detector's predictions (COCO results, YOLO folder, detectron2 file) scored like eval.

The predictions are written from a known set of boxes, the boxes of an eval run (LOST, three objects
per image, with scores): scored, they must give that run's CorLoc and AP. Then how predictions find
their images, the errors, and the run directory's rows in compare and report (with the published
LOST + CAD number only where it is comparable).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import synthetic
from helpers import eval_pixels, run_command
from lostreg.evaluation.runs import load_run
from lostreg.evaluation.scoring import trained_on_section
from lostreg.export import read_run_predictions
from test_compare import make_run, parse_markdown

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

METRICS = ("corloc", "hits", "total", "ap", "ap50", "ar1", "ar10", "ar100", "image_order_ap50", "corloc_by_confidence")


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A VOC2007 set (numeric ids) and its LOST run with three objects per image."""
    base = tmp_path_factory.mktemp("score_voc")
    root = base / "data"
    synthetic.write_voc_dataset(root, n_images=10, seed=9, scene="simple", max_objects=3, empty_images=(2, 7),
                                sizes=((161, 121), (121, 163)))
    return root, eval_pixels(root, base / "run", "objects=3")


def score(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    return run_command(capsys, "score", *args)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _instances(preds: list[dict]) -> list[dict]:
    """detectron2's instance predictions (what COCOEvaluator saves) of a run's boxes."""
    return [{"image_id": int(p["image_id"]),
             "instances": [{"image_id": int(p["image_id"]), "category_id": 0, "score": s,
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                           for b, s in zip(p["boxes_xyxy"], p["scores"])]} for p in preds]


def test_coco_yolo_and_detectron2_files_of_a_runs_boxes_score_as_the_run(voc, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, run = voc
    expected = metrics_of(run)
    data = ["dataset=voc07", f"dataset.root={root}"]
    assert run_command(capsys, "export", run, "--format", "coco", "--out", tmp_path / "c.json",
                       "--results", tmp_path / "results.json")[0] == 0
    assert run_command(capsys, "export", run, "--format", "yolo", "--out", tmp_path / "yolo", "--with-score")[0] == 0
    assert run_command(capsys, "export", run, "--format", "detectron2", "--out", tmp_path / "d2.json")[0] == 0
    preds = read_run_predictions(run)
    (tmp_path / "instances.json").write_text(json.dumps(_instances(preds)))
    torch.save(_instances(preds), tmp_path / "instances_predictions.pth")

    cases = {"coco": tmp_path / "results.json", "detectron2": tmp_path / "instances.json",
             "pth": tmp_path / "instances_predictions.pth", "d2dicts": tmp_path / "d2.json",
             "yolo": tmp_path / "yolo"}
    for name, predictions in cases.items():
        out = tmp_path / f"scored_{name}"
        code, stdout, err = score(capsys, predictions, *data, "--run-dir", out)
        assert code == 0, (name, err)
        got = metrics_of(out)
        assert got["kind"] == "score" and got["images_with_predictions"] == 10
        if name == "yolo":
            # Normalised coordinates (>= 6 decimals) and scores (6 decimals): the same decisions, AP within rounding.
            assert (got["corloc"], got["hits"]) == (expected["corloc"], expected["hits"])
            for key in ("ap", "ap50", "ar100", "image_order_ap50"):
                assert got[key] == pytest.approx(expected[key], abs=1e-6), key
        else:
            assert {k: got[k] for k in METRICS} == {k: expected[k] for k in METRICS}, name
        assert stdout.startswith(f"CorLoc: {expected['corloc']:.2f} ({expected['hits']}/10) | AP50: ")
    config = yaml.safe_load((tmp_path / "scored_coco" / "config.yaml").read_text())
    assert config["kind"] == "score" and config["predictions"]["format"] == "coco"
    assert yaml.safe_load((tmp_path / "scored_pth" / "config.yaml").read_text())["predictions"]["format"] == "detectron2"


def test_images_without_predictions_are_misses_and_unknown_images_an_error(voc, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, run = voc
    preds = read_run_predictions(run)
    hit_ids = [p["image_id"] for p in preds if p["hit"]]
    assert hit_ids
    kept = [p for p in preds if p["image_id"] != hit_ids[0]]
    results = [{"image_id": int(p["image_id"]), "category_id": 1, "score": s,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for p in kept for b, s in zip(p["boxes_xyxy"], p["scores"])]
    (tmp_path / "r.json").write_text(json.dumps(results))
    data = ["dataset=voc07", f"dataset.root={root}"]
    code, _, err = score(capsys, tmp_path / "r.json", *data, "--run-dir", tmp_path / "s")
    assert code == 0, err
    got = metrics_of(tmp_path / "s")
    assert (got["hits"], got["total"], got["images_with_predictions"]) == (len(hit_ids) - 1, 10, 9)
    line = {p["image_id"]: p for p in map(json.loads, (tmp_path / "s" / "preds.jsonl").read_text().splitlines())}
    assert line[hit_ids[0]]["box_xyxy"] is None and line[hit_ids[0]]["hit"] is False

    (tmp_path / "u.json").write_text(json.dumps(results + [{**results[0], "image_id": 424242},
                                                           {**results[0], "image_id": 77}]))
    code, out, err = score(capsys, tmp_path / "u.json", *data, "--run-dir", tmp_path / "u")
    assert code == 2 and out == "" and not (tmp_path / "u").exists()
    assert "predictions for 2 images that are not in dataset" in err and "'424242'" in err and "'77'" in err
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    (yolo / "cat.txt").write_text("0 0.5 0.5 0.2 0.2 0.9\n")
    code, _, err = score(capsys, yolo, *data, "--run-dir", tmp_path / "y")
    assert code == 2 and "'cat.txt'" in err
    # Not a dataset override, an eval run directory in the way: refused before anything is written.
    code, _, err = score(capsys, tmp_path / "r.json", *data, "backbone=dino")
    assert code == 2 and "dataset=... and dataset.* overrides only" in err
    code, _, err = score(capsys, tmp_path / "r.json", *data, "--run-dir", run)
    assert code == 2 and "holds results of another configuration" in err


def test_ids_a_results_file_numbers_itself_need_the_coco_file_that_defines_them(
        voc12_set: synthetic.SyntheticVoc, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = eval_pixels(voc12_set.root, tmp_path / "run", dataset="voc12")
    assert run_command(capsys, "export", run, "--format", "coco", "--out", tmp_path / "c.json",
                       "--results", tmp_path / "r.json")[0] == 0
    data = ["dataset=voc12", f"dataset.root={voc12_set.root}"]
    code, _, err = score(capsys, tmp_path / "r.json", *data, "--run-dir", tmp_path / "no")
    assert code == 2 and "--coco-images" in err
    code, _, err = score(capsys, tmp_path / "r.json", *data, "--coco-images", tmp_path / "c.json",
                         "--run-dir", tmp_path / "yes")
    assert code == 0, err
    assert {k: metrics_of(tmp_path / "yes")[k] for k in METRICS} == {k: metrics_of(run)[k] for k in METRICS}


def _score_run(root: Path, name: str, dataset_yaml: dict, n: int, trained_on: Path | None, corloc: float,
               label: str | None = None) -> Path:
    """A score run directory as `lostreg score` writes it (config.yaml, metrics.json), without data."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    config = {"kind": "score", "label": label, "predictions": {"path": f"/x/{name}.json", "format": "coco"},
              "trained_on": None if trained_on is None else trained_on_section(trained_on), "dataset": dataset_yaml}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    metrics = {"kind": "score", "corloc": corloc, "hits": round(corloc * n / 100), "total": n, "failed": 0,
               "num_images": n, "complete": True, "ap50": 0.4, "image_order_ap50": 0.3, "corloc_by_confidence": None}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_compare_shows_the_detector_beside_lost_cad_only_where_comparable(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    lost07 = make_run(runs, "lost07", "dino_vits16", "voc07", 61.5)
    lost12 = make_run(runs, "lost12", "dino_vits16", "voc12", 64.2)
    reg07 = make_run(runs, "reg07", "dinov2_vits14_reg", "voc07", 40.0)
    voc07 = yaml.safe_load((lost07 / "config.yaml").read_text())["dataset"]
    _score_run(runs, "cad07", voc07, 5011, lost07, 66.1)        # trained and scored on VOC07: comparable
    _score_run(runs, "cad12on07", voc07, 5011, lost12, 60.0)    # trained on VOC12, scored on VOC07: not the setting
    _score_run(runs, "reg_cad07", voc07, 5011, reg07, 45.0, label="YOLOv8n on DINOv2+reg boxes")  # no published row
    _score_run(runs, "small07", voc07, 20, lost07, 70.0, label="on 20 images")  # not the published split
    code, out, err = run_command(capsys, "compare", runs / "*")
    assert code == 0, err
    _, rows, notes = parse_markdown(out.split("\nCorLoc of the most confident images")[0])
    detector = {key: row for key, row in rows.items() if key[0] == "detector"}
    assert detector[("detector", "dino_vits16", "trained on LOST dino_vits16 [default] (voc07)")]["VOC07 published"] \
        == "65.7"
    assert detector[("detector", "dino_vits16", "trained on LOST dino_vits16 [default] (voc12)")]["VOC07 published"] == "-"
    assert detector[("detector", "dinov2_vits14_reg", "YOLOv8n on DINOv2+reg boxes")]["VOC07 ours"] == "45.00"
    assert detector[("detector", "dino_vits16", "on 20 images")]["VOC07 published"] == "-"
    assert rows[("LOST", "dino_vits16", "default")]["VOC07 published"] == "61.9", "discovery rows as before"
    assert any("lostreg score" in note for note in notes)
    assert load_run(runs / "cad07").published().key == "lost_cad_dino_vits16"
    assert load_run(runs / "reg_cad07").published() is None


def test_report_shows_a_score_run_beside_the_discovery_run(voc, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root, run = voc
    assert run_command(capsys, "export", run, "--format", "coco", "--out", tmp_path / "c.json",
                       "--results", tmp_path / "r.json")[0] == 0
    code, _, err = score(capsys, tmp_path / "r.json", "dataset=voc07", f"dataset.root={root}",
                         "--run-dir", tmp_path / "s", "--trained-on", run, "--label", "detector on LOST boxes")
    assert code == 0, err
    code, _, err = run_command(capsys, "report", run, tmp_path / "s", "-o", tmp_path / "r.html", "--no-progress")
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert "detector on LOST boxes" in page and page.count('id="confidence-table"') == 1
