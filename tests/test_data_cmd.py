"""`lostreg data check` and `lostreg data fetch-coco20k-list` on synthetic datasets, offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import run_command
from synthetic import SyntheticCoco, SyntheticVoc, write_coco20k_filelist, write_voc_dataset

import lostreg.cli.data_cmd as data_cmd
from lostreg.cli.main import main
from lostreg.datasets import FileListDownloadError


def field(out: str, name: str) -> str:
    """The value of a ``name:`` line of the summary."""
    line = next(line for line in out.splitlines() if line.startswith(f"{name}:"))
    return line.split(":", 1)[1].strip()


def test_check_complete_split_exits_0(voc6: SyntheticVoc, capsys: pytest.CaptureFixture[str]) -> None:
    root, images = voc6
    # train.txt (even positions) has no published size, so a complete copy is simply OK.
    code, out, err = run_command(capsys, "data", "check", "dataset=voc07", f"dataset.root={root}",
                                 "dataset.split=train")
    assert code == 0, err
    train = images[0::2]
    assert field(out, "dataset").endswith("(voc07)") and "VOC07" in field(out, "dataset")
    assert field(out, "images") == "3"
    assert field(out, "with GT") == str(sum(1 for im in train if im.gt_objects()))
    assert field(out, "GT boxes") == str(sum(len(im.gt_objects()) for im in train))
    assert field(out, "expected") == "no published size for this split"
    assert field(out, "missing images") == "0"
    assert field(out, "status") == "OK"
    assert f"root: {root}" in out  # the settings that were read


def test_check_trainval_size_mismatch_exits_1(voc4: SyntheticVoc, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_command(capsys, "data", "check", "dataset=voc07", f"dataset.root={voc4.root}")
    assert code == 1
    assert field(out, "images") == "4"
    assert field(out, "expected") == "5011 (MISMATCH: found 4)"
    assert field(out, "status") == "PROBLEM"


def test_check_lists_missing_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_voc_dataset(tmp_path, year="2012", n_images=6)
    for im in images[:3]:
        im.path.unlink()
    code, out, _ = run_command(capsys, "data", "check", "dataset=voc12", f"dataset.root={tmp_path}",
                               "dataset.split=trainval", "--max-listed", "2")
    assert code == 1
    assert field(out, "missing images") == "3"
    assert str(images[0].path) in out and str(images[1].path) in out
    assert str(images[2].path) not in out and "... and 1 more" in out
    assert field(out, "expected") == "11540 (MISMATCH: found 6)"


def test_check_coco20k(coco20k_layout: SyntheticCoco, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = coco20k_layout
    filelist = write_coco20k_filelist(tmp_path / "list.txt", [int(im.image_id) for im in coco.images[:5]])
    code, out, _ = run_command(capsys, "data", "check", "dataset=coco20k", f"dataset.root={coco.root}",
                               f"dataset.filelist_path={filelist}", f"dataset.cache_dir={tmp_path / 'cache'}")
    assert code == 1  # 5 images, not the published 19817
    assert field(out, "images") == "5" and field(out, "expected") == "19817 (MISMATCH: found 5)"


def test_check_missing_layout_exits_2_with_expected_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_command(capsys, "data", "check", "dataset=voc07", f"dataset.root={tmp_path / 'nowhere'}")
    assert code == 2 and out == ""
    assert err.startswith("lostreg: error: ")
    assert "Expected layout:" in err and "VOCdevkit/" in err and "VOC2007/" in err and "trainval.txt" in err


def test_check_bad_override_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_command(capsys, "data", "check", "dataset=imagenet")
    assert code == 2 and out == ""
    assert err.startswith("lostreg: error: ") and "imagenet" in err
    assert len(err.strip().splitlines()) == 1


def test_check_missing_required_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_command(capsys, "data", "check", "dataset=folder")
    assert code == 2 and "dataset.root" in err


def test_data_needs_an_action() -> None:
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2


def test_fetch_offline_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "lists" / "coco_20k_filenames.txt"
    start = time.monotonic()
    # Port 9 (discard) on localhost refuses the connection at once: offline without waiting.
    code, out, err = run_command(capsys, "data", "fetch-coco20k-list", "--dest", str(dest),
                                 "--url", "http://127.0.0.1:9/coco_20k_filenames.txt", "--timeout", "5")
    assert time.monotonic() - start < 5
    assert code == 2 and out == ""
    assert err.startswith("lostreg: error: could not download the COCO20k file list from http://127.0.0.1:9/")
    assert "coco_20k_filenames.txt" in err and "offline" in err
    assert err.splitlines()[1] == (f"lostreg: hint: copy it to {dest}, or anywhere and pass "
                                   "dataset.filelist_path=PATH to `lostreg eval`")
    assert not dest.exists()


def test_fetch_success_path(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {}

    def fake_download(dest: Path, url: str, timeout: float) -> Path:
        calls.update(dest=dest, url=url, timeout=timeout)
        return Path(dest)

    monkeypatch.setattr(data_cmd, "download_coco20k_filelist", fake_download)
    code, out, _ = run_command(capsys, "data", "fetch-coco20k-list", "--dest", str(tmp_path / "x.txt"))
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'x.txt'}"
    assert calls["url"].startswith("https://") and calls["timeout"] == 30.0

    def failing(dest: Path, url: str, timeout: float) -> Path:
        raise FileListDownloadError("downloaded COCO20k file list does not verify: 3 lines, expected 19817")

    monkeypatch.setattr(data_cmd, "download_coco20k_filelist", failing)
    code, _, err = run_command(capsys, "data", "fetch-coco20k-list")
    assert code == 2 and err.strip() == (
        "lostreg: error: downloaded COCO20k file list does not verify: 3 lines, expected 19817")


def test_fetch_default_dest_is_the_config_default() -> None:
    from lostreg.config import compose_config

    cfg = compose_config(["dataset=coco20k"])
    assert Path(cfg.dataset.filelist_path) == data_cmd.DEFAULT_FILELIST_DEST


# ---------------------------------------------------------------------------- expected_count


def test_expected_count_states_a_subsets_size(voc20: SyntheticVoc, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["check", "dataset=voc07", f"dataset.root={voc20.root}"]
    code, out, _ = run_command(capsys, "data", *base)  # trainval of 20 images: not the published 5011
    assert code == 1 and field(out, "expected") == "5011 (MISMATCH: found 20)"
    assert "dataset.expected_count=20" in out  # the hint says how to state a subset's size
    code, out, err = run_command(capsys, "data", *base, "dataset.expected_count=20")
    assert code == 0, out + err
    assert field(out, "expected") == "20 from dataset.expected_count (matches)"
    assert field(out, "status") == "OK" and "expected_count: 20" in out
    code, out, _ = run_command(capsys, "data", *base, "dataset.expected_count=19")
    assert code == 1 and field(out, "expected") == "19 from dataset.expected_count (MISMATCH: found 20)"
    # A split without a published size is checked too once a size is stated.
    code, out, _ = run_command(capsys, "data", *base, "dataset.split=train", "dataset.expected_count=11")
    assert code == 1 and field(out, "expected") == "11 from dataset.expected_count (MISMATCH: found 10)"
    code, out, err = run_command(capsys, "data", *base, "dataset.expected_count=-3")
    assert code == 2 and out == "" and err.startswith("lostreg: error: dataset.expected_count must be")
    code, out, err = run_command(capsys, "data", *base, "dataset.expected_count=many")
    assert code == 2 and out == "" and "dataset.expected_count" in err


def test_expected_count_for_a_coco20k_list_of_6(coco20k_layout: SyntheticCoco, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    coco = coco20k_layout
    filelist = write_coco20k_filelist(tmp_path / "list.txt", [int(im.image_id) for im in coco.images[:6]])
    code, out, err = run_command(capsys, "data", "check", "dataset=coco20k", f"dataset.root={coco.root}",
                                 f"dataset.filelist_path={filelist}", f"dataset.cache_dir={tmp_path / 'cache'}",
                                 "dataset.expected_count=6")
    assert code == 0, out + err
    assert field(out, "images") == "6" and field(out, "expected") == "6 from dataset.expected_count (matches)"


def test_expected_count_is_not_a_reader_argument_nor_part_of_a_runs_identity(
    voc3: SyntheticVoc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from lostreg.config import compose_config, dataset_kwargs

    required = {"coco": ["dataset.annotation_json=a.json", "dataset.image_dir=x"], "folder": ["dataset.root=x"]}
    for name in ("voc07", "voc12", "coco20k", "coco", "folder"):
        assert compose_config([f"dataset={name}", *required.get(name, [])]).dataset.expected_count is None
        cfg = compose_config([f"dataset={name}", "dataset.expected_count=3", *required.get(name, [])])
        assert cfg.dataset.expected_count == 3 and "expected_count" not in dataset_kwargs(cfg)
    run_dir = tmp_path / "run"
    argv = ["eval", "--no-progress", "backbone=pixels", "dataset=voc07", f"dataset.root={voc3.root}",
            "num_workers=0", f"run_dir={run_dir}"]
    assert main([*argv, "dataset.expected_count=3"]) == 0
    capsys.readouterr()
    # The same run without the setting, and a run directory written before the setting existed,
    # are the same run: both resume instead of being refused as another configuration.
    assert main(argv) == 0, capsys.readouterr().err
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    del config["dataset"]["expected_count"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main([*argv, "dataset.expected_count=3"]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------- every problem


def test_check_collects_every_problem(voc_mixed12: SyntheticVoc, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    voc = voc_mixed12.copy_to(tmp_path / "voc")  # a copy to damage
    images = voc.images
    ann = images[0].path.parents[1] / "Annotations"
    (ann / f"{images[1].image_id}.xml").unlink()                        # missing annotation
    (ann / f"{images[2].image_id}.xml").write_text("<annotation><size>")  # not XML
    (ann / f"{images[3].image_id}.xml").write_text(
        "<annotation><size><width>10</width><height>8</height></size><object><name>a</name></object></annotation>")
    images[4].path.unlink()                                              # missing image
    images[5].path.write_bytes(b"")                                      # zero bytes
    images[6].path.write_bytes(images[6].path.read_bytes()[:-400])       # cut in the pixel data
    images[7].path.write_bytes(images[7].path.read_bytes()[:150])        # cut in the header
    images[8].path.write_text("<html>not an image</html>")               # not an image
    images[1].path.unlink()  # the image of a missing annotation is still checked
    code, out, err = run_command(capsys, "data", "check", "dataset=voc07", f"dataset.root={voc.root}",
                                 "dataset.expected_count=12", "--max-listed", "100")
    assert code == 1, err
    assert field(out, "images") == "12" and field(out, "expected") == "12 from dataset.expected_count (matches)"
    assert field(out, "annotation problems") == "3"
    assert field(out, "missing images") == "2" and field(out, "unreadable images") == "4"
    assert field(out, "problems") == "9" and field(out, "status") == "PROBLEM"
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ") and ": " in line
              and line.split(":")[0].strip() in ("missing annotation", "malformed annotation", "missing image",
                                                 "unreadable image")]
    assert listed == [
        f"missing annotation: {ann / (images[1].image_id + '.xml')}",
        f"malformed annotation: {ann / (images[2].image_id + '.xml')}: no element found: line 1, column 18",
        f"malformed annotation: {ann / (images[3].image_id + '.xml')}: <object> without <bndbox>",
        f"missing image: {images[4].path}",
        f"missing image: {images[1].path}",
        f"unreadable image: {images[5].path}: file is empty (0 bytes)",
        f"unreadable image: {images[6].path}: image file is truncated or corrupt",
        f"unreadable image: {images[7].path}: image file is truncated or corrupt",
        f"unreadable image: {images[8].path}: not an image file (cannot identify image format)",
    ]
    code, out, _ = run_command(capsys, "data", "check", "dataset=voc07", f"dataset.root={voc.root}",
                               "--max-listed", "4")
    assert code == 1 and "  ... and 5 more" in out.splitlines()
    # eval keeps refusing the damaged copy at its first bad annotation, before any model runs.
    assert main(["eval", "backbone=pixels", "dataset=voc07", f"dataset.root={voc.root}",
                 f"run_dir={tmp_path / 'run'}"]) == 2
    assert f"missing VOC annotation {ann / (images[1].image_id + '.xml')}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_full_decode_catches_what_the_header_check_cannot(voc_small: SyntheticVoc, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    voc = voc_small.copy_to(tmp_path / "voc")  # a copy to damage
    images = voc.images
    # A BMP cut inside its pixel rows: its header is whole and PIL cannot verify BMP pixels
    # without decoding them. (The .jpg name does not matter: the decoder judges the content.)
    Image.open(images[0].path).save(images[1].path, format="BMP")
    images[1].path.write_bytes(images[1].path.read_bytes()[:-500])
    base = ["check", "dataset=voc07", f"dataset.root={voc.root}", "dataset.expected_count=2"]
    code, out, _ = run_command(capsys, "data", *base)
    assert code == 0 and field(out, "unreadable images") == "0"
    code, out, _ = run_command(capsys, "data", *base, "--full")
    assert code == 1 and field(out, "unreadable images") == "1"
    assert f"unreadable image: {images[1].path}: image file is truncated or corrupt" in out


def test_check_collects_malformed_coco_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from synthetic import write_coco_dataset

    from lostreg.datasets import AnnotationError, CocoDataset, DatasetLayoutError

    coco = write_coco_dataset(tmp_path, n_images=5, seed=3, crowd_images=())
    data = json.loads(coco.annotation_json.read_text())
    del data["images"][0]["file_name"]
    del data["annotations"][1]["id"]
    # A bad bbox on an image that is read (not the one without file_name, which is left out).
    others = [a for a in data["annotations"][2:] if a["image_id"] != data["images"][0]["id"]]
    others[0]["bbox"] = [1, 2]
    coco.annotation_json.write_text(json.dumps(data))
    # lostreg eval's reader stops at the first, naming the file (no bare KeyError).
    with pytest.raises(AnnotationError, match=r"malformed COCO annotation file .*instances\.json: annotations\[1\]"):
        CocoDataset(coco.annotation_json, coco.image_dir)
    assert issubclass(AnnotationError, DatasetLayoutError)
    code, out, err = run_command(capsys, "data", "check", "dataset=coco",
                                 f"dataset.annotation_json={coco.annotation_json}", f"dataset.image_dir={coco.image_dir}")
    assert code == 1, err
    assert field(out, "annotation problems") == "3" and field(out, "images") == "5"
    assert "annotations[1] has no 'id'" in out
    assert f"image {data['images'][0]['id']} has no 'file_name'" in out
    assert "bbox [1, 2] is not [x, y, w, h] numbers" in out
