"""A confidence per box: it ranks the boxes better than image order does, on generated data where the truth is known.

LOST's confidence is how far the seed's degree lies below the image's mean degree, TokenCut's is
1 - λ2 (the relaxed normalised-cut value). The set: 24 simple scenes with up to three objects, every
fourth image without any object (whatever a method boxes there is a false positive). A ranking
by the score must give a higher class-agnostic AP50 (COCOeval with the scores) than the tie-ranked
value in image order, and the most confident images must be hit more often than all of them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import synthetic
from helpers import eval_pixels, run_command
from lostreg.evaluation.ap import pseudo_box_ap
from lostreg.evaluation.confidence import confidence_curve, confidence_markdown

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

N_IMAGES = 24
EMPTY = tuple(range(0, N_IMAGES, 4))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("confidence_voc")
    synthetic.write_voc_dataset(root, n_images=N_IMAGES, seed=100, scene="simple", max_objects=3, empty_images=EMPTY)
    return root


@pytest.mark.parametrize("method", ["lost", "tokencut"])
def test_ranking_by_the_score_beats_image_order(scenes: Path, tmp_path: Path, method: str) -> None:
    run = eval_pixels(scenes, tmp_path / method, f"method={method}")
    metrics = json.loads((run / "metrics.json").read_text())
    lines = [json.loads(line) for line in (run / "preds.jsonl").read_text().splitlines()]
    assert all(line["scores"] is not None and len(line["scores"]) == 1 for line in lines)
    assert metrics["ap50"] > metrics["image_order_ap50"] > 0, metrics
    # metrics.json's numbers are COCOeval's on the stored lines, with and without the scores.
    assert metrics["ap50"] == pseudo_box_ap(lines)["ap50"]
    assert metrics["image_order_ap50"] == pseudo_box_ap(lines, scored=False)["ap50"]
    curve = metrics["corloc_by_confidence"]
    assert [p["top_percent"] for p in curve] == list(range(10, 101, 10))
    assert curve[-1]["corloc"] == metrics["corloc"] and curve[-1]["images"] == N_IMAGES
    assert curve[1]["corloc"] > metrics["corloc"], "the most confident 20% are hit more often than all images"
    # An image without any object is no hit: its score should rank it low (below the median).
    ranked = sorted(lines, key=lambda line: -line["scores"][0])
    empty_ids = {f"{i + 1:06d}" for i in EMPTY}
    positions = [i for i, line in enumerate(ranked) if line["image_id"] in empty_ids]
    assert sum(positions) / len(positions) > N_IMAGES / 2, positions


def test_several_objects_raise_recall_and_ap(scenes: Path, tmp_path: Path) -> None:
    one = json.loads((eval_pixels(scenes, tmp_path / "one", "method=tokencut") / "metrics.json").read_text())
    three = json.loads((eval_pixels(scenes, tmp_path / "three", "method=tokencut", "objects=3")
                        / "metrics.json").read_text())
    assert three["ar100"] > one["ar100"] and three["ap50"] > one["ap50"]
    assert three["ap50"] > three["image_order_ap50"]


def _line(image_id: str, hit: bool | None, score: float | None, box: bool = True) -> dict:
    return {"image_id": image_id, "box_xyxy": [0, 0, 10, 10] if box else None, "hit": hit,
            "scores": None if score is None else [score], "error": None}


def test_the_curve_ranks_by_score_ties_in_image_order_boxless_last() -> None:
    lines = [_line("3", True, 0.9), _line("10", False, 0.5), _line("2", False, 0.5), _line("1", False, None, box=False),
             _line("4", True, 0.2)]
    curve = confidence_curve(lines, percents=(20, 40, 60, 100))
    # Order: 3 (0.9), then the 0.5 tie in image order (2, 10), then 4 (0.2), then 1 (no box).
    assert [(p["images"], p["hits"]) for p in curve] == [(1, 1), (2, 1), (3, 1), (5, 2)]
    assert curve[0]["corloc"] == 100.0 and curve[-1]["corloc"] == 40.0
    assert confidence_curve([_line("1", True, None)]) is None, "boxes without scores: nothing to rank by"
    assert confidence_curve([_line("1", None, 0.3)]) is None, "no ground truth"


def test_ap_ranks_every_box_by_its_score() -> None:
    """One image, a wrong box and a right one: ranked by score the right one leads; tied, file order does."""
    line = {"image_id": "1", "width": 100, "height": 100, "box_xyxy": [60, 60, 90, 90],
            "boxes_xyxy": [[60, 60, 90, 90], [0, 0, 40, 40]], "scores": [0.2, 0.9],
            "gt_boxes_xyxy": [[0, 0, 40, 40]], "error": None}
    scored, tied = pseudo_box_ap([line]), pseudo_box_ap([line], scored=False)
    assert scored["scored"] and not tied["scored"] and scored["detections"] == tied["detections"] == 2
    assert scored["ap50"] == pytest.approx(1.0) and tied["ap50"] < 0.6
    assert scored["ar1"] == pytest.approx(1.0) and tied["ar1"] == pytest.approx(0.0)
    # Lines of earlier versions (no scores): every box ties, as before.
    old = {k: v for k, v in line.items() if k not in ("boxes_xyxy", "scores")}
    assert pseudo_box_ap([old])["ap50"] == pseudo_box_ap([old], scored=False)["ap50"] == 0.0
    assert math.isnan(pseudo_box_ap([{**old, "gt_boxes_xyxy": []}])["ap50"])


def test_compare_and_report_show_the_curve(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = eval_pixels(scenes, tmp_path / "lost")
    code, out, _ = run_command(capsys, "compare", run)
    assert code == 0 and "CorLoc of the most confident images" in out
    row = next(line for line in out.splitlines() if line.startswith("| LOST | pixels |") and "voc07" in line)
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"| {100 * metrics['ap50']:.2f} | {100 * metrics['image_order_ap50']:.2f} |" in row
    assert row.rstrip(" |").endswith(f"{metrics['corloc']:.2f}")
    from lostreg.evaluation.runs import load_run

    assert confidence_markdown([load_run(run)]) in out
    code, _, _ = run_command(capsys, "report", run, "-o", tmp_path / "r.html", "--no-progress")
    page = (tmp_path / "r.html").read_text()
    assert code == 0 and 'id="confidence-table"' in page and "AP50 (image order)" in page
