"""The discovery pipeline and the ``lostreg discover`` command, end to end, without downloads."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from lostreg.backbones import build_backbone
from lostreg.boxes import iou_xyxy
from lostreg.cli import discover_cmd
from lostreg.cli.main import main
from lostreg.discovery import ObjectDiscoverer
from lostreg.protocol import DiscoveryProtocol, FeatureConfig

SHARED_PHOTO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "VOC07_000236.jpg"


def scene(width: int, height: int, box: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A dark flat rectangle (box = x1, y1, x2, y2, max exclusive) on a bright noisy gradient."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    background = 170 + 60 * x + rng.normal(0, 8, (height, width, 3))
    image = np.broadcast_to(background, (height, width, 3)).copy()
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = (40, 60, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def write(path: Path, image: np.ndarray, **save_kwargs: object) -> Path:
    Image.fromarray(image).save(path, **save_kwargs)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict], str]:
    code = main(["discover", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


# --- library ----------------------------------------------------------------------------------


def test_pixels_backbone_finds_a_dark_object() -> None:
    discoverer = ObjectDiscoverer(build_backbone("pixels", device="cpu"))
    gt = (48, 32, 112, 80)
    found = discoverer.discover(scene(200, 150, gt), "scene")
    assert found.box_xyxy == gt, "object aligned to the 16-px grid is found exactly"
    assert (found.width, found.height) == (200, 150)
    assert 48 <= found.seed_box_xyxy[0] < 112 and 32 <= found.seed_box_xyxy[1] < 80


def test_max_size_maps_boxes_back_to_original_pixels() -> None:
    backbone = build_backbone("pixels", device="cpu")
    gt = (192, 128, 448, 320)
    image = scene(800, 600, gt)
    native = ObjectDiscoverer(backbone).discover(image)
    small = ObjectDiscoverer(backbone, max_size=200).discover(image)
    assert small.processed_hw == (150, 200) and (small.width, small.height) == (800, 600)
    assert native.box_xyxy == gt
    assert iou_xyxy(small.box_xyxy, gt) > 0.8
    assert all(0 <= v <= 800 for v in small.box_xyxy[::2]) and all(0 <= v <= 600 for v in small.box_xyxy[1::2])


def test_batch_equals_single_images() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        discoverer = ObjectDiscoverer(build_backbone("dinov2_reg", weights="random", device="cpu"))
    images = [scene(70, 56, (14, 14, 42, 42), seed=s) for s in range(3)]
    prepared = [discoverer.prepare(im, f"im{i}") for i, im in enumerate(images)]
    batched = discoverer.discover_batch(prepared)
    single = [discoverer.discover(im, f"im{i}") for i, im in enumerate(images)]
    assert [d.to_json() for d in batched] == [d.to_json() for d in single]


def test_lost_config_is_passed_through() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone("dino", weights="random", device="cpu")
    image = scene(96, 64, (16, 16, 48, 48))
    base = ObjectDiscoverer(backbone).discover(image)
    for config in (DiscoveryProtocol(features=FeatureConfig(which="q")), DiscoveryProtocol(features=FeatureConfig(layer=0))):
        other = ObjectDiscoverer(backbone, config).discover(image)
        assert not torch.equal(other.lost.expansion, base.lost.expansion)


def test_l2_normalize_feeds_lost_unit_vectors() -> None:
    """``l2_normalize`` = LOST on the backbone's features divided by their norms."""
    from lostreg.lost import lost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone("dinov2_reg", weights="random", device="cpu")
    image = scene(70, 56, (14, 14, 42, 42))
    found = ObjectDiscoverer(backbone, DiscoveryProtocol(features=FeatureConfig(l2_normalize=True))).discover(image)
    prepared = ObjectDiscoverer(backbone).prepare(image, "x")
    feats = backbone.extract(prepared.padded.tensor[None])[0]
    expected = lost(feats / feats.norm(dim=-1, keepdim=True), prepared.padded.grid_hw)
    assert torch.equal(found.lost.expansion, expected.expansion)
    assert found.lost.seed == expected.seed


# --- command line -----------------------------------------------------------------------------


