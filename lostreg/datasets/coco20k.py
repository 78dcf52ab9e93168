"""COCO20k: the 19817 COCO 2014 train images of the LOST file list (spec section 5).

The list (``coco_20k_filenames.txt`` of the reference repository) is read and verified here,
downloaded for users who are online, and turned once into a cached subset annotation file;
:class:`Coco20kDataset` is then an ordinary :class:`~lostreg.datasets.coco.CocoDataset` over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from lostreg.datasets.base import DatasetLayoutError, describe_layout
from lostreg.datasets.coco import CocoDataset, load_coco_json
from lostreg.errors import LostregError
from lostreg.io.atomic import atomic_write_bytes

__all__ = [
    "COCO20K_FILELIST_URL",
    "COCO20K_NUM_IMAGES",
    "COCO20K_SUBSET_NAME",
    "Coco20kDataset",
    "FileListDownloadError",
    "build_coco20k_subset",
    "download_coco20k_filelist",
    "read_coco20k_filelist",
    "verify_coco20k_filelist",
]

logger = logging.getLogger(__name__)

COCO20K_NUM_IMAGES = 19817
COCO20K_FILELIST_URL = "https://raw.githubusercontent.com/valeoai/LOST/master/datasets/coco_20k_filenames.txt"
COCO20K_FILELIST_NAME = "coco_20k_filenames.txt"
COCO20K_SUBSET_NAME = "instances_train2014_sel20k.json"
_SOURCE_NAME = "instances_train2014.json"
_LINE_RE = re.compile(r"train2014/COCO_train2014_(\d{12})\.jpg")
# Bumped if the subset file's content rules change, so old caches are rebuilt.
_SUBSET_FORMAT = 1


class FileListDownloadError(LostregError, RuntimeError):
    """The COCO20k file list could not be downloaded or did not verify."""


# ---------------------------------------------------------------------------- COCO20k list


def verify_coco20k_filelist(
    text: str, expected_count: int | None = COCO20K_NUM_IMAGES, origin: str = "<file list>"
) -> list[str]:
    """Check a COCO20k file list and return its lines.

    Every line must read ``train2014/COCO_train2014_<12 digits>.jpg`` (a trailing
    ``\\r`` or final newline is tolerated, blank lines are not), lines must be unique,
    and there must be ``expected_count`` of them when it is not ``None``.

    Args:
        text: File content.
        expected_count: Required number of lines (19817 for the published list).
        origin: File name or URL, for messages.

    Returns:
        The lines in file order.

    Raises:
        ValueError: with the first offending line number.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not _LINE_RE.fullmatch(line):
            raise ValueError(
                f"{origin}:{lineno}: expected 'train2014/COCO_train2014_<12 digits>.jpg', got {line!r}"
            )
        if line in seen:
            raise ValueError(f"{origin}:{lineno}: duplicate of line {seen[line]}: {line!r}")
        seen[line] = lineno
    if expected_count is not None and len(lines) != expected_count:
        raise ValueError(f"{origin}: {len(lines)} lines, expected {expected_count}")
    return lines


