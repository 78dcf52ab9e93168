"""`lostreg data check` and `lostreg data fetch-coco20k-list` on synthetic datasets, offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from synthetic import write_coco20k_filelist, write_coco20k_root, write_voc_dataset

import lostreg.cli.data_cmd as data_cmd
from lostreg.cli.main import main
from lostreg.datasets import FileListDownloadError


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["data", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def field(out: str, name: str) -> str:
    """The value of a ``name:`` line of the summary."""
    line = next(line for line in out.splitlines() if line.startswith(f"{name}:"))
    return line.split(":", 1)[1].strip()


def test_check_complete_split_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_voc_dataset(tmp_path, year="2007", n_images=6)
    # train.txt (even positions) has no published size, so a complete copy is simply OK.
    code, out, err = run_cli(capsys, "check", "dataset=voc07", f"dataset.root={tmp_path}", "dataset.split=train")
    assert code == 0, err
    train = images[0::2]
    assert field(out, "dataset").endswith("(voc07)") and "VOC07" in field(out, "dataset")
    assert field(out, "images") == "3"
    assert field(out, "with GT") == str(sum(1 for im in train if im.gt_objects()))
    assert field(out, "GT boxes") == str(sum(len(im.gt_objects()) for im in train))
    assert field(out, "expected") == "no published size for this split"
    assert field(out, "missing images") == "0"
    assert field(out, "status") == "OK"
    assert f"root: {tmp_path}" in out  # the settings that were read


def test_check_trainval_size_mismatch_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_voc_dataset(tmp_path, year="2007", n_images=4)
    code, out, _ = run_cli(capsys, "check", "dataset=voc07", f"dataset.root={tmp_path}")
    assert code == 1
    assert field(out, "images") == "4"
    assert field(out, "expected") == "5011 (MISMATCH: found 4)"
    assert field(out, "status") == "PROBLEM"


def test_check_lists_missing_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = write_voc_dataset(tmp_path, year="2012", n_images=6)
    for im in images[:3]:
        im.path.unlink()
    code, out, _ = run_cli(capsys, "check", "dataset=voc12", f"dataset.root={tmp_path}", "dataset.split=trainval",
                           "--max-listed", "2")
    assert code == 1
    assert field(out, "missing images") == "3"
    assert str(images[0].path) in out and str(images[1].path) in out
    assert str(images[2].path) not in out and "... and 1 more" in out
    assert field(out, "expected") == "11540 (MISMATCH: found 6)"


def test_check_coco20k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = write_coco20k_root(tmp_path / "COCO", n_images=5)
    filelist = write_coco20k_filelist(tmp_path / "list.txt", [int(im.image_id) for im in coco.images])
    code, out, _ = run_cli(capsys, "check", "dataset=coco20k", f"dataset.root={tmp_path / 'COCO'}",
                           f"dataset.filelist_path={filelist}", f"dataset.cache_dir={tmp_path / 'cache'}")
    assert code == 1  # 5 images, not the published 19817
    assert field(out, "images") == "5" and field(out, "expected") == "19817 (MISMATCH: found 5)"


def test_check_missing_layout_exits_2_with_expected_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check", "dataset=voc07", f"dataset.root={tmp_path / 'nowhere'}")
    assert code == 2 and out == ""
    assert err.startswith("lostreg: error: ")
    assert "Expected layout:" in err and "VOCdevkit/" in err and "VOC2007/" in err and "trainval.txt" in err


def test_check_bad_override_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check", "dataset=imagenet")
    assert code == 2 and out == ""
    assert err.startswith("lostreg: error: ") and "imagenet" in err
    assert len(err.strip().splitlines()) == 1


def test_check_missing_required_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", "dataset=folder")
    assert code == 2 and "dataset.root" in err


def test_data_needs_an_action() -> None:
    with pytest.raises(SystemExit) as info:
        main(["data"])
    assert info.value.code == 2


def test_fetch_offline_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "lists" / "coco_20k_filenames.txt"
    start = time.monotonic()
    # Port 9 (discard) on localhost refuses the connection at once: offline without waiting.
    code, out, err = run_cli(capsys, "fetch-coco20k-list", "--dest", str(dest),
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
    code, out, _ = run_cli(capsys, "fetch-coco20k-list", "--dest", str(tmp_path / "x.txt"))
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'x.txt'}"
    assert calls["url"].startswith("https://") and calls["timeout"] == 30.0

    def failing(dest: Path, url: str, timeout: float) -> Path:
        raise FileListDownloadError("downloaded COCO20k file list does not verify: 3 lines, expected 19817")

    monkeypatch.setattr(data_cmd, "download_coco20k_filelist", failing)
    code, _, err = run_cli(capsys, "fetch-coco20k-list")
    assert code == 2 and err.strip() == (
        "lostreg: error: downloaded COCO20k file list does not verify: 3 lines, expected 19817")


def test_fetch_default_dest_is_the_config_default() -> None:
    from lostreg.config import compose_config

    cfg = compose_config(["dataset=coco20k"])
    assert Path(cfg.dataset.filelist_path) == data_cmd.DEFAULT_FILELIST_DEST
