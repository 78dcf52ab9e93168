"""A folder of the user's own images, without ground truth."""

from __future__ import annotations

from pathlib import Path

from lostreg.datasets.base import DatasetLayoutError, ImageDataset, ImageRecord, describe_layout
from lostreg.io.images import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset"]


def _is_hidden(rel: Path) -> bool:
    # Skips dot-files such as macOS "._img.jpg" resource forks, which have image
    # extensions but are not images, and anything inside hidden folders.
    return any(part.startswith(".") for part in rel.parts)


class FolderDataset(ImageDataset):
    """Images of a folder (or one image file), no ground truth.

    Records are sorted by their path relative to ``root`` (POSIX form, which is also
    the ``image_id``, extension included so ``a.jpg`` and ``a.png`` stay distinct).
    ``width``/``height`` are ``None``: nothing is decoded here. Ground truth is ``(0, 4)``.

    Args:
        root: A folder, or a single image file.
        recursive: Also list images in sub-folders.

    Raises:
        DatasetLayoutError: ``root`` does not exist, is not an image, or holds no image.
    """

    has_ground_truth = False

    def __init__(self, root: str | Path, recursive: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.recursive = recursive
        layout = describe_layout("folder")
        if self.root.is_file():
            if self.root.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DatasetLayoutError(f"{self.root} is not an image file (by extension)", layout)
            paths = [self.root]
            base = self.root.parent
        elif self.root.is_dir():
            pattern = self.root.rglob("*") if recursive else self.root.iterdir()
            base = self.root
            paths = [
                p
                for p in pattern
                if p.suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(p.relative_to(base)) and p.is_file()
            ]
            if not paths:
                where = "under" if recursive else "in"
                hint = "" if recursive else " (sub-folders are searched with dataset.recursive=true)"
                raise DatasetLayoutError(f"no image found {where} {self.root}{hint}", layout)
        else:
            raise DatasetLayoutError(f"image folder {self.root} does not exist", layout)

        rels = sorted((p.relative_to(base).as_posix(), p) for p in paths)
        records = [ImageRecord(image_id=rel, path=p, width=None, height=None) for rel, p in rels]
        super().__init__(records, name=f"folder_{self.root.stem or 'root'}")
