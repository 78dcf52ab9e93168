"""Hydra configs: a typed schema, composed through the compose API behind lostreg's own command line.

``@hydra.main`` owns ``sys.argv`` and does not mix with sub-commands, so lostreg composes
configs itself (``initialize_config_module`` + ``compose``) from ``key=value`` overrides and
does what ``hydra.main`` would otherwise do (run directory, config dump) in the runner.

The schema is registered in hydra's ConfigStore, so every value is typed (``lost.k_patches=abc``
and ``dataset.no_hard=maybe`` are refused, naming the key) and unknown keys are refused. Defaults
live in one place each: the discovery protocol's in :mod:`lostreg.knobs` and the method
registrations (:mod:`lostreg.methods`): the schema nodes for ``features``, one section per
registered method (``lost``, ``tokencut``, ...) and the sweep axes (``sweep.<setting>``) are
derived from those dataclasses, so a newly registered method gets its section and axes without an
edit here. Each dataset kind's defaults are in its registration (:mod:`lostreg.datasets.kinds`,
stored here as ``schema/dataset/<name>``); the execution settings' in the nodes below.
``configs/*.yaml`` only pick config-group options.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import itertools
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, List, Mapping, Optional, Sequence

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf

from lostreg.datasets.registry import dataset_kinds, kind_of
from lostreg.errors import ConfigError
from lostreg.io.paths import file_fingerprint, real_path
from lostreg.knobs import knob_fields
from lostreg.methods import registered_methods
from lostreg.protocol import PRECISIONS, DiscoveryProtocol, FeatureConfig, ProtocolError
from lostreg.rundir import backbone_dir_name, default_run_dir

__all__ = [
    "CONFIG_MODULE",
    "ConfigError",
    "compose_config",
    "dataset_kwargs",
    "expand_sweeps",
    "protocol_from_config",
    "dataset_identity",
    "result_affecting",
    "result_keys",
    "sweep_axes",
    "run_identity",
    "validate_execution",
    "weights_identity",
]

CONFIG_MODULE = "lostreg.configs"

def result_keys() -> tuple[str, ...]:
    """Config sections that can change a prediction (one section per registered method). A run
    directory refuses to mix results whose values here differ; device, batch_size, num_workers
    and run_dir may change freely."""
    return ("backbone", "dataset", "weights", "ttreg", "method", *registered_methods(), "features", "objects",
            "max_size", "precision")


def _schema_node(cls: type) -> type:
    """A mutable dataclass with the fields, types and defaults of the frozen protocol class ``cls``.

    Hydra merges overrides into its nodes, which a frozen dataclass forbids; deriving the node
    keeps the protocol's defaults in :mod:`lostreg.knobs` and the method registrations only.
    """
    hints = typing.get_type_hints(cls)
    return dataclasses.make_dataclass(
        f"{cls.__name__}Node", [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(cls)]
    )


FeatureNode = _schema_node(FeatureConfig)


def sweep_axes() -> dict[str, tuple[str, type]]:
    """Every setting a sweep can vary: ``{name: (section, type)}``, the features' first, then each
    registered method's (names are unique across sections: :func:`lostreg.methods.register_method`)."""
    axes = {f.name: ("features", hint) for f, hint in _hinted(FeatureConfig)}
    for name, spec in registered_methods().items():
        axes.update({f.name: (name, hint) for f, hint in _hinted(spec.config)})
    return axes


def _hinted(cls: type) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in knob_fields(cls)]


@dataclass
class BackboneNode:
    """``backbone``: a registered name (``configs/backbone/<name>.yaml``) or ``backbone.name=<timm id>``."""

    name: str = MISSING


def _sweep_node() -> type:
    """``lostreg sweep``'s grid: ``sweep.<setting>``, a list of values per setting of :func:`sweep_axes`
    (null = the single value of ``features.*`` / ``<method>.*``). Every combination is one
    configuration; one backbone pass per batch gives every (which, layer) feature set they need
    (:mod:`lostreg.evaluation.sweep`)."""
    return dataclasses.make_dataclass(
        "SweepNode", [(name, Optional[List[hint]], field(default=None))  # type: ignore[valid-type]
                      for name, (_, hint) in sweep_axes().items()])


#: The default run directory (see :func:`run_identity`): it names what changes results (dataset
#: variant, backbone and weights, protocol, max_size, precision), so re-running a command resumes it.
#: The layout is lostreg.rundir's (:func:`~lostreg.rundir.default_run_dir`).
DEFAULT_RUN_DIR = "${lostreg_run_dir:${dataset},${backbone.name},${weights},${ttreg},${lostreg_protocol_dir:}}"