def test_discover_prints_json_per_image_and_writes_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a.png", scene(160, 96, (32, 16, 96, 64)))
    write(tmp_path / "b.jpg", scene(120, 100, (16, 16, 64, 64)), quality=95)
    out_dir = tmp_path / "out"
    code, records, err = run_cli(capsys, str(tmp_path), "--backbone", "pixels", "--output", str(out_dir))
    assert code == 0, err
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.jpg"]
    first = records[0]
    assert set(first) == {"image", "width", "height", "box_xyxy", "seed_rc", "backbone"}
    assert (first["width"], first["height"]) == (160, 96)
    assert first["box_xyxy"] == [32, 16, 96, 64] and first["backbone"] == "pixels"
    pictures = sorted(p.name for p in out_dir.glob("*.png"))
    assert pictures == ["a.png", "b.png"]
    drawn = np.asarray(Image.open(out_dir / "a.png"))
    assert drawn.shape == (96, 160, 3)
    saved = [json.loads(line) for line in (out_dir / "discoveries.jsonl").read_text().splitlines()]
    assert [s["box_xyxy"] for s in saved] == [r["box_xyxy"] for r in records]


def test_glob_input_and_png_name_collisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub / "same.png", scene(64, 64, (16, 16, 48, 48)))
    code, records, err = run_cli(
        capsys, str(tmp_path / "*" / "same.png"), "--backbone", "pixels", "--output", str(tmp_path / "o")
    )
    assert code == 0, err
    assert len(records) == 2
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["same.png", "same_1.png"]


