"""The generated datasets the test suite shares, each written once per session (tests/synthetic.py).

Every fixture here is session-scoped and READ-ONLY: tests point commands at it and write their
run directories, caches and reports elsewhere. A test that damages data works on its own copy
(``dataset.copy_to(tmp_path / "voc")``). At the end of the session each dataset that was used
is compared with what was written (names, sizes, modification times): a test that changed a
shared dataset makes the session fail at teardown, naming the dataset and the files.

VOC sets (:class:`synthetic.SyntheticVoc`: ``root`` for ``dataset.root``, ``images`` in trainval
order, ``image_dir`` for a folder of their JPEGs); unless said otherwise VOC2007 written by
:func:`synthetic.write_voc_dataset` with its defaults (images of 160x120 and 120x160, up to three
objects on a noisy gradient):

* ``voc_small``: 2 images of 64x48 (seed 11), the cheapest set (bad settings, early stops).
* ``voc3``, ``voc4``, ``voc6``, ``voc20``: 3 (seed 8), 4 (seed 7), 6 and 20 (seed 0) images,
  for tests that count images or splits.
* ``voc_mixed8``, ``voc_mixed12``: 8 and 12 images of 160x120, 120x160 and 150x100 (seed 4; the
  8 are the 12's first 8, but the split files differ).
* ``voc_simple30``: 30 single-object simple scenes at VOC's 500x375 / 375x500 (seed 3), where
  LOST on raw pixels hits >= 90 %.
* ``voc_simple12``: 12 simple scenes with up to three objects (seed 6), where LOST's k = 100 and
  k = 1 each hit an image the other misses (test_report's premise).
* ``voc_one_object12``: 12 single-object images of 160x120, 121x97 and 99x150 (seed 11).
* ``voc_two_sizes``: 2 images, 96x64 (a multiple of 16) and 70x90 (padded) (seed 5).
* ``voc07_set``: 8 images (seed 3) with difficult objects (p = 0.3) and one all-difficult
  image (index 2), for the reader's no_hard rules.
* ``voc12_set``: VOC2012, 3 images (seed 1), coordinates written as floats (``12.0``).

COCO sets (:class:`synthetic.SyntheticCoco`):

* ``coco_set``: 7 images (seed 5): crowd annotations on images 0 and 1, image 3 crowd only,
  image 4 unannotated.
* ``coco_crowds8``: 8 images (seed 5), crowd annotations on images 0 and 3.
* ``coco20k_layout``: the COCO 2014 train layout (``root`` for ``dataset.root``), 8 images with
  sparse ids (seed 2), image 0 with a crowd annotation; no file list: tests write the list of
  the images they want (``synthetic.write_coco20k_filelist``). Reading it with
  ``Coco20kDataset`` writes a cache into ``root/annotations`` unless ``cache_dir`` is given:
  tests that let it do so use a copy.

Folders:

* ``big_photo_folder``: one 3200x2400 JPEG (a dark rectangle on a bright noisy gradient).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from PIL import Image

import synthetic
from synthetic import SyntheticCoco, SyntheticVoc

T = TypeVar("T")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _read_only(data: T, root: Path) -> Iterator[T]:
    """Yield ``data``; afterwards fail if anything under ``root`` was added, removed or rewritten."""
    before = _snapshot(root)
    yield data
    after = _snapshot(root)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, (f"a test changed the shared dataset {root} (use a copy_to copy): "
                         f"{sorted({name for name, _ in changed})[:5]}")


def _voc(factory: pytest.TempPathFactory, name: str, **kwargs: object) -> Iterator[SyntheticVoc]:
    root = factory.mktemp(name)
    yield from _read_only(SyntheticVoc(root, synthetic.write_voc_dataset(root, **kwargs)), root)


# ---------------------------------------------------------------------------- VOC


@pytest.fixture(scope="session")
def voc_small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_small", n_images=2, seed=11, sizes=((64, 48),))


@pytest.fixture(scope="session")
def voc3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc3", n_images=3, seed=8)


@pytest.fixture(scope="session")
def voc4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc4", n_images=4, seed=7)


@pytest.fixture(scope="session")
def voc6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc6", n_images=6)


@pytest.fixture(scope="session")
def voc20(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc20", n_images=20)


MIXED_SIZES = ((160, 120), (120, 160), (150, 100))


@pytest.fixture(scope="session")
def voc_mixed8(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_mixed8", n_images=8, seed=4, sizes=MIXED_SIZES)


@pytest.fixture(scope="session")
def voc_mixed12(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_mixed12", n_images=12, seed=4, sizes=MIXED_SIZES)


@pytest.fixture(scope="session")
def voc_simple30(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_simple30", n_images=30, sizes=((500, 375), (375, 500)), max_objects=1,
                    seed=3, scene="simple")


@pytest.fixture(scope="session")
def voc_simple12(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_simple12", n_images=12, seed=6, sizes=synthetic.SMALL_SIZES,
                    max_objects=3, scene="simple")


@pytest.fixture(scope="session")
def voc_one_object12(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_one_object12", n_images=12, seed=11, max_objects=1,
                    sizes=((160, 120), (121, 97), (99, 150)))


@pytest.fixture(scope="session")
def voc_two_sizes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc_two_sizes", n_images=2, seed=5, sizes=((96, 64), (70, 90)))


@pytest.fixture(scope="session")
def voc07_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc07_set", year="2007", n_images=8, seed=3, all_hard=(2,),
                    difficult_prob=0.3)


@pytest.fixture(scope="session")
def voc12_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticVoc]:
    yield from _voc(tmp_path_factory, "voc12_set", year="2012", n_images=3, seed=1, float_coords=True)


# ---------------------------------------------------------------------------- COCO


@pytest.fixture(scope="session")
def coco_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticCoco]:
    root = tmp_path_factory.mktemp("coco_set")
    coco = synthetic.write_coco_dataset(root, n_images=7, seed=5, crowd_images=(0, 1), crowd_only_images=(3,),
                                        unannotated_images=(4,))
    yield from _read_only(coco, root)


@pytest.fixture(scope="session")
def coco_crowds8(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticCoco]:
    root = tmp_path_factory.mktemp("coco_crowds8")
    yield from _read_only(synthetic.write_coco_dataset(root, n_images=8, seed=5, crowd_images=(0, 3)), root)


@pytest.fixture(scope="session")
def coco20k_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyntheticCoco]:
    root = tmp_path_factory.mktemp("coco20k_layout") / "COCO"
    yield from _read_only(synthetic.write_coco20k_root(root, n_images=8, seed=2), root)


# ---------------------------------------------------------------------------- folders


@pytest.fixture(scope="session")
def big_photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("big_photo")
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 3200)[None, :, None]
    image = (170 + 60 * x + rng.normal(0, 8, (2400, 3200, 3))).clip(0, 255).astype(np.uint8)
    image[800:1600, 1000:2200] = (40, 60, 30)
    Image.fromarray(image).save(folder / "photo.jpg", quality=90)
    yield from _read_only(folder, folder)