def _eval_node() -> type:
    """The whole ``lostreg eval`` config, with one settings section per registered method (after ``features``).

    Built from the method registry, so it is made anew when a method is registered at run time
    (cached per set of registered methods: compose and the unknown-key check ask for it often).
    """
    return _eval_node_for(tuple((name, spec.config) for name, spec in registered_methods().items()))


@functools.lru_cache(maxsize=8)
def _eval_node_for(registered: tuple[tuple[str, type], ...]) -> type:
    """:func:`_eval_node` for the registered ``(method name, settings class)`` pairs. Group options fill
    ``backbone`` and ``dataset``."""
    nodes = {name: _schema_node(config) for name, config in registered}
    methods = [(name, node, field(default_factory=node)) for name, node in nodes.items()]
    return dataclasses.make_dataclass("EvalNode", [
        ("backbone", BackboneNode, field(default_factory=BackboneNode)),
        ("dataset", Any, field(default=MISSING)),
        #: pretrained (timm hub, cached) | random (pipeline tests only) | path to a checkpoint
        ("weights", str, field(default="pretrained")),
        #: a register-neuron file (`lostreg calibrate`): run the backbone with one test-time register
        ("ttreg", Optional[str], field(default=None)),
        ("method", str, field(default=DiscoveryProtocol().method)),
        #: objects per image (1: the published single-object protocol; lostreg.protocol.OBJECTS_HELP)
        ("objects", int, field(default=DiscoveryProtocol().objects)),
        ("features", FeatureNode, field(default_factory=FeatureNode)),
        *methods,
        #: downscale images whose longer side exceeds this (null or 0 = native resolution, the protocol)
        ("max_size", Optional[int], field(default=None)),
        #: the backbone forward's numerics: fp32 (exact, default) | tf32 | bf16; discovery is always fp32
        ("precision", str, field(default="fp32")),
        # Execution: none of these can change a box, so a run may be resumed with other values.
        ("device", str, field(default="auto")),
        ("batch_size", int, field(default=8)),
        ("num_workers", int, field(default=2)),
        #: only the first N images of the dataset (a smoke test); the same run directory completes later
        ("limit", Optional[int], field(default=None)),
        #: start afresh: delete the run directory's predictions, metrics and config first
        ("overwrite", bool, field(default=False)),
        #: ``lostreg sweep`` only: the grid of protocol values to try
        ("sweep", Any, field(default_factory=_sweep_node())),
        #: ``lostreg sweep`` only: pick the configuration on this dataset's sweep (a dataset name, or a
        #: sweep run directory) and report it, fixed, beside this dataset's own best
        ("select_on", Optional[str], field(default=None)),
        ("run_dir", str, field(default=DEFAULT_RUN_DIR)),
    ])


_registered_for: tuple[str, ...] | None = None


def _register_schema() -> None:
    """(Re)register the eval schema in hydra's ConfigStore when the set of registered methods changed.

    Under schema/, not in a config group of options, so it never shows up as an option.
    """
    global _registered_for
    methods = tuple(registered_methods())
    if methods == _registered_for:
        return
    ConfigStore.instance().store(group="schema", name="eval", node=_eval_node())
    _registered_for = methods


