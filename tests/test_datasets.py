"""Dataset readers on synthetic data written in the real formats (see tests/synthetic.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic import (
    SyntheticObject,
    write_coco20k_filelist,
    write_coco20k_root,
    write_voc_dataset,
    write_voc_image,
    write_voc_split,
)

import lostreg.datasets.coco20k as coco20k_mod
from lostreg.datasets import (
    COCO20K_NUM_IMAGES,
    Coco20kDataset,
    CocoDataset,
    DatasetLayoutError,
    FileListDownloadError,
    FolderDataset,
    ImageRecord,
    VOCDataset,
    build_dataset,
    check_dataset,
    describe_layout,
    download_coco20k_filelist,
    read_coco20k_filelist,
    verify_coco20k_filelist,
)

SHARED_FILELIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_20k_filenames.txt"


# ---------------------------------------------------------------------------- record


def test_record_boxes_are_readonly_int64():
    rec = ImageRecord("1", "a.jpg", 10, 10, [[0, 0, 5, 5]])
    assert rec.gt_boxes_xyxy.dtype == np.int64 and rec.gt_boxes_xyxy.shape == (1, 4)
    assert isinstance(rec.path, Path) and rec.num_gt == 1
    with pytest.raises(ValueError):
        rec.gt_boxes_xyxy[0, 0] = 3
    assert ImageRecord("1", "a.jpg", None, None).gt_boxes_xyxy.shape == (0, 4)
    assert rec == ImageRecord("1", Path("a.jpg"), 10, 10, np.array([[0, 0, 5, 5]]))
    assert rec != ImageRecord("1", "a.jpg", 10, 10, [[0, 0, 5, 6]])


def test_record_refuses_unconverted_boxes():
    with pytest.raises(ValueError, match="integral"):
        ImageRecord("1", "a.jpg", 10, 10, [[0.5, 0, 5, 5]])
    with pytest.raises(ValueError, match="shape"):
        ImageRecord("1", "a.jpg", 10, 10, [[0, 0, 5]])


# ---------------------------------------------------------------------------- VOC


def test_voc_reads_every_object_by_default(voc07_set):
    root, images = voc07_set
    ds = VOCDataset(root, year="2007")
    assert ds.name == "VOC07_trainval" and len(ds) == len(images)
    assert list(ds) == [im.record() for im in images]
    # difficult objects are ground truth by default ("VOC_all")
    assert sum(o.difficult for im in images for o in im.objects) > 0
    assert ds.get(images[2].image_id).num_gt == len(images[2].objects)


def test_voc_no_hard_drops_objects_and_skips_images(voc07_set):
    root, images = voc07_set
    ds = VOCDataset(root, year="2007", no_hard=True)
    expected = [im.record(no_hard=True) for im in images if im.gt_objects(no_hard=True)]
    assert list(ds) == expected
    assert images[2].image_id not in ds.image_ids  # all objects difficult: image skipped
    assert ds.num_skipped_hard == len(images) - len(expected) >= 1
    assert ds.name == "VOC07_trainval-nohards"


def test_voc_accepts_three_roots(voc07_set):
    root, _ = voc07_set
    ref = list(VOCDataset(root))
    assert list(VOCDataset(root / "VOCdevkit")) == ref
    assert list(VOCDataset(root / "VOCdevkit" / "VOC2007")) == ref
    with pytest.raises(DatasetLayoutError, match="VOC2012"):
        VOCDataset(root, year="2012")


def test_voc_other_splits(voc07_set):
    root, images = voc07_set
    assert VOCDataset(root, split="val").image_ids == [im.image_id for im in images[1::2]]
    with pytest.raises(DatasetLayoutError, match=r"ImageSets/Main/test\.txt"):
        VOCDataset(root, split="test")


def test_voc_float_coordinates_and_voc12_ids(voc12_set):
    root, images = voc12_set
    xml = images[0].path.parent.parent / "Annotations" / f"{images[0].image_id}.xml"
    assert ".0</xmin>" in xml.read_text()
    ds = build_dataset("voc12", root=root)
    assert ds.image_ids[0].startswith("2008_")
    assert list(ds) == [im.record() for im in images]


def test_voc_object_fields(tmp_path):
    # A VOC2012-style object: missing <difficult>, a <part> with its own <bndbox>.
    voc = tmp_path / "VOC2012"
    write_voc_image(voc, "2008_000001", 64, 48, [SyntheticObject("person", (4, 4, 30, 40))], kinds=["rect"])
    write_voc_split(voc, "trainval", ["2008_000001"])
    xml = voc / "Annotations" / "2008_000001.xml"
    text = xml.read_text().replace("\t\t<difficult>0</difficult>\n", "")
    text = text.replace(
        "\t</object>",
        "\t\t<part><name>head</name><bndbox><xmin>10</xmin><ymin>5</ymin>"
        "<xmax>20</xmax><ymax>15</ymax></bndbox></part>\n"
        "\t</object>",
    )
    xml.write_text(text)
    rec = VOCDataset(voc, year="2012")[0]
    assert rec.gt_boxes_xyxy.tolist() == [[4, 4, 30, 40]]
    assert rec.gt_labels == ("person",) and (rec.width, rec.height) == (64, 48)
    assert len(VOCDataset(voc, year="2012", no_hard=True)) == 1


def _copy_voc(voc07_set, tmp_path) -> Path:
    root, _ = voc07_set
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst / "VOCdevkit" / "VOC2007"


def test_voc_missing_imagesets_shows_layout(voc07_set, tmp_path):
    voc = _copy_voc(voc07_set, tmp_path)
    shutil.rmtree(voc / "ImageSets")
    with pytest.raises(DatasetLayoutError) as err:
        VOCDataset(tmp_path / "copy")
    msg = str(err.value)
    assert "trainval.txt" in msg.splitlines()[0]
    assert "Expected layout" in msg and "JPEGImages/" in msg and "VOC2007/" in msg


def test_voc_missing_annotations_shows_layout(voc07_set, tmp_path):
    voc = _copy_voc(voc07_set, tmp_path)
    shutil.rmtree(voc / "Annotations")
    with pytest.raises(DatasetLayoutError, match="Annotations") as err:
        VOCDataset(voc)
    assert "Expected layout" in str(err.value)
    # One missing file is named too.
    voc2 = _copy_voc(voc07_set, tmp_path / "b")
    (voc2 / "Annotations" / "000003.xml").unlink()
    with pytest.raises(DatasetLayoutError, match=r"missing VOC annotation .*000003\.xml"):
        VOCDataset(voc2)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("<annotation><size><width>10</wid", "not XML"),
        ("<annotation><object><name>a</name></object></annotation>", "missing <size>"),
        ("<annotation><size><width>10</width><height>8</height></size><object><name>a</name></object></annotation>",
         "without <bndbox>"),
        ("<annotation><size><width>ten</width><height>8</height></size></annotation>", "not a number"),
    ],
)
def test_voc_malformed_xml_names_the_file(voc07_set, tmp_path, content, reason):
    voc = _copy_voc(voc07_set, tmp_path)
    (voc / "Annotations" / "000004.xml").write_text(content)
    with pytest.raises(DatasetLayoutError) as err:
        VOCDataset(voc)
    first = str(err.value).splitlines()[0]
    assert "000004.xml" in first and "malformed" in first
    if reason != "not XML":
        assert reason in first
    assert "Expected layout" in str(err.value)


def test_voc_lenient_mode_records_every_bad_annotation(voc07_set, tmp_path):
    voc = _copy_voc(voc07_set, tmp_path)
    (voc / "Annotations" / "000002.xml").unlink()
    (voc / "Annotations" / "000004.xml").write_text("<annotation><size><width>10</wid")
    (voc / "Annotations" / "000005.xml").unlink()
    (voc / "Annotations" / "000005.xml").mkdir()  # unreadable as a file
    ds = VOCDataset(voc, strict=False)
    ids = [p.image_id for p in ds.problems]
    assert ids == ["000002", "000004", "000005"] and "000002" not in ds.image_ids
    assert len(ds) == len(voc07_set[1]) - 3
    missing, malformed, unreadable = ds.problems
    assert unreadable.kind == "unreadable annotation" and unreadable.reason.startswith("cannot read (")
    assert (missing.kind, missing.path, missing.reason) == ("missing annotation", voc / "Annotations" / "000002.xml",
                                                            "no such file")
    assert malformed.kind == "malformed annotation" and malformed.skipped
    assert malformed.image == voc / "JPEGImages" / "000004.jpg"
    assert str(malformed).startswith(f"{voc / 'Annotations' / '000004.xml'}: ")
    assert VOCDataset(voc07_set[0]).problems == []  # a sound copy has none
    with pytest.raises(DatasetLayoutError, match="missing VOC annotation"):
        VOCDataset(voc)  # strict, the default: lostreg eval stops at the first


def test_voc_root_not_found(tmp_path):
    with pytest.raises(DatasetLayoutError, match="no VOC2007 folder"):
        VOCDataset(tmp_path)
    with pytest.raises(DatasetLayoutError, match="not a directory"):
        VOCDataset(tmp_path / "nope")


# ---------------------------------------------------------------------------- COCO


def test_coco_matches_written_ground_truth(coco_set):
    ds = CocoDataset(coco_set.annotation_json, coco_set.image_dir)
    by_id = {im.image_id: im for im in coco_set.images}
    assert ds.image_ids == sorted(by_id, key=int)  # ascending COCO id
    for rec in ds:
        assert rec == by_id[rec.image_id].record()
        assert rec.path.is_file()


def test_coco_crowd_skipped_and_empty_images_listed(coco_set):
    ds = CocoDataset(coco_set.annotation_json, coco_set.image_dir)
    data = json.loads(coco_set.annotation_json.read_text())
    crowd = [a for a in data["annotations"] if a["iscrowd"] == 1]
    assert len(crowd) == 3
    n_noncrowd = len(data["annotations"]) - len(crowd)
    assert sum(r.num_gt for r in ds) == n_noncrowd
    crowd_only = coco_set.images[3].image_id
    unannotated = coco_set.images[4].image_id
    assert ds.get(crowd_only).gt_boxes_xyxy.shape == (0, 4)
    assert ds.get(unannotated).gt_boxes_xyxy.shape == (0, 4)
    # float bboxes really are fractional in the file, and still round to the extents
    assert any(v != int(v) for a in data["annotations"] for v in a["bbox"])


def test_coco_image_id_subset_and_errors(coco_set, tmp_path):
    ids = [int(coco_set.images[5].image_id), coco_set.images[1].image_id]
    ds = CocoDataset(coco_set.annotation_json, coco_set.image_dir, image_ids=ids)
    assert ds.image_ids == [coco_set.images[5].image_id, coco_set.images[1].image_id]
    with pytest.raises(KeyError):
        CocoDataset(coco_set.annotation_json, coco_set.image_dir, image_ids=[999_999])
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetLayoutError, match=r"malformed COCO annotation file .*bad\.json"):
        CocoDataset(bad, coco_set.image_dir)
    with pytest.raises(DatasetLayoutError, match="missing COCO annotation file"):
        CocoDataset(tmp_path / "none.json", coco_set.image_dir)
    with pytest.raises(DatasetLayoutError, match="missing COCO image folder"):
        CocoDataset(coco_set.annotation_json, tmp_path / "noimg")


# ---------------------------------------------------------------------------- COCO20k


@pytest.fixture()
def coco20k(coco20k_layout, tmp_path):
    """A copy of the shared layout (reading it writes a cache into <root>/annotations) and a list."""
    written = coco20k_layout.copy_to(tmp_path / "COCO")
    listed = written.images[1:7]  # 6 of the 8 images; image 0 (crowd) is left out
    filelist = write_coco20k_filelist(tmp_path / "list.txt", [im.image_id for im in listed])
    return tmp_path / "COCO", filelist, written, listed


def test_coco20k_builds_subset_with_crowd_and_caches(coco20k, caplog):
    root, filelist, written, listed = coco20k
    ds = Coco20kDataset(root, filelist)
    assert not ds.cache_reused
    assert ds.cache_path == root / "annotations" / "instances_train2014_sel20k.json"
    assert ds.name == "COCO20k" and len(ds) == len(listed)
    assert list(ds) == sorted((im.record() for im in listed), key=lambda r: int(r.image_id))
    # subset keeps every annotation of the listed images, crowd included, in list order
    full = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    subset = json.loads(ds.cache_path.read_text())
    wanted = {int(im.image_id) for im in listed}
    assert sorted(a["id"] for a in subset["annotations"]) == sorted(
        a["id"] for a in full["annotations"] if a["image_id"] in wanted
    )
    list_order = [int(line.split("_")[-1][:-4]) for line in filelist.read_text().split()]
    assert [im["id"] for im in subset["images"]] == list_order
    assert subset["categories"] == full["categories"]
    assert "published 19817" in caplog.text  # a short list is allowed but flagged


def test_coco20k_subset_keeps_crowd_annotations(tmp_path):
    written = write_coco20k_root(tmp_path / "C", n_images=3, seed=4, flat=True)  # image 0 has a crowd
    filelist = write_coco20k_filelist(tmp_path / "l.txt", [im.image_id for im in written.images])
    ds = Coco20kDataset(tmp_path / "C", filelist)
    subset = json.loads(ds.cache_path.read_text())
    assert any(a["iscrowd"] == 1 for a in subset["annotations"])
    assert list(ds) == [im.record() for im in written.images]
    assert ds[0].path.parent == tmp_path / "C" / "train2014"  # flat layout accepted


def test_coco20k_reuses_cache_and_rebuilds_on_new_list(coco20k):
    root, filelist, written, listed = coco20k
    first = Coco20kDataset(root, filelist)
    stamp = first.cache_path.stat().st_mtime_ns
    # The full annotation file is not needed once the cache matches.
    (root / "annotations" / "instances_train2014.json").rename(root / "annotations" / "moved.json")
    again = Coco20kDataset(root, filelist)
    assert again.cache_reused and first.cache_path.stat().st_mtime_ns == stamp
    assert list(again) == list(first)
    # Another list: the cache no longer matches and is rebuilt from the full file.
    (root / "annotations" / "moved.json").rename(root / "annotations" / "instances_train2014.json")
    other = write_coco20k_filelist(filelist, [im.image_id for im in written.images[:3]])
    rebuilt = Coco20kDataset(root, other)
    assert not rebuilt.cache_reused and len(rebuilt) == 3


def test_coco20k_cache_dir_and_fallback(coco20k, tmp_path, monkeypatch):
    root, filelist, _, listed = coco20k
    ds = Coco20kDataset(root, filelist, cache_dir=tmp_path / "cache")
    assert ds.cache_path == tmp_path / "cache" / "instances_train2014_sel20k.json"
    assert not (root / "annotations" / "instances_train2014_sel20k.json").exists()
    # <root>/annotations not writable -> user cache dir.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real_write = coco20k_mod.atomic_write_bytes

    def refuse_root(dest, payload):
        if dest.parent == root / "annotations":
            raise PermissionError("read-only")
        real_write(dest, payload)

    monkeypatch.setattr(coco20k_mod, "atomic_write_bytes", refuse_root)
    ds = Coco20kDataset(root, filelist)
    assert ds.cache_path == tmp_path / "xdg" / "lostreg" / "coco20k" / "instances_train2014_sel20k.json"
    assert Coco20kDataset(root, filelist).cache_reused


def test_coco20k_layout_errors(coco20k, tmp_path):
    root, filelist, written, _ = coco20k
    with pytest.raises(DatasetLayoutError, match="missing COCO20k file list"):
        Coco20kDataset(root, tmp_path / "absent.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("train2014/COCO_train2014_000000000001.jpg\nval2014/COCO_val2014_000000000002.jpg\n")
    with pytest.raises(DatasetLayoutError, match=r"bad\.txt:2"):
        Coco20kDataset(root, bad)
    unknown = write_coco20k_filelist(tmp_path / "unknown.txt", [1])  # id 1 is not in the json
    with pytest.raises(DatasetLayoutError, match="not in the annotation file") as err:
        Coco20kDataset(root, unknown)
    assert "instances_train2014.json" in str(err.value)
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetLayoutError, match="missing COCO image folder") as err:
        Coco20kDataset(root, filelist)
    assert "Expected layout" in str(err.value)


def test_filelist_verification():
    good = "".join(f"train2014/COCO_train2014_{i:012d}.jpg\n" for i in range(1, 6))
    assert len(verify_coco20k_filelist(good, expected_count=5)) == 5
    assert len(verify_coco20k_filelist(good.replace("\n", "\r\n"), expected_count=None)) == 5
    with pytest.raises(ValueError, match="5 lines, expected 19817"):
        verify_coco20k_filelist(good)
    with pytest.raises(ValueError, match=":6: duplicate of line 1"):
        verify_coco20k_filelist(good + "train2014/COCO_train2014_000000000001.jpg\n", None)
    with pytest.raises(ValueError, match=":2:"):
        verify_coco20k_filelist(good.replace("\n", "\n\n", 1), None)  # interior blank line
    with pytest.raises(ValueError, match=":1:"):
        verify_coco20k_filelist("train2014/COCO_train2014_00000000001.jpg\n", None)  # 11 digits


def test_download_filelist_verifies_before_writing(tmp_path):
    lines = [f"train2014/COCO_train2014_{i:012d}.jpg" for i in range(1, COCO20K_NUM_IMAGES + 1)]
    src = tmp_path / "src.txt"
    src.write_text("\n".join(lines) + "\n")
    (tmp_path / "out").mkdir()  # an existing folder: the file gets its standard name
    out = download_coco20k_filelist(tmp_path / "out", url=src.as_uri())
    assert out == tmp_path / "out" / "coco_20k_filenames.txt" and out.read_text() == src.read_text()
    short = tmp_path / "short.txt"
    short.write_text("\n".join(lines[:10]) + "\n")
    dest = tmp_path / "never.txt"
    with pytest.raises(FileListDownloadError, match="does not verify"):
        download_coco20k_filelist(dest, url=short.as_uri())
    assert not dest.exists()


def test_download_filelist_offline_error(tmp_path):
    # Port 9 on localhost: refused at once, no network involved.
    with pytest.raises(FileListDownloadError, match="could not download .* offline"):
        download_coco20k_filelist(tmp_path / "x.txt", url="http://127.0.0.1:9/coco_20k_filenames.txt", timeout=2)
    assert not (tmp_path / "x.txt").exists()


def test_shared_coco20k_filelist_is_the_published_one():
    if not SHARED_FILELIST.is_file():
        pytest.skip(f"{SHARED_FILELIST} absent (../shared exists only in CI and dev checkouts)")
    lines = read_coco20k_filelist(SHARED_FILELIST, expected_count=COCO20K_NUM_IMAGES)
    assert len(lines) == len(set(lines)) == 19817


# ---------------------------------------------------------------------------- folder


def test_folder_lists_images_sorted(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.jpg", "sub/d.jpeg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    ds = FolderDataset(tmp_path)
    assert ds.image_ids == ["a.JPG", "b.png", "c.webp"]
    rec = ds[0]
    assert rec.width is None and rec.height is None and rec.gt_boxes_xyxy.shape == (0, 4)
    assert FolderDataset(tmp_path, recursive=True).image_ids == ["a.JPG", "b.png", "c.webp", "sub/d.jpeg"]
    single = FolderDataset(tmp_path / "b.png")
    assert single.image_ids == ["b.png"] and single[0].path == tmp_path / "b.png"


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no image found") as err:
        FolderDataset(tmp_path / "empty")
    assert ".webp" in str(err.value)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        FolderDataset(tmp_path / "missing")


# ---------------------------------------------------------------------------- factory / check


def test_build_dataset_names(voc07_set, coco_set, tmp_path):
    root, _ = voc07_set
    assert isinstance(build_dataset("voc07", root=root), VOCDataset)
    assert isinstance(build_dataset("VOC07", root=root, split="train"), VOCDataset)
    built = build_dataset("coco", annotation_json=coco_set.annotation_json, image_dir=coco_set.image_dir)
    assert isinstance(built, CocoDataset)
    assert isinstance(build_dataset("folder", root=coco_set.image_dir), FolderDataset)
    with pytest.raises(KeyError, match="unknown dataset"):
        build_dataset("imagenet")
    with pytest.raises(ValueError):
        build_dataset("voc07", root=root, year="2012")


def test_describe_layout():
    assert "VOC2007/" in describe_layout("voc07") and "ImageSets/" in describe_layout("voc07")
    assert "VOC2012/" in describe_layout("voc12")
    assert "instances_train2014.json" in describe_layout("coco20k")
    for name in ("coco", "folder"):
        assert describe_layout(name)
    with pytest.raises(KeyError):
        describe_layout("nope")


def test_layout_help_names_what_the_user_types(coco20k, tmp_path):
    """The expected trees and hints name commands, settings and flags, never Python names."""
    every = "\n".join(describe_layout(name) for name in ("voc07", "voc12", "coco20k", "coco", "folder"))
    assert "download_coco20k_filelist" not in every and "recursive=True" not in every
    assert "lostreg data fetch-coco20k-list" in describe_layout("coco20k")
    assert "dataset.filelist_path=" in describe_layout("coco20k")
    assert "dataset.recursive=true" in describe_layout("folder") and "--recursive" in describe_layout("folder")
    root, _, _, _ = coco20k
    with pytest.raises(DatasetLayoutError) as err:
        Coco20kDataset(root, tmp_path / "absent.txt")
    first = str(err.value).splitlines()[0]
    assert f"lostreg data fetch-coco20k-list --dest {tmp_path / 'absent.txt'}" in first
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as err:
        FolderDataset(tmp_path / "photos")
    assert "dataset.recursive=true" in str(err.value).splitlines()[0]


def test_check_dataset_counts_and_missing_images(tmp_path):
    images = write_voc_dataset(tmp_path, n_images=14, seed=9, sizes=((64, 48),), max_objects=2)
    for im in images[:12]:
        os.unlink(im.path)
    report = check_dataset("voc07", root=tmp_path)
    assert report["images"] == 14 and report["images_with_gt"] == 14
    assert report["gt_boxes"] == sum(len(im.objects) for im in images)
    assert report["num_missing_images"] == 12 and len(report["missing_images"]) == 10
    assert report["missing_images"][0] == str(images[0].path)
    assert report["expected_images"] == 5011 and report["ok"] is False
    folder = check_dataset("folder", root=images[13].path.parent)
    assert folder["ok"] and folder["images"] == 2 and folder["gt_boxes"] == 0
