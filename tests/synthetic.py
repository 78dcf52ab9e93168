"""Writers of small synthetic datasets in the real on-disk formats, for tests.

Each image is a noisy colour gradient with a few flat-coloured rectangles and ellipses;
the ground-truth box of a shape is the exact extent of its pixels (xyxy, max exclusive),
so a detector that finds the shape should hit it. Everything is seeded and fast.

Main entry points:

* :func:`write_voc_dataset` -> ``VOCdevkit/VOC<year>/`` with XML in the official format.
* :func:`write_coco_dataset` -> a COCO instances json (float bboxes, a crowd annotation)
  plus images.
* :func:`write_coco20k_root` and :func:`write_coco20k_filelist` -> the COCO 2014 layout
  that :class:`lostreg.datasets.Coco20kDataset` reads, with a small file list.

:class:`SyntheticVoc` and :class:`SyntheticCoco` describe a written dataset; their ``copy_to``
gives a test its own copy to damage (``tests/conftest.py`` shares the datasets read-only).

Lower-level pieces (:func:`render_image`, :func:`write_voc_image`, :func:`write_voc_split`,
:func:`coco_bbox_for`) serve hand-made cases.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from lostreg.datasets import ImageRecord

__all__ = [
    "SyntheticCoco",
    "SyntheticImage",
    "SyntheticObject",
    "SyntheticVoc",
    "coco_bbox_for",
    "render_image",
    "write_coco20k_filelist",
    "write_coco20k_root",
    "write_coco_dataset",
    "write_voc_dataset",
    "write_voc_image",
    "write_voc_split",
]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "car", "cat", "dog", "person", "sheep")
SMALL_SIZES: tuple[tuple[int, int], ...] = ((160, 120), (120, 160))  # (W, H)


@dataclass(frozen=True)
class SyntheticObject:
    """A drawn shape and how it is annotated.

    Attributes:
        name: Class name (VOC name; COCO category name).
        box_xyxy: Exact pixel extent of the drawn shape, ``(x1, y1, x2, y2)`` max exclusive.
        difficult: VOC ``<difficult>1``.
        truncated: VOC ``<truncated>1``.
        iscrowd: COCO ``iscrowd: 1`` (never ground truth).
    """

    name: str
    box_xyxy: tuple[int, int, int, int]
    difficult: bool = False
    truncated: bool = False
    iscrowd: bool = False


@dataclass(frozen=True)
class SyntheticImage:
    """One written image and its annotation.

    Attributes:
        image_id: Id as the dataset reader reports it (VOC ``"000001"``, COCO ``"42"``).
        path: The written JPEG.
        width: Pixels.
        height: Pixels.
        objects: Annotated objects, file order.
    """

    image_id: str
    path: Path
    width: int
    height: int
    objects: tuple[SyntheticObject, ...] = field(default_factory=tuple)

    def gt_objects(self, no_hard: bool = False) -> list[SyntheticObject]:
        """Objects that are ground truth: non-crowd, and not difficult/truncated if ``no_hard``."""
        return [
            o for o in self.objects if not o.iscrowd and not (no_hard and (o.difficult or o.truncated))
        ]

    def gt_boxes_xyxy(self, no_hard: bool = False) -> np.ndarray:
        """``int64`` ``(K, 4)`` expected ground truth (see :meth:`gt_objects`)."""
        return np.array([o.box_xyxy for o in self.gt_objects(no_hard)], dtype=np.int64).reshape(-1, 4)

    def record(self, no_hard: bool = False) -> ImageRecord:
        """The :class:`ImageRecord` a lostreg reader should return for this image."""
        objs = self.gt_objects(no_hard)
        return ImageRecord(
            image_id=self.image_id,
            path=self.path,
            width=self.width,
            height=self.height,
            gt_boxes_xyxy=self.gt_boxes_xyxy(no_hard),
            gt_labels=tuple(o.name for o in objs),
        )


def _moved(images: Sequence[SyntheticImage], src: Path, dest: Path) -> list[SyntheticImage]:
    return [dataclasses.replace(im, path=dest / im.path.relative_to(src)) for im in images]


class SyntheticVoc(NamedTuple):
    """A written VOC dataset: ``root`` (holds ``VOCdevkit/``, what ``dataset.root`` takes) and its
    images in ``trainval`` order (as :func:`write_voc_dataset` returns them)."""

    root: Path
    images: list[SyntheticImage]

    @property
    def image_dir(self) -> Path:
        """``.../VOC<year>/JPEGImages``: the images as a folder dataset."""
        return self.images[0].path.parent

    def copy_to(self, dest: str | Path) -> SyntheticVoc:
        """A copy of the whole tree at ``dest`` (which must not exist), with its images' paths."""
        dest = Path(dest)
        shutil.copytree(self.root, dest)
        return SyntheticVoc(dest, _moved(self.images, self.root, dest))


