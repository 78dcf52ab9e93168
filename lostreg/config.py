"""Hydra configs: a typed schema, composed through the compose API behind lostreg's own command line.

``@hydra.main`` owns ``sys.argv`` and does not mix with sub-commands, so lostreg composes
configs itself (``initialize_config_module`` + ``compose``) from ``key=value`` overrides and
does what ``hydra.main`` would otherwise do (run directory, config dump) in the runner.

The schema is registered in hydra's ConfigStore, so every value is typed (``lost.k_patches=abc``
and ``dataset.no_hard=maybe`` are refused, naming the key) and unknown keys are refused. Defaults
live in one place each: the discovery protocol's in :mod:`lostreg.protocol` (the schema nodes
for ``method``, ``features`` and ``lost`` are derived from those dataclasses), the execution
settings and datasets' in the nodes below. ``configs/*.yaml`` only pick config-group options.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf

from lostreg.protocol import DiscoveryProtocol, FeatureConfig, LostConfig, ProtocolError

__all__ = [
    "CONFIG_MODULE",
    "RESULT_KEYS",
    "ConfigError",
    "compose_config",
    "dataset_kwargs",
    "expand_sweeps",
    "protocol_from_config",
    "result_affecting",
]

CONFIG_MODULE = "lostreg.configs"

#: Config sections that can change a prediction. A run directory refuses to mix results
#: whose values here differ; device, batch_size, num_workers and run_dir may change freely.
RESULT_KEYS = ("backbone", "dataset", "weights", "method", "lost", "features", "max_size")


def _schema_node(cls: type) -> type:
    """A mutable dataclass with the fields, types and defaults of the frozen protocol class ``cls``.

    Hydra merges overrides into its nodes, which a frozen dataclass forbids; deriving the node
    keeps the protocol's defaults in :mod:`lostreg.protocol` only.
    """
    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(
        f"{cls.__name__}Node", [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(cls)]
    )


FeatureNode = _schema_node(FeatureConfig)
LostNode = _schema_node(LostConfig)


@dataclass
class BackboneNode:
    """``backbone``: a registered name (``configs/backbone/<name>.yaml``) or ``backbone.name=<timm id>``."""

    name: str = MISSING


@dataclass
class VocNode:
    """``dataset=voc07|voc12``: ``root`` holds ``VOCdevkit/`` (or is it, or ``VOC<year>/`` itself)."""

    name: str = MISSING
    root: str = "data"
    split: str = "trainval"
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
    annotation_json: str = MISSING
    image_dir: str = MISSING
    #: ``lostreg data check`` only: the number of images expected (a subset's size); null = the published size
    expected_count: Optional[int] = None


@dataclass
class FolderNode:
    """``dataset=folder``: a folder of images without ground truth."""

    name: str = "folder"
    root: str = MISSING
    recursive: bool = False
    #: ``lostreg data check`` only: the number of images expected (a subset's size); null = the published size
    expected_count: Optional[int] = None


@dataclass
class EvalNode:
    """The whole ``lostreg eval`` config. Group options fill ``backbone`` and ``dataset``."""

    backbone: BackboneNode = field(default_factory=BackboneNode)
    dataset: Any = MISSING
    #: pretrained (timm hub, cached) | random (pipeline tests only) | path to a checkpoint
    weights: str = "pretrained"
    method: str = DiscoveryProtocol.method
    features: FeatureNode = field(default_factory=FeatureNode)  # type: ignore[valid-type]
    lost: LostNode = field(default_factory=LostNode)  # type: ignore[valid-type]
    #: downscale images whose longer side exceeds this (null = native resolution, the protocol)
    max_size: Optional[int] = None
    # Execution: none of these can change a box, so a run may be resumed with other values.
    device: str = "auto"
    batch_size: int = 8
    num_workers: int = 2
    # Deterministic, so that re-running the same command resumes the same run.
    run_dir: str = "outputs/${dataset.name}/${backbone.name}/${lostreg_protocol:${method},${features},${lost}}"


def _register_schema() -> None:
    # Under schema/, not in the dataset group itself, so they never show up as dataset options.
    store = ConfigStore.instance()
    store.store(group="schema", name="eval", node=EvalNode)
    store.store(group="schema/dataset", name="voc", node=VocNode)
    store.store(group="schema/dataset", name="coco20k", node=Coco20kNode)
    store.store(group="schema/dataset", name="coco", node=CocoNode)
    store.store(group="schema/dataset", name="folder", node=FolderNode)


def _protocol_name(method: str, features: DictConfig, lost: DictConfig) -> str:
    """Run-directory name of a protocol: ``k_layer-1_k100_bias0.0`` (see :attr:`DiscoveryProtocol.name`)."""
    return DiscoveryProtocol.from_mapping({"method": method, "features": features, "lost": lost}).name


_register_schema()
# Used by the schema's default run_dir.
OmegaConf.register_new_resolver("lostreg_protocol", _protocol_name, replace=True)


class ConfigError(ValueError):
    """An override that does not compose (unknown key or option, wrong type, bad syntax, missing value)."""


def _one_line(err: BaseException) -> str:
    # Hydra appends its search path to every message, and OmegaConf a "full_key: ..." block:
    # noise for a user. The cause holds the useful part ("could not be converted to Integer").
    text = " ".join(str(err).split()).split(" Config search path:")[0]
    cause = err.__cause__
    if cause is not None:
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        text = f"{text}: {reason}"
    return text


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra ``overrides`` (``key=value``, ``group=option``).

    Raises:
        ConfigError: with hydra's one-line reason.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # hydra raises several types; the message is what matters
        raise ConfigError(_one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)} (pass e.g. {missing[0]}=...)")
    return cfg


def expand_sweeps(overrides: Sequence[str]) -> list[list[str]]:
    """Expand hydra sweep syntax (``backbone=dino,dinov2``, ``range(...)``) into override lists.

    Returns the cartesian product in the order given, one list of plain overrides per run.
    """
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    choices: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*choices)]


def result_affecting(cfg: DictConfig) -> dict[str, Any]:
    """The part of a config that can change predictions, as plain resolved data."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {key: container.get(key) for key in RESULT_KEYS}


def protocol_from_config(cfg: DictConfig) -> DiscoveryProtocol:
    """The validated :class:`DiscoveryProtocol` of a composed config.

    Raises:
        ProtocolError: a value out of range (``lost.k_patches=0``, ``features.which=x``).
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return DiscoveryProtocol.from_mapping(container).validate()


#: Dataset settings that are not reader arguments: ``expected_count`` is read by ``lostreg data check``
#: only, so :func:`dataset_kwargs` leaves it out.
CHECK_ONLY_DATASET_KEYS = ("expected_count",)


def dataset_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`lostreg.datasets.build_dataset` from ``cfg.dataset``
    (without ``name`` and the check-only :data:`CHECK_ONLY_DATASET_KEYS`)."""
    kwargs = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert isinstance(kwargs, dict)
    for key in ("name", *CHECK_ONLY_DATASET_KEYS):
        kwargs.pop(key, None)
    return kwargs


# Re-exported for callers that catch configuration problems in one place.
__all__ += ["ProtocolError"]
