"""Reading image files into RGB arrays, and expanding user inputs into image paths.

Every image enters lostreg through :func:`load_image_rgb`, which returns an
``(H, W, 3)`` uint8 RGB array in ``[0, 255]`` after applying the EXIF orientation, so
that boxes are always expressed in the frame a viewer displays. Any failure (missing
file, not an image, truncated data, decompression bomb, ...) is raised as one
:class:`ImageReadError` whose ``str`` is a single ``"<path>: <reason>"`` line, fit to be
printed by a command-line tool without a traceback.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Sequence
from typing import BinaryIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lostreg.errors import LostregError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "check_image_file",
    "collect_image_paths",
    "load_image_rgb",
    "pil_to_rgb_array",
]

#: Lower-case suffixes that mark a file as an image when scanning directories and globs.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

# Modes holding one integer channel wider than 8 bits (16-bit PNG/TIFF grayscale).
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


class ImageReadError(LostregError):
    """An image (or an input naming images) could not be read.

    Attributes:
        path: The file, directory or pattern concerned, as given by the caller.
        reason: One line saying what is wrong, without the path.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        # Keep the message on one line whatever an underlying library put in it.
        self.reason = " ".join(str(reason).split())
        super().__init__(self.path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __repr__(self) -> str:
        return f"ImageReadError(path={self.path!r}, reason={self.reason!r})"


def _looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _has_glob_magic(text: str) -> bool:
    return any(char in text for char in "*?[")


def _wide_int_to_uint8(image: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit int) grayscale -> (H, W) uint8, mapping 0..65535 to 0..255.

    PIL's ``convert("L")``/``convert("RGB")`` clips these values at 255 instead of
    scaling them, which turns almost every 16-bit photograph white.
    """
    values = np.asarray(image).astype(np.int64)
    values = np.clip(values, 0, 65535)
    # round(v / 257) in exact integer arithmetic (v / 257 is never exactly x.5).
    return ((values + 128) // 257).astype(np.uint8)


def _float_to_uint8(image: Image.Image) -> np.ndarray:
    """Mode ``F`` grayscale -> (H, W) uint8.

    Rule: NaN and negative values become 0 and +inf is treated as the maximum. Then, by
    the largest finite value m: if m <= 1 the data is taken to be in [0, 1] and is
    multiplied by 255; if 1 < m <= 255 it is taken to be in [0, 255] already; if
    m > 255 it is scaled by 255 / m so the brightest pixel becomes 255. Results are
    rounded to the nearest integer.
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    peak = float(values[finite].max()) if finite.any() else 0.0
    values = np.nan_to_num(values, nan=0.0, posinf=max(peak, 0.0), neginf=0.0)
    values = np.clip(values, 0.0, None)
    if peak <= 1.0:
        values = values * 255.0
    elif peak > 255.0:
        values = values * (255.0 / peak)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image to RGB, without touching its orientation.

    Follows PIL ``convert("RGB")`` semantics (alpha is dropped, not composited; palette
    entries are looked up, transparent ones included; CMYK uses PIL's conversion), except
    for wide grayscale modes, which PIL would clip: ``I;16*`` and ``I`` are scaled from
    0..65535 to 0..255 (``round(v / 257)``, values outside clipped first) and ``F`` follows
    the rule of :func:`_float_to_uint8`.

    Args:
        image: An image of any mode PIL can convert to RGB.

    Returns:
        ``(H, W, 3)`` uint8 array, RGB, values in [0, 255], C-contiguous.

    Raises:
        ValueError: The mode has no conversion to RGB.
    """
    if image.mode in _WIDE_INT_MODES:
        gray = _wide_int_to_uint8(image)
    elif image.mode == "F":
        gray = _float_to_uint8(image)
    else:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _apply_exif_orientation(image: Image.Image, path: Path) -> Image.Image:
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF comes in many shapes
        # A broken EXIF block should not cost the user the picture: keep the stored
        # orientation and say so.
        warnings.warn(
            f"{path}: could not apply EXIF orientation ({exc}); using the stored orientation",
            stacklevel=3,
        )
        return image
    return image if oriented is None else oriented


def _open_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading, or raise the one-line :class:`ImageReadError` of why not."""
    try:
        if not path.exists():
            raise ImageReadError(path, "no such file")
        if path.is_dir():
            raise ImageReadError(path, "is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageReadError(path, "file is empty (0 bytes)")
        return open(path, "rb")  # noqa: SIM115 - the callers close it
    except PermissionError as exc:
        raise ImageReadError(path, "permission denied") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc.strerror or exc})") from exc


def _identify(handle: BinaryIO, path: Path) -> Image.Image:
    """PIL's lazy ``Image.open`` (reads the header only), its failures as :class:`ImageReadError`."""
    try:
        return Image.open(handle)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(path) from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (cannot identify image format)") from exc
    except Exception as exc:  # noqa: BLE001 - plugins raise many types on bad headers
        raise ImageReadError(path, "image file is truncated or corrupt") from exc


def load_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an RGB array in the orientation a viewer shows.

    The file is fully decoded here (so a truncated file fails now, not later), the EXIF
    orientation tag is applied, and the pixels are converted as in
    :func:`pil_to_rgb_array`. Multi-frame files (GIF, APNG, multi-page TIFF) give their
    first frame.

    Args:
        path: The image file. Its extension is not checked: the decoder judges.

    Returns:
        ``(H, W, 3)`` uint8 array, RGB, values in [0, 255], C-contiguous.

    Raises:
        ImageReadError: The file is missing, a directory, empty, unreadable, not an
            image, truncated or corrupt, too large (decompression-bomb guard), or of an
            unsupported colour mode. Its ``str`` is one line ``"<path>: <reason>"``.
    """
    path = Path(path)
    handle = _open_file(path)
    try:
        image = _identify(handle, path)
        try:
            # Multi-frame formats open on frame 0; seek makes that explicit.
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            # Decode every byte now; LOAD_TRUNCATED_IMAGES is never set, so a short or
            # damaged file raises here instead of yielding grey rows.
            image.load()
        except Image.DecompressionBombError as exc:
            raise _bomb_error(path) from exc
        except MemoryError as exc:
            raise ImageReadError(path, "image too large to decode (out of memory)") from exc
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ...
            raise ImageReadError(path, "image file is truncated or corrupt") from exc

        image = _apply_exif_orientation(image, path)
        try:
            return pil_to_rgb_array(image)
        except (ValueError, OSError) as exc:
            raise ImageReadError(
                path, f"unsupported colour mode {image.mode!r} (cannot convert to RGB)"
            ) from exc
    finally:
        handle.close()


# A JPEG ends with the end-of-image marker FF D9. Some writers pad after it, so the tail is
# searched, not just the last two bytes; a file without the marker there is then decoded in full.
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 64


def _jpeg_tail_has_eoi(handle: BinaryIO) -> bool:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - _JPEG_TAIL_BYTES))
    return _JPEG_EOI in handle.read()


def check_image_file(path: str | os.PathLike[str], full: bool = False) -> None:
    """Check that ``path`` is an image lostreg can decode, without keeping its pixels.

    Two depths:

    * ``full=False`` (cheap, about a millisecond per file: reads the header and the last
      bytes): the file must exist, be non-empty and have an image header PIL identifies
      (format and size); PIL's ``verify()`` then checks what the format allows without
      decoding (PNG: every chunk and its checksum up to the end, so a cut PNG fails). PIL
      cannot verify a JPEG that way, so a JPEG must also end with its end-of-image marker;
      one that does not (a cut download, a partial copy) is decoded in full to decide. This
      catches empty, zero-byte, non-image and truncated JPEG/PNG files; a BMP, TIFF or WebP
      damaged inside its pixel data passes.
    * ``full=True``: decodes every pixel with :func:`load_image_rgb`, exactly what
      ``lostreg eval`` does, so nothing that would fail there passes (10 to 100 times slower).

    Raises:
        ImageReadError: one line ``"<path>: <reason>"``, the reasons of :func:`load_image_rgb`.
    """
    path = Path(path)
    if full:
        load_image_rgb(path)
        return
    handle = _open_file(path)
    try:
        image = _identify(handle, path)
        fmt = image.format
        try:
            image.verify()  # closes nothing of ours: PIL was given an open handle
        except Exception as exc:  # noqa: BLE001 - plugins raise OSError, SyntaxError, struct.error, ...
            raise ImageReadError(path, "image file is truncated or corrupt") from exc
        if fmt in ("JPEG", "MPO") and not _jpeg_tail_has_eoi(handle):
            load_image_rgb(path)  # no end marker: only a full decode can tell a cut file
    finally:
        handle.close()


def _bomb_error(path: Path) -> ImageReadError:
    # PIL refuses images above twice MAX_IMAGE_PIXELS (it only warns between 1x and 2x).
    limit = Image.MAX_IMAGE_PIXELS
    shown = "no limit" if limit is None else f"more than {2 * limit} pixels"
    return ImageReadError(
        path,
        f"image is too large, refused as a possible decompression bomb ({shown}; "
        "raise PIL.Image.MAX_IMAGE_PIXELS to allow it)",
    )


def _scan_directory(directory: Path, recursive: bool) -> tuple[list[Path], bool]:
    """Image files of ``directory`` sorted by path, and whether it has subdirectories.

    Hidden entries (names starting with ".") are skipped, like shell globs do; this also
    avoids macOS ``._name.jpg`` resource-fork files, which are not images.
    """
    found: list[Path] = []
    has_subdirs = False
    if recursive:
        for root, dirnames, filenames in os.walk(directory):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            has_subdirs = has_subdirs or bool(dirnames)
            root_path = Path(root)
            found.extend(
                root_path / name
                for name in filenames
                if not name.startswith(".") and _looks_like_image(Path(name))
            )
    else:
        for entry in directory.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                has_subdirs = True
            elif entry.is_file() and _looks_like_image(entry):
                found.append(entry)
    return sorted(found), has_subdirs


def _expand_input(text: str, recursive: bool) -> list[Path]:
    """Image paths named by one input; raises ImageReadError when it names none."""
    listed = ", ".join(IMAGE_EXTENSIONS)
    # Path("") is ".", which would silently scan the working directory.
    if not text:
        raise ImageReadError(repr(text), "no such file or directory")
    candidate = Path(text)
    if candidate.is_file():
        return [candidate]
    if candidate.is_dir():
        found, has_subdirs = _scan_directory(candidate, recursive)
        if not found:
            reason = f"directory contains no image files (looked for {listed})"
            if has_subdirs and not recursive:
                reason += "; subdirectories were not searched (add --recursive)"
            raise ImageReadError(text, reason)
        return found
    if candidate.exists():
        raise ImageReadError(text, "not a regular file or directory")
    if _has_glob_magic(text):
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
        files = [m for m in matches if m.is_file()]
        images = [m for m in files if _looks_like_image(m)]
        if not files:
            raise ImageReadError(text, "pattern matched no files")
        if not images:
            raise ImageReadError(
                text,
                f"pattern matched {len(files)} file(s) but none with an image "
                f"extension ({listed})",
            )
        return images
    raise ImageReadError(text, "no such file or directory")


def collect_image_paths(
    inputs: Sequence[str | os.PathLike[str]], recursive: bool = False
) -> tuple[list[Path], list[ImageReadError]]:
    """Expand files, directories and glob patterns into a list of image paths.

    Rules, per input, in order:

    * an existing file is taken whatever its extension (the decoder judges it later);
    * an existing directory gives its image files (by extension, case-insensitive,
      hidden files skipped), sorted by path; subdirectories only if ``recursive``;
    * otherwise, an input with glob characters (``*?[``) is expanded with
      ``glob.glob(..., recursive=True)`` (so ``**`` works), sorted; only matched files
      with an image extension are kept and matched directories are not expanded;
    * anything else is reported as missing.

    Paths are deduplicated by the file they resolve to (symlinks followed), keeping the
    first spelling at its first position. Nothing is decoded here.

    Args:
        inputs: Files, directories or glob patterns, as a user typed them.
        recursive: Whether directories are searched in their subdirectories too.

    Returns:
        ``(paths, problems)``: the image paths in input order, and one
        :class:`ImageReadError` (``path`` = the input) per input that gave no path.
    """
    paths: list[Path] = []
    problems: list[ImageReadError] = []
    seen: set[Path] = set()
    for raw in inputs:
        text = os.fspath(raw)
        try:
            found = _expand_input(text, recursive)
        except ImageReadError as problem:
            problems.append(problem)
            continue
        except PermissionError:
            problems.append(ImageReadError(text, "permission denied"))
            continue
        except OSError as exc:
            problems.append(ImageReadError(text, f"cannot access ({exc.strerror or exc})"))
            continue
        for found_path in found:
            key = found_path.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(found_path)
    return paths, problems