def test_exif_orientation_applied_before_discovery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stored = scene(160, 96, (32, 16, 96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = write(tmp_path / "rotated.jpg", stored, exif=exif, quality=95)
    code, records, _ = run_cli(capsys, str(path), "--backbone", "pixels")
    assert code == 0
    assert (records[0]["width"], records[0]["height"]) == (96, 160)


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = scene(64, 48, (16, 16, 48, 32))
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = write(bad / "truncated.jpg", scene(200, 150, (32, 32, 96, 96)), quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("not an image")
    write(bad / "tiny.png", good[:10, :10])
    return {
        "truncated": truncated,
        "empty": bad / "empty.jpg",
        "text": bad / "notes.jpg",
        "tiny": bad / "tiny.png",
        "gray": write(tmp_path / "gray.png", np.asarray(Image.fromarray(good).convert("L"))),
        "rgba": write(tmp_path / "rgba.png", np.dstack([good, np.full(good.shape[:2], 128, np.uint8)])),
        "palette": _save_mode(tmp_path / "palette.png", Image.fromarray(good).convert("P")),
        "gray16": _save_mode(tmp_path / "gray16.png", Image.fromarray((good[..., 0].astype(np.uint16) * 257))),
        "cmyk": _save_mode(tmp_path / "cmyk.jpg", Image.fromarray(good).convert("CMYK")),
    }


def _save_mode(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


def test_bad_images_are_reported_and_the_rest_finish(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _bad_inputs(tmp_path)
    empty_dir = tmp_path / "nothing_here"
    empty_dir.mkdir()
    args = [str(p) for p in files.values()] + [str(tmp_path / "missing.jpg"), str(empty_dir)]
    code, records, err = run_cli(capsys, *args, "--backbone", "pixels")
    assert code == 1
    done = {Path(r["image"]).stem for r in records}
    assert done == {"gray", "rgba", "palette", "gray16", "cmyk"}
    errors = [line for line in err.splitlines() if line.startswith("lostreg: error:")]
    expected = {
        "truncated.jpg": "truncated or corrupt",
        "empty.jpg": "empty",
        "notes.jpg": "not an image",
        "tiny.png": "smaller than one 16-pixel patch",
        "missing.jpg": "no such file",
        "nothing_here": "no image files",
    }
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in errors), (name, errors)
    assert "6 of 11 inputs failed" in err


def test_sixteen_bit_png_is_not_washed_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 16-bit scene gives the same box as its 8-bit version (not a white image)."""
    image = scene(128, 96, (32, 32, 80, 64))
    gray8 = write(tmp_path / "g8.png", image[..., 0])
    gray16 = _save_mode(tmp_path / "g16.png", Image.fromarray(image[..., 0].astype(np.uint16) * 257))
    code, records, _ = run_cli(capsys, str(gray8), str(gray16), "--backbone", "pixels")
    assert code == 0
    assert records[0]["box_xyxy"] == records[1]["box_xyxy"] == [32, 32, 80, 64]


def test_unknown_backbone_lists_valid_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "a.png", scene(64, 64, (16, 16, 48, 48)))
    code, records, err = run_cli(capsys, str(path), "--backbone", "dinov2_regz")
    assert code == 2 and not records
    assert "unknown backbone 'dinov2_regz'" in err and "dinov2_vits14_reg" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", [b"garbage", None])
def test_bad_weights_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None) -> None:
    import torch

    path = write(tmp_path / "a.png", scene(64, 64, (16, 16, 48, 48)))
    weights = tmp_path / "w.pth"
    if content is None:  # a real checkpoint, for another architecture
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(build_backbone("dino", weights="random", device="cpu").model.state_dict(), weights)
        reason = "different architecture"
    else:
        weights.write_bytes(content)
        reason = "cannot read weights"
    code, _, err = run_cli(capsys, str(path), "--backbone", "dinov2_reg", "--weights", str(weights))
    assert code == 2
    assert str(weights) in err and reason in err and "Traceback" not in err


def test_model_is_built_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = discover_cmd.build_backbone_loudly

    def counting(name: str, *args: object):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(name, *args)

    monkeypatch.setattr(discover_cmd, "build_backbone_loudly", counting)
    for i in range(3):
        write(tmp_path / f"{i}.png", scene(64, 64, (16, 16, 48, 48), seed=i))
    code, records, _ = run_cli(capsys, str(tmp_path), "--backbone", "pixels")
    assert code == 0 and len(records) == 3 and calls == ["pixels"]


def test_samples_run_without_own_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, records, err = run_cli(capsys, "--samples", "--backbone", "pixels", "--output", str(tmp_path))
    assert code == 0, err
    assert [r["image"] for r in records] == [
        "skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:rocket", "skimage:motorcycle",
    ]
    assert len(list(tmp_path.glob("*.png"))) == 5


def test_console_script_with_random_vit_on_a_real_photo(tmp_path: Path) -> None:
    """The installed command, in its own process, with a random-weight DINOv2+reg, warns loudly."""
    if not SHARED_PHOTO.is_file():
        pytest.skip(f"{SHARED_PHOTO} is absent (../shared is only beside CI and developer clones)")
    proc = subprocess.run(
        [sys.executable, "-m", "lostreg.cli.main", "discover", str(SHARED_PHOTO),
         "--backbone", "dinov2_reg", "--weights", "random", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert (record["width"], record["height"]) == (500, 381)
    x1, y1, x2, y2 = record["box_xyxy"]
    assert 0 <= x1 < x2 <= 500 and 0 <= y1 < y2 <= 381
    assert record["backbone"] == "dinov2_vits14_reg"
    assert "RANDOM weights" in proc.stderr


def test_tokencut_records_say_whether_the_spectrum_was_degenerate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A flat image gives identical patch features: a complete graph, the spec's degenerate case.
    write(tmp_path / "flat.png", np.full((64, 96, 3), 128, np.uint8))
    write(tmp_path / "scene.png", scene(160, 96, (32, 16, 96, 64)))
    code, records, err = run_cli(capsys, str(tmp_path), "--backbone", "pixels", "--method", "tokencut")
    assert code == 0, err
    by_name = {Path(r["image"]).name: r for r in records}
    assert by_name["flat.png"]["degenerate"] is True
    assert by_name["scene.png"]["degenerate"] is False
    assert by_name["scene.png"]["box_xyxy"] == [32, 16, 96, 64]
    # LOST's records have no such field.
    code, records, err = run_cli(capsys, str(tmp_path / "scene.png"), "--backbone", "pixels")
    assert code == 0 and "degenerate" not in records[0]