@functools.lru_cache(maxsize=None)
def _dataset_yaml_options() -> frozenset[str]:
    """The ``dataset=`` options that ``configs/dataset/<name>.yaml`` files define."""
    folder = resources.files(CONFIG_MODULE).joinpath("dataset")
    return frozenset(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _store_dataset_kinds() -> None:
    """Store each registered dataset kind's schema node as ``schema/dataset/<name>`` (its ``name``
    filled in) and, for a kind without a ``configs/dataset/<name>.yaml``, as the option ``dataset=<name>``.

    Done at every compose rather than once at import, from a clean slate: a kind registered later
    (a plugin, a test) composes at once, and one unregistered no longer does. lostreg alone stores
    in these two groups (the yaml options are files, not ConfigStore entries).
    """
    store = ConfigStore.instance()
    store.repo.get("schema", {}).pop("dataset", None)
    store.repo.pop("dataset", None)
    for kind in dataset_kinds():
        if kind.schema is None:
            continue
        node = kind.schema(name=kind.name)
        store.store(group="schema/dataset", name=kind.name, node=node)
        if kind.name not in _dataset_yaml_options():
            store.store(group="dataset", name=kind.name, node=node)


def _protocol_dir(*, _root_: DictConfig) -> str:
    """Run-directory name of the config's protocol: ``k_layer-1_k100_bias0.0`` (see
    :attr:`DiscoveryProtocol.name`), plus ``_max1024`` when images are downscaled and ``_bf16`` /
    ``_tf32`` for a faster forward. Reads the root config (every method's section)."""
    methods = registered_methods()
    if str(_root_.get("method")) not in methods:
        return str(_root_.get("method"))  # protocol validation reports the unknown method, one line
    # Each section resolved where it stands: a preset's value may interpolate another section
    # (registers_paper's features.which reads backbone.name).
    sections = {key: OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
                for key in ("method", "features", "objects", *methods) for node in [_root_.get(key)]}
    name = DiscoveryProtocol.from_mapping(sections).name
    max_size, precision = _root_.get("max_size"), _root_.get("precision")
    return name + (f"_max{max_size}" if max_size else "") + ("" if precision == "fp32" else f"_{precision}")


def _dataset_dir(dataset: Mapping[str, Any]) -> str:
    """The dataset's part of the run directory, as its kind names it (``voc07_small``, ``folder_<name>``)."""
    return kind_of(dataset).dir_name(dataset)


def _run_dir(dataset: Mapping[str, Any], backbone: str, weights: str, ttreg: str | None, protocol_dir: str) -> str:
    """The default ``run_dir`` (:func:`lostreg.rundir.default_run_dir`) of a composed config."""
    return default_run_dir(_dataset_dir(dataset), backbone_dir_name(backbone, weights, ttreg), protocol_dir)


def _by_family(backbone: str, default: Any, table: Mapping[str, Any]) -> Any:
    """``${lostreg_by_family:${backbone.name},k,{deit3: v, openclip: v}}``: a preset's value for the
    backbone's family (:attr:`lostreg.backbones.registry.BackboneSpec.family`), else ``default``
    (also for a name the registry does not know: the backbone check names it later)."""
    from lostreg.backbones.registry import UnknownBackboneError, resolve_backbone

    try:
        family = resolve_backbone(str(backbone)).family
    except UnknownBackboneError:
        return default
    return table.get(family, default)


_register_schema()
# lostreg_run_dir makes the schema's default run_dir; the parts stay available to a run_dir of
# one's own (run_dir=runs/${lostreg_dataset_dir:${dataset}}/...).
OmegaConf.register_new_resolver("lostreg_run_dir", _run_dir, replace=True)
OmegaConf.register_new_resolver("lostreg_protocol_dir", _protocol_dir, replace=True)
OmegaConf.register_new_resolver("lostreg_dataset_dir", _dataset_dir, replace=True)
OmegaConf.register_new_resolver("lostreg_backbone_dir", backbone_dir_name, replace=True)
OmegaConf.register_new_resolver("lostreg_by_family", _by_family, replace=True)


def _one_line(err: BaseException) -> str:
    # Hydra appends its search path to every message, and OmegaConf a "full_key: ..." block:
    # noise for a user. The cause holds the useful part ("could not be converted to Integer").
    text = " ".join(str(err).split()).split(" Config search path:")[0]
    cause = err.__cause__
    if cause is not None:
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        text = f"{text}: {reason}"
    return text


def _missing_keys(cfg: DictConfig) -> list[str]:
    """The dotted keys still unset (``???``), sorted, found without resolving any interpolation.

    ``OmegaConf.missing_keys`` resolves as it goes, and the default ``run_dir`` reads the dataset's
    settings: ``dataset=folder`` without ``dataset.root`` would fail there instead of being named.
    """
    found: list[str] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for child, value in node.items():
                walk(value, f"{key}.{child}" if key else str(child))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{key}[{index}]")
        elif node == MISSING:
            found.append(key)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return sorted(found)


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra ``overrides`` (``key=value``, ``group=option``).

    Raises:
        ConfigError: with hydra's one-line reason.
    """
    _register_schema()
    _store_dataset_kinds()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # hydra raises several types; the message is what matters
        unknown = _UNKNOWN_OVERRIDE.match(" ".join(str(err).split()))
        if unknown:  # hydra would suggest "+key=...", which only adds a key nothing reads
            raise ConfigError(_unknown_key_message(unknown.group(1))) from None
        raise ConfigError(_one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()
    _refuse_unknown_keys(cfg)
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing required value(s): {', '.join(missing)} (pass e.g. {missing[0]}=...)")
    return cfg


_UNKNOWN_OVERRIDE = re.compile(r"Could not override '([^']+)'\. To append to your config use \+")


def _schema_keys(section: str, cfg: DictConfig | None = None) -> list[str] | None:
    """The keys the schema allows in ``section`` (``""`` = the top level; ``dataset`` = the chosen kind's
    settings, from ``cfg``), None where the schema has no fixed keys."""
    parts = [p for p in section.split(".") if p]
    node: Any
    if parts[:1] == ["dataset"]:
        dataset = cfg.get("dataset") if cfg is not None else None
        node = kind_of(dataset).schema if isinstance(dataset, (dict, DictConfig)) else None
        parts = parts[1:]
    else:
        node = _eval_node()
    for part in parts:
        found = {f.name: f for f in dataclasses.fields(node)}.get(part) if dataclasses.is_dataclass(node) else None
        factory = found.default_factory if found is not None else dataclasses.MISSING
        node = factory if isinstance(factory, type) and dataclasses.is_dataclass(factory) else None
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else None


def _unknown_key_message(key: str, cfg: DictConfig | None = None) -> str:
    section, _, name = key.rpartition(".")
    known = _schema_keys(section, cfg)
    where = section or "the config"
    listed = f" ({', '.join(known)})" if known else ""
    return f"unknown key {key}: not in {where}{listed}"


def _refuse_unknown_keys(cfg: DictConfig) -> None:
    """Refuse keys the schema does not declare, also those added with ``+key=...`` (nothing would read them).

    Raises:
        ConfigError: ``unknown key sweep.foo; sweep has: which, layer, ...``.
    """
    def walk(node: DictConfig, prefix: str) -> None:
        known = _schema_keys(prefix, cfg)
        if known is None:
            return
        for key in node.keys():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in known:
                raise ConfigError(_unknown_key_message(dotted, cfg))
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                walk(child, dotted)

    walk(cfg, "")


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
    return {key: container.get(key) for key in result_keys()}


def dataset_identity(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """What chooses a dataset's images and ground truth, independent of how its location is spelled:
    its kind's :meth:`~lostreg.datasets.registry.DatasetKind.identity`.

    The published datasets (VOC07, VOC12) are the same wherever they live: their location keys are
    left out. COCO20k is its file list (by content). A COCO file or a folder of one's own is its
    location, resolved (``./data`` and ``/home/u/data`` are one folder).
    """
    return kind_of(dataset).identity(dataset)


def weights_identity(weights: Any) -> Any:
    """``pretrained`` / ``random`` as they are; a checkpoint file as its resolved path and size."""
    if weights in ("pretrained", "random", None):
        return weights
    path = real_path(weights)
    try:
        size = os.path.getsize(str(path))
    except OSError:
        size = None
    return {"file": path, "bytes": size}


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that can change a result, normalised: two configs with equal
    identities may share a run directory.

    Included: the dataset (:func:`dataset_identity`), backbone, weights (:func:`weights_identity`),
    the discovery protocol (missing keys of older run directories take their defaults) and
    ``max_size`` (0 and null both mean native resolution). Left out: execution settings (device,
    batch size, workers, ``limit``, ``overwrite``, ``run_dir``) and how paths are spelled.
    """
    identity: dict[str, Any] = {
        "dataset": dataset_identity(config.get("dataset") or {}),
        "backbone": dict(config.get("backbone") or {}),
        "weights": weights_identity(config.get("weights")),
        # A test-time register is its neuron file's content (absent in runs of earlier versions).
        **({"ttreg": file_fingerprint(str(config["ttreg"]))} if config.get("ttreg") else {}),
        "max_size": config.get("max_size") or None,
        # Runs of earlier versions have no precision key: they ran in fp32.
        "precision": config.get("precision") or "fp32",
    }
    identity.update(DiscoveryProtocol.from_mapping(config).identity())
    return identity


def validate_execution(cfg: DictConfig) -> None:
    """Check the execution settings' ranges (types are the schema's).

    Raises:
        ConfigError: one line naming the key and the allowed values.
    """
    checks = (("batch_size", cfg.batch_size, 1), ("num_workers", cfg.num_workers, 0))
    for key, value, low in checks:
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    if cfg.max_size is not None and cfg.max_size < 0:
        raise ConfigError(f"max_size must be a number of pixels >= 1, or 0 / null for native resolution; "
                          f"got {cfg.max_size}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"limit must be >= 1 (or null for every image), got {cfg.limit}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {cfg.precision!r}")


def protocol_from_config(cfg: DictConfig) -> DiscoveryProtocol:
    """The validated :class:`DiscoveryProtocol` of a composed config.

    Raises:
        ProtocolError: a value out of range (``lost.k_patches=0``, ``features.which=x``).
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return DiscoveryProtocol.from_mapping(container).validate()




def dataset_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Keyword arguments for :func:`lostreg.datasets.build_dataset` from ``cfg.dataset``: its kind's
    :meth:`~lostreg.datasets.registry.DatasetKind.reader_kwargs` (no ``name``, no check-only setting),
    the locations made absolute."""
    settings = OmegaConf.to_container(cfg.dataset, resolve=True)
    assert isinstance(settings, dict)
    kind = kind_of(settings)
    # Absolute locations: the images' paths in preds.jsonl then work from any folder (export, report).
    for key in kind.location_keys:
        if settings.get(key) is not None:
            settings[key] = os.path.abspath(os.path.expanduser(str(settings[key])))
    return kind.reader_kwargs(settings)


# Re-exported for callers that catch configuration problems in one place.
__all__ += ["ProtocolError"]
