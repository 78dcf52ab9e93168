"""The built-in dataset kinds: PASCAL VOC 2007 and 2012, COCO20k, any COCO json, a folder of images.

Each kind is declared once, here: its ``dataset.*`` settings with their types and defaults (the
hydra schema node, which :mod:`lostreg.config` stores) and its facts (:class:`DatasetKind`). The
``configs/dataset/<name>.yaml`` options only select the node and set what lies outside the
``dataset`` section (``max_size`` for a user's own images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from lostreg.datasets.base import ImageDataset
from lostreg.datasets.coco import CocoDataset
from lostreg.datasets.coco20k import COCO20K_NUM_IMAGES, Coco20kDataset
from lostreg.datasets.folder import FolderDataset
from lostreg.datasets.registry import REQUIRED, DatasetKind, register_dataset
from lostreg.datasets.voc import DEFAULT_VOC_SPLIT, VOCDataset
from lostreg.errors import ConfigError
from lostreg.io.paths import file_fingerprint

__all__ = ["Coco20kKind", "Coco20kNode", "CocoKind", "CocoNode", "FolderKind", "FolderNode", "VocKind", "VocNode"]


# --------------------------------------------------------------------------- schema nodes
# Field order is the order of the ``dataset`` section in a run directory's config.yaml: keep it.


@dataclass
class VocNode:
    """``dataset=voc07|voc12``: ``root`` holds ``VOCdevkit/`` (or is it, or ``VOC<year>/`` itself)."""

    name: str = REQUIRED
    root: str = "data"
    split: str = DEFAULT_VOC_SPLIT
    no_hard: bool = False
    #: ``lostreg data check`` only: the number of images expected (a subset's size); null = the published size
    expected_count: Optional[int] = None


@dataclass
class Coco20kNode:
    """``dataset=coco20k``: ``root`` holds ``train2014/`` and ``annotations/``; the LOST file list."""

    name: str = "coco20k"
    root: str = "data/COCO"
    filelist_path: str = "data/coco_20k_filenames.txt"
    cache_dir: Optional[str] = None
    #: ``lostreg data check`` only: the number of images expected (a subset's size); null = the published size
    expected_count: Optional[int] = None


@dataclass
class CocoNode:
    """``dataset=coco``: any COCO instances json with its image folder."""

    name: str = "coco"
    annotation_json: str = REQUIRED
    image_dir: str = REQUIRED
    #: ``lostreg data check`` only: the number of images expected (a subset's size); null = the published size
    expected_count: Optional[int] = None


@dataclass
class FolderNode:
    """``dataset=folder``: a folder of images without ground truth."""

    name: str = "folder"
    root: str = REQUIRED
    recursive: bool = False
    #: ``lostreg data check`` only: the number of images expected (a subset's size); null = the published size
    expected_count: Optional[int] = None


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class VocKind(DatasetKind):
    """A PASCAL VOC year: named by split and hard-object setting when they are not the published ones."""

    year: str = ""

    def build(self, **kwargs: Any) -> ImageDataset:
        """:class:`VOCDataset` of this kind's year.

        Raises:
            ConfigError: ``year`` passed, and another than this kind's.
        """
        if "year" in kwargs and str(kwargs.pop("year")) != self.year:
            raise ConfigError(f"dataset {self.name!r} is VOC{self.year}; do not pass another year")
        return super().build(year=self.year, **kwargs)

    def dir_name(self, settings: Mapping[str, Any]) -> str:
        """``voc07``; ``voc07_small``, ``voc12_nohard``, ``voc07_val_nohard`` for the other variants."""
        split = str(settings.get("split", DEFAULT_VOC_SPLIT))
        return (self.name + ("" if split == DEFAULT_VOC_SPLIT else f"_{split}")
                + ("_nohard" if settings.get("no_hard") else ""))

    def variant(self, settings: Mapping[str, Any]) -> list[str]:
        """``["split=val", "no_hard"]``: a split other than the published one, then the hard-object setting."""
        split = settings.get("split")
        named = [f"split={split}"] if split not in (None, DEFAULT_VOC_SPLIT) else []
        return named + super().variant(settings)


@dataclass(frozen=True)
class Coco20kKind(DatasetKind):
    """COCO20k: a published subset chosen by a file list, so the list's content is part of its identity."""

    def identity(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The published identity plus ``filelist_sha256``: another list is other images, wherever it lives."""
        identity = super().identity(settings)
        identity["filelist_sha256"] = file_fingerprint(str(settings.get("filelist_path")))
        return identity


@dataclass(frozen=True)
class CocoKind(DatasetKind):
    """Any COCO instances json: its run directory is named after the json (``coco_<json stem>``)."""

    def dir_name(self, settings: Mapping[str, Any]) -> str:
        """``coco_<annotation json file stem>``."""
        return f"{self.name}_{Path(str(settings['annotation_json'])).stem}"


@dataclass(frozen=True)
class FolderKind(DatasetKind):
    """A folder of images: its run directory is named after the folder (``folder_<folder name>``)."""

    def dir_name(self, settings: Mapping[str, Any]) -> str:
        """``folder_<name of the resolved root>`` (``folder_root`` for the file-system root)."""
        return f"{self.name}_{Path(str(settings['root'])).expanduser().resolve().name or 'root'}"


# Registration order is the order of comparison-table columns.
for _year, _size in (("2007", 5011), ("2012", 11540)):  # trainval images (spec section 5)
    register_dataset(VocKind(
        name=f"voc{_year[2:]}", reader=VOCDataset, schema=VocNode, label=f"VOC{_year[2:]}", year=_year,
        location_keys=("root",), published=True, main=True, published_size=_size,
    ))
register_dataset(Coco20kKind(
    name="coco20k", reader=Coco20kDataset, schema=Coco20kNode, label="COCO20k",
    location_keys=("root", "filelist_path", "cache_dir"), published=True, main=True,
    published_size=COCO20K_NUM_IMAGES,
))
register_dataset(CocoKind(
    name="coco", reader=CocoDataset, schema=CocoNode, label="COCO", location_keys=("annotation_json", "image_dir"),
    image_root_key="image_dir",
))
register_dataset(FolderKind(
    name="folder", reader=FolderDataset, schema=FolderNode, label="folder", location_keys=("root",),
    annotated=False,
))