# ---------------------------------------------------------------------------- pixels


def _background(width: int, height: int, rng: np.random.Generator, scene: str = "gradient") -> np.ndarray:
    if scene == "simple":
        # Bright, low-contrast background (one colour, +-15 gradient): objects stand out.
        corners = rng.uniform(165, 200, size=3) + rng.uniform(-15, 15, size=(2, 2, 3))
    else:
        corners = rng.uniform(40, 215, size=(2, 2, 3))  # colours at the four corners
    ys = np.linspace(0.0, 1.0, height)[:, None, None]
    xs = np.linspace(0.0, 1.0, width)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    img = top * (1 - ys) + bottom * ys
    img = img + rng.normal(0.0, 10.0, size=(height, width, 3))
    return img


def _shape_mask(box: tuple[int, int, int, int], kind: str, width: int, height: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    mask = np.zeros((height, width), dtype=bool)
    if kind == "rect":
        mask[y1:y2, x1:x2] = True
        return mask
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    rx, ry = (x2 - x1) / 2.0, (y2 - y1) / 2.0
    yy, xx = np.mgrid[y1:y2, x1:x2]
    inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
    mask[y1:y2, x1:x2] = inside
    return mask


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def random_boxes(
    width: int, height: int, n: int, rng: np.random.Generator, min_frac: float = 0.2, max_frac: float = 0.55
) -> list[tuple[int, int, int, int]]:
    """``n`` random xyxy boxes inside a ``width x height`` image (max exclusive)."""
    boxes = []
    for _ in range(n):
        w = int(rng.integers(max(4, int(min_frac * width)), max(5, int(max_frac * width)) + 1))
        h = int(rng.integers(max(4, int(min_frac * height)), max(5, int(max_frac * height)) + 1))
        x1 = int(rng.integers(0, width - w + 1))
        y1 = int(rng.integers(0, height - h + 1))
        boxes.append((x1, y1, x1 + w, y1 + h))
    return boxes


def render_image(
    width: int,
    height: int,
    boxes: Sequence[tuple[int, int, int, int]],
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
    scene: str = "gradient",
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Draw flat shapes in ``boxes`` on a noisy gradient.

    ``scene="gradient"``: four random corner colours and shapes of any colour (hard for raw
    pixels). ``scene="simple"``: a bright low-contrast background and dark shapes.

    Args:
        width: Image width W.
        height: Image height H.
        boxes: Where to draw, xyxy max exclusive, inside the image.
        rng: Random source (colours, noise, and shape kinds when ``kinds`` is None).
        kinds: ``"rect"`` or ``"ellipse"`` per box.

    Returns:
        ``(image, extents)``: HWC ``uint8`` RGB, and per box the exact extent of the
        drawn pixels (equal to the box for rectangles; may be 1 px tighter for ellipses).
    """
    img = _background(width, height, rng, scene)
    extents = []
    for i, box in enumerate(boxes):
        kind = kinds[i] if kinds is not None else ("rect" if rng.random() < 0.5 else "ellipse")
        mask = _shape_mask(box, kind, width, height)
        if not mask.any():  # a tiny ellipse can vanish; fall back to its rectangle
            mask = _shape_mask(box, "rect", width, height)
        img[mask] = rng.uniform(0, 255, size=3) if scene == "gradient" else rng.uniform(10, 90, size=3)
        extents.append(_extent(mask))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), extents


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=92)


# ---------------------------------------------------------------------------- VOC


def _voc_number(v: int, float_coords: bool) -> str:
    return f"{v}.0" if float_coords else str(v)


def voc_xml(
    folder: str,
    filename: str,
    width: int,
    height: int,
    objects: Iterable[SyntheticObject],
    float_coords: bool = False,
) -> str:
    """VOC2007-style annotation text; boxes are written 1-based inclusive (``x1 + 1, .., x2``)."""
    year = folder[-4:]
    parts = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{filename}</filename>",
        "\t<source>",
        f"\t\t<database>The {folder} Database</database>",
        f"\t\t<annotation>PASCAL VOC{year}</annotation>",
        "\t\t<image>flickr</image>",
        "\t\t<flickrid>000000000</flickrid>",
        "\t</source>",
        "\t<owner>",
        "\t\t<flickrid>lostreg</flickrid>",
        "\t\t<name>synthetic</name>",
        "\t</owner>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for o in objects:
        x1, y1, x2, y2 = o.box_xyxy
        parts += [
            "\t<object>",
            f"\t\t<name>{o.name}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{int(o.truncated)}</truncated>",
            f"\t\t<difficult>{int(o.difficult)}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{_voc_number(x1 + 1, float_coords)}</xmin>",
            f"\t\t\t<ymin>{_voc_number(y1 + 1, float_coords)}</ymin>",
            f"\t\t\t<xmax>{_voc_number(x2, float_coords)}</xmax>",
            f"\t\t\t<ymax>{_voc_number(y2, float_coords)}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def write_voc_image(
    voc_dir: str | Path,
    image_id: str,
    width: int,
    height: int,
    objects: Sequence[SyntheticObject],
    rng: np.random.Generator | None = None,
    float_coords: bool = False,
    kinds: Sequence[str] | None = None,
    scene: str = "gradient",
) -> SyntheticImage:
    """Render ``objects`` and write ``JPEGImages/<id>.jpg`` and ``Annotations/<id>.xml``.

    The annotation uses each shape's drawn extent (rectangles: exactly ``box_xyxy``).
    Does not touch ``ImageSets``; see :func:`write_voc_split`.
    """
    voc_dir = Path(voc_dir)
    rng = rng if rng is not None else np.random.default_rng(0)
    pixels, extents = render_image(width, height, [o.box_xyxy for o in objects], rng, kinds, scene)
    objects = tuple(
        SyntheticObject(o.name, ext, o.difficult, o.truncated, o.iscrowd) for o, ext in zip(objects, extents)
    )
    path = voc_dir / "JPEGImages" / f"{image_id}.jpg"
    _save_jpeg(path, pixels)
    ann = voc_dir / "Annotations" / f"{image_id}.xml"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(voc_xml(voc_dir.name, f"{image_id}.jpg", width, height, objects, float_coords))
    return SyntheticImage(image_id, path, width, height, objects)


def write_voc_split(voc_dir: str | Path, split: str, image_ids: Iterable[str]) -> Path:
    """Write ``ImageSets/Main/<split>.txt``, one id per line."""
    path = Path(voc_dir) / "ImageSets" / "Main" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in image_ids))
    return path


def write_voc_dataset(
    root: str | Path,
    year: str = "2007",
    n_images: int = 6,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = SMALL_SIZES,
    max_objects: int = 3,
    difficult_prob: float = 0.25,
    all_hard: Sequence[int] = (),
    float_coords: bool = False,
    scene: str = "gradient",
    empty_images: Sequence[int] = (),
) -> list[SyntheticImage]:
    """Write ``<root>/VOCdevkit/VOC<year>/`` with ``n_images`` images.

    Sizes cycle through ``sizes`` (``(W, H)``; pass ``((500, 375), (375, 500))`` for VOC's
    usual sizes). Each image gets 1..``max_objects`` shapes; an object is ``truncated``
    when its shape touches the image border (as in VOC) and ``difficult`` with
    probability ``difficult_prob``. Images whose index is in ``all_hard`` get only
    difficult objects. ``trainval.txt`` lists all ids; ``train.txt`` the even positions,
    ``val.txt`` the odd ones.

    Returns:
        The images in ``trainval`` order; ``.record()`` gives the expected reader output.
    """
    year = str(year)
    voc_dir = Path(root) / "VOCdevkit" / f"VOC{year}"
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        width, height = sizes[i % len(sizes)]
        image_id = f"{i + 1:06d}" if year == "2007" else f"2008_{i + 1:06d}"
        count = 0 if i in empty_images else int(rng.integers(1, max_objects + 1))
        boxes = random_boxes(width, height, count, rng)
        objects = []
        for box in boxes:
            touches = box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height
            difficult = i in all_hard or bool(rng.random() < difficult_prob)
            name = VOC_CLASSES[int(rng.integers(len(VOC_CLASSES)))]
            objects.append(SyntheticObject(name, box, difficult=difficult, truncated=touches))
        images.append(write_voc_image(voc_dir, image_id, width, height, objects, rng, float_coords, scene=scene))
    ids = [im.image_id for im in images]
    write_voc_split(voc_dir, "trainval", ids)
    write_voc_split(voc_dir, "train", ids[0::2])
    write_voc_split(voc_dir, "val", ids[1::2])
    return images


# ---------------------------------------------------------------------------- COCO


_FRACTIONS = (0.0, 0.125, 0.25, 0.375, -0.125, -0.25, -0.375)  # exact in binary floats


def coco_bbox_for(box_xyxy: tuple[int, int, int, int], rng: np.random.Generator) -> list[float]:
    """A float COCO ``[x, y, w, h]`` that banker's-rounds back to ``box_xyxy``.

    Corners get small dyadic offsets, and exact ``.5`` ties on even coordinates (where
    round-half-to-even goes back to the coordinate), so rounding matters in tests.
    """

    def jitter(v: int) -> float:
        if v % 2 == 0 and rng.random() < 0.3:
            d = 0.5 if v == 0 or rng.random() < 0.5 else -0.5
        else:
            d = float(rng.choice(_FRACTIONS))
            if v == 0:
                d = abs(d)
        return v + d

    x1, y1, x2, y2 = box_xyxy
    fx1, fy1, fx2, fy2 = jitter(x1), jitter(y1), jitter(x2), jitter(y2)
    return [fx1, fy1, fx2 - fx1, fy2 - fy1]


def _uncompressed_rle(box: tuple[int, int, int, int], width: int, height: int) -> dict:
    # COCO RLE: column-major run lengths starting with a run of zeros.
    mask = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 1
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": [height, width]}


@dataclass(frozen=True)
class SyntheticCoco:
    """A written COCO-format dataset: the json, the image folder, the images (json order), and the
    folder everything was written under (a COCO20k layout's ``dataset.root``)."""

    annotation_json: Path
    image_dir: Path
    images: list[SyntheticImage]
    root: Path | None = None

    def copy_to(self, dest: str | Path) -> SyntheticCoco:
        """A copy of ``root``'s tree at ``dest`` (which must not exist), with the paths moved there."""
        assert self.root is not None, "copy_to needs the root the dataset was written under"
        dest = Path(dest)
        shutil.copytree(self.root, dest)
        return SyntheticCoco(dest / self.annotation_json.relative_to(self.root),
                             dest / self.image_dir.relative_to(self.root),
                             _moved(self.images, self.root, dest), dest)


def write_coco_dataset(
    root: str | Path,
    n_images: int = 6,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = SMALL_SIZES,
    max_objects: int = 3,
    image_subdir: str = "images",
    annotation_file: str = "annotations/instances.json",
    file_name_fmt: str = "{id:012d}.jpg",
    image_ids: Sequence[int] | None = None,
    crowd_images: Sequence[int] = (0,),
    crowd_only_images: Sequence[int] = (),
    unannotated_images: Sequence[int] = (),
) -> SyntheticCoco:
    """Write a COCO-format instances json and its images under ``root``.

    Bboxes are floats that banker's-round to the shapes' extents (:func:`coco_bbox_for`).
    Images whose index is in ``crowd_images`` get one extra crowd annotation (a drawn
    shape with ``iscrowd: 1`` and an RLE mask); those in ``crowd_only_images`` have only
    crowd annotations; those in ``unannotated_images`` have no annotation at all. The
    json's images are in ``image_ids`` order (default: ``1..n_images`` shuffled).

    Returns:
        Paths and images; ``image.record()`` is what :class:`CocoDataset` should return.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = list(image_ids) if image_ids is not None else [int(i) + 1 for i in rng.permutation(n_images)]
    assert len(ids) == n_images and len(set(ids)) == n_images
    image_dir = root / image_subdir
    categories = [{"id": k + 1, "name": n, "supercategory": "thing"} for k, n in enumerate(VOC_CLASSES)]
    json_images, json_anns, images = [], [], []
    ann_id = 1
    for i, img_id in enumerate(ids):
        width, height = sizes[i % len(sizes)]
        if i in unannotated_images:
            n_obj, n_crowd = 0, 0
        elif i in crowd_only_images:
            n_obj, n_crowd = 0, 1
        else:
            n_obj, n_crowd = int(rng.integers(1, max_objects + 1)), int(i in crowd_images)
        boxes = random_boxes(width, height, n_obj + n_crowd, rng)
        pixels, extents = render_image(width, height, boxes, rng)
        file_name = file_name_fmt.format(id=img_id)
        path = image_dir / file_name
        _save_jpeg(path, pixels)
        json_images.append({"id": img_id, "file_name": file_name, "width": width, "height": height})
        objects = []
        for k, ext in enumerate(extents):
            crowd = k >= n_obj
            cat = int(rng.integers(len(categories)))
            x1, y1, x2, y2 = ext
            if crowd:
                bbox = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
                seg: object = _uncompressed_rle(ext, width, height)
            else:
                bbox = coco_bbox_for(ext, rng)
                seg = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            json_anns.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": cat + 1,
                    "bbox": bbox,
                    "area": float((x2 - x1) * (y2 - y1)),
                    "iscrowd": int(crowd),
                    "segmentation": seg,
                }
            )
            ann_id += 1
            objects.append(SyntheticObject(VOC_CLASSES[cat], ext, iscrowd=crowd))
        images.append(SyntheticImage(str(img_id), path, width, height, tuple(objects)))
    ann_path = root / annotation_file
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "info": {"description": "lostreg synthetic"},
        "licenses": [],
        "images": json_images,
        "annotations": json_anns,
        "categories": categories,
    }
    ann_path.write_text(json.dumps(data))
    return SyntheticCoco(ann_path, image_dir, images, root)


def write_coco20k_root(root: str | Path, n_images: int = 8, seed: int = 0, flat: bool = False) -> SyntheticCoco:
    """Write a COCO 2014 train layout: ``annotations/instances_train2014.json`` and
    ``images/train2014/COCO_train2014_<12 digits>.jpg`` (``train2014/`` at the root if
    ``flat``). Ids are sparse, as in COCO; image 0 has a crowd annotation.
    """
    rng = np.random.default_rng(seed + 1000)
    ids = sorted(int(i) for i in rng.choice(np.arange(1, 600_000), size=n_images, replace=False))
    return write_coco_dataset(
        root,
        n_images=n_images,
        seed=seed,
        image_subdir="train2014" if flat else "images/train2014",
        annotation_file="annotations/instances_train2014.json",
        file_name_fmt="COCO_train2014_{id:012d}.jpg",
        image_ids=ids,
    )


def write_coco20k_filelist(path: str | Path, image_ids: Iterable[int | str], seed: int = 0) -> Path:
    """Write a COCO20k-style list (``train2014/COCO_train2014_<12 digits>.jpg``), shuffled
    like the real one, which is unordered."""
    lines = [f"train2014/COCO_train2014_{int(i):012d}.jpg" for i in image_ids]
    order = np.random.default_rng(seed).permutation(len(lines))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines[k] + "\n" for k in order))
    return path
