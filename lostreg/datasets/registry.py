"""The dataset registry: each kind of dataset (``dataset=<name>``) with every fact lostreg needs about it.

A :class:`DatasetKind` knows how to build its reader from the ``dataset.*`` settings, its hydra
schema node (the settings, their types and defaults), which settings only say where the files
are and which only ``lostreg data check`` reads, what identifies its data in a run's identity,
the name of its run directory, how tables label it, whether it is one of the main published
benchmarks and its published size, and which setting holds the folder of its images. The config,
run naming, compare, report and export ask the registry instead of testing names, so a sixth
dataset is one :func:`register_dataset` call (plus, if it should carry comments for users or
set other keys, a ``configs/dataset/<name>.yaml``).

The built-in kinds (voc07, voc12, coco20k, coco, folder) are registered in
:mod:`lostreg.datasets.kinds`. Nothing here imports torch or hydra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from lostreg.errors import UnknownNameError
from lostreg.io.paths import real_path

if TYPE_CHECKING:  # pragma: no cover
    from lostreg.datasets.base import ImageDataset

__all__ = [
    "CHECK_ONLY_KEYS",
    "REQUIRED",
    "DatasetKind",
    "dataset_kind",
    "dataset_kinds",
    "dataset_names",
    "kind_of",
    "register_dataset",
    "unregister_dataset",
]

#: omegaconf's ``MISSING``: a schema default that hydra refuses to compose while it is unset
#: (``dataset.root=`` of a folder). Spelled out so that the readers need not import omegaconf.
REQUIRED = "???"

#: Settings that are not reader arguments: ``expected_count`` is read by ``lostreg data check`` only.
CHECK_ONLY_KEYS = ("expected_count",)


@dataclass(frozen=True)
class DatasetKind:
    """One kind of dataset and its facts; subclasses override the rules that differ (a name with a
    split, an identity by content).

    ``settings`` below is a config's ``dataset`` section (a mapping or a ``DictConfig``, ``name``
    included), as composed or as read back from a run directory's ``config.yaml``.

    Attributes:
        name: ``dataset.name`` and the option ``dataset=<name>``, lower case.
        reader: Builds the :class:`~lostreg.datasets.base.ImageDataset` from the reader settings
            (:meth:`reader_kwargs`); None for the stand-in of an unregistered name (:func:`kind_of`).
        schema: The hydra schema node: a dataclass of the ``dataset.*`` settings with their types and
            defaults, ``name`` first (stored with :attr:`name` filled in); None for a stand-in.
        label: How tables title its column (``VOC07``, ``COCO20k``).
        location_keys: Settings that only say where the files are: the same data may live elsewhere.
        check_only_keys: Settings that are not reader arguments.
        published: A published benchmark, the same data wherever it lives: the run identity leaves its
            location out. A user's own data is identified by its resolved location instead.
        main: One of the main published datasets: every comparison table has its column.
        published_size: Images in its published split (the papers' number), None when there is none.
        image_root_key: The setting that holds the folder its image paths are relative to.
        annotated: It has annotation files, which ``lostreg data check`` reads leniently (``strict=False``)
            to list every problem.
    """

    name: str
    reader: Callable[..., ImageDataset] | None
    schema: type | None
    label: str
    location_keys: tuple[str, ...] = ()
    check_only_keys: tuple[str, ...] = CHECK_ONLY_KEYS
    published: bool = False
    main: bool = False
    published_size: int | None = None
    image_root_key: str = "root"
    annotated: bool = True

    def reader_kwargs(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The reader's keyword arguments: ``settings`` without ``name`` and the check-only keys."""
        return {key: value for key, value in settings.items() if key != "name" and key not in self.check_only_keys}

    def build(self, **kwargs: Any) -> ImageDataset:
        """The reader over the files ``kwargs`` (:meth:`reader_kwargs`) name.

        Raises:
            UnknownNameError: a stand-in kind, which has no reader.
            DatasetLayoutError: the files on disk do not match the expected layout.
        """
        if self.reader is None:
            raise UnknownNameError(f"unknown dataset {self.name!r}; known: {', '.join(dataset_names())}")
        return self.reader(**kwargs)

    def identity(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """What chooses the images and ground truth, independent of how the location is spelled.

        A published dataset without its location keys; a user's own data with them resolved
        (``./data`` and ``/home/u/data`` are one folder). Check-only keys never count.
        """
        identity = {k: v for k, v in settings.items() if k not in self.location_keys + self.check_only_keys}
        if not self.published:
            identity.update({k: real_path(settings[k]) for k in self.location_keys if k in settings})
        return identity

    def dir_name(self, settings: Mapping[str, Any]) -> str:
        """The dataset's part of a default run directory (``outputs/<this>/...``); the name itself here."""
        return self.name

    def variant(self, settings: Mapping[str, Any]) -> list[str]:
        """How ``settings`` depart from the published data, as tables say it: ``["no_hard"]``, or ``[]``."""
        return ["no_hard"] if settings.get("no_hard") else []

    def expected_images(self, settings: Mapping[str, Any]) -> int | None:
        """The published number of images for ``settings``: None for a variant or a dataset without one."""
        return None if self.variant(settings) else self.published_size

    def image_root(self, settings: Mapping[str, Any]) -> str | None:
        """The folder (as written) that ``settings`` keep the images in, None when unset."""
        value = settings.get(self.image_root_key)
        return None if value is None else str(value)


_KINDS: dict[str, DatasetKind] = {}


def register_dataset(kind: DatasetKind) -> DatasetKind:
    """Add ``kind`` under ``kind.name`` (lower case, unique); returns it.

    Raises:
        ValueError: a name already taken or not lower case (a programming error).
    """
    if kind.name != kind.name.lower():
        raise ValueError(f"dataset kind names are lower case; got {kind.name!r}")
    if kind.name in _KINDS:
        raise ValueError(f"dataset {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister_dataset(name: str) -> DatasetKind:
    """Remove the kind registered as ``name`` (a plugin unloaded, a test's toy kind) and return it.

    Raises:
        UnknownNameError: nothing is registered under ``name``.
    """
    kind = dataset_kind(name)
    del _KINDS[kind.name]
    return kind


def dataset_kinds() -> tuple[DatasetKind, ...]:
    """The registered kinds, in registration order (the order of table columns)."""
    return tuple(_KINDS.values())


def dataset_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(_KINDS)


def dataset_kind(name: str, strict: bool = True) -> DatasetKind:
    """The kind registered as ``name`` (case-insensitive).

    Args:
        name: ``voc07``, ``coco``, ...
        strict: When False, an unregistered name (in a run directory of a dataset since removed,
            or of a plugin not loaded now) gets a stand-in: no reader, labelled by its name,
            identified like a user's own data by every known location key, resolved.

    Raises:
        UnknownNameError: ``strict`` and ``name`` is not registered; the message lists the known names.
    """
    kind = _KINDS.get(str(name).lower())
    if kind is not None:
        return kind
    if strict:
        raise UnknownNameError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    known_locations = tuple(dict.fromkeys(key for k in _KINDS.values() for key in k.location_keys))
    return DatasetKind(name=str(name), reader=None, schema=None, label=str(name), location_keys=known_locations)


def kind_of(settings: Mapping[str, Any]) -> DatasetKind:
    """The kind of a ``dataset`` section (by its ``name``), a stand-in when it is not registered."""
    return dataset_kind(str(settings.get("name")), strict=False)