def read_coco20k_filelist(path: str | Path, expected_count: int | None = None) -> list[str]:
    """Read and verify a COCO20k file list (see :func:`verify_coco20k_filelist`).

    Raises:
        DatasetLayoutError: the file is missing or malformed.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetLayoutError(
            f"missing COCO20k file list {path} (`lostreg data fetch-coco20k-list --dest {path}` downloads it)",
            describe_layout("coco20k"),
        ) from None
    try:
        return verify_coco20k_filelist(text, expected_count, origin=str(path))
    except ValueError as exc:
        raise DatasetLayoutError(f"malformed COCO20k file list {exc}", describe_layout("coco20k")) from None


def _filelist_image_id(line: str) -> int:
    match = _LINE_RE.fullmatch(line)
    assert match is not None  # lines were verified
    return int(match.group(1))


def download_coco20k_filelist(
    dest: str | Path,
    url: str = COCO20K_FILELIST_URL,
    timeout: float = 30.0,
    expected_count: int | None = COCO20K_NUM_IMAGES,
) -> Path:
    """Download the COCO20k file list of the LOST repository and verify it.

    Args:
        dest: Target file, or an existing folder (the file is then
            ``<dest>/coco_20k_filenames.txt``). Parent folders are created.
        url: Source; the reference repository's raw file by default.
        timeout: Seconds before giving up on the connection.
        expected_count: Required number of unique lines (19817).

    Returns:
        Path of the written file. Nothing is written unless the content verifies.

    Raises:
        FileListDownloadError: offline, HTTP error, or content that does not verify.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        dest = dest / COCO20K_FILELIST_NAME
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            payload = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FileListDownloadError(
            f"could not download the COCO20k file list from {url}: {reason}. "
            f"If this machine is offline, copy '{COCO20K_FILELIST_NAME}' (datasets/ of the "
            f"valeoai/LOST repository) here by other means and pass its path."
        ) from exc
    try:
        verify_coco20k_filelist(payload.decode("utf-8"), expected_count, origin=url)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileListDownloadError(f"downloaded COCO20k file list does not verify: {exc}") from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, payload)
    return dest


# ---------------------------------------------------------------------------- COCO20k subset


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lostreg" / "coco20k"


def build_coco20k_subset(source: dict[str, Any], lines: list[str], filelist_sha256: str) -> dict[str, Any]:
    """Select the images of ``lines`` and all their annotations (crowd included).

    Images and annotations are emitted in file-list order, annotations of one image in
    source order: the same content as the reference's ``instances_train2014_sel20k.json``,
    plus a ``"lostreg"`` entry recording which list built it.

    Raises:
        ValueError: an image of the list is not in ``source``.
    """
    wanted = [_filelist_image_id(s) for s in lines]
    images_by_id = {im["id"]: im for im in source["images"]}
    missing = [i for i in wanted if i not in images_by_id]
    if missing:
        raise ValueError(f"{len(missing)} listed images are not in the annotation file, e.g. ids {missing[:5]}")
    wanted_set = set(wanted)
    anns_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in source.get("annotations", []):
        if ann["image_id"] in wanted_set:
            anns_by_image[ann["image_id"]].append(ann)
    return {
        "images": [images_by_id[i] for i in wanted],
        "annotations": [a for i in wanted for a in anns_by_image[i]],
        "categories": source.get("categories", []),
        "lostreg": {
            "kind": "coco20k_subset",
            "format": _SUBSET_FORMAT,
            "filelist_sha256": filelist_sha256,
            "num_images": len(wanted),
            "source": _SOURCE_NAME,
        },
    }


def _subset_matches(data: Any, lines: list[str], filelist_sha256: str) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return False
    try:
        ids = {int(im["id"]) for im in data["images"]}
    except (KeyError, TypeError, ValueError):
        return False
    if ids != {_filelist_image_id(s) for s in lines} or len(data["images"]) != len(lines):
        return False
    meta = data.get("lostreg")
    if meta is None:
        # A subset built by the reference script: same images, no marker. Its content
        # rule is the same, so it is reused.
        return "annotations" in data
    return meta.get("filelist_sha256") == filelist_sha256 and meta.get("format") == _SUBSET_FORMAT


