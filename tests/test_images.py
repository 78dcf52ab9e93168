"""Tests for lostreg.io.images: every file is generated on disk under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import lostreg.io.images as images_mod
from lostreg.io.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    check_image_file,
    collect_image_paths,
    load_image_rgb,
    pil_to_rgb_array,
)

# ../shared beside the repository (present in CI, absent in a user's clone).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOC_PHOTO = SHARED / "data" / "VOC07_000236.jpg"


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    image.save(path, **kwargs)
    return path


# --------------------------------------------------------------------- decoding modes


def test_rgb_jpeg(tmp_path: Path) -> None:
    pixels = np.zeros((24, 40, 3), np.uint8)
    pixels[:, :, 0] = 200
    path = _save(Image.fromarray(pixels), tmp_path / "rgb.jpg", quality=95)
    out = load_image_rgb(path)
    assert out.shape == (24, 40, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert np.abs(out.astype(int) - pixels).max() <= 3


def test_rgb_png_is_lossless(tmp_path: Path) -> None:
    pixels = _noise(17, 23)
    out = load_image_rgb(_save(Image.fromarray(pixels), tmp_path / "rgb.png"))
    np.testing.assert_array_equal(out, pixels)


def test_grayscale_png(tmp_path: Path) -> None:
    gray = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    out = load_image_rgb(_save(Image.fromarray(gray), tmp_path / "gray.png"))
    assert out.shape == (12, 20, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_gray_alpha_drops_alpha(tmp_path: Path) -> None:
    image = Image.new("LA", (8, 6), (77, 0))  # fully transparent, grey 77
    out = load_image_rgb(_save(image, tmp_path / "la.png"))
    assert out.shape == (6, 8, 3)
    assert (out == 77).all()


def test_one_bit(tmp_path: Path) -> None:
    image = Image.new("1", (10, 4), 0)
    image.putpixel((3, 2), 1)
    out = load_image_rgb(_save(image, tmp_path / "bw.png"))
    assert out.shape == (4, 10, 3)
    assert set(np.unique(out)) == {0, 255}
    assert (out[2, 3] == 255).all() and (out[0, 0] == 0).all()


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 5), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putpixel((1, 1), 1)
    return image


def test_palette_without_transparency(tmp_path: Path) -> None:
    out = load_image_rgb(_save(_palette_image(), tmp_path / "p.png"))
    assert out.shape == (5, 6, 3)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (200, 100, 50)


def test_palette_with_transparency_uses_palette_colour(tmp_path: Path) -> None:
    # convert("RGB") semantics: a transparent index shows its palette colour.
    path = _save(_palette_image(), tmp_path / "pt.png", transparency=0)
    with Image.open(path) as raw:
        assert raw.info.get("transparency") == 0
    out = load_image_rgb(path)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[1, 1]) == (200, 100, 50)


def test_rgba_drops_alpha_without_compositing(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., :3] = (12, 34, 56)
    rgba[..., 3] = 0  # fully transparent: still its RGB, not black or white
    out = load_image_rgb(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    assert out.shape == (4, 5, 3)
    assert (out == (12, 34, 56)).all()


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535], [128, 129, 65406, 65407]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
        # The reason for the special case: PIL clips mid-grey to white.
        assert np.asarray(raw.convert("RGB"))[0, 2, 0] == 255
    out = load_image_rgb(path)
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128, 255], [0, 1, 254, 255]])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_big_endian_and_mode_i_in_memory() -> None:
    big = Image.fromarray(np.array([[32896, 65535]], dtype=">u2"))
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(pil_to_rgb_array(big)[0, :, 0], [128, 255])
    wide = Image.fromarray(np.array([[-5, 32896, 70000]], dtype=np.int32))
    assert wide.mode == "I"
    np.testing.assert_array_equal(pil_to_rgb_array(wide)[0, :, 0], [0, 128, 255])


def test_mode_i_tiff(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.array([[0, 32896, 65535]], np.int32)), tmp_path / "i.tif")
    np.testing.assert_array_equal(load_image_rgb(path)[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # max <= 1: taken as [0, 1]
        ([0.0, 100.0, 200.0], [0, 100, 200]),  # 1 < max <= 255: taken as [0, 255]
        ([0.0, 500.0, 1000.0], [0, 128, 255]),  # max > 255: scaled by 255 / max
        ([-3.0, float("nan"), 0.25], [0, 0, 64]),  # negatives and NaN -> 0
    ],
)
def test_float_mode_rule(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    image = Image.fromarray(np.array([values], dtype=np.float32))
    assert image.mode == "F"
    path = _save(image, tmp_path / "f.tif")
    out = load_image_rgb(path)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    assert (out[..., 0] == out[..., 2]).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    for x in range(8):
        for y in range(16):
            image.putpixel((x, y), (0, 255, 255, 0))  # magenta + yellow: red
    path = _save(image, tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
        expected = np.asarray(raw.convert("RGB"))
    out = load_image_rgb(path)
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, expected)
    assert (out[:, 12:] > 240).all()
    assert (out[:, :4, 0] > 200).all() and (out[:, :4, 1:] < 60).all()


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    # Stored 48 wide x 32 high, a red 16x16 block at the stored top-left corner.
    pixels = np.full((32, 48, 3), 255, np.uint8)
    pixels[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(
        Image.fromarray(pixels), tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95,
        subsampling=0,
    )
    out = load_image_rgb(path)
    assert out.shape == (48, 32, 3)  # height and width swapped
    # A clockwise turn carries the top-left corner to the top-right corner.
    assert out[4, 28, 0] > 200 and out[4, 28, 1] < 50
    assert (out[4, 3] > 200).all()  # top-left is now white
    assert (out[44, 28] > 200).all()


def test_multi_frame_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with Image.open(path) as raw:
        assert raw.n_frames == 2
    out = load_image_rgb(path)
    assert out.shape == (8, 8, 3)
    assert (out == (255, 0, 0)).all()


def test_multi_page_tiff_gives_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (6, 4), (0, 200, 0)), Image.new("RGB", (9, 9), (9, 9, 9))]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    out = load_image_rgb(path)
    assert out.shape == (4, 6, 3)
    assert (out == (0, 200, 0)).all()


def test_extension_is_not_trusted(tmp_path: Path) -> None:
    # A PNG named .jpg decodes: the decoder judges the content, not the name.
    pixels = _noise(5, 7)
    path = tmp_path / "actually_png.jpg"
    Image.fromarray(pixels).save(path, format="PNG")
    np.testing.assert_array_equal(load_image_rgb(path), pixels)


def test_accepts_str_path(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(3, 3)), tmp_path / "s.png")
    assert load_image_rgb(str(path)).shape == (3, 3, 3)


@pytest.mark.skipif(not VOC_PHOTO.is_file(), reason=f"{VOC_PHOTO} absent (no ../shared)")
def test_real_voc_photo() -> None:
    out = load_image_rgb(VOC_PHOTO)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == (381, 500)
    assert 20 < out.mean() < 235 and out.std() > 10  # a real photo, not flat


# --------------------------------------------------------------------------- errors


def _read_error(path: Path) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        load_image_rgb(path)
    err = info.value
    assert "\n" not in str(err)
    assert str(err) == f"{path}: {err.reason}"
    assert err.path == str(path)
    return err


def test_error_str_is_one_line() -> None:
    err = ImageReadError("photos/x.jpg", "not an image file\n(cannot identify image format)")
    assert str(err) == "photos/x.jpg: not an image file (cannot identify image format)"
    assert err.path == "photos/x.jpg"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    assert _read_error(path).reason == "no such file"


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _read_error(tmp_path).reason


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"")
    assert _read_error(path).reason == "file is empty (0 bytes)"


def test_text_file_with_jpg_extension(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("this is not a picture\n")
    assert _read_error(path).reason == "not an image file (cannot identify image format)"


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(64, 64)), tmp_path / "b.jpg", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _read_error(path)
    assert err.reason == "image file is truncated or corrupt"
    # The loader must not have switched on PIL's lenient mode to get here.
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_truncated_png(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(64, 64)), tmp_path / "t.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert _read_error(path).reason == "image file is truncated or corrupt"


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.fromarray(_noise(20, 20)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 px > 2 * 100
    err = _read_error(path)
    assert "decompression bomb" in err.reason
    assert "MAX_IMAGE_PIXELS" in err.reason


def test_permission_error_via_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.fromarray(_noise(3, 3)), tmp_path / "locked.png")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    # The module opens files itself; shadow the builtin there only.
    monkeypatch.setattr(images_mod, "open", refuse, raising=False)
    assert _read_error(path).reason == "permission denied"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_permission_error_on_disk(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(3, 3)), tmp_path / "locked.png")
    path.chmod(0)
    try:
        assert _read_error(path).reason == "permission denied"
    finally:
        path.chmod(0o644)


def test_no_raw_pil_errors_escape(tmp_path: Path) -> None:
    # A spread of garbage: each must come back as ImageReadError and nothing else.
    samples = {
        "header_only.png": b"\x89PNG\r\n\x1a\n",
        "half_header.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF",
        "bmp_lies.bmp": b"BM" + b"\x00" * 60,
        "gif_stub.gif": b"GIF89a\x10\x00\x10\x00",
        "random.webp": np.random.default_rng(1).bytes(300),
    }
    for name, data in samples.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageReadError):
            load_image_rgb(path)


# ------------------------------------------------------------------ collecting paths


def _touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def test_extensions_are_lower_case() -> None:
    assert IMAGE_EXTENSIONS == (
        ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"
    )


def test_collect_directory_sorted_non_recursive(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg", "C.JPEG", ".hidden.jpg"):
        _touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    _touch_image(tmp_path / "sub" / "deep.png")
    paths, problems = collect_image_paths([str(tmp_path)])
    assert problems == []
    assert [p.name for p in paths] == ["C.JPEG", "a.jpg", "b.png"]

    paths, problems = collect_image_paths([tmp_path], recursive=True)
    assert problems == []
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "C.JPEG", "a.jpg", "b.png", "sub/deep.png"
    ]


def test_collect_file_taken_whatever_extension(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    paths, problems = collect_image_paths([str(notes)])
    assert paths == [notes] and problems == []


def test_collect_empty_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    paths, problems = collect_image_paths([str(empty)])
    assert paths == []
    assert len(problems) == 1
    assert isinstance(problems[0], ImageReadError)
    assert problems[0].path == str(empty)
    assert str(problems[0]).startswith(f"{empty}: directory contains no image files (looked for .jpg")


def test_collect_directory_hint_about_subdirectories(tmp_path: Path) -> None:
    _touch_image(tmp_path / "top" / "nested" / "x.png")
    paths, problems = collect_image_paths([str(tmp_path / "top")])
    assert paths == [] and problems[0].reason.endswith("subdirectories were not searched (add --recursive)")
    paths, problems = collect_image_paths([str(tmp_path / "top")], recursive=True)
    assert [p.name for p in paths] == ["x.png"] and problems == []


def test_collect_glob(tmp_path: Path) -> None:
    _touch_image(tmp_path / "g" / "2.png")
    _touch_image(tmp_path / "g" / "1.jpg")
    _touch_image(tmp_path / "g" / "deeper" / "3.png")
    (tmp_path / "g" / "labels.xml").write_text("<x/>")
    paths, problems = collect_image_paths([str(tmp_path / "g" / "*")])
    assert problems == []
    assert [p.name for p in paths] == ["1.jpg", "2.png"]  # no xml, no directory
    paths, _ = collect_image_paths([str(tmp_path / "g" / "**" / "*.png")])
    assert [p.name for p in paths] == ["2.png", "3.png"]


def test_collect_glob_matching_nothing(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing_*.jpg")
    paths, problems = collect_image_paths([pattern])
    assert paths == []
    assert [str(p) for p in problems] == [f"{pattern}: pattern matched no files"]


def test_collect_glob_matching_only_non_images(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("x")
    pattern = str(tmp_path / "*.xml")
    paths, problems = collect_image_paths([pattern])
    assert paths == [] and "none with an image extension" in problems[0].reason


def test_collect_missing_and_empty_string(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jpg")
    paths, problems = collect_image_paths([missing, ""])
    assert paths == []
    assert str(problems[0]) == f"{missing}: no such file or directory"
    assert problems[1].reason == "no such file or directory"


def test_collect_mix_good_and_bad_dedup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    a = _touch_image(photos / "a.jpg")
    b = _touch_image(photos / "b.png")
    lone = _touch_image(tmp_path / "lone.bmp")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    inputs = [
        "lone.bmp",
        "missing.jpg",
        "photos",
        "./photos/a.jpg",  # duplicate of photos/a.jpg, different spelling
        "photos/*.png",  # b.png again
        "empty",
        "*.gif",
        str(lone),  # absolute spelling of lone.bmp
    ]
    paths, problems = collect_image_paths(inputs)
    assert paths == [Path("lone.bmp"), Path("photos/a.jpg"), Path("photos/b.png")]
    assert all(p.resolve() in {a.resolve(), b.resolve(), lone.resolve()} for p in paths)
    assert [(p.path, p.reason.split(" (")[0]) for p in problems] == [
        ("missing.jpg", "no such file or directory"),
        ("empty", "directory contains no image files"),
        ("*.gif", "pattern matched no files"),
    ]
    # Collected paths then decode; problems never raise.
    for path in paths:
        assert load_image_rgb(path).shape == (4, 4, 3)


def test_check_image_file_cheap_and_full(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "ok.jpg")
    Image.fromarray(pixels).save(tmp_path / "ok.png")
    jpeg, png = (tmp_path / "ok.jpg").read_bytes(), (tmp_path / "ok.png").read_bytes()
    files = {
        "trailer.jpg": jpeg + b"camera trailer " * 20,  # data after the end marker: PIL decodes it fine
        "cut.jpg": jpeg[: len(jpeg) * 9 // 10],  # header whole, end marker gone
        "cut.png": png[: len(png) * 9 // 10],
        "empty.jpg": b"",
        "text.png": b"not an image at all",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dir.jpg").mkdir()
    expected = {
        "ok.jpg": None, "ok.png": None, "trailer.jpg": None,
        "cut.jpg": "image file is truncated or corrupt",
        "cut.png": "image file is truncated or corrupt",
        "empty.jpg": "file is empty (0 bytes)",
        "text.png": "not an image file (cannot identify image format)",
        "dir.jpg": "is a directory, not an image file",
        "missing.jpg": "no such file",
    }
    for full in (False, True):
        for name, reason in expected.items():
            if reason is None:
                check_image_file(tmp_path / name, full=full)
            else:
                with pytest.raises(ImageReadError) as err:
                    check_image_file(tmp_path / name, full=full)
                assert str(err.value) == f"{tmp_path / name}: {reason}", (name, full)
