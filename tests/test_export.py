"""``lostreg export``: every format written from a real eval run and read back to the pixel."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

import synthetic
from helpers import eval_pixels, run_command
from lostreg.datasets.voc import parse_voc_xml
from lostreg.evaluation.ap import pseudo_box_ap
from lostreg.export import (
    ExportError,
    parse_yolo_line,
    read_run_predictions,
    read_voc_xml,
    read_yolo_txt,
    write_yolo,
    yolo_line,
)
from lostreg.export.formats import coco_image_ids

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BAD = 3  # index of the image truncated so that it fails in eval


class VocRun:
    def __init__(self, root: Path, images: list[synthetic.SyntheticImage], run_dir: Path) -> None:
        self.root, self.images, self.run_dir = root, images, run_dir
        self.preds = {p["image_id"]: p for p in read_run_predictions(run_dir)}
        self.bad_id = images[BAD].image_id
        self.ok = {k: p for k, p in self.preds.items() if k != self.bad_id}


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory: pytest.TempPathFactory) -> VocRun:
    """This file's own set (not conftest's: odd sizes, one image truncated) and its eval run."""
    base = tmp_path_factory.mktemp("export_voc")
    root = base / "data"
    # Odd sizes, so that the YOLO normalisation cannot be exact in binary.
    images = synthetic.write_voc_dataset(root, n_images=10, seed=21, max_objects=2, scene="simple",
                                         sizes=((161, 121), (121, 163), (150, 97)))
    images[BAD].path.write_bytes(images[BAD].path.read_bytes()[:200])  # truncated JPEG
    run_dir = base / "run"
    eval_pixels(root, run_dir)
    run = VocRun(root, images, run_dir)
    assert len(run.preds) == 10 and run.preds[run.bad_id]["box_xyxy"] is None
    return run


def export(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_command(capsys, "export", *args)


def expected_quality_line(preds: list[dict]) -> str:
    hits = sum(p["hit"] for p in preds)
    ap = pseudo_box_ap(preds)
    return (f"CorLoc: {100 * hits / len(preds):.2f} ({hits}/{len(preds)}) | "
            f"AP50: {100 * ap['ap50']:.2f} | AP: {100 * ap['ap']:.2f}")


def test_coco_round_trip(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, results = tmp_path / "pseudo.json", tmp_path / "results.json"
    code, stdout, err = export([voc_run.run_dir, "--format", "coco", "--out", out, "--results", results], capsys)
    assert code == 0, err
    coco = COCO(str(out))
    assert coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object", "supercategory": "object"}]
    ann_ids = coco.getAnnIds()
    assert len(ann_ids) == len(set(ann_ids)) == len(voc_run.ok)
    by_id = {}
    for img in coco.loadImgs(coco.getImgIds()):
        # VOC2007 ids are digits: the COCO id is their value, and file_name is relative to the dataset root.
        pred = voc_run.ok[img["lostreg_image_id"]]
        assert img["id"] == int(pred["image_id"])
        assert voc_run.root / img["file_name"] == Path(pred["image"])
        assert not Path(img["file_name"]).is_absolute()
        assert (img["width"], img["height"]) == (pred["width"], pred["height"])
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        x, y, w, h = ann["bbox"]
        assert [x, y, x + w, y + h] == pred["box_xyxy"]
        assert (ann["category_id"], ann["iscrowd"], ann["area"]) == (1, 0, w * h)
        by_id[img["id"]] = pred
    assert set(by_id) == {int(k) for k in voc_run.ok}, "the failed image is not written as an empty image"

    dets = coco.loadRes(str(results))
    for det in dets.loadAnns(dets.getAnnIds()):
        x, y, w, h = det["bbox"]
        assert [x, y, x + w, y + h] == by_id[det["image_id"]]["box_xyxy"]
        # The method's confidence (issue [15]; 1.0 before scores existed).
        expected_score = (by_id[det["image_id"]].get("scores") or [1.0])[0]
        assert (det["category_id"], det["score"]) == (1, pytest.approx(expected_score))
    assert len(dets.getAnnIds()) == len(voc_run.ok)

    assert stdout.splitlines() == [expected_quality_line(list(voc_run.preds.values()))]
    assert re.fullmatch(r"CorLoc: \d+\.\d\d \(\d+/10\) \| AP50: \d+\.\d\d \| AP: \d+\.\d\d\n", stdout)
    assert "wrote 9 pseudo-boxes" in err


def test_detectron2_round_trip(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d2.json"
    code, _, err = export([voc_run.run_dir, "--format", "detectron2", "--out", out], capsys)
    assert code == 0, err
    dicts = json.loads(out.read_text())
    assert len(dicts) == len(voc_run.ok)
    for d in dicts:
        pred = voc_run.ok[d["image_id"]]
        assert voc_run.root / d["file_name"] == Path(pred["image"])
        assert (d["width"], d["height"]) == (pred["width"], pred["height"])
        (ann,) = d["annotations"]
        # With the box's confidence since issue [15] (the key detectron2's predictions use).
        score = ann.pop("score")
        assert ann == {"bbox": pred["box_xyxy"], "bbox_mode": 0, "category_id": 0, "iscrowd": 0}
        assert score == pytest.approx((pred.get("scores") or [1.0])[0])


def ultralytics_label_path(image_path: str) -> str:
    """How Ultralytics pairs an image with its label: last /images/ -> /labels/, extension -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return sb.join(image_path.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt"


def test_yolo_round_trip(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "yolo"
    code, _, err = export([voc_run.run_dir, "--format", "yolo", "--out", out, "--link-images"], capsys)
    assert code == 0, err
    for key, pred in voc_run.ok.items():
        (label,) = read_yolo_txt(out / "labels" / f"{key}.txt", pred["width"], pred["height"])
        assert label.label == 0 and list(label.box_xyxy) == pred["box_xyxy"]
    assert not (out / "labels" / f"{voc_run.bad_id}.txt").exists()
    listed = (out / "images.txt").read_text().splitlines()
    assert sorted(voc_run.root / p for p in listed) == sorted(Path(p["image"]) for p in voc_run.ok.values())
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"path": os.path.abspath(out), "train": "images", "val": "images", "nc": 1, "names": ["object"]}
    # With --link-images, every image Ultralytics lists in <path>/images pairs with its label file.
    linked = sorted((out / "images").iterdir())
    assert len(linked) == len(voc_run.ok)
    for link in linked:
        assert link.is_symlink() and link.resolve() == (voc_run.root / "VOCdevkit/VOC2007/JPEGImages" / link.name)
        assert Path(ultralytics_label_path(str(link))).is_file()
    # Exporting again over the same folder replaces the links.
    assert export([voc_run.run_dir, "--format", "yolo", "--out", out, "--link-images"], capsys)[0] == 0


def test_voc_round_trip(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "voc"
    code, _, err = export([voc_run.run_dir, "--format", "voc", "--out", out, "--link-images"], capsys)
    assert code == 0, err
    for key, pred in voc_run.ok.items():
        xml_path = out / "Annotations" / f"{key}.xml"
        labels = read_voc_xml(xml_path)
        assert [(o.label, list(o.box_xyxy)) for o in labels.objects] == [("object", pred["box_xyxy"])]
        assert (labels.width, labels.height, labels.filename) == (pred["width"], pred["height"], f"{key}.jpg")
        assert voc_run.root / labels.path == Path(pred["image"])
        # lostreg's own VOC dataset reader reads the file back to the same box.
        assert [list(o.box_xyxy) for o in parse_voc_xml(xml_path).objects] == [pred["box_xyxy"]]
        # 1-based corners on disk: xmin = x1 + 1, xmax = x2.
        x1, y1, x2, y2 = pred["box_xyxy"]
        text = xml_path.read_text()
        assert f"<xmin>{x1 + 1}</xmin>" in text and f"<ymin>{y1 + 1}</ymin>" in text
        assert f"<xmax>{x2}</xmax>" in text and f"<ymax>{y2}</ymax>" in text
        assert (out / "JPEGImages" / f"{key}.jpg").resolve() == Path(pred["image"]).resolve()
    assert sorted((out / "ImageSets/Main/trainval.txt").read_text().split()) == sorted(voc_run.ok)


def test_failed_images_go_to_a_side_file(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_path = voc_run.preds[voc_run.bad_id]["image"]
    for fmt, out, failed in (("coco", tmp_path / "c.json", tmp_path / "c.failed.txt"),
                             ("detectron2", tmp_path / "d.json", tmp_path / "d.failed.txt"),
                             ("yolo", tmp_path / "y", tmp_path / "y/failed.txt"),
                             ("voc", tmp_path / "v", tmp_path / "v/failed.txt")):
        code, _, err = export([voc_run.run_dir, "--format", fmt, "--out", out], capsys)
        assert code == 0
        assert f"1 images failed discovery (no label written): listed in {failed}" in err
        (line,) = [ln for ln in failed.read_text().splitlines() if not ln.startswith("#")]
        image_id, image, error = line.split("\t")
        assert (image_id, image) == (voc_run.bad_id, bad_path) and "truncated" in error
        others = [p for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file() and p != failed]
        assert others and all(voc_run.bad_id not in p.name for p in others)
        assert all(f"{voc_run.bad_id}.jpg" not in p.read_text() for p in others), "no empty label for it"


def test_yolo_coordinates_round_trip_to_the_pixel() -> None:
    rng = random.Random(5)
    sizes = [(1, 1), (3, 7), (97, 161), (333, 1), (4999, 3331), (65_535, 65_521), (300_007, 299_993)]
    sizes += [(rng.randint(1, 20_000), rng.randint(1, 20_000)) for _ in range(300)]
    for width, height in sizes:
        for _ in range(20):
            x1, x2 = sorted(rng.randint(0, width) for _ in range(2))
            y1, y2 = sorted(rng.randint(0, height) for _ in range(2))
            line = yolo_line((x1, y1, x2, y2), width, height)
            assert parse_yolo_line(line, width, height).box_xyxy == (x1, y1, x2, y2), (line, width, height)


def test_paths_relative_to_a_user_root_or_absolute(voc_run: VocRun, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    devkit = voc_run.root / "VOCdevkit"
    assert export([voc_run.run_dir, "--format", "detectron2", "--out", tmp_path / "rel.json", "--root", devkit],
                  capsys)[0] == 0
    names = {d["image_id"]: d["file_name"] for d in json.loads((tmp_path / "rel.json").read_text())}
    assert all(names[k] == f"VOC2007/JPEGImages/{k}.jpg" for k in voc_run.ok)

    assert export([voc_run.run_dir, "--format", "detectron2", "--out", tmp_path / "abs.json", "--absolute"],
                  capsys)[0] == 0
    names = {d["image_id"]: d["file_name"] for d in json.loads((tmp_path / "abs.json").read_text())}
    assert all(Path(names[k]) == Path(p["image"]).absolute() for k, p in voc_run.ok.items())


def test_image_outside_the_root_is_a_clear_error(voc_run: VocRun, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, stdout, err = export([voc_run.run_dir, "--format", "yolo", "--out", tmp_path / "y", "--root", elsewhere],
                               capsys)
    assert code == 2 and stdout == ""
    first = read_run_predictions(voc_run.run_dir)[0]["image"]
    assert err.startswith("lostreg: error: ") and len(err.splitlines()) == 1
    assert f"{first} is not under the root {elsewhere}" in err
    assert not (tmp_path / "y").exists(), "nothing is written when a path is refused"

    code, _, err = export([voc_run.run_dir, "--format", "yolo", "--out", tmp_path / "y", "--root", tmp_path / "nope"],
                          capsys)
    assert code == 2 and "is not a folder" in err


def test_usage_errors(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ([voc_run.run_dir, "--images", tmp_path, "--format", "coco", "--out", tmp_path / "x.json"], "not both"),
        (["--format", "coco", "--out", tmp_path / "x.json"], "give an eval RUN_DIR"),
        ([voc_run.run_dir, "--backbone", "dino", "--format", "coco", "--out", tmp_path / "x.json"],
         "--backbone go with --images"),
        ([voc_run.run_dir, "--format", "yolo", "--out", tmp_path / "y", "--results", tmp_path / "r.json"],
         "--results"),
        ([voc_run.run_dir, "--format", "coco", "--out", tmp_path / "x.json", "--link-images"], "--link-images"),
        ([tmp_path, "--format", "coco", "--out", tmp_path / "x.json"], "not an eval run directory"),
    ]
    for args, message in cases:
        code, stdout, err = export(args, capsys)
        assert code == 2 and stdout == "" and err.startswith("lostreg: error: ") and message in err, (args, err)


def test_stem_clash_and_coco_ids() -> None:
    records = [{"image_id": f"{d}/x.jpg", "image": f"/data/{d}/x.jpg", "width": 10, "height": 10,
                "box_xyxy": [0, 0, 5, 5], "error": None} for d in ("a", "b")]
    with pytest.raises(ExportError, match="same file stem 'x'"):
        write_yolo(records, "/nonexistent/never/written")
    assert coco_image_ids([{"image_id": "42"}, {"image_id": "000007"}]) == [42, 7]
    assert coco_image_ids([{"image_id": "7"}, {"image_id": "007"}]) == [1, 2], "ids must stay unique"
    assert coco_image_ids([{"image_id": "2008_000001"}, {"image_id": "x.jpg"}]) == [1, 2]


def test_stale_label_files_are_reported(voc_run: VocRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "y"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "old.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    code, _, err = export([voc_run.run_dir, "--format", "yolo", "--out", out], capsys)
    assert code == 0 and "1 label files" in err and "old.txt" in err
    assert (out / "labels" / "old.txt").exists(), "never deleted"


def test_export_from_a_folder_of_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(8)
    for name, (w, h) in (("cat.jpg", (150, 97)), ("dog.png", (121, 163)), ("owl.jpg", (160, 120))):
        pixels, _ = synthetic.render_image(w, h, synthetic.random_boxes(w, h, 1, rng), rng, scene="simple")
        Image.fromarray(pixels).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "ds"
    args = ["--images", folder, "--backbone", "pixels", "--format", "yolo", "--out", out, "--no-progress",
            "--num-workers", "0", "--link-images"]
    code, stdout, err = export(args, capsys)
    assert code == 0, err
    assert stdout == "", "no ground truth: no quality line"
    preds = {p["image_id"]: p for p in read_run_predictions(out / "run")}
    assert set(preds) == {"broken.jpg", "cat.jpg", "dog.png", "owl.jpg"} and preds["broken.jpg"]["error"]
    for key in ("cat.jpg", "dog.png", "owl.jpg"):
        p = preds[key]
        (label,) = read_yolo_txt(out / "labels" / f"{Path(key).stem}.txt", p["width"], p["height"])
        assert list(label.box_xyxy) == p["box_xyxy"]
    assert (out / "images.txt").read_text().splitlines() == ["cat.jpg", "dog.png", "owl.jpg"]
    assert "broken.jpg" in (out / "failed.txt").read_text()
    before = {p: p.read_bytes() for p in (out / "labels").iterdir()}

    # Same command again: the run resumes (the three done images are not recomputed; the broken one,
    # recorded as failed, is tried again, issue [13]) and writes the same labels.
    assert export(args, capsys)[0] == 0
    sessions = json.loads((out / "run" / "run.json").read_text())["sessions"]
    assert [s["resumed_with"] for s in sessions] == [0, 3]
    assert {p: p.read_bytes() for p in (out / "labels").iterdir()} == before

    # A file format puts its run beside the file.
    code, _, err = export(["--images", folder, "--backbone", "pixels", "--format", "coco", "--out",
                           tmp_path / "pseudo.json", "--no-progress", "--num-workers", "0"], capsys)
    assert code == 0, err
    assert (tmp_path / "pseudo_run" / "preds.jsonl").is_file()
    files = sorted(img["file_name"] for img in json.loads((tmp_path / "pseudo.json").read_text())["images"])
    assert files == ["cat.jpg", "dog.png", "owl.jpg"]


# ---------------------------------------------------------------------------- wrong --out, failures


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def _photos(folder: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(3)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels, _ = synthetic.render_image(64, 48, synthetic.random_boxes(64, 48, 1, rng), rng, scene="simple")
        Image.fromarray(pixels).save(path)
    return folder


def test_out_of_the_wrong_kind_is_refused_before_anything(voc_run: VocRun, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder, afile = tmp_path / "a_folder", tmp_path / "a_file.json"
    folder.mkdir()
    afile.write_text("{}")
    photos = _photos(tmp_path / "photos", ["cat.jpg", "dog.jpg"])
    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "labels").write_text("a file where yolo writes a folder")
    cases = [
        ("coco", folder, [], f"--out {folder} is a folder, but --format coco writes one JSON file"),
        ("detectron2", folder, [], f"--out {folder} is a folder, but --format detectron2 writes one JSON file"),
        ("yolo", afile, [], f"--out {afile} is an existing file, but --format yolo writes a folder"),
        ("voc", afile, [], f"--out {afile} is an existing file, but --format voc writes a folder"),
        ("coco", afile / "x.json", [], f"--out {afile / 'x.json'}: {afile} is a file, not a folder"),
        ("coco", tmp_path / "p.json", ["--results", folder], f"--results {folder} is a folder"),
        ("yolo", tmp_path / "yolo", [], f"{tmp_path / 'yolo' / 'labels'} is a file, but --format yolo writes a folder"),
    ]
    before = _tree(tmp_path)
    for fmt, out, extra, message in cases:
        for source in ([voc_run.run_dir], ["--images", photos, "--backbone", "pixels", "--num-workers", "0"]):
            no_progress = ["--no-progress"] if source[0] == "--images" else []
            code, stdout, err = export([*source, "--format", fmt, "--out", out, *extra, *no_progress], capsys)
            assert code == 2 and stdout == "", (fmt, out, err)
            assert err.startswith(f"lostreg: error: {message}") and err.count("\n") == 1, err
            assert _tree(tmp_path) == before, f"{fmt} {out}: something was written (a run, a .tmp file, ...)"


def test_no_temporary_file_is_left_on_a_failed_write(voc_run: VocRun, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import lostreg.io.atomic as atomic

    real_replace = os.replace
    for fmt, fail_at, interrupt in (("coco", 1, False), ("yolo", 3, False), ("voc", 2, True)):
        calls = {"n": 0}

        def replace(src: str, dst: str, *, _fail_at: int = fail_at, _interrupt: bool = interrupt) -> None:
            calls["n"] += 1
            if calls["n"] == _fail_at:
                if _interrupt:
                    raise KeyboardInterrupt
                raise OSError(28, "No space left on device", src, None, dst)  # as os.replace names them
            real_replace(src, dst)

        monkeypatch.setattr(atomic.os, "replace", replace)
        out = tmp_path / (f"{fmt}.json" if fmt == "coco" else fmt)
        code, _, err = export([voc_run.run_dir, "--format", fmt, "--out", out], capsys)
        if interrupt:
            assert code == 130 and err == "lostreg: interrupted\n"
        else:
            assert code == 2 and err.count("\n") == 1 and "No space left on device" in err
            assert ".tmp" not in err, "the error names the file being written, not its temporary twin"
        monkeypatch.setattr(atomic.os, "replace", real_replace)
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")], fmt


def test_stem_clash_of_images_is_refused_before_discovery(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lostreg.evaluation.runner import EvalJob

    def no_discovery(*args: object, **kwargs: object) -> None:
        raise AssertionError("discovery started although the labels would collide")

    monkeypatch.setattr(EvalJob, "prepare", no_discovery)
    flat = _photos(tmp_path / "flat", ["x.jpg", "x.png", "y.jpg"])
    nested = _photos(tmp_path / "nested", ["a/x.jpg", "b/x.jpg"])
    for fmt in ("yolo", "voc"):
        cases = ((flat, [], "x.jpg", "x.png"), (nested, ["--recursive"], "a/x.jpg", "b/x.jpg"))
        for folder, extra, first, second in cases:
            out = tmp_path / f"{fmt}_{folder.name}"
            code, stdout, err = export(["--images", folder, *extra, "--backbone", "pixels", "--format", fmt,
                                        "--out", out, "--no-progress"], capsys)
            assert code == 2 and stdout == "" and err.count("\n") == 1
            assert err.startswith(f"lostreg: error: {folder / first} and {folder / second} have the same file stem 'x'")
            assert not out.exists()