class Coco20kDataset(CocoDataset):
    """COCO20k: the 19817 COCO train2014 images of the LOST file list (spec section 5).

    The subset annotation file is built once from ``instances_train2014.json`` and
    cached; later runs reuse it when it matches the list (same sha256 of the list file
    and same image ids), and rebuild it otherwise.

    Accepted layouts: images in ``<root>/images/train2014/`` or ``<root>/train2014/``;
    annotations in ``<root>/annotations/instances_train2014.json`` (only read when the
    cache is missing or stale).

    Cache location: ``<cache_dir>/instances_train2014_sel20k.json`` if ``cache_dir`` is
    given; else ``<root>/annotations/instances_train2014_sel20k.json`` if that folder
    is writable, else ``$XDG_CACHE_HOME/lostreg/coco20k/`` (``~/.cache/...``).

    Args:
        root: COCO root folder (see layouts).
        filelist_path: The ``coco_20k_filenames.txt`` list.
        cache_dir: Folder for the subset json.
        strict: As for :class:`~lostreg.datasets.coco.CocoDataset` (``False``: malformed
            image or annotation entries are recorded in :attr:`problems`, not raised).

    Raises:
        DatasetLayoutError: missing folders/files, a malformed list, or listed images
            absent from ``instances_train2014.json``.
    """

    def __init__(
        self,
        root: str | Path,
        filelist_path: str | Path,
        cache_dir: str | Path | None = None,
        strict: bool = True,
    ) -> None:
        self.root = Path(root).expanduser()
        layout = describe_layout("coco20k")
        if not self.root.is_dir():
            raise DatasetLayoutError(f"COCO root {self.root} is not a directory", layout)
        image_dir = next(
            (d for d in (self.root / "images" / "train2014", self.root / "train2014") if d.is_dir()), None
        )
        if image_dir is None:
            raise DatasetLayoutError(
                f"missing COCO image folder {self.root / 'images' / 'train2014'} (or {self.root / 'train2014'})",
                layout,
            )
        self.filelist_path = Path(filelist_path).expanduser()
        lines = read_coco20k_filelist(self.filelist_path)
        if len(lines) != COCO20K_NUM_IMAGES:
            # Allowed (tests, custom subsets), but results are then not comparable to papers.
            logger.warning(
                "%s has %d images, not the published %d", self.filelist_path, len(lines), COCO20K_NUM_IMAGES
            )
        sha = hashlib.sha256(self.filelist_path.read_bytes()).hexdigest()

        if cache_dir is not None:
            candidates = [Path(cache_dir).expanduser() / COCO20K_SUBSET_NAME]
        else:
            candidates = [self.root / "annotations" / COCO20K_SUBSET_NAME, _user_cache_dir() / COCO20K_SUBSET_NAME]

        data = None
        self.cache_path: Path | None = None
        self.cache_reused = False
        for cand in candidates:
            if not cand.is_file():
                continue
            try:
                with open(cand, "rb") as f:
                    cached = json.load(f)
            except (OSError, ValueError):
                logger.warning("unreadable COCO20k cache %s: rebuilding", cand)
                continue
            if _subset_matches(cached, lines, sha):
                data, self.cache_path, self.cache_reused = cached, cand, True
                break
            logger.warning("COCO20k cache %s does not match %s: rebuilding", cand, self.filelist_path)

        if data is None:
            source_path = self.root / "annotations" / _SOURCE_NAME
            source = load_coco_json(source_path, "coco20k")
            try:
                data = build_coco20k_subset(source, lines, sha)
            except ValueError as exc:
                raise DatasetLayoutError(f"{source_path} does not fit {self.filelist_path}: {exc}", layout) from None
            except (KeyError, TypeError) as exc:  # an entry without its id, or not a dict
                what = f"an image or annotation entry has no {exc.args[0]!r}" if isinstance(exc, KeyError) else exc
                raise DatasetLayoutError(f"malformed COCO annotation file {source_path}: {what}", layout) from None
            del source
            payload = json.dumps(data).encode("utf-8")
            for cand in candidates:
                try:
                    cand.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(cand, payload)
                except OSError as exc:
                    logger.info("cannot write COCO20k cache %s (%s), trying the next location", cand, exc)
                    continue
                self.cache_path = cand
                break
            else:
                logger.warning("COCO20k subset could not be cached anywhere; it will be rebuilt next run")

        origin = self.cache_path or self.root / "annotations" / _SOURCE_NAME
        super().__init__(data, image_dir, strict=strict, name="COCO20k", _layout="coco20k", _origin=origin)
        self.annotation_json = self.cache_path
